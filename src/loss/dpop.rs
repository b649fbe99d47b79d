//! DPOP / DPO-Positive (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference
//! Optimisation with DPO-Positive"): DPO that also refuses to lower the chosen response's
//! likelihood below the reference's.

use super::formulas::margin;
use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::check;
use crate::error;
use crate::metrics::trl;

trl_config! {
    /// Configuration of [`DpopLoss`]. No peer ships DPOP; the keys are the paper's symbols and
    /// the defaults the values its models were trained with.
    pub struct DpopConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.3`.
        beta / with_beta: f64 = 0.3,
    /// λ ≥ 0, the weight of the penalty on the chosen response's log-ratio dropping below 0.
    /// `λ = 0` is DPO. Default: `50.0`.
        lambda / with_lambda: f64 = 50.0,
    /// Check the values of the batch's scores and weights, reading them back to the host;
    /// `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl DpopConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]` or `λ ∉ [0, 1e8]`.
    pub fn init(&self) -> error::Result<DpopLoss> {
        check::kl_coefficient("beta", self.beta)?;
        check::param("lambda", self.lambda, "in [0, 1e8]", |l| {
            (0.0..=1e8).contains(&l)
        })?;
        Ok(DpopLoss {
            beta: self.beta,
            lambda: self.lambda,
            value_checks: self.value_checks,
        })
    }
}

/// DPO-Positive.
///
/// DPO's loss can fall while the likelihood of *both* responses falls, as long as the rejected
/// one falls faster; on pairs that differ in a few tokens (maths, edits) this drives the
/// chosen response's probability down. DPOP adds, inside the sigmoid, a penalty whenever the
/// chosen response's log-ratio `ρ_w = log π(y_w) − log π_ref(y_w)` is negative:
///
/// ```text
/// L = −log σ(β·(ρ_w − ρ_l − λ·max(0, −ρ_w)))     max(0, −ρ_w) = max(0, log π_ref(y_w)/π(y_w))
/// ```
///
/// This is the paper's final version, with the penalty inside β's bracket: an earlier version
/// wrote `β·(ρ_w − ρ_l) − λ·max(0, −ρ_w)`, which scales the penalty differently (by λ instead
/// of βλ), so that its λ = 50 overwhelms the DPO term.
///
/// On a ranked list (`K > 2`) each ordered pair `i ≻ j` penalises its winner `i`; a prompt's
/// loss is the mean over its ordered pairs (ties form none), as for DPO. `λ = 0` is DPO
/// exactly. Stable for `|β·(…)| ≤ 1e4`. Metrics: rewards `β·ρ` (as DPO's).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// // The chosen response lost 1 nat against the reference: ρ_w = −1, ρ_l = −3.
/// let batch = PairedBatch::new(Tensor::<2>::from_floats([[-11.0, -13.0]], &device))?
///     .with_reference(Tensor::from_floats([[-10.0, -10.0]], &device))?;
/// let out = DpopConfig::new().with_beta(0.5).with_lambda(2.0).init()?.forward(batch)?;
/// // z = 0.5·(−1 + 3 − 2·1) = 0: the penalty cancels the margin, loss = log 2.
/// assert!((out.loss.into_scalar::<f32>() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates, with a reference
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpopLoss {
    beta: f64,
    lambda: f64,
    value_checks: bool,
}

impl PreferenceLoss for DpopLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.refuse_soft_labels("DPOP")?;
        if self.value_checks {
            batch.check_values()?;
        }
        let ratios = batch.log_ratios("DPOP", false)?;
        let ranking = batch.ranking();
        let [prompts, candidates] = ratios.dims();
        // The winner's penalty, broadcast over its row of ordered pairs and zeroed off them by
        // a mask, not a product: the penalty of a −inf log-ratio is inf, and inf·0 = NaN off
        // the pairs would reach the gradient through the loss (as `Ranking::margins` says).
        let outside = ranking.beats.clone().equal_elem(0.0);
        let penalty = ratios
            .clone()
            .neg()
            .clamp_min(0.0)
            .mul_scalar(self.lambda)
            .reshape([prompts, candidates, 1])
            .expand([prompts, candidates, candidates])
            .mask_fill(outside, 0.0);
        let z = ranking
            .margins(ratios.clone())
            .sub(penalty)
            .mul_scalar(self.beta);
        let losses = ranking.mean_over_pairs(margin::sigmoid(z, 0.0));
        let rewards = ratios.detach().mul_scalar(self.beta);
        let metrics = trl::paired_batch(&batch, rewards, batch.policy.clone(), &ranking);
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
