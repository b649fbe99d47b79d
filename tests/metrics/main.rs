//! The `metrics` module: KL divergences to the reference and the loss metrics.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
