//! One integration-test binary: every suite spawns real servers and talks to them over sockets.

mod bus_redis;
mod chat;
mod cli;
mod connection_limits;
mod connection_log;
mod deploy;
mod graphql_ws;
mod helpers;
mod hostile;
mod http;
mod http_limits;
mod jwt;
mod keyed_limits;
mod legacy_protocol;
mod lifecycle;
mod limits;
mod live_auth;
mod postgres;
mod rate_limits;
mod reload;
mod retention;
mod schema;
mod serve;
mod session;
mod tls;
mod topics;
