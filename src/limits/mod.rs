//! Limits on what clients may send and how often.

pub mod budget;
pub mod document;
pub mod exempt;
pub mod guard;
pub mod http;
pub mod keyed;
pub mod per_operation;
