//! [`UnpairedBatch`]: `N` prompts with one completion each, labelled desirable or
//! undesirable — the input of KTO and BCO.

use burn::tensor::{Bool, Int, Tensor};

use super::step::{Reduction, StepTotals, example_weights};
use super::tokens::TokenSide;
use crate::check;
use crate::error::{PreferenceError, Result};
use crate::logps::LogpReduction;

/// A batch of `N` unpaired examples: the policy's sequence log-probs (sums over each
/// completion's tokens, as TRL's KTO uses them), a desirable (1) / undesirable (0) label per
/// example and the optional inputs of KTO and BCO: the reference's log-probs, the log-probs of
/// KTO's mismatched KL pairs (see [`kl_pairs`](crate::loss::kl_pairs)) and BCO's reward shift.
///
/// Two sources, one constructor each: [`new`](Self::new) from plain `[N]` log-probs, and
/// [`from_output`](Self::from_output) from the gatherer's output. The builders check shapes
/// and devices only; the labels' values (0 or 1) and the log-probs' finiteness are checked by
/// the loss when its `value_checks` is on.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let batch = UnpairedBatch::new(
///     Tensor::from_floats([-8.0, -5.0], &device),
///     Tensor::<1, Int>::from_ints([1, 0], &device),
/// )?
/// .with_reference(Tensor::from_floats([-8.5, -4.5], &device))?;
/// assert_eq!(batch.len(), 2);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - policy, reference, desirable: `[N]`
/// - KL pairs: policy `[M]`, reference `[M]` (usually `M = N`)
/// - reward shift: `[1]`
/// - weights: `[N]`
#[derive(Debug, Clone)]
pub struct UnpairedBatch {
    pub(crate) policy: Tensor<1>,
    pub(crate) reference: Option<Tensor<1>>,
    pub(crate) desirable: Tensor<1, Int>,
    pub(crate) kl: Option<(Tensor<1>, Tensor<1>)>,
    pub(crate) reward_shift: Option<Tensor<1>>,
    pub(crate) weights: Option<Tensor<1>>,
    pub(crate) step: Option<StepTotals>,
    pub(crate) reference_point: Option<Tensor<1>>,
    pub(crate) tokens: Option<Box<TokenSide>>,
    pub(crate) reduction: Option<LogpReduction>,
}

impl UnpairedBatch {
    /// A batch from the policy's sequence log-probs `[N]` and the labels `desirable [N]`.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for `N = 0`, [`PreferenceError::BatchMismatch`] when
    /// `desirable` has another `N`, [`PreferenceError::DeviceMismatch`].
    pub fn new(policy: Tensor<1>, desirable: Tensor<1, Int>) -> Result<Self> {
        let [rows] = policy.dims();
        check::non_empty("policy", rows)?;
        check::same_device(&[
            ("policy", policy.device()),
            ("desirable", desirable.device()),
        ])?;
        check::batch("desirable", desirable.dims()[0], "policy", rows)?;
        Ok(Self {
            policy,
            reference: None,
            desirable,
            kl: None,
            reward_shift: None,
            weights: None,
            step: None,
            reference_point: None,
            tokens: None,
            reduction: None,
        })
    }

    /// The reference's sequence log-probs `[N]` (detached in the loss).
    ///
    /// # Errors
    /// [`PreferenceError::BatchMismatch`] or [`PreferenceError::DeviceMismatch`].
    pub fn with_reference(mut self, reference: Tensor<1>) -> Result<Self> {
        check::same_device(&[
            ("policy", self.policy.device()),
            ("reference", reference.device()),
        ])?;
        check::batch("reference", reference.dims()[0], "policy", self.len())?;
        self.reference = Some(reference.detach());
        Ok(self)
    }

    /// The summed log-probs of KTO's KL pairs (each prompt with a mismatched completion, built
    /// by [`kl_pairs`](crate::loss::kl_pairs)) under the policy and the reference. Both are
    /// detached: TRL computes them without gradient.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for no pairs, [`PreferenceError::BatchMismatch`] when the
    /// two lengths differ, [`PreferenceError::DeviceMismatch`].
    pub fn with_kl(mut self, policy_kl: Tensor<1>, reference_kl: Tensor<1>) -> Result<Self> {
        let [pairs] = policy_kl.dims();
        check::non_empty("policy_kl", pairs)?;
        check::same_device(&[
            ("policy", self.policy.device()),
            ("policy_kl", policy_kl.device()),
            ("reference_kl", reference_kl.device()),
        ])?;
        check::batch("reference_kl", reference_kl.dims()[0], "policy_kl", pairs)?;
        self.kl = Some((policy_kl.detach(), reference_kl.detach()));
        Ok(self)
    }

    /// BCO's reward shift δ `[1]`, e.g. [`BcoState::delta`](crate::loss::BcoState::delta)
    /// (detached). [`BcoLoss::forward_train`](crate::loss::BcoLoss::forward_train) sets it
    /// from the running state itself.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] unless it is `[1]`, [`PreferenceError::DeviceMismatch`].
    pub fn with_reward_shift(mut self, delta: Tensor<1>) -> Result<Self> {
        check::same_device(&[
            ("policy", self.policy.device()),
            ("reward_shift", delta.device()),
        ])?;
        check::shape("reward_shift", delta.dims(), [Some(1)], "[1]")?;
        self.reward_shift = Some(delta.detach());
        Ok(self)
    }

