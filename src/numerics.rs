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

/// `σ(x) = e^{−softplus(−x)}`: through the stable softplus, so values and gradients stay finite
/// (and exact in the tails) for any finite `x`.
pub(crate) fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    softplus(x.neg()).neg().exp()
}

/// `log σ(x) = −softplus(−x)`.
pub(crate) fn log_sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    softplus(x.neg()).neg()
}

/// Below this `|a|` [`expm1`] uses its Taylor series: `e^a − 1` in `f32` loses
/// `ε_f32/|a|` relative precision, 1.2e-6 at the switch, while the series' truncation error
/// there is `a⁶/720 ≈ 1.4e-9`.
const EXPM1_SERIES_BELOW: f64 = 0.1;

/// `e^a − 1`, accurate for small `|a|` (burn has no `expm1`): the series
/// `a + a²/2 + a³/6 + a⁴/24 + a⁵/120` for `|a| < 0.1`, `e^a − 1` elsewhere. Each branch is fed
/// an input clamped to where it is used, so the unselected branch never makes an `inf` whose
/// zero gradient would turn into NaN.
pub(crate) fn expm1<const D: usize>(a: Tensor<D>) -> Tensor<D> {
    let small = a.clone().abs().lower_elem(EXPM1_SERIES_BELOW);
    let s = a.clone().clamp(-EXPM1_SERIES_BELOW, EXPM1_SERIES_BELOW);
    // Horner: s·(1 + s/2·(1 + s/3·(1 + s/4·(1 + s/5)))).
    let series = s
        .clone()
        .div_scalar(5.0)
        .add_scalar(1.0)
        .mul(s.clone())
        .div_scalar(4.0)
        .add_scalar(1.0)
        .mul(s.clone())
        .div_scalar(3.0)
        .add_scalar(1.0)
        .mul(s.clone())
        .div_scalar(2.0)
        .add_scalar(1.0)
        .mul(s);
    let direct = a.exp().sub_scalar(1.0);
    direct.mask_where(small, series)
}

/// The logarithm of 2, where [`log1mexp`] switches branch.
const LN_2: f64 = std::f64::consts::LN_2;

/// `log(1 − e^x)` for `x ≤ 0`, in the two-branch form of Mächler (2012) that TRL uses:
/// `log1p(−e^x)` for `x < −ln 2`, `log(−expm1(x))` otherwise. Each branch sees its input
/// clamped to its own side of `−ln 2`, so neither makes an `inf` the other's selection would
/// multiply by a zero gradient. `x = 0` gives `−inf` (as it should); callers keep `x < 0`.
pub(crate) fn log1mexp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let far = x.clone().lower_elem(-LN_2);
    let tail = x.clone().clamp_max(-LN_2).exp().neg().log1p();
    let near = expm1(x.clamp_min(-LN_2)).neg().log();
    near.mask_where(far, tail)
}
