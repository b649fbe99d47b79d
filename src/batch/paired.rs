//! [`PairedBatch`]: `B` prompts × `K ≥ 2` candidates and which candidate beats which; a pair
//! is the ranked list with `K = 2`, chosen first.

use burn::tensor::{Int, Tensor};

use super::ranking::Ranking;
use super::step::{Reduction, StepTotals, example_weights};
use super::tokens::{TokenSide, completion_positions};
use crate::check;
use crate::data::BatchLayout;
use crate::error::{PreferenceError, Result};
use crate::logps::LogpReduction;

/// Sequence log-probs of `K ≥ 2` candidate responses for each of `B` prompts, with their
/// ranking and the optional inputs some losses need: the input of the DPO family, ΨPO, RRHF,
/// CPO/SimPO/AlphaPO and ORPO.
///
/// Two sources, one constructor each: [`new`](Self::new) from plain `[B, K]` log-probs, and
/// [`from_output`](Self::from_output) from the gatherer's output over a collated batch (which
/// also carries the lengths and the per-token tensors that `sft`, WPO, LD-DPO, CPO, ORPO and
/// TRL's token metrics read). Without scores the columns are ranked by position (column 0
/// best); with [`with_scores`](Self::with_scores) candidate `i` beats `j` when `r_i > r_j`,
/// and equal scores tie.
///
/// The builders check shapes and devices (from metadata: they never read a tensor back).
/// The values of scores, soft labels and lengths are checked by the loss that reads them, when
/// its `value_checks` is on.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// // Two pairs: [chosen, rejected] sequence log-probs, under the policy and the reference.
/// let policy = Tensor::<2>::from_floats([[-12.0, -14.0], [-30.5, -29.0]], &device);
/// let reference = Tensor::<2>::from_floats([[-13.0, -13.5], [-30.0, -29.5]], &device);
/// let batch = PairedBatch::new(policy)?.with_reference(reference)?;
/// assert_eq!((batch.prompts(), batch.candidates()), (2, 2));
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - policy, reference, scores, lengths: `[B, K]`
/// - weights: `[B]`
/// - soft labels, offsets: `[B]` (pairwise batches only)
#[derive(Debug, Clone)]
pub struct PairedBatch {
    pub(crate) policy: Tensor<2>,
    pub(crate) reference: Option<Tensor<2>>,
    pub(crate) scores: Option<Tensor<2>>,
    pub(crate) lengths: Option<Tensor<2>>,
    pub(crate) soft_labels: Option<Tensor<1>>,
    pub(crate) weights: Option<Tensor<1>>,
    pub(crate) offsets: Option<Tensor<1>>,
    pub(crate) step: Option<StepTotals>,
    /// The policy's and reference's per-token tensors over the `2B` concatenated rows.
    pub(crate) tokens: Option<Box<TokenSide>>,
    pub(crate) reference_tokens: Option<Box<TokenSide>>,
    /// How the policy log-probs were reduced (`None`: given as plain tensors).
    pub(crate) reduction: Option<LogpReduction>,
    /// How the gatherer's rows map to `[B, K]` (`None`: given as plain tensors).
    pub(crate) layout: Option<BatchLayout>,
}

impl PairedBatch {
    /// A batch from the policy's sequence log-probs `[B, K]`, candidates best first: for pairs
    /// `[B, 2]` with the chosen response in column 0 (e.g. `Tensor::stack(vec![chosen,
    /// rejected], 1)`).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] for `K < 2`, [`PreferenceError::Empty`] for `B = 0`.
    pub fn new(policy: Tensor<2>) -> Result<Self> {
        let [batch, candidates] = policy.dims();
        check::non_empty("policy", batch)?;
        if candidates < 2 {
            return Err(PreferenceError::Shape {
                arg: "policy",
                expected: "[B, K] with K >= 2 candidates".to_string(),
                actual: policy.dims().to_vec(),
            });
        }
        Ok(Self {
            policy,
            reference: None,
            scores: None,
            lengths: None,
            soft_labels: None,
            weights: None,
            offsets: None,
            step: None,
            tokens: None,
            reference_tokens: None,
            reduction: None,
            layout: None,
        })
    }

    /// Reference log-probs `[B, K]`, precomputed or from a frozen model (detached in the loss).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`], [`PreferenceError::BatchMismatch`] or
    /// [`PreferenceError::DeviceMismatch`] when it is not `[B, K]` on the policy's device.
    pub fn with_reference(mut self, reference: Tensor<2>) -> Result<Self> {
        self.check_candidates("reference", &reference)?;
        self.reference = Some(reference);
        Ok(self)
    }

