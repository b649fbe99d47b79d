//! Numerically stable elementwise building blocks.

use burn::tensor::Tensor;

/// `softplus(x) = log(1 + e^x)`, evaluated as `max(x, 0) + log1p(e^{-|x|})`.
///
/// The sign pattern is taken as a constant from `x`'s value so that autodiff sees
/// `p·x + log1p(e^{-s·x})` with `p = 1[x ≥ 0]`, `s = 2p − 1`: the gradient is exactly
/// `σ(x)` everywhere, `x = 0` included (autodiff through `abs`/`relu` would give 0 there).
/// `e^{-|x|} ≤ 1`, so the result and its gradient stay finite for any finite `x`.
pub(crate) fn softplus<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let nonneg = x.clone().greater_equal_elem(0.0).float();
    let sign = nonneg.clone().mul_scalar(2.0).sub_scalar(1.0);
    let positive_part = x.clone().mul(nonneg);
    let tail = x.mul(sign).neg().exp().log1p();
    positive_part.add(tail)
}

/// `σ(x) = 1/(1 + e^{−x})`, evaluated as `e^{−softplus(−x)}`: the exponent is `≤ 0`, so the
/// value and its gradient `σ(x)σ(−x)` stay finite (and exact at the ends) for any finite `x`.
pub(crate) fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    softplus(x.neg()).neg().exp()
}
