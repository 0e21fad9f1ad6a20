//! Configuration that must be refused, and reloads that must not widen access.
