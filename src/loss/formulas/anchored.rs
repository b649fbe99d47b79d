//! Anchored per-response losses: each response's own scaled log-ratio `zc = β·ℓc`,
//! `zr = β·ℓr` enters, not only their difference, so the loss also fixes where the rewards
//! sit (e.g. the chosen reward above 0), not only their order.
//!
//! TRL `loss_type`s: `nca_pair`, `bco_pair`, `apo_zero`, `apo_down`. They need a plain pair
//! (no ranked list, no soft label: a response's own reward has no "flipped" form).

use burn::tensor::Tensor;

use crate::numerics::{sigmoid, softplus};

/// `nca_pair` (NCA, Chen et al. 2024, "Noise Contrastive Alignment of Language Models with
/// Explicit Rewards"):
///
/// ```text
/// −log σ(zc) − ½·log σ(−zc) − ½·log σ(−zr)
///   = softplus(−zc) + ½·softplus(zc) + ½·softplus(zr)
/// ```
pub(crate) fn nca_pair<const D: usize>(zc: Tensor<D>, zr: Tensor<D>) -> Tensor<D> {
    softplus(zc.clone().neg())
        .add(softplus(zc).mul_scalar(0.5))
        .add(softplus(zr).mul_scalar(0.5))
}

/// `bco_pair` (BCO, Jung et al. 2024, "Binary Classifier Optimization for Large Language
/// Model Alignment"), without the running reward shift:
///
/// ```text
/// −log σ(zc) − log σ(−zr) = softplus(−zc) + softplus(zr)
/// ```
pub(crate) fn bco_pair<const D: usize>(zc: Tensor<D>, zr: Tensor<D>) -> Tensor<D> {
    softplus(zc.neg()).add(softplus(zr))
}

/// `apo_zero` (APO, D'Oosterlinck et al. 2024, "Anchored Preference Optimization and
/// Contrastive Revisions", eq. 7): raise the chosen likelihood, lower the rejected one; for
/// chosen outputs better than the model's own.
///
/// ```text
/// 1 − σ(zc) + σ(zr)
/// ```
pub(crate) fn apo_zero<const D: usize>(zc: Tensor<D>, zr: Tensor<D>) -> Tensor<D> {
    sigmoid(zc).neg().add_scalar(1.0).add(sigmoid(zr))
}

/// `apo_down` (APO, eq. 8): lower both likelihoods, the rejected one more; for chosen outputs
/// worse than the model's own.
///
/// ```text
/// σ(zc) + 1 − σ(zc − zr)
/// ```
pub(crate) fn apo_down<const D: usize>(zc: Tensor<D>, zr: Tensor<D>) -> Tensor<D> {
    let margin = zc.clone().sub(zr);
    sigmoid(zc).add(sigmoid(margin).neg().add_scalar(1.0))
}
