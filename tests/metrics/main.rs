//! The `metrics` module: the loss metrics' exact aggregation, and the KL divergences to the
//! reference.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod kl;
mod merge;