    /// Scores `[B, K]` that rank the candidates (higher is better; equal scores tie), e.g.
    /// [`Collated::scores`](crate::data::Collated::scores). The ranking is built on the device.
    ///
    /// # Errors
    /// As [`with_reference`](Self::with_reference).
    pub fn with_scores(mut self, scores: Tensor<2>) -> Result<Self> {
        self.check_candidates("scores", &scores)?;
        self.scores = Some(scores.detach());
        Ok(self)
    }

    /// Valid-token counts `[B, K]` of each candidate (TRL's length-normalised `ipo` and
    /// `sigmoid_norm`, RRHF, CPO's token means); [`from_output`](Self::from_output) takes them
    /// from the gatherer's counts.
    ///
    /// # Errors
    /// As [`with_reference`](Self::with_reference).
    pub fn with_lengths(mut self, lengths: Tensor<2>) -> Result<Self> {
        self.check_candidates("lengths", &lengths)?;
        self.lengths = Some(lengths.detach());
        Ok(self)
    }

    /// Soft preference labels `q = P(chosen ≻ rejected) ∈ [0, 1]` per pair `[B]`.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] unless the batch is pairwise (`K = 2`) and `q` is `[B]`;
    /// [`PreferenceError::DeviceMismatch`].
    pub fn with_soft_labels(mut self, labels: Tensor<1>) -> Result<Self> {
        self.require_pairwise_input("soft labels")?;
        let batch = self.prompts();
        check::same_device(&[
            ("policy", self.policy.device()),
            ("soft_labels", labels.device()),
        ])?;
        check::batch("soft_labels", labels.dims()[0], "policy", batch)?;
        self.soft_labels = Some(labels.detach());
        Ok(self)
    }

    /// A weight `w_b ≥ 0` per prompt `[B]`: the loss becomes the weighted mean
    /// `Σ_b w_b·L_b / Σ_b w_b` of the per-prompt losses (uniform weights give the plain mean),
    /// for every loss. `LossOutput::losses` stays unweighted and the metrics count every prompt
    /// once. Detached: a weight is data, not a parameter.
    ///
    /// # Errors
    /// [`PreferenceError::BatchMismatch`] unless it is `[B]`,
    /// [`PreferenceError::DeviceMismatch`]. With `value_checks` on, the loss refuses negative or
    /// non-finite weights and weights that sum to 0.
    pub fn with_weights(mut self, weights: Tensor<1>) -> Result<Self> {
        self.weights = Some(example_weights(
            weights,
            self.prompts(),
            self.policy.device(),
        )?);
        Ok(self)
    }

    /// Marks the batch as one micro-batch (or one device's shard) of an optimiser step with
    /// these totals: the loss then divides by the step's examples and tokens instead of
    /// the batch's, so that the micro-batches' losses and gradients add up to the step's (see
    /// [`StepTotals`]). Give every micro-batch of the step the same totals.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] naming `step.examples` (not finite and `> 0`) or
    /// `step.tokens` (not finite and `≥ 0`).
    pub fn with_step(mut self, step: StepTotals) -> Result<Self> {
        step.check()?;
        self.step = Some(step);
        Ok(self)
    }

    /// A margin offset `Δ_b` per pair `[B]` for ODPO
    /// ([`OdpoConfig`](crate::loss::OdpoConfig)): how far the chosen response must beat the
    /// rejected one, e.g. [`odpo_offsets`](crate::loss::odpo_offsets) of their scores.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] unless the batch is pairwise (`K = 2`) and the offsets are
    /// `[B]`; [`PreferenceError::DeviceMismatch`].
    pub fn with_offsets(mut self, offsets: Tensor<1>) -> Result<Self> {
        self.require_pairwise_input("offsets")?;
        check::same_device(&[
            ("policy", self.policy.device()),
            ("offsets", offsets.device()),
        ])?;
        check::batch("offsets", offsets.dims()[0], "policy", self.prompts())?;
        self.offsets = Some(offsets.detach());
        Ok(self)
    }

