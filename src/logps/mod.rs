//! Sequence log-probabilities: every preference loss starts here, with the policy's (and
//! reference's) log-probability of each response, `log π(y|x) = Σ_t log softmax(z_t)[y_t]` over
//! the response's valid tokens.
//!
//! One gatherer ([`SequenceLogpsConfig`] → [`SequenceLogps`]), one entry point per input:
//!
//! | input | padded rows | packed rows ([`Segments`](crate::data::Segments)) |
//! |---|---|---|
//! | logits `[B, T, V]` | [`forward`](SequenceLogps::forward) | [`forward_packed`](SequenceLogps::forward_packed) |
//! | hidden states `[B, T, H]` and an [`LmHead`] | [`forward_linear`](SequenceLogps::forward_linear) | [`forward_linear_packed`](SequenceLogps::forward_linear_packed) |
//!
//! All four return a [`SequenceLogpsOutput`] with the same contract; the options (shift,
//! `ignore_index`, reduction, per-token extras, logits transform, value checks) are the
//! config's.

mod config;
mod gather;
mod head;
mod oracle;
mod packed;
mod targets;

use burn::tensor::{DType, FloatDType, Tensor};

pub use config::{LogpReduction, SequenceLogpsConfig};
pub use gather::{SequenceLogps, SequenceLogpsOutput};
pub use head::{HeadLayout, LmHead};

/// Half-precision logits as `f32`, for the tensor-op paths (the oracle, unsupported devices,
/// the exact token KL, mixed LM-head dtypes); the fused op reads half precision itself.
pub(crate) fn widen<const D: usize>(logits: Tensor<D>) -> Tensor<D> {
    match logits.dtype() {
        DType::F16 | DType::BF16 => logits.cast(FloatDType::F32),
        _ => logits,
    }
}
