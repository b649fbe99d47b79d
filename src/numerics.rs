//! Numerically stable elementwise building blocks.

use burn::tensor::Tensor;

/// `softplus(x) = log(1 + e^x)`, evaluated as `max(x, 0) + log1p(e^{-|x|})`.
///
/// The sign pattern is taken as a constant from `x`'s value so that autodiff sees
/// `[x ≥ 0 ? x : 0] + log1p(e^{-s·x})` with `s = ±1` the sign of `x`: the gradient is exactly
/// `σ(x)` everywhere, `x = 0` included (autodiff through `abs`/`relu` would give 0 there).
/// `e^{-|x|} ≤ 1`, so the result and its gradient stay finite for any finite `x`; at `±inf`
/// the value is `inf` / `0` and the gradient `1` / `0` (the negative part is masked, not
/// multiplied by 0, so `−inf·0` never makes a NaN).
pub(crate) fn softplus<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let negative = x.clone().lower_elem(0.0);
    let sign = negative.clone().float().mul_scalar(-2.0).add_scalar(1.0);
    let positive_part = x.clone().mask_fill(negative, 0.0);
    let tail = x.mul(sign).neg().exp().log1p();
    positive_part.add(tail)
}

/// `σ(x) = 1/(1 + e^{−x})`, evaluated as `e^{−softplus(−x)}`: the exponent is `≤ 0`, so the
/// value and its gradient `σ(x)σ(−x)` stay finite (and exact at the ends) for any finite `x`.
pub(crate) fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    softplus(x.neg()).neg().exp()
}