    /// The completion labels `[2B, T]` of the gathered rows (TRL's `concatenated_labels`: the
    /// token ids on the completion, a negative label such as −100 on the prompt and padding),
    /// for ORPO, whose NLL counts the prompt and completion tokens the batch was gathered on
    /// while its log-odds use the completion tokens only. `T` is the gatherer's input length:
    /// the causal shift is applied here as the gatherer applied it.
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] unless the batch came from
    /// [`from_output`](Self::from_output) with a pairwise layout;
    /// [`PreferenceError::Shape`] or [`PreferenceError::BatchMismatch`] when the labels are not
    /// `[2B, T' + 1]` (or `[2B, T']` unshifted); [`PreferenceError::DeviceMismatch`].
    pub fn with_completion_labels(mut self, labels: Tensor<2, Int>) -> Result<Self> {
        check::same_device(&[
            ("policy", self.policy.device()),
            ("completion_labels", labels.device()),
        ])?;
        let side = self
            .tokens
            .as_deref_mut()
            .ok_or(PreferenceError::MissingInput {
                loss: "completion labels",
                arg: "policy.valid",
                why: "they pick completion tokens out of the gathered rows: build the batch with \
                  `PairedBatch::from_output`",
            })?;
        side.completion = Some(completion_positions(labels, side.valid.dims())?);
        Ok(self)
    }

    /// Checks that the policy and reference log-probs are finite, reading them back once; the
    /// opt-in guard of the crate's NaN/inf policy (see the crate docs: NaN flows through by
    /// default, as in PyTorch).
    ///
    /// A NaN or infinite log-prob almost always means a NaN in the model's logits or a label whose
    /// logit is `−inf`; the error names the first such `[prompt, candidate]` so the offending
    /// example can be found. The read is a device-to-host sync of `[B, K]` values: cheap, but
    /// not free on a GPU, hence opt-in.
    ///
    /// # Errors
    /// [`PreferenceError::NonFinite`] naming `policy` or `reference` and the index `[b, k]`.
    pub fn require_finite(self) -> Result<Self> {
        let dims = self.policy.dims();
        let values = check::read_floats("policy", self.policy.clone())?;
        check::all_finite("policy", &values, &dims)?;
        if let Some(reference) = &self.reference {
            let values = check::read_floats("reference", reference.clone())?;
            check::all_finite("reference", &values, &dims)?;
        }
        Ok(self)
    }

    /// Number of prompts `B`.
    pub fn prompts(&self) -> usize {
        self.policy.dims()[0]
    }

    /// Number of candidates per prompt `K`.
    pub fn candidates(&self) -> usize {
        self.policy.dims()[1]
    }

    /// The log-ratios `ρ = log π − log π_ref` `[B, K]` (the reference detached);
    /// `reference_free` ignores any reference (`log π_ref = 0`).
    pub(crate) fn log_ratios(&self, loss: &'static str, reference_free: bool) -> Result<Tensor<2>> {
        Ok(match self.reference(loss, reference_free)? {
            None => self.policy.clone(),
            Some(reference) => self.policy.clone().sub(reference),
        })
    }

    /// The detached reference `[B, K]`, `None` when reference-free.
    pub(crate) fn reference(
        &self,
        loss: &'static str,
        reference_free: bool,
    ) -> Result<Option<Tensor<2>>> {
        match (&self.reference, reference_free) {
            (_, true) => Ok(None),
            (Some(reference), false) => Ok(Some(reference.clone().detach())),
            (None, false) => Err(PreferenceError::MissingInput {
                loss,
                arg: "reference",
                why: "add reference log-probs to the batch, or set `reference_free = true`",
            }),
        }
    }

    /// Which candidate beats which, from the scores or the column order.
    pub(crate) fn ranking(&self) -> Ranking {
        match &self.scores {
            Some(scores) => Ranking::new(scores.clone()),
            None => {
                let [batch, candidates] = self.policy.dims();
                Ranking::by_position(batch, candidates, &self.policy.device())
            }
        }
    }

    /// Refuses log-probs that were not gathered as sums, for a loss that normalises lengths
    /// itself (a second division would be silent).
    pub(crate) fn require_sums(&self, loss: &'static str) -> Result<()> {
        match self.reduction {
            None | Some(LogpReduction::Sum) => Ok(()),
            Some(other) => Err(PreferenceError::InvalidValue {
                arg: "policy",
                expected: "summed log-probs (LogpReduction::Sum): the loss divides by the \
                           lengths itself",
                found: format!("log-probs gathered with {other:?}, for {loss}"),
            }),
        }
    }

    /// The lengths, or the error saying how to add them.
    pub(crate) fn lengths(&self, loss: &'static str, why: &'static str) -> Result<Tensor<2>> {
        self.lengths.clone().ok_or(PreferenceError::MissingInput {
            loss,
            arg: "lengths",
            why,
        })
    }

    /// The policy's per-token tensors, or the error saying how to get them.
    pub(crate) fn policy_tokens(
        &self,
        loss: &'static str,
        why: &'static str,
    ) -> Result<&TokenSide> {
        self.tokens.as_deref().ok_or(PreferenceError::MissingInput {
            loss,
            arg: "per-token log-probs",
            why,
        })
    }

    /// Refuses ranked lists: `loss` reads each response of a pair, chosen first.
    pub(crate) fn require_pairs(&self, loss: &str) -> Result<()> {
        if self.candidates() != 2 || self.scores.is_some() {
            return Err(PreferenceError::Shape {
                arg: "policy",
                expected: format!(
                    "a pairwise batch [B, 2] ranked by position (chosen first): {loss} reads \
                     each response or the whole batch, not only a pair's margin"
                ),
                actual: self.policy.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// The checks that read values back to the host: scores without NaN, soft labels in
    /// `[0, 1]`, weights finite, `≥ 0` and not all 0, offsets finite, lengths finite and `≥ 0`. A loss runs them when its `value_checks` is on.
    pub(crate) fn check_values(&self) -> Result<()> {
        if let Some(scores) = &self.scores {
            check::finite_values("scores", scores.clone())?;
        }
        if let Some(labels) = &self.soft_labels {
            let values = check::read_floats("soft_labels", labels.clone())?;
            if let Some(bad) = values.iter().find(|q| !(0.0..=1.0).contains(*q)) {
                return Err(PreferenceError::InvalidValue {
                    arg: "soft_labels",
                    expected: "probabilities in [0, 1]",
                    found: bad.to_string(),
                });
            }
        }
        if let Some(weights) = &self.weights {
            check::weights("weights", weights.clone(), self.step.is_some())?;
        }
        if let Some(offsets) = &self.offsets {
            let values = check::read_floats("offsets", offsets.clone())?;
            check::all_finite("offsets", &values, &offsets.dims())?;
        }
        if let Some(lengths) = &self.lengths {
            let values = check::read_floats("lengths", lengths.clone())?;
            check::all_finite("lengths", &values, &lengths.dims())?;
            if let Some(bad) = values.iter().find(|n| **n < 0.0) {
                return Err(PreferenceError::InvalidValue {
                    arg: "lengths",
                    expected: "token counts >= 0",
                    found: bad.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The batch's weights and step totals, for [`LossOutput`](crate::loss::LossOutput).
    pub(crate) fn reduction(&self) -> Reduction {
        Reduction {
            weights: self.weights.clone(),
            step: self.step,
        }
    }

    /// Refuses a per-pair input (`what`) on a ranked list.
    fn require_pairwise_input(&self, what: &str) -> Result<()> {
        if self.candidates() != 2 {
            return Err(PreferenceError::Shape {
                arg: "policy",
                expected: format!("a pairwise batch [B, 2] to take {what}"),
                actual: self.policy.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Refuses soft labels for a loss that does not define them.
    pub(crate) fn refuse_soft_labels(&self, loss: &str) -> Result<()> {
        if self.soft_labels.is_some() {
            return Err(PreferenceError::InvalidValue {
                arg: "soft_labels",
                expected: "no soft labels: the loss's paper does not define them",
                found: format!("soft labels, for {loss}"),
            });
        }
        Ok(())
    }

    fn check_candidates(&self, arg: &'static str, tensor: &Tensor<2>) -> Result<()> {
        check::same_device(&[("policy", self.policy.device()), (arg, tensor.device())])?;
        let [batch, candidates] = self.policy.dims();
        check::batch(arg, tensor.dims()[0], "policy", batch)?;
        check::shape(
            arg,
            tensor.dims(),
            [Some(batch), Some(candidates)],
            "[B, K]",
        )
    }
}

/// `[2B, …]` concatenated rows (chosen first, as trainers stack them) → `B`.
pub(crate) fn pair_count(arg: &'static str, rows: usize) -> Result<usize> {
    check::non_empty(arg, rows)?;
    if !rows.is_multiple_of(2) {
        return Err(PreferenceError::Shape {
            arg,
            expected: "an even number of rows [2B, ...] (chosen first, then rejected)".to_string(),
            actual: vec![rows],
        });
    }
    Ok(rows / 2)
}

/// Concatenated `[2B]` (chosen first) → `[B, 2]`.
pub(crate) fn pairs_of(arg: &'static str, values: Tensor<1>) -> Result<Tensor<2>> {
    let half = pair_count(arg, values.dims()[0])?;
    Ok(values.reshape([2, half]).transpose())
}
