//! Margin losses: functions of one number, the scaled margin `z = β·Δ` of a pair, where
//! `Δ = s(ℓc) − s(ℓr)` is the difference of the two responses' (f-divergence) scores.
//!
//! TRL `loss_type`s: `sigmoid` (and `sigmoid_norm`, the same function of a length-normalised
//! margin), `hinge`, `robust`, `exo_pair`, `discopop`. Each is a function of `z` alone, so each
//! also takes soft labels and ranked lists (see [`DpoLoss`](super::DpoLoss)). All are stable at
//! `|z| = 1e4`.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use crate::numerics::softplus;

/// `sigmoid` (DPO, Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model
/// is Secretly a Reward Model"), smoothed by a flip rate `ε` (conservative DPO):
///
/// ```text
/// (1 − ε)·softplus(−z) + ε·softplus(z)        ε = 0: −log σ(z)
/// ```
///
/// The same function serves ΨPO's logit Ψ and AOT's final step (`aot`, `aot_unpaired`).
pub(crate) fn sigmoid<const D: usize>(z: Tensor<D>, eps: f64) -> Tensor<D> {
    let forward = softplus(z.clone().neg());
    if eps == 0.0 {
        forward
    } else {
        forward
            .mul_scalar(1.0 - eps)
            .add(softplus(z).mul_scalar(eps))
    }
}

/// `sigmoid` with a preference label `q = P(chosen ≻ rejected)` per pair, broadcast over `z`:
///
/// ```text
/// q·softplus(−z) + (1 − q)·softplus(z)
/// ```
pub(crate) fn sigmoid_soft<const D: usize>(z: Tensor<D>, q: Tensor<D>) -> Tensor<D> {
    let flipped = q.clone().neg().add_scalar(1.0);
    softplus(z.clone().neg())
        .mul(q)
        .add(softplus(z).mul(flipped))
}

/// `hinge` (SLiC, Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
/// Feedback"): `relu(1 − z)`.
pub(crate) fn hinge<const D: usize>(z: Tensor<D>) -> Tensor<D> {
    relu(z.neg().add_scalar(1.0))
}

/// `robust` (rDPO, Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with
/// Noisy Feedback"), an unbiased loss under label flips at rate `ε ∈ [0, ½)`:
///
/// ```text
/// [(1 − ε)·softplus(−z) − ε·softplus(z)] / (1 − 2ε)
/// ```
pub(crate) fn robust<const D: usize>(z: Tensor<D>, eps: f64) -> Tensor<D> {
    softplus(z.clone().neg())
        .mul_scalar(1.0 - eps)
        .sub(softplus(z).mul_scalar(eps))
        .div_scalar(1.0 - 2.0 * eps)
}

/// `exo_pair` (EXO, Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model
/// Alignment", eq. 16): `KL(softmax over the pair ‖ [1 − ε, ε])`, `ε ∈ (0, 1)`:
///
/// ```text
/// σ(z)·(log σ(z) − log(1 − ε)) + σ(−z)·(log σ(−z) − log ε)
/// ```
///
/// Evaluated with `log σ(z) = −softplus(−z)` and `σ(z) = e^{log σ(z)}`, finite for any `z`.
pub(crate) fn exo_pair<const D: usize>(z: Tensor<D>, eps: f64) -> Tensor<D> {
    let log_win = softplus(z.clone().neg()).neg();
    let log_lose = softplus(z).neg();
    let win = log_win
        .clone()
        .exp()
        .mul(log_win.sub_scalar((-eps).ln_1p()));
    let lose = log_lose.clone().exp().mul(log_lose.sub_scalar(eps.ln()));
    win.add(lose)
}

/// `discopop` (DiscoPOP, Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms
/// with and for Large Language Models", eq. 5), with the temperature `τ` (`discopop_tau`):
///
/// ```text
/// m = σ(z/τ):   (1 − m)·softplus(−z) + m·e^{−z}
/// ```
///
/// `m·e^{−z}` is evaluated as `exp(−softplus(−z/τ) − z)` and `1 − m` as `σ(−z/τ)`: TRL's
/// `σ(z/τ)·exp(−z)` is `0·∞ = NaN` at `z ≈ −90` and below, where this form is finite (it
/// tends to 0 for `τ < 1`). For `τ > 1` the exact value grows like `e^{|z|(1 − 1/τ)}`; the
/// exponent is capped at 80 so the loss stays finite (it differs from the exact value only
/// beyond `e^80 ≈ 5.5e34`, where TRL's is infinite too).
pub(crate) fn discopop<const D: usize>(z: Tensor<D>, tau: f64) -> Tensor<D> {
    let scaled = z.clone().div_scalar(tau);
    let logistic = softplus(z.clone().neg()).mul(softplus(scaled.clone()).neg().exp());
    let exponential = softplus(scaled.neg()).add(z).neg().clamp_max(80.0).exp();
    logistic.add(exponential)
}
