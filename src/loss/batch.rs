//! The input of every loss: `B` prompts × `K` candidates, and which candidate beats which.

use burn::tensor::Tensor;

use crate::check;
use crate::error::{PreferenceError, Result};
use crate::ranking::{self, Ranking};
use crate::ratios::{log_ratios, split_concatenated};

/// Sequence log-probs of `K ≥ 2` candidate responses for each of `B` prompts, with their
/// ranking and the optional inputs some losses need.
///
/// A pairwise batch is the ranked list with `K = 2`, chosen first. Without scores the columns
/// are ranked by position (column 0 best). With scores, candidate `i` beats `j` when
/// `r_i > r_j`; equal scores are ties and form no pair.
///
/// Builders validate shapes as they go, so a malformed batch fails where it is built.
///
/// # Shapes
/// - policy, reference, scores, lengths: `[B, K]`
/// - soft labels: `[B]` (pairwise batches only)
#[derive(Debug, Clone)]
pub struct PreferenceBatch {
    pub(crate) policy: Tensor<2>,
    pub(crate) reference: Option<Tensor<2>>,
    /// Host copy of the scores, read once for validation and to build the ranking.
    pub(crate) scores: Option<Vec<f32>>,
    pub(crate) lengths: Option<Tensor<2>>,
    pub(crate) soft_labels: Option<Tensor<1>>,
    /// Per-token tensors from [`from_concatenated`](Self::from_concatenated).
    pub(crate) tokens: super::concatenated::TokenInputs,
    /// How the policy log-probs were reduced, when the batch was built from a gatherer's output.
    pub(crate) reduction: Option<crate::LogpReduction>,
}

impl PreferenceBatch {
    /// A pairwise batch from the chosen and rejected sequence log-probs `[B]` each.
    ///
    /// # Errors
    /// [`PreferenceError::BatchMismatch`] when the sizes differ, [`PreferenceError::Empty`] for
    /// `B = 0`.
    pub fn pairwise(policy_chosen: Tensor<1>, policy_rejected: Tensor<1>) -> Result<Self> {
        let policy = stack_pair(
            ("policy_chosen", policy_chosen),
            ("policy_rejected", policy_rejected),
        )?;
        Self::ranked_by_position(policy)
    }

    /// A pairwise batch from one concatenated `[2B]` tensor, chosen rows first (one forward
    /// pass over chosen and rejected, as trainers run it).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] for an odd length, [`PreferenceError::Empty`] for 0.
    pub fn concatenated(policy: Tensor<1>) -> Result<Self> {
        let (chosen, rejected) = split_concatenated("policy", policy)?;
        Self::pairwise(chosen, rejected)
    }

