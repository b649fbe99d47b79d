//! Squared-target losses: the margin (or each response's log-ratio) is pulled to a finite
//! target instead of pushed to infinity.
//!
//! TRL `loss_type`s: `ipo`, `sppo_hard`.

use burn::tensor::Tensor;

/// `ipo` (IPO, Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
/// Human Preferences", eq. 17): the squared distance of a margin `h` from its target `t`.
///
/// ```text
/// (h − t)²        t = 1/(2β) for a sure preference; (2q − 1)/(2β) for a soft label q
/// ```
///
/// The same function serves ΨPO's identity Ψ. TRL's `ipo` feeds it the length-normalised
/// margin `s(ℓc)/|yc| − s(ℓr)/|yr|`; ΨPO feeds it whatever `ρ` it is given.
pub(crate) fn ipo<const D: usize>(h: Tensor<D>, target: f64) -> Tensor<D> {
    h.sub_scalar(target).square()
}

/// [`ipo`] with a per-pair target tensor broadcast over `h` (soft labels).
pub(crate) fn ipo_soft<const D: usize>(h: Tensor<D>, target: Tensor<D>) -> Tensor<D> {
    h.sub(target).square()
}

/// `sppo_hard` (SPPO, Wu et al. 2024, "Self-Play Preference Optimization for Language Model
/// Alignment", eq. 4.7 with the hard probabilities 1 and 0): each response's own log-ratio is
/// pulled to `±1/(2β)`.
///
/// ```text
/// (ℓc − 1/(2β))² + (ℓr + 1/(2β))²
/// ```
pub(crate) fn sppo_hard<const D: usize>(
    chosen: Tensor<D>,
    rejected: Tensor<D>,
    beta: f64,
) -> Tensor<D> {
    let target = 0.5 / beta;
    ipo(chosen, target).add(ipo(rejected, -target))
}
