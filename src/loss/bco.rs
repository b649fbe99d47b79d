//! BCO (Jung et al. 2024, "Binary Classifier Optimization"): unpaired examples scored by a
//! logistic classifier on the implicit reward, with a running reward shift δ.

use burn::tensor::{Device, Tensor};

use super::{LossOutput, PreferenceLoss};
use crate::batch::{StepTotals, UnpairedBatch};
use crate::check;
use crate::error::{self, PreferenceError};
use crate::metrics::{Metric, Metrics, trl};
use crate::numerics::softplus;

trl_config! {
    /// Configuration of [`BcoLoss`]. TRL 1.16 has no BCO trainer (only DPO's `"bco_pair"`); the
    /// key name and default follow the `BCOConfig` of earlier TRL releases.
    pub struct BcoConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.1`.
        beta / with_beta: f64 = 0.1,
    /// Check the batch's values, reading them back to the host: labels 0 or 1, finite
    /// log-probs. `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl BcoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]`.
    pub fn init(&self) -> error::Result<BcoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        Ok(BcoLoss {
            beta: self.beta,
            value_checks: self.value_checks,
        })
    }
}

/// The running reward shift δ of BCO, a value the trainer owns and carries across steps: the
/// mean of the batch-mean rewards of every training batch seen so far. Each batch counts once
/// whatever its size, as earlier TRL's `RunningMoments` did when fed the batch mean.
///
/// δ stays on the device (updating it never reads it back); [`record`](Self::record) reads it
/// once for a checkpoint and [`from_record`](Self::from_record) restores it.
#[derive(Debug, Clone, Default)]
pub struct BcoState {
    delta: Option<Tensor<1>>,
    count: u64,
}

/// A [`BcoState`] on the host, for checkpoints (serde).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct BcoStateRecord {
    /// The shift δ; 0 before the first update.
    pub delta: f64,
    /// The number of batches averaged into δ.
    pub count: u64,
}

impl BcoState {
    /// A state before any training batch: `δ = 0`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one training batch's rewards `[N]` into δ:
    /// `δ ← δ + (mean(rewards) − δ)/(count + 1)`, on the device. Call it in training only;
    /// [`BcoLoss::forward_train`] does.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for no rewards.
    pub fn update(&mut self, rewards: Tensor<1>) -> error::Result<()> {
        check::non_empty("rewards", rewards.dims()[0])?;
        self.update_mean(rewards.detach().mean());
        Ok(())
    }

    /// Folds one step's mean reward `[1]` into δ, as [`update`](Self::update) does with a
    /// batch's: for a step of several micro-batches or devices, the value of their merged
    /// [`BcoLoss::reward_statistic`]s, so that δ moves once per step by the step's mean.
    pub fn update_mean(&mut self, mean: Tensor<1>) {
        let mean = mean.detach();
        self.count += 1;
        let weight = 1.0 / self.count as f64;
        self.delta = Some(match self.delta.take() {
            None => mean,
            Some(delta) => {
                let step = mean.to_device(&delta.device()).sub(delta.clone());
                delta.add(step.mul_scalar(weight))
            }
        });
    }

    /// δ `[1]` on `device` (0 before the first update).
    pub fn delta(&self, device: &Device) -> Tensor<1> {
        match &self.delta {
            Some(delta) => delta.clone().to_device(device),
            None => Tensor::zeros([1], device),
        }
    }

    /// The number of batches averaged into δ.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// δ and the count on the host (one read), for a checkpoint.
    ///
    /// # Errors
    /// [`PreferenceError::Read`] when the device read fails.
    pub fn record(&self) -> error::Result<BcoStateRecord> {
        let delta = match &self.delta {
            None => 0.0,
            Some(delta) => f64::from(check::read_floats("delta", delta.clone())?[0]),
        };
        Ok(BcoStateRecord {
            delta,
            count: self.count,
        })
    }

    /// The state of a checkpoint, with δ on `device`.
    pub fn from_record(record: BcoStateRecord, device: &Device) -> Self {
        Self {
            delta: (record.count > 0).then(|| Tensor::full([1], record.delta, device)),
            count: record.count,
        }
    }
}

/// BCO on an [`UnpairedBatch`] (its KL pairs, if any, are not used).
///
/// With `ℓ = log π − log π_ref` (summed log-probs), the implicit reward `r = β·ℓ` and the
/// batch's reward shift δ ([`UnpairedBatch::with_reward_shift`]):
///
/// ```text
/// desirable:   −logσ(r − δ)    = softplus(−(r − δ))
/// undesirable: −logσ(−(r − δ)) = softplus(r − δ)
/// loss = mean over the N examples
/// ```
///
/// δ ([`BcoState`]) centres the classifier's logit so that desirable and undesirable rewards are
/// told apart around the policy's current reward level. In training,
/// [`forward_train`](Self::forward_train) first folds the batch's mean reward into δ, then
/// uses it (the order of earlier TRL's BCO trainer); for evaluation give the batch the state's
/// δ as it is and call `forward`.
///
/// Earlier TRL also offered an optional density-ratio classifier over prompt embeddings to
/// reweight examples (`match_underlying_distribution`); it is not included here.
///
/// Metrics: `delta`, and TRL's `rewards/*`, `logps/*`, `rewards/margins`, `entropy` and
/// `logits/*` as KTO's.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let labels = Tensor::<2, Int>::from_ints([[-100, 3, 4], [-100, 7, 8]], &device);
/// let logits = Tensor::<3>::random([2, 3, 16], Distribution::Default, &device);
/// let policy = SequenceLogpsConfig::new().init()?.forward(logits, labels, None)?;
/// let batch = UnpairedBatch::from_output(policy, Tensor::from_ints([1, 0], &device))?
///     .with_reference(Tensor::from_floats([-5.0, -5.5], &device))?;
/// let loss = BcoConfig::new().init()?;
/// let mut state = BcoState::new();
/// let out = loss.forward_train(batch.clone(), &mut state)?;
/// assert_eq!(state.count(), 1);
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// // Evaluation: the state's δ as it is.
/// let eval = loss.forward(batch.with_reward_shift(state.delta(&device))?)?;
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: an [`UnpairedBatch`] of `N` examples with a reference and a reward shift
/// - output: `loss [1]`, `losses [N]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BcoLoss {
    beta: f64,
    value_checks: bool,
}