    /// A weight `w_n ≥ 0` per example `[N]`: the loss becomes the weighted mean
    /// `Σ_n w_n·L_n / Σ_n w_n` (uniform weights give the plain mean). `LossOutput::losses`
    /// stays unweighted, the metrics count every example once, and KTO's KL reference point and
    /// BCO's δ are unweighted batch statistics. Detached.
    ///
    /// # Errors
    /// [`PreferenceError::BatchMismatch`] unless it is `[N]`,
    /// [`PreferenceError::DeviceMismatch`]. With `value_checks` on, the loss refuses negative or
    /// non-finite weights and weights that sum to 0.
    pub fn with_weights(mut self, weights: Tensor<1>) -> Result<Self> {
        self.weights = Some(example_weights(weights, self.len(), self.policy.device())?);
        Ok(self)
    }

    /// Marks the batch as one micro-batch (or one device's shard) of an optimiser step with
    /// these totals (`examples` = the step's examples or their total weight): the loss divides
    /// by them instead of the batch's, so that the micro-batches' losses and gradients add up
    /// to the step's. KTO's reference point and BCO's δ are batch statistics of the model's
    /// outputs: make them the step's with [`with_reference_point`](Self::with_reference_point)
    /// and [`with_reward_shift`](Self::with_reward_shift) (see
    /// [`KtoLoss::kl_statistic`](crate::loss::KtoLoss::kl_statistic) and
    /// [`BcoLoss::reward_statistic`](crate::loss::BcoLoss::reward_statistic)).
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] naming `step.examples` or `step.tokens`.
    pub fn with_step(mut self, step: StepTotals) -> Result<Self> {
        step.check()?;
        self.step = Some(step);
        Ok(self)
    }

    /// KTO's reference point `z` `[1]` for this batch, instead of the estimate from its own KL
    /// pairs: the step's, `max(0, Σ KL log-ratios / Σ KL pairs)` over every micro-batch and
    /// device (detached). With it KTO needs no KL pairs in this batch.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] unless it is `[1]`, [`PreferenceError::DeviceMismatch`].
    pub fn with_reference_point(mut self, z: Tensor<1>) -> Result<Self> {
        check::same_device(&[
            ("policy", self.policy.device()),
            ("reference_point", z.device()),
        ])?;
        check::shape("reference_point", z.dims(), [Some(1)], "[1]")?;
        self.reference_point = Some(z.detach());
        Ok(self)
    }

    /// The batch's weights and step totals, for [`LossOutput`](crate::loss::LossOutput).
    pub(crate) fn reduction(&self) -> Reduction {
        Reduction {
            weights: self.weights.clone(),
            step: self.step,
        }
    }

    /// Checks that the policy and reference log-probs are finite, reading them back once (the
    /// opt-in guard of the crate's NaN/inf policy, as [`PairedBatch::require_finite`]).
    ///
    /// [`PairedBatch::require_finite`]: super::PairedBatch::require_finite
    ///
    /// # Errors
    /// [`PreferenceError::NonFinite`] naming `policy` or `reference` and the index.
    pub fn require_finite(self) -> Result<Self> {
        let policy = check::read_floats("policy", self.policy.clone())?;
        check::all_finite("policy", &policy, &[self.len()])?;
        if let Some(reference) = &self.reference {
            let values = check::read_floats("reference", reference.clone())?;
            check::all_finite("reference", &values, &[self.len()])?;
        }
        Ok(self)
    }

    /// The number of examples `N`.
    pub fn len(&self) -> usize {
        self.policy.dims()[0]
    }

    /// Always `false`: a batch has at least one example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The desirable examples `[N]`.
    pub(crate) fn desirable_mask(&self) -> Tensor<1, Bool> {
        self.desirable.clone().equal_elem(1)
    }

    /// `ℓ = log π − log π_ref` `[N]`, for a loss that needs the reference and sums.
    pub(crate) fn log_ratios(&self, loss: &'static str) -> Result<Tensor<1>> {
        if let Some(other) = self.reduction.filter(|r| *r != LogpReduction::Sum) {
            return Err(PreferenceError::InvalidValue {
                arg: "policy",
                expected: "summed log-probs (LogpReduction::Sum), as TRL's KTO and BCO use",
                found: format!("log-probs gathered with {other:?}, for {loss}"),
            });
        }
        let reference = self.reference.clone().ok_or(PreferenceError::MissingInput {
            loss,
            arg: "reference",
            why: "add the reference's log-probs with `with_reference` or `with_reference_output`",
        })?;
        Ok(self.policy.clone().sub(reference))
    }

    /// The checks that read values back to the host: labels 0 or 1, finite log-probs (policy,
    /// reference, KL pairs), weights finite, `≥ 0` and not all 0. A loss runs them when its `value_checks` is on.
    pub(crate) fn check_values(&self) -> Result<()> {
        let labels = check::read_ints("desirable", self.desirable.clone())?;
        if let Some(bad) = labels.iter().find(|&&v| v != 0 && v != 1) {
            return Err(PreferenceError::InvalidValue {
                arg: "desirable",
                expected: "0 (undesirable) or 1 (desirable)",
                found: bad.to_string(),
            });
        }
        let mut finite = vec![("policy logps", self.policy.clone())];
        finite.extend(self.reference.clone().map(|r| ("reference", r)));
        if let Some((policy, reference)) = &self.kl {
            finite.push(("policy_kl", policy.clone()));
            finite.push(("reference_kl", reference.clone()));
        }
        for (arg, tensor) in finite {
            let values = check::read_floats(arg, tensor)?;
            check::all_finite(arg, &values, &[values.len()])?;
        }
        if let Some(weights) = &self.weights {
            check::weights("weights", weights.clone(), self.step.is_some())?;
        }
        Ok(())
    }
}
