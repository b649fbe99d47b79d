//! The `logps` module: sequence log-probs from logits or hidden states and an LM head.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod packed;
mod stability;
