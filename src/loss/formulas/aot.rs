//! Batch-sorted losses: AOT (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs
//! via Optimal Transport") aligns the *distributions* of chosen and rejected rewards over the
//! batch, by a one-dimensional optimal-transport matching: sort both and pair them by rank.
//!
//! TRL `loss_type`s: `aot`, `aot_unpaired`. They read the whole batch at once, so they need a
//! plain pairwise batch (no ranked lists, no soft labels, no per-pair weights).

use burn::tensor::Tensor;

use super::margin;

/// `aot`: sort the policy's and the reference's chosen-minus-rejected log-prob differences over
/// the batch separately and apply the smoothed logistic loss to their rank-wise difference.
///
/// ```text
/// d = sort_b(c − r) − sort_b(c₀ − r₀);   (1 − ε)·softplus(−βd) + ε·softplus(βd)
/// ```
///
/// `reference = None` is reference-free (`c₀ = r₀ = 0`).
pub(crate) fn aot(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    reference: Option<(Tensor<1>, Tensor<1>)>,
    beta: f64,
    eps: f64,
) -> Tensor<1> {
    let policy = sorted(chosen.sub(rejected));
    let d = match reference {
        Some((c0, r0)) => policy.sub(sorted(c0.sub(r0).detach())),
        None => policy,
    };
    margin::sigmoid(d.mul_scalar(beta), eps)
}

/// `aot_unpaired`: sort the chosen and the rejected log-ratios over the batch separately, so
/// the loss matches the two reward distributions without using which responses were paired.
///
/// ```text
/// d = sort_b(ℓc) − sort_b(ℓr);   (1 − ε)·softplus(−βd) + ε·softplus(βd)
/// ```
pub(crate) fn aot_unpaired(
    chosen_ratios: Tensor<1>,
    rejected_ratios: Tensor<1>,
    beta: f64,
    eps: f64,
) -> Tensor<1> {
    let d = sorted(chosen_ratios).sub(sorted(rejected_ratios));
    margin::sigmoid(d.mul_scalar(beta), eps)
}

/// Ascending sort that autodiff sees as a gather: the order is a constant taken from the
/// values, the gradient flows to the sorted entries.
fn sorted(values: Tensor<1>) -> Tensor<1> {
    let (_, order) = values.clone().detach().sort_with_indices(0);
    values.gather(0, order)
}
