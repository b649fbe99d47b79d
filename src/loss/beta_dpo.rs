//! β-DPO (Wu et al. 2024, "β-DPO: Direct Preference Optimization with Dynamic β"): DPO whose β
//! follows each batch's reward gaps, with a filter that drops the pairs whose gap is an
//! outlier.

use burn::tensor::{Device, Distribution, Tensor};

use super::formulas::margin;
use super::{LossOutput, PreferenceLoss};
use crate::batch::ranking::ranks;
use crate::batch::{PairedBatch, Reduction, StepTotals};
use crate::check;
use crate::error;
use crate::metrics::{Metric, Metrics, trl};

/// The smallest β the batch rule gives (the reference code's floor): a batch of unusually
/// negative gaps must not turn β negative.
pub const BETA_DPO_MIN_BETA: f64 = 1e-3;

/// The floor of the running gap deviation σ in the filter's z-scores: a batch of one pair (or
/// of identical gaps) has σ = 0.
const MIN_GAP_STD: f64 = 1e-6;

trl_config! {
    /// Configuration of [`BetaDpoLoss`]. No peer ships β-DPO; the keys are the paper's symbols
    /// (its code's `beta`, `a`, `mode_weight` and the moving-average factor) and the defaults
    /// those of its example run.
    pub struct BetaDpoConfig {
    /// β₀, the base β, in `[1e-8, 1e8]`. Default: `0.1`.
        beta / with_beta: f64 = 0.1,
    /// α ≥ 0, how strongly β follows the batch's gap (the code's `a`). `α = 0` with no
    /// filtering is DPO at β₀. Default: `0.6`.
        alpha / with_alpha: f64 = 0.6,
    /// ρ ∈ [0, 1), the fraction of each batch the filter drops (the code's `mode_weight`).
    /// `0` keeps every pair. Default: `0.2`.
        filter_ratio / with_filter_ratio: f64 = 0.2,
    /// γ ∈ [0, 1), the moving-average factor of the running gap mean and deviation:
    /// `M₀ ← γ·M₀ + (1 − γ)·mean(M)`. Default: `0.9`.
        momentum / with_momentum: f64 = 0.9,
    /// Train without a reference model (`log π_ref = 0`). Default: `false`.
        reference_free / with_reference_free: bool = false,
    /// Check the values of the batch's weights and, in training, that every gap is finite (a
    /// NaN or infinite one would poison the running statistics), reading them back to the
    /// host; `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl BetaDpoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]`, `α ∉ [0, 1e8]`, `ρ ∉ [0, 1)` or `γ ∉ [0, 1)`.
    pub fn init(&self) -> error::Result<BetaDpoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        check::param("alpha", self.alpha, "in [0, 1e8]", |a| {
            (0.0..=1e8).contains(&a)
        })?;
        check::param("filter_ratio", self.filter_ratio, "in [0, 1)", |r| {
            (0.0..1.0).contains(&r)
        })?;
        check::param("momentum", self.momentum, "in [0, 1)", |g| {
            (0.0..1.0).contains(&g)
        })?;
        Ok(BetaDpoLoss {
            config: self.clone(),
        })
    }
}

/// The running statistics of β-DPO's reward gaps, a value the trainer owns and carries across
/// steps (as [`BcoState`](super::BcoState)): the moving averages `M₀` of the batch-mean gap and
/// `σ` of the batch gap deviation, both starting at 0 as in the paper's code.
///
/// They stay on the device; [`record`](Self::record) reads them once for a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct BetaDpoState {
    moments: Option<(Tensor<1>, Tensor<1>)>,
    steps: u64,
}

/// A [`BetaDpoState`] on the host, for checkpoints (serde).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct BetaDpoStateRecord {
    /// The running gap mean `M₀`.
    pub gap_mean: f64,
    /// The running gap deviation `σ`.
    pub gap_std: f64,
    /// The number of training batches folded in.
    pub steps: u64,
}

impl BetaDpoState {
    /// A state before any training batch: `M₀ = σ = 0`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one training batch's gaps `M [B]` into the moving averages, on the device:
    /// `M₀ ← γ·M₀ + (1 − γ)·mean(M)`, `σ ← γ·σ + (1 − γ)·std(M)` (Bessel-corrected; 0 for
    /// one pair). [`BetaDpoLoss::forward_train`] calls it; call it yourself with gaps gathered
    /// from every device to keep the statistics of the whole step.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`](crate::PreferenceError::Empty) for no gaps;
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `γ ∉ [0, 1)`.
    pub fn update(&mut self, gaps: Tensor<1>, momentum: f64) -> error::Result<()> {
        let [pairs] = gaps.dims();
        check::non_empty("gaps", pairs)?;
        check::param("momentum", momentum, "in [0, 1)", |g| {
            (0.0..1.0).contains(&g)
        })?;
        let gaps = gaps.detach();
        let device = gaps.device();
        let mean = gaps.clone().mean();
        let std = if pairs > 1 {
            gaps.var(0).sqrt()
        } else {
            Tensor::zeros([1], &device)
        };
        let (old_mean, old_std) = self.moments(&device);
        let blend = |old: Tensor<1>, new: Tensor<1>| {
            old.mul_scalar(momentum).add(new.mul_scalar(1.0 - momentum))
        };
        self.moments = Some((blend(old_mean, mean), blend(old_std, std)));
        self.steps += 1;
        Ok(())
    }

