//! ODPO (Amini, Vieira & Cotterell 2024, "Direct Preference Optimization with an Offset"):
//! the chosen response must beat the rejected one by a margin that grows with how much
//! better it is.

use burn::tensor::Tensor;

use super::formulas::margin;
use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::batch::ranking::Ranking;
use crate::check;
use crate::error::{self, PreferenceError};
use crate::metrics::trl;

trl_config! {
    /// Configuration of [`OdpoLoss`]. No peer ships ODPO; the keys and defaults are those of
    /// the paper's code (`loss.alpha`, default 1).
    pub struct OdpoConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.1`, DPO's.
        beta / with_beta: f64 = 0.1,
    /// α ≥ 0, the scale of the offsets computed from scores, `Δ = α·log(s_w − s_l)`;
    /// offsets given with [`PairedBatch::with_offsets`] are used as they are. Default: `1.0`.
        alpha / with_alpha: f64 = 1.0,
    /// Train without a reference model (`log π_ref = 0`). Default: `false`.
        reference_free / with_reference_free: bool = false,
    /// Check the values of the batch's scores, offsets and weights, reading them back to the
    /// host; `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl OdpoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]` or `α ∉ [0, 1e8]`.
    pub fn init(&self) -> error::Result<OdpoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        check::param("alpha", self.alpha, "in [0, 1e8]", |a| {
            (0.0..=1e8).contains(&a)
        })?;
        Ok(OdpoLoss {
            beta: self.beta,
            alpha: self.alpha,
            reference_free: self.reference_free,
            value_checks: self.value_checks,
        })
    }
}

/// The paper's offsets `Δ = α·log(s_w − s_l)` `[B]` from the scores of the chosen and
/// rejected responses (e.g. a reward model's), for
/// [`PairedBatch::with_offsets`]. The chosen score must exceed the rejected one (otherwise the
/// logarithm is NaN or −inf).
///
/// # Errors
/// [`PreferenceError::BatchMismatch`] or [`PreferenceError::DeviceMismatch`] when the two
/// are not `[B]` on one device; [`PreferenceError::OutOfRange`] for `α < 0`.
pub fn odpo_offsets(
    chosen_scores: Tensor<1>,
    rejected_scores: Tensor<1>,
    alpha: f64,
) -> error::Result<Tensor<1>> {
    check::param("alpha", alpha, ">= 0", |a| a >= 0.0)?;
    check::same_device(&[
        ("chosen_scores", chosen_scores.device()),
        ("rejected_scores", rejected_scores.device()),
    ])?;
    let [rows] = chosen_scores.dims();
    check::batch(
        "rejected_scores",
        rejected_scores.dims()[0],
        "chosen_scores",
        rows,
    )?;
    Ok(chosen_scores
        .sub(rejected_scores)
        .detach()
        .log()
        .mul_scalar(alpha))
}

/// DPO with an offset.
///
/// DPO asks only that the chosen response win; ODPO asks it to win by an offset `Δ` that
/// grows with how strongly it is preferred, so that a near-tie barely moves the policy and a
/// clear win moves it further:
///
/// ```text
/// L = −log σ(β·(ρ_w − ρ_l) − Δ)          ρ = log π − log π_ref
/// Δ = α·log(s_w − s_l)                   (the paper's offset, from scores s)
/// ```
///
/// The offsets come from [`PairedBatch::with_offsets`] (`[B]`, used as they are: see
/// [`odpo_offsets`]) or, without them, from the batch's scores
/// ([`PairedBatch::with_scores`]): then every ordered pair `i ≻ j` of a ranked list gets
/// `α·log(s_i − s_j)`, and a prompt's loss is the mean over its ordered pairs. `Δ = 0` is DPO.
/// Stable for `|z| ≤ 1e4`. Metrics: rewards `β·ρ`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let batch = PairedBatch::new(Tensor::<2>::from_floats([[-12.0, -14.0]], &device))?
///     .with_reference(Tensor::from_floats([[-13.0, -13.0]], &device))?
///     // Scores 8 and 8 − e: the offset is α·log(e) = 0.2 with α = 0.2.
///     .with_scores(Tensor::from_floats([[8.0, 8.0 - std::f32::consts::E]], &device))?;
/// let out = OdpoConfig::new().with_alpha(0.2).init()?.forward(batch)?;
/// // z = 0.1·(1 − (−1)) − 0.2 = 0, loss = log 2.
/// assert!((out.loss.into_scalar::<f32>() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates with offsets `[B]` (`K = 2`) or
///   scores `[B, K]`
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OdpoLoss {
    beta: f64,
    alpha: f64,
    reference_free: bool,
    value_checks: bool,
}

impl OdpoLoss {
    /// The offsets of the ordered pairs `[B, K, K]` (0 off the pairs).
    fn offsets(&self, batch: &PairedBatch, ranking: &Ranking) -> error::Result<Tensor<3>> {
        if let Some(offsets) = &batch.offsets {
            let [prompts] = offsets.dims();
            let offsets = offsets.clone().reshape([prompts, 1, 1]);
            return Ok(ranking.beats.clone().mul(offsets));
        }
        let scores = batch.scores.clone().ok_or(PreferenceError::MissingInput {
            loss: "ODPO",
            arg: "offsets",
            why: "add per-pair offsets with `with_offsets` (see `odpo_offsets`), or scores with \
                  `with_scores` to compute them as α·log(s_w − s_l)",
        })?;
        // Off the pairs the difference is set to 1 (log 1 = 0) before the logarithm.
        let outside = ranking.beats.clone().equal_elem(0.0);
        Ok(Ranking::differences(scores)
            .mask_fill(outside, 1.0)
            .log()
            .mul_scalar(self.alpha))
    }
}

impl PreferenceLoss for OdpoLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.refuse_soft_labels("ODPO")?;
        if self.value_checks {
            batch.check_values()?;
        }
        let ratios = batch.log_ratios("ODPO", self.reference_free)?;
        let ranking = batch.ranking();
        let offsets = self.offsets(&batch, &ranking)?;
        let z = ranking
            .margins(ratios.clone())
            .mul_scalar(self.beta)
            .sub(offsets);
        let losses = ranking.mean_over_pairs(margin::sigmoid(z, 0.0));
        let rewards = ratios.detach().mul_scalar(self.beta);
        let metrics = trl::paired_batch(&batch, rewards, batch.policy.clone(), &ranking);
        Ok(LossOutput::new(losses, batch.weights.clone(), metrics))
    }
}
