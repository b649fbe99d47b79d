//! RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
//! Learning from Human Feedback in LLMs"): a clipped policy gradient on whole-sequence
//! importance ratios, with leave-one-out advantages — TRL 1.16's `RLOOTrainer` loss.

use burn::tensor::Tensor;

use super::formulas::policy::{MAX_LOG_RATIO, clipped};
use super::{LossOutput, PreferenceLoss};
use crate::batch::CompletionBatch;
use crate::check;
use crate::error::{PreferenceError, Result};
use crate::metrics::{Metric, Metrics};

trl_config! {
    /// Configuration of [`RlooLoss`], keyed as TRL 1.16's `RLOOConfig` (the loss's keys; the
    /// advantage keys — `beta`, `normalize_advantages`, `reward_clip_range` — are
    /// [`RlooAdvantagesConfig`](crate::advantages::RlooAdvantagesConfig)'s).
    pub struct RlooConfig {
    /// The lower clip `ε_l` of the sequence ratio (and the upper one unless `epsilon_high` is
    /// set). Default: `0.2`.
        epsilon / with_epsilon: f64 = 0.2,
    /// The upper clip `ε_h`. Default: `None` (= `epsilon`).
        epsilon_high / with_epsilon_high: Option<f64> = None,
    /// Check the batch's values (finite log-probs and advantages), reading them back to the
    /// host; `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl RlooConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] when `epsilon` is not in `[0, 1)` or `epsilon_high` is
    /// not finite and `≥ 0`.
    pub fn init(&self) -> Result<RlooLoss> {
        check::param("epsilon", self.epsilon, ">= 0 and < 1", |e| {
            (0.0..1.0).contains(&e)
        })?;
        let epsilon_high = self.epsilon_high.unwrap_or(self.epsilon);
        check::param("epsilon_high", epsilon_high, ">= 0", |e| e >= 0.0)?;
        Ok(RlooLoss {
            epsilon: self.epsilon,
            epsilon_high,
            value_checks: self.value_checks,
        })
    }
}

/// RLOO's loss over a [`CompletionBatch`] with one advantage per completion:
///
/// ```text
/// r_i = exp(log π(y_i) − log π_old(y_i))          (sequence log-probs: sums over the mask)
/// L_i = −min(r_i·A_i, clip(r_i, 1−ε_l, 1+ε_h)·A_i),   loss = mean_i L_i
/// ```
///
/// Without the batch's old log-probs `r = 1`. With step totals the mean is over the step's
/// completions. Metrics: `entropy` (when the batch has entropies), `clip_ratio/low_mean`,
/// `clip_ratio/high_mean`, `clip_ratio/region_mean` (shares of completions); RLOO's `kl`,
/// `reward` and `frac_reward_zero_std` come from
/// [`RlooAdvantages`](crate::advantages::RlooAdvantages).
///
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use burn_preference::batch::CompletionBatch;
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let logps = Tensor::<2>::from_floats([[-0.5, -1.0], [-2.0, -0.1]], &device);
/// let mask = Tensor::<2, Bool>::from_bool([[true, true], [true, false]], &device);
/// let batch = CompletionBatch::new(logps, mask, Tensor::from_floats([0.5, -0.5], &device))?;
/// // r = 1: the loss is −mean(A) = 0.
/// let out = RlooConfig::new().init()?.forward(batch)?;
/// assert_eq!(out.loss.into_scalar::<f32>(), 0.0);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`CompletionBatch`] of `N` completions × `C` positions, advantages `[N]`
/// - output: `loss [1]`, `losses [N]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RlooLoss {
    epsilon: f64,
    epsilon_high: f64,
    value_checks: bool,
}

impl PreferenceLoss for RlooLoss {
    type Batch = CompletionBatch;

    fn forward(&self, batch: CompletionBatch) -> Result<LossOutput> {
        let [n, _] = batch.policy.dims();
        if batch.advantages.dims()[1] != 1 {
            return Err(PreferenceError::Shape {
                arg: "advantages",
                expected: "[N]: RLOO weighs whole sequences".to_string(),
                actual: batch.advantages.dims().to_vec(),
            });
        }
        let mask = batch.mask.clone();
        let sequence = |tokens: Tensor<2>| {
            tokens
                .mask_fill(mask.clone().bool_not(), 0.0)
                .sum_dim(1)
                .reshape([n])
        };
        let logps = sequence(batch.policy.clone());
        if self.value_checks {
            let values = check::read_floats("policy", logps.clone())?;
            check::all_finite("policy", &values, &[n])?;
            let advantages = check::read_floats("advantages", batch.advantages.clone())?;
            check::all_finite("advantages", &advantages, &[n])?;
        }
        let old = match &batch.old {
            Some(old) => sequence(old.clone()),
            None => logps.clone().detach(),
        };
        let advantages = batch.advantages.clone().reshape([n]);
        let ratio = logps.sub(old).clamp_max(MAX_LOG_RATIO).exp();
        let bounded = ratio
            .clone()
            .clamp(1.0 - self.epsilon, 1.0 + self.epsilon_high);
        let losses = ratio
            .clone()
            .mul(advantages.clone())
            .min_pair(bounded.mul(advantages.clone()))
            .neg();
        let denominator = batch.step.map_or(n as f64, |step| step.examples);
        let loss = losses.clone().sum().div_scalar(denominator);
        let losses = losses.mul_scalar(n as f64 / denominator);

        let [low, high, region] = clipped(ratio, advantages, self.epsilon, self.epsilon_high);
        let mut metrics = Metrics::new();
        if let Some(entropy) = &batch.entropy {
            // Filled, not multiplied: a NaN at padding would survive `· 0`.
            metrics = metrics.with("entropy", Metric::masked_mean(entropy.clone(), mask));
        }
        metrics = metrics
            .with("clip_ratio/low_mean", Metric::mean(low.float()))
            .with("clip_ratio/high_mean", Metric::mean(high.float()))
            .with("clip_ratio/region_mean", Metric::mean(region.float()));
        Ok(LossOutput {
            loss,
            losses,
            metrics,
        })
    }
}
