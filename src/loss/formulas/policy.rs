//! The policy-gradient pieces of the GRPO family and RLOO: the importance ratio's cap, TRL's
//! clip flags, VESPO's gamma weights, per-sequence means and the entropy quantile mask.

use burn::tensor::{Bool, Int, Tensor};

/// The largest log importance ratio taken as it is: `exp` of more overflows `f32`, and the
/// clip's (or SAPO's gate's) zero gradient times that infinite ratio's would be NaN where the
/// loss is flat. `e^80 ≈ 5.5e34` leaves room for the product with an advantage and a sum over
/// tokens; no ratio a trainer meets comes near it.
pub(crate) const MAX_LOG_RATIO: f64 = 80.0;

/// VESPO's gamma weight `φ(w) = exp(λ + k·log w − λ·w)` (TRL's `get_gamma_weights`) of each
/// completion's sequence ratio `w = Π_t π/π_old` (with the engine's correction), `log w`
/// clamped to `[log 1e-8, 20]`, `(k, λ)` = `(k_pos, λ_pos)` for a non-negative advantage, else
/// `(k_neg, λ_neg)`; detached, 0 where it overflows.
pub(crate) fn gamma_weights(
    advantages: Tensor<2>,
    log_ratio: Tensor<2>,
    maskf: Tensor<2>,
    importance_sampling_ratio: Option<Tensor<2>>,
    [k_pos, lambda_pos, k_neg, lambda_neg]: [f64; 4],
) -> Tensor<2> {
    let floor = 1e-8f64.ln();
    let [n, _] = log_ratio.dims();
    let mut log_w = log_ratio.clamp(-20.0, 20.0).mul(maskf).sum_dim(1);
    if let Some(ratio) = importance_sampling_ratio {
        // As TRL: over all C positions (its correction is exactly 1 at padding).
        log_w = log_w.add(ratio.log().clamp(floor, 20.0).sum_dim(1));
    }
    let log_w = log_w.clamp(floor, 20.0).reshape([n, 1]);
    let non_negative = advantages.clone().greater_equal_elem(0.0);
    let k = advantages
        .clone()
        .full_like(k_neg)
        .mask_fill(non_negative.clone(), k_pos);
    let lambda = advantages
        .full_like(lambda_neg)
        .mask_fill(non_negative, lambda_pos)
        .clamp_min(1e-4);
    let (log_w, k) = broadcast(log_w, k);
    let (log_w, lambda) = broadcast(log_w, lambda);
    let phi = lambda
        .clone()
        .add(k.mul(log_w.clone()))
        .sub(lambda.mul(log_w.exp()))
        .exp();
    let bad = phi.clone().is_nan().bool_or(phi.clone().is_inf());
    phi.mask_fill(bad, 0.0).detach()
}

/// TRL's clip flags: a ratio below `1 − ε_l` with a negative advantage (low), above
/// `1 + ε_h` with a positive one (high), and either (region).
pub(crate) fn clipped<const D: usize>(
    ratio: Tensor<D>,
    advantages: Tensor<D>,
    epsilon_low: f64,
    epsilon_high: f64,
) -> [Tensor<D, Bool>; 3] {
    let low = ratio
        .clone()
        .lower_elem(1.0 - epsilon_low)
        .bool_and(advantages.clone().lower_elem(0.0));
    let high = ratio
        .greater_elem(1.0 + epsilon_high)
        .bool_and(advantages.greater_elem(0.0));
    let region = low.clone().bool_or(high.clone());
    [low, high, region]
}

/// Each row's mean over its counted positions `[N, 1]` (0 for a row without one).
pub(crate) fn per_sequence_mean(values: Tensor<2>, maskf: Tensor<2>) -> Tensor<2> {
    let counts = maskf.clone().sum_dim(1).clamp_min(1.0);
    values.mul(maskf).sum_dim(1).div(counts)
}

/// Two `[N, 1]` or `[N, C]` tensors at their common width.
pub(crate) fn broadcast(a: Tensor<2>, b: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let [n, wa] = a.dims();
    let width = wa.max(b.dims()[1]);
    (a.expand([n, width]), b.expand([n, width]))
}

/// TRL's `get_high_entropy_mask`: the counted tokens whose entropy is at least the
/// `quantile` of the counted tokens' entropies (linear interpolation, as `torch.quantile`),
/// computed on the device: the entropies sorted with the uncounted ones last.
pub(crate) fn high_entropy_mask(
    entropy: Tensor<2>,
    mask: Tensor<2, Bool>,
    quantile: f64,
) -> Tensor<2, Bool> {
    let [n, width] = entropy.dims();
    let flat = entropy
        .clone()
        .detach()
        .mask_fill(mask.clone().bool_not(), f32::INFINITY)
        .reshape([n * width])
        .sort(0);
    let count = mask.clone().float().sum();
    let position = count.sub_scalar(1.0).clamp_min(0.0).mul_scalar(quantile);
    let below = position.clone().floor();
    let fraction = position.clone().sub(below.clone());
    let index = |at: Tensor<1>| -> Tensor<1, Int> { at.int() };
    let low = flat.clone().gather(0, index(below));
    let high = flat.gather(0, index(position.ceil()));
    let threshold = low.clone().add(high.sub(low).mul(fraction));
    // No counted token: the threshold is inf and nothing is kept.
    let threshold = threshold.reshape([1, 1]).expand([n, width]);
    entropy
        .mask_fill(mask.clone().bool_not(), 0.0)
        .greater_equal(threshold)
        .bool_and(mask)
}