    /// `K` candidates per prompt given best first: column `i` beats every column after it.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] for `K < 2`, [`PreferenceError::Empty`] for `B = 0`.
    pub fn ranked_by_position(policy: Tensor<2>) -> Result<Self> {
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
            tokens: Default::default(),
            reduction: None,
        })
    }

    /// `K` candidates per prompt with scores `[B, K]` (higher is better; equal scores tie).
    ///
    /// # Errors
    /// As [`ranked_by_position`](Self::ranked_by_position), plus [`PreferenceError::Shape`] when
    /// the scores' shape differs and [`PreferenceError::InvalidValue`] for NaN scores.
    pub fn ranked(policy: Tensor<2>, scores: Tensor<2>) -> Result<Self> {
        check::same_device(&[("policy", policy.device()), ("scores", scores.device())])?;
        let values = ranking::read_scores("policy", policy.dims(), scores)?;
        let mut batch = Self::ranked_by_position(policy)?;
        batch.scores = Some(values);
        Ok(batch)
    }

    /// Reference log-probs `[B, K]`, precomputed or from a frozen model (detached in the loss).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] or [`PreferenceError::BatchMismatch`] when it is not `[B, K]`.
    pub fn with_reference(mut self, reference: Tensor<2>) -> Result<Self> {
        self.check_candidates("reference", &reference)?;
        self.reference = Some(reference);
        Ok(self)
    }

    /// Reference log-probs of the chosen and rejected responses `[B]` each.
    ///
    /// # Errors
    /// As [`with_reference`](Self::with_reference).
    pub fn with_pairwise_reference(self, chosen: Tensor<1>, rejected: Tensor<1>) -> Result<Self> {
        let reference = stack_pair(
            ("reference_chosen", chosen),
            ("reference_rejected", rejected),
        )?;
        self.with_reference(reference)
    }

    /// Reference log-probs as one concatenated `[2B]` tensor, chosen rows first.
    ///
    /// # Errors
    /// As [`with_reference`](Self::with_reference), and for an odd length.
    pub fn with_concatenated_reference(self, reference: Tensor<1>) -> Result<Self> {
        let (chosen, rejected) = split_concatenated("reference", reference)?;
        self.with_pairwise_reference(chosen, rejected)
    }

    /// Valid-token counts `[B, K]` of each candidate (RRHF's length penalty and fine-tune term);
    /// the `counts` of [`SequenceLogpsOutput`](crate::SequenceLogpsOutput), reshaped.
    ///
    /// # Errors
    /// As [`with_reference`](Self::with_reference), and [`PreferenceError::NonFinite`] or
    /// [`PreferenceError::InvalidValue`] for a length that is NaN, infinite or negative.
    pub fn with_lengths(mut self, lengths: Tensor<2>) -> Result<Self> {
        self.check_candidates("lengths", &lengths)?;
        if check::value_checks() {
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
        self.lengths = Some(lengths.detach());
        Ok(self)
    }

    /// Soft preference labels `q = P(chosen ≻ rejected) ∈ [0, 1]` per pair `[B]`.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] unless the batch is pairwise (`K = 2`) and `q` is `[B]`;
    /// [`PreferenceError::InvalidValue`] for a `q` outside `[0, 1]` or NaN.
    pub fn with_soft_labels(mut self, labels: Tensor<1>) -> Result<Self> {
        let [batch, candidates] = self.policy.dims();
        if candidates != 2 {
            return Err(PreferenceError::Shape {
                arg: "policy",
                expected: "a pairwise batch [B, 2] to take soft labels".to_string(),
                actual: self.policy.dims().to_vec(),
            });
        }
        check::same_device(&[
            ("policy", self.policy.device()),
            ("soft_labels", labels.device()),
        ])?;
        check::batch("soft_labels", labels.dims()[0], "policy", batch)?;
        if check::value_checks() {
            let values = check::read_floats("soft_labels", labels.clone())?;
            if let Some(bad) = values.iter().find(|q| !(0.0..=1.0).contains(*q)) {
                return Err(PreferenceError::InvalidValue {
                    arg: "soft_labels",
                    expected: "probabilities in [0, 1]",
                    found: bad.to_string(),
                });
            }
        }
        self.soft_labels = Some(labels.detach());
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

    /// The log-ratios `ρ [B, K]`; `reference_free` ignores any reference.
    pub(crate) fn log_ratios(&self, loss: &'static str, reference_free: bool) -> Result<Tensor<2>> {
        let reference = match (&self.reference, reference_free) {
            (_, true) => None,
            (Some(reference), false) => Some(reference.clone()),
            (None, false) => {
                return Err(PreferenceError::MissingInput {
                    loss,
                    arg: "reference",
                    why: "add reference log-probs to the batch, or set `reference_free = true`",
                });
            }
        };
        log_ratios(self.policy.clone(), reference)
    }

    /// Which candidate beats which, from the scores or the column order.
    pub(crate) fn ranking(&self) -> Ranking {
        let [batch, candidates] = self.policy.dims();
        let scores = self.scores.clone().unwrap_or_else(|| {
            (0..batch * candidates)
                .map(|i| -((i % candidates) as f32))
                .collect()
        });
        Ranking::new(&scores, batch, candidates, &self.policy.device())
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

/// `[B]` chosen and `[B]` rejected → `[B, 2]`, each side named for its errors.
fn stack_pair(
    (chosen_arg, chosen): (&'static str, Tensor<1>),
    (rejected_arg, rejected): (&'static str, Tensor<1>),
) -> Result<Tensor<2>> {
    let [batch] = chosen.dims();
    check::non_empty(chosen_arg, batch)?;
    check::same_device(&[
        (chosen_arg, chosen.device()),
        (rejected_arg, rejected.device()),
    ])?;
    check::batch(rejected_arg, rejected.dims()[0], chosen_arg, batch)?;
    Ok(Tensor::stack(vec![chosen, rejected], 1))
}