    /// `(M₀, σ)` `[1]` each on `device` (0 before the first update).
    pub fn moments(&self, device: &Device) -> (Tensor<1>, Tensor<1>) {
        match &self.moments {
            Some((mean, std)) => (
                mean.clone().to_device(device),
                std.clone().to_device(device),
            ),
            None => (Tensor::zeros([1], device), Tensor::zeros([1], device)),
        }
    }

    /// The number of training batches folded in.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The statistics on the host (one read each), for a checkpoint.
    ///
    /// # Errors
    /// [`PreferenceError::Read`](crate::PreferenceError::Read) when a device read fails.
    pub fn record(&self) -> error::Result<BetaDpoStateRecord> {
        let (gap_mean, gap_std) = match &self.moments {
            None => (0.0, 0.0),
            Some((mean, std)) => (
                f64::from(check::read_floats("gap_mean", mean.clone())?[0]),
                f64::from(check::read_floats("gap_std", std.clone())?[0]),
            ),
        };
        Ok(BetaDpoStateRecord {
            gap_mean,
            gap_std,
            steps: self.steps,
        })
    }

    /// The state of a checkpoint, on `device`.
    pub fn from_record(record: BetaDpoStateRecord, device: &Device) -> Self {
        Self {
            moments: (record.steps > 0).then(|| {
                (
                    Tensor::full([1], record.gap_mean, device),
                    Tensor::full([1], record.gap_std, device),
                )
            }),
            steps: record.steps,
        }
    }
}

/// β-DPO: DPO whose β is set per batch from the batch's reward gaps.
///
/// A training step is one batch: `forward_train` refuses [step totals](StepTotals) (β and the
/// filter would be statistics of each micro-batch, not of the step).
///
/// With the gap `M = ρ_w − ρ_l` of each pair (`ρ = log π − log π_ref`) and the running
/// statistics `M₀`, `σ` of [`BetaDpoState`], a training step:
///
/// ```text
/// 1. M₀, σ ← moving averages with this batch's mean and deviation of M      (state update)
/// 2. keep ⌊B·(1 − ρ)⌋ pairs (at least 1), drawn without replacement with
///    probability ∝ exp(−(M − M₀)²/(2σ²))                                     (the filter)
/// 3. β = max(β₀·(1 + α·(mean_kept(M) − M₀)), 1e-3)                            (detached)
/// 4. L = mean over the kept pairs of −log σ(β·M)
/// ```
///
/// A batch of informative pairs (large gaps) trains with a larger β, staying closer to the
/// reference, and one of near-ties with a smaller β; the filter drops the pairs whose gap is
/// far from the running mean, which the paper finds are mostly mislabelled. The order (update,
/// then filter) and the statistics (moving averages from 0, Bessel-corrected deviation) follow
/// the paper's code. The draw uses Gumbel keys on the device (the backend's random generator;
/// seed it with burn for reproducible runs), so a step never reads a tensor back.
///
/// [`forward_train`](Self::forward_train) runs the step and updates the state;
/// [`PreferenceLoss::forward`] is the evaluation loss: DPO at β₀ on every pair. The filter
/// drops pairs through `LossOutput`'s weights: `losses` holds every pair's loss at the batch's
/// β and `loss` their mean over the kept pairs (times any batch weights; if every kept pair
/// has weight 0 the loss is 0/0, NaN). Metrics: TRL's, with
/// rewards `β₀·ρ` as the paper's code logs them, plus `beta_dpo/beta` (the β used) and
/// `beta_dpo/kept` (the fraction of pairs kept).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let batch = PairedBatch::new(Tensor::<2>::from_floats([[-10.0, -12.0], [-9.0, -9.5]], &device))?
///     .with_reference(Tensor::from_floats([[-11.0, -11.0], [-9.0, -9.0]], &device))?;
/// // No filtering: both gaps (2 and 0.5) are kept; M₀ = 0.1·1.25 after the first update.
/// let loss = BetaDpoConfig::new().with_filter_ratio(0.0).init()?;
/// let mut state = BetaDpoState::new();
/// let out = loss.forward_train(batch, &mut state)?;
/// let beta = 0.1 * (1.0 + 0.6 * (1.25 - 0.125));
/// let dpo = |m: f64| (1.0 + (-beta * m).exp()).ln();
/// let expected = (dpo(2.0) + dpo(0.5)) / 2.0;
/// assert!((f64::from(out.loss.into_scalar::<f32>()) - expected).abs() < 1e-6);
/// assert_eq!(state.steps(), 1);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a pairwise [`PairedBatch`] `[B, 2]`, chosen first, with a reference
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, PartialEq)]
pub struct BetaDpoLoss {
    config: BetaDpoConfig,
}

