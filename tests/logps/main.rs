//! The `logps` module: sequence log-probs from logits or from hidden states and an LM head, on
//! every device in `common::devices()`.

#[path = "../common/mod.rs"]
mod common;

/// The fused pass's extra outputs and logits transforms, and TRL's own log-prob outputs.
mod extras;
/// The fused path against the tensor-op oracle, and which implementation ran.
mod fused;
/// Sequence log-probs against a naive `f64` reference, closed forms, gradients and errors.
mod gather;
/// `f16` and `bf16` inputs against `f32` on the same values.
mod half;
/// Regression tests of log-prob defects.
mod regressions;
/// `value_checks`: what it checks, the lenient rule without it, and that without it the
/// gatherer never reads a tensor back.
mod value_checks;
