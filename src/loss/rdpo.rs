//! R-DPO (Park et al. 2024, "Disentangling Length from Quality in Direct Preference
//! Optimization"): DPO with a length regulariser inside the sigmoid.

use super::formulas::margin;
use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::check;
use crate::error;
use crate::metrics::trl;

trl_config! {
    /// Configuration of [`RdpoLoss`]. No peer ships R-DPO; the keys are the paper's symbols.
    pub struct RdpoConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.1`, DPO's.
        beta / with_beta: f64 = 0.1,
    /// α ≥ 0, the weight of the length difference, in nats of margin per token. `α = 0` is
    /// DPO. The paper tunes it together with β for each dataset; the default is a starting
    /// point, not its value. Default: `0.01`.
        alpha / with_alpha: f64 = 0.01,
    /// Train without a reference model (`log π_ref = 0`). Default: `false`.
        reference_free / with_reference_free: bool = false,
    /// Check the values of the batch's lengths, scores and weights, reading them back to the
    /// host; `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl RdpoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]` or `α ∉ [0, 1e8]`.
    pub fn init(&self) -> error::Result<RdpoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        check::param("alpha", self.alpha, "in [0, 1e8]", |a| {
            (0.0..=1e8).contains(&a)
        })?;
        Ok(RdpoLoss {
            beta: self.beta,
            alpha: self.alpha,
            reference_free: self.reference_free,
            value_checks: self.value_checks,
        })
    }
}

/// Length-regularised DPO.
///
/// Preference data often prefers longer answers, and DPO learns the length along with the
/// quality. R-DPO charges the chosen response for every token it has beyond the rejected one,
/// inside the sigmoid, so that the implicit reward has no incentive to grow with length:
///
/// ```text
/// L = −log σ(β·(ρ_w − ρ_l) − α·(|y_w| − |y_l|))        ρ = log π − log π_ref
/// ```
///
/// with `|y|` the response's token count (the batch's lengths). On a ranked list each ordered
/// pair `i ≻ j` has its own length difference; a prompt's loss is the mean over its ordered
/// pairs. `α = 0` is DPO exactly. Stable for `|z| ≤ 1e4`. Metrics: rewards `β·ρ`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let batch = PairedBatch::new(Tensor::<2>::from_floats([[-12.0, -14.0]], &device))?
///     .with_reference(Tensor::from_floats([[-13.0, -13.0]], &device))?
///     .with_lengths(Tensor::from_floats([[30.0, 10.0]], &device))?;
/// let out = RdpoConfig::new().with_beta(0.1).with_alpha(0.01).init()?.forward(batch)?;
/// // z = 0.1·(1 − (−1)) − 0.01·(30 − 10) = 0: the 20 extra tokens cancel the margin.
/// assert!((out.loss.into_scalar::<f32>() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates, with lengths `[B, K]`
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RdpoLoss {
    beta: f64,
    alpha: f64,
    reference_free: bool,
    value_checks: bool,
}

impl PreferenceLoss for RdpoLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.refuse_soft_labels("R-DPO")?;
        let lengths = batch.lengths(
            "R-DPO",
            "the regulariser is the responses' length difference: build the batch with \
             `PairedBatch::from_output` or add `with_lengths`",
        )?;
        if self.value_checks {
            batch.check_values()?;
        }
        let ratios = batch.log_ratios("R-DPO", self.reference_free)?;
        let ranking = batch.ranking();
        let z = ranking
            .margins(ratios.clone())
            .mul_scalar(self.beta)
            .sub(ranking.margins(lengths).mul_scalar(self.alpha));
        let losses = ranking.mean_over_pairs(margin::sigmoid(z, 0.0));
        let rewards = ratios.detach().mul_scalar(self.beta);
        let metrics = trl::paired_batch(&batch, rewards, batch.policy.clone(), &ranking);
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
