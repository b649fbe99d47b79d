//! The `logps` module: sequence log-probs from logits or from hidden states and an LM head, on
//! every device in `common::devices()`.

#[path = "../common/mod.rs"]
mod common;

/// Bad input: the typed error naming the argument, for every entry point and option.
mod bad_input;
/// The fused pass's extra outputs and logits transforms, and TRL's own log-prob outputs.
mod extras;
/// The fused path against the tensor-op oracle, and which implementation ran.
mod fused;
/// Sequence log-probs against a naive `f64` reference, closed forms, gradients and errors.
mod gather;
/// `f16` and `bf16` inputs against `f32` on the same values.
mod half;
/// Packed rows against the same sequences padded.
mod packed;
/// Regression tests of log-prob defects.
mod regressions;
/// Bad logits at ignored positions get zero gradient.
mod stability;
/// `value_checks`: what it checks, the lenient rule without it, and that without it the
/// gatherer never reads a tensor back.
mod value_checks;
