//! Credentials: token lifetimes, refreshAuth, session re-checks and what claims reach the page.
