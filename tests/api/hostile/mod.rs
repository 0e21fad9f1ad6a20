//! The hostile suite: what an attacker would try against each limit and trust boundary, split by
//! concern. Every test asserts the server's own error code or close code, never merely that some
//! error came back.

mod auth;
mod budget;
mod bus;
mod config;
mod documents;
mod http;
mod transport;
