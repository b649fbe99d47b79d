//! SimPER (Xiao et al. 2025, "SimPER: A Minimalist Approach to Preference Alignment without
//! Hyperparameters"): raise the chosen response's inverse perplexity, lower the rejected one's.

use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::error;
use crate::metrics::trl;

trl_config! {
    /// Configuration of [`SimperLoss`]: SimPER has no hyperparameter, so the only key is this
    /// crate's `value_checks`.
    pub struct SimperConfig {
    /// Check the values of the batch's lengths, scores and weights, reading them back to the
    /// host; `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl SimperConfig {
    /// The loss (there is nothing to validate).
    ///
    /// # Errors
    /// None today; `Result` for symmetry with every other config.
    pub fn init(&self) -> error::Result<SimperLoss> {
        Ok(SimperLoss {
            value_checks: self.value_checks,
        })
    }
}

/// SimPER: no reference model, no β, no margin.
///
/// A response's inverse perplexity `exp(log π(y)/|y|)` ∈ (0, 1] is the geometric mean of its
/// token probabilities. SimPER raises the chosen response's and lowers the rejected one's:
///
/// ```text
/// L = −exp(log π(y_w)/|y_w|) + exp(log π(y_l)/|y_l|)
/// ```
///
/// The loss is bounded in `[−1, 1]`, and its gradient on a response is the inverse perplexity
/// times the gradient of its mean token log-prob: a response the policy already finds unlikely
/// is pushed down gently (unlike DPO's, whose push on the rejected response grows as it gets
/// less likely). On a ranked list each ordered pair `i ≻ j` contributes its term and a
/// prompt's loss is their mean. Finite for every log-prob `≤ 0`. Metrics: rewards are the
/// inverse perplexities.
///
/// The batch holds summed log-probs ([`LogpReduction::Sum`](crate::logps::LogpReduction::Sum))
/// and lengths, as [`PairedBatch::from_output`] builds it; the loss divides by the lengths.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let batch = PairedBatch::new(Tensor::<2>::from_floats([[-2.0, -8.0]], &device))?
///     .with_lengths(Tensor::from_floats([[4.0, 4.0]], &device))?;
/// let out = SimperConfig::new().init()?.forward(batch)?;
/// let expected = -(-0.5f32).exp() + (-2.0f32).exp();
/// assert!((out.loss.into_scalar::<f32>() - expected).abs() < 1e-6);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates with lengths `[B, K]`
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimperLoss {
    value_checks: bool,
}

impl PreferenceLoss for SimperLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.refuse_soft_labels("SimPER")?;
        batch.require_sums("SimPER")?;
        let lengths = batch.lengths(
            "SimPER",
            "the inverse perplexity divides each response's log-prob by its token count: build \
             the batch with `PairedBatch::from_output` or add `with_lengths`",
        )?;
        if self.value_checks {
            batch.check_values()?;
        }
        let ranking = batch.ranking();
        let inverse_perplexity = batch.policy.clone().div(lengths.clamp_min(1.0)).exp();
        // margins()[i][j] = e_i − e_j for i ≻ j: the loss of the pair is its negation.
        let losses = ranking.mean_over_pairs(ranking.margins(inverse_perplexity.clone()).neg());
        let metrics = trl::paired_batch(
            &batch,
            inverse_perplexity.detach(),
            batch.policy.clone(),
            &ranking,
        );
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
