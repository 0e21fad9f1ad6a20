//! HTTP endpoints: the per-IP limiter, IPv6 prefixes, and strings written to the database.
