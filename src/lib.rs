//! Palisade: a hardened GraphQL subscriptions server whose thresholds live in hardening.yaml.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod connlog;
pub mod db;
pub mod error;
pub mod graphql;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod publish;
pub mod registry;
pub mod reload;
pub mod retention;
pub mod routes;
pub mod startup;
pub mod telemetry;
pub mod tls;
pub mod topics;
pub mod transport;
pub mod writer;
