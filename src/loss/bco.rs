//! BCO (Jung et al. 2024, "Binary Classifier Optimization"): unpaired examples scored by a
//! logistic classifier on the implicit reward, with a running reward shift δ.

use burn::config::Config;
use burn::tensor::Tensor;

use super::kto::UnpairedBatch;
use crate::check;
use crate::error;
use crate::numerics::softplus;

/// Configuration of [`BcoLoss`]. TRL 1.16 has no BCO trainer (only DPO's `"bco_pair"`); the
/// key name and default follow the `BCOConfig` of earlier TRL releases.
#[derive(Config, Debug)]
pub struct BcoConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.1`.
    #[config(default = 0.1)]
    pub beta: f64,
}

impl BcoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]`.
    pub fn init(&self) -> error::Result<BcoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        Ok(BcoLoss { beta: self.beta })
    }
}

/// The running reward shift δ of BCO, a value the trainer owns and carries across steps (save it
/// with a checkpoint): the mean of the batch-mean rewards of every training batch seen so far.
/// Each batch counts once whatever its size, as earlier TRL's `RunningMoments` did when fed the
/// batch mean.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct BcoState {
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

    /// Folds one training batch's rewards `[N]` into δ: `δ ← δ + (mean(rewards) − δ)/(count + 1)`.
    /// Call it in training only; [`BcoLoss::forward_train`] does.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`](crate::PreferenceError::Empty) for no rewards,
    /// [`PreferenceError::NonFinite`](crate::PreferenceError::NonFinite) for a NaN/infinite one.
    pub fn update(&mut self, rewards: Tensor<1>) -> error::Result<()> {
        let values = check::read_floats("rewards", rewards.detach())?;
        check::non_empty("rewards", values.len())?;
        check::all_finite("rewards", &values, &[values.len()])?;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
        self.count += 1;
        self.delta += (mean - self.delta) / self.count as f64;
        Ok(())
    }
}

/// BCO on an [`UnpairedBatch`] (its KL pairs, if any, are not used).
///
/// With `ℓ = log π − log π_ref` (summed log-probs) and the implicit reward `r = β·ℓ`:
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
/// uses it (the order of earlier TRL's BCO trainer); [`forward`](Self::forward) (evaluation)
/// reads δ without changing it.
///
/// Earlier TRL also offered an optional density-ratio classifier over prompt embeddings to
/// reweight examples (`match_underlying_distribution`); it is not included here.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::{BcoConfig, BcoState, SequenceLogpsConfig, UnpairedBatch};
///
/// let device = Device::default();
/// let labels = Tensor::<2, Int>::from_ints([[-100, 3, 4], [-100, 7, 8]], &device);
/// let gatherer = SequenceLogpsConfig::new().with_return_token_logps(true).init()?;
/// let logits = Tensor::<3>::random([2, 3, 16], Distribution::Default, &device);
/// let batch = UnpairedBatch::new(
///     gatherer.forward(logits, labels)?,
///     Tensor::from_floats([-5.0, -5.5], &device),
///     Tensor::from_ints([1, 0], &device),
/// )?;
/// let mut state = BcoState::new();
/// let out = BcoConfig::new().init()?.forward_train(batch, &mut state)?;
/// assert_eq!(state.count, 1);
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: an [`UnpairedBatch`] of `N` examples
/// - output: `loss [1]`, `losses [N]`, `rewards [N]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BcoLoss {
    beta: f64,
}

/// What [`BcoLoss`] returns.
#[derive(Debug, Clone)]
pub struct BcoOutput {
    /// The mean of `losses` `[1]`. Call `backward()` on it.
    pub loss: Tensor<1>,
    /// The loss of each example `[N]`, in batch order.
    pub losses: Tensor<1>,
    /// `β·ℓ` of each example `[N]`, detached.
    pub rewards: Tensor<1>,
    /// The δ the loss used.
    pub delta: f64,
    batch: UnpairedBatch,
}

impl BcoOutput {
    /// The metrics under earlier TRL BCO's names: `delta`, and `rewards/*`, `logps/*`,
    /// `rewards/margins` (each only where the batch has that side), `entropy` and `logits/*`
    /// when the gather carried them.
    ///
    /// # Errors
    /// [`PreferenceError::Read`](crate::PreferenceError::Read) when a tensor cannot be read
    /// back from the device.
    pub fn metrics(&self) -> error::Result<Vec<(&'static str, f64)>> {
        let mut metrics = vec![("delta", self.delta)];
        metrics.extend(self.batch.side_metrics(&self.rewards)?);
        Ok(metrics)
    }
}

impl BcoLoss {
    /// The loss with the shift `state.delta` as it is (evaluation).
    ///
    /// # Errors
    /// None beyond the batch's own checks; the `Result` keeps the signature of the other
    /// losses.
    pub fn forward(&self, batch: UnpairedBatch, state: &BcoState) -> error::Result<BcoOutput> {
        let rewards = batch.log_ratios().mul_scalar(self.beta);
        Ok(self.with_delta(batch, rewards, state.delta))
    }

    /// The training step: folds this batch's mean reward into `state`, then computes the loss
    /// with the updated δ.
    ///
    /// # Errors
    /// As [`BcoState::update`].
    pub fn forward_train(
        &self,
        batch: UnpairedBatch,
        state: &mut BcoState,
    ) -> error::Result<BcoOutput> {
        let rewards = batch.log_ratios().mul_scalar(self.beta);
        state.update(rewards.clone())?;
        Ok(self.with_delta(batch, rewards, state.delta))
    }

    fn with_delta(&self, batch: UnpairedBatch, rewards: Tensor<1>, delta: f64) -> BcoOutput {
        let centred = rewards.clone().sub_scalar(delta);
        let desirable = softplus(centred.clone().neg());
        let undesirable = softplus(centred);
        let losses = undesirable.mask_where(batch.desirable_mask.clone(), desirable);
        BcoOutput {
            loss: losses.clone().mean(),
            losses,
            rewards: rewards.detach(),
            delta,
            batch,
        }
    }
}