impl BcoLoss {
    /// The training step: folds this batch's mean reward into `state`, then computes the loss
    /// with the updated δ. Nothing is read back to the host with `value_checks` off.
    ///
    /// # Errors
    /// As [`PreferenceLoss::forward`].
    pub fn forward_train(
        &self,
        batch: UnpairedBatch,
        state: &mut BcoState,
    ) -> error::Result<LossOutput> {
        if batch.step.is_some() {
            return Err(StepTotals::refuse(
                "BCO's forward_train",
                "no step totals: forward_train folds this batch's rewards into δ; for a step of \
                 several micro-batches fold the step's (`BcoLoss::reward_statistic`, \
                 `BcoState::update_mean`) and call `forward` with `with_reward_shift`",
            ));
        }
        if self.value_checks {
            batch.check_values()?;
        }
        let rewards = self.rewards(&batch)?;
        state.update(rewards.clone())?;
        let device = batch.policy.device();
        let batch = batch.with_reward_shift(state.delta(&device))?;
        self.loss(batch, rewards)
    }

    /// The rewards `β·ℓ` of `batch` as a sum and a count (detached), to merge across the
    /// micro-batches and devices of a step ([`Metric::merge`], or an all-reduce of the sum and
    /// the count) before [`BcoState::update_mean`] with their value.
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] without a reference; [`PreferenceError::InvalidValue`]
    /// for log-probs not gathered as sums.
    pub fn reward_statistic(&self, batch: &UnpairedBatch) -> error::Result<Metric> {
        Ok(Metric::mean(self.rewards(batch)?))
    }

    /// The implicit rewards `β·ℓ` `[N]` of the batch.
    fn rewards(&self, batch: &UnpairedBatch) -> error::Result<Tensor<1>> {
        Ok(batch.log_ratios("BCO")?.mul_scalar(self.beta))
    }

    /// The loss of `batch` with its rewards `β·ℓ` `[N]` (computed once by the caller).
    fn loss(&self, batch: UnpairedBatch, rewards: Tensor<1>) -> error::Result<LossOutput> {
        let delta = batch
            .reward_shift
            .clone()
            .ok_or(PreferenceError::MissingInput {
                loss: "BCO",
                arg: "reward_shift",
                why: "the classifier's logit is the reward minus the running shift δ: use \
                      `BcoLoss::forward_train` with a `BcoState`, or give the batch \
                      `with_reward_shift(state.delta(&device))`",
            })?;
        let [n] = rewards.dims();
        let centred = rewards.clone().sub(delta.clone().expand([n]));
        let desirable = softplus(centred.clone().neg());
        let undesirable = softplus(centred);
        let mask = batch.desirable_mask();
        let losses = undesirable.mask_where(mask.clone(), desirable);
        let metrics = Metrics::new()
            .with("delta", Metric::mean(delta))
            .merge(trl::unpaired(
                rewards.detach(),
                batch.policy.clone(),
                mask,
                batch.tokens.as_deref(),
            ));
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}

impl PreferenceLoss for BcoLoss {
    type Batch = UnpairedBatch;

    /// The loss with the batch's reward shift as it is (evaluation).
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] without a reference or a reward shift;
    /// [`PreferenceError::InvalidValue`] for log-probs not gathered as sums; with
    /// `value_checks`, [`PreferenceError::InvalidValue`] for a label other than 0 or 1 and
    /// [`PreferenceError::NonFinite`] for a NaN/infinite log-prob.
    fn forward(&self, batch: UnpairedBatch) -> error::Result<LossOutput> {
        if self.value_checks {
            batch.check_values()?;
        }
        let rewards = self.rewards(&batch)?;
        self.loss(batch, rewards)
    }
}