impl BetaDpoLoss {
    /// The validated configuration.
    pub fn config(&self) -> &BetaDpoConfig {
        &self.config
    }

    /// One training step: updates `state` with the batch's gaps, filters the pairs and
    /// computes the loss at the batch's β.
    ///
    /// # Errors
    /// As [`PreferenceLoss::forward`].
    pub fn forward_train(
        &self,
        batch: PairedBatch,
        state: &mut BetaDpoState,
    ) -> error::Result<LossOutput> {
        if batch.step.is_some() {
            return Err(StepTotals::refuse(
                "β-DPO training",
                "no step totals: β-DPO's β and filter are statistics of the batch it sees; \
                 run each step as one batch",
            ));
        }
        let (gaps, metrics) = self.gaps(&batch)?;
        let device = gaps.device();
        let [pairs] = gaps.dims();
        let measured = gaps.clone().detach();
        if self.config.value_checks {
            // A NaN or infinite gap would poison the running statistics for every later step.
            let values = check::read_floats("policy", measured.clone())?;
            check::all_finite("policy", &values, &[pairs])?;
        }
        state.update(measured.clone(), self.config.momentum)?;
        let (mean, std) = state.moments(&device);
        let kept = self.filter(measured.clone(), mean.clone(), std);
        let kept_count = kept.clone().sum();
        let kept_mean = measured.mul(kept.clone()).sum().div(kept_count);
        let beta = kept_mean
            .sub(mean)
            .mul_scalar(self.config.alpha)
            .add_scalar(1.0)
            .mul_scalar(self.config.beta)
            .clamp_min(BETA_DPO_MIN_BETA)
            .detach();
        let losses = margin::sigmoid(gaps.mul(beta.clone().expand([pairs])), 0.0);
        let weights = match &batch.weights {
            Some(w) => w.clone().mul(kept.clone()),
            None => kept.clone(),
        };
        let metrics = metrics
            .with("beta_dpo/beta", Metric::mean(beta))
            .with("beta_dpo/kept", Metric::mean(kept));
        let reduction = Reduction {
            weights: Some(weights),
            step: None,
        };
        Ok(LossOutput::new(losses, None, reduction, metrics))
    }

    /// The gaps `M = ρ_w − ρ_l` `[B]` (differentiable) and TRL's metrics, rewards `β₀·ρ`, from
    /// one computation of the log-ratios.
    fn gaps(&self, batch: &PairedBatch) -> error::Result<(Tensor<1>, Metrics)> {
        batch.require_pairs("β-DPO")?;
        batch.refuse_soft_labels("β-DPO")?;
        if self.config.value_checks {
            batch.check_values()?;
        }
        let ratios = batch.log_ratios("β-DPO", self.config.reference_free)?;
        let [pairs, _] = ratios.dims();
        let rewards = ratios.clone().detach().mul_scalar(self.config.beta);
        let metrics = trl::paired_batch(batch, rewards, batch.policy.clone(), &batch.ranking());
        let gaps = ratios
            .clone()
            .narrow(1, 0, 1)
            .sub(ratios.narrow(1, 1, 1))
            .reshape([pairs]);
        Ok((gaps, metrics))
    }

    /// The kept pairs `[B]` (1 or 0): `⌊B·(1 − ρ)⌋` (at least 1) drawn without replacement
    /// with weights `exp(−z²/2)`, as the largest Gumbel-perturbed log-weights.
    fn filter(&self, gaps: Tensor<1>, mean: Tensor<1>, std: Tensor<1>) -> Tensor<1> {
        let [pairs] = gaps.dims();
        let device = gaps.device();
        if self.config.filter_ratio == 0.0 {
            return Tensor::ones([pairs], &device);
        }
        let keep = ((pairs as f64 * (1.0 - self.config.filter_ratio)).floor() as usize).max(1);
        let z = gaps
            .sub(mean.expand([pairs]))
            .div(std.clamp_min(MIN_GAP_STD).expand([pairs]));
        let uniform = Tensor::<1>::random([pairs], Distribution::Uniform(0.0, 1.0), &device)
            .clamp(1e-7, 1.0 - 1e-7);
        let gumbel = uniform.log().neg().log().neg();
        let keys = z.powi_scalar(2).mul_scalar(-0.5).add(gumbel);
        // The `keep` largest keys (ranks counted on the device: nothing is read back).
        let [rows] = keys.dims();
        ranks(keys.reshape([1, rows]))
            .reshape([rows])
            .lower_equal_elem(keep as f64)
            .float()
    }
}

impl PreferenceLoss for BetaDpoLoss {
    type Batch = PairedBatch;

    /// The evaluation loss: DPO at β₀ on every pair (no filter, no state).
    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        let (gaps, metrics) = self.gaps(&batch)?;
        let losses = margin::sigmoid(gaps.mul_scalar(self.config.beta), 0.0);
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
