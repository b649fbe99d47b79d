//! The input of every loss: `B` prompts × `K` candidates, and which candidate beats which.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::check;
use crate::error::{PreferenceError, Result};
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
}

impl PreferenceBatch {
    /// A pairwise batch from the chosen and rejected sequence log-probs `[B]` each.
    ///
    /// # Errors
    /// [`PreferenceError::BatchMismatch`] when the sizes differ, [`PreferenceError::Empty`] for
    /// `B = 0`.
    pub fn pairwise(policy_chosen: Tensor<1>, policy_rejected: Tensor<1>) -> Result<Self> {
        Self::ranked_by_position(stack_pair("policy", policy_chosen, policy_rejected)?)
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
        })
    }

    /// `K` candidates per prompt with scores `[B, K]` (higher is better; equal scores tie).
    ///
    /// # Errors
    /// As [`ranked_by_position`](Self::ranked_by_position), plus [`PreferenceError::Shape`] when
    /// the scores' shape differs and [`PreferenceError::InvalidValue`] for NaN scores.
    pub fn ranked(policy: Tensor<2>, scores: Tensor<2>) -> Result<Self> {
        let mut batch = Self::ranked_by_position(policy)?;
        batch.check_candidates("scores", &scores)?;
        batch.scores = Some(check::finite_values("scores", scores)?);
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
        let reference = stack_pair("reference", chosen, rejected)?;
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
    /// [`PreferenceError::InvalidValue`] for a `q` outside `[0, 1]` or NaN.
    pub fn with_soft_labels(mut self, labels: Tensor<1>) -> Result<Self> {
        let [batch, candidates] = self.policy.dims();
        if candidates != 2 {
            return Err(PreferenceError::Shape {
                arg: "soft_labels",
                expected: "a pairwise batch (K = 2)".to_string(),
                actual: self.policy.dims().to_vec(),
            });
        }
        check::batch("soft_labels", labels.dims()[0], "policy", batch)?;
        let values = check::read_floats("soft_labels", labels.clone())?;
        if let Some(bad) = values.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(PreferenceError::InvalidValue {
                arg: "soft_labels",
                expected: "probabilities in [0, 1]",
                found: bad.to_string(),
            });
        }
        self.soft_labels = Some(labels.detach());
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

fn stack_pair(arg: &'static str, chosen: Tensor<1>, rejected: Tensor<1>) -> Result<Tensor<2>> {
    let [batch] = chosen.dims();
    check::non_empty(arg, batch)?;
    check::batch(arg, rejected.dims()[0], arg, batch)?;
    Ok(Tensor::stack(vec![chosen, rejected], 1))
}

/// The ordered pairs of a batch, built on the host from the scores and moved to the device.
#[derive(Debug, Clone)]
pub(crate) struct Ranking {
    /// `[B, K, K]`: 1 where candidate `i` beats `j` (`r_i > r_j`), else 0.
    pub(crate) beats: Tensor<3>,
    /// `[B]`: the number of ordered pairs of each prompt.
    pub(crate) pairs: Tensor<1>,
    /// `[B]`: the best-scored candidate (the lowest index among equals).
    pub(crate) best: Tensor<1, Int>,
    /// `[B]`: the worst-scored candidate (the highest index among equals).
    pub(crate) worst: Tensor<1, Int>,
}

impl Ranking {
    fn new(scores: &[f32], batch: usize, candidates: usize, device: &Device) -> Self {
        let mut beats = vec![0.0f32; batch * candidates * candidates];
        let mut pairs = vec![0.0f32; batch];
        let (mut best, mut worst) = (vec![0i64; batch], vec![0i64; batch]);
        for (b, row) in scores.chunks(candidates).enumerate() {
            for (i, ri) in row.iter().enumerate() {
                for (j, rj) in row.iter().enumerate() {
                    if ri > rj {
                        beats[(b * candidates + i) * candidates + j] = 1.0;
                        pairs[b] += 1.0;
                    }
                }
                if *ri > row[best[b] as usize] {
                    best[b] = i as i64;
                }
                if *ri <= row[worst[b] as usize] {
                    worst[b] = i as i64;
                }
            }
        }
        Self {
            beats: Tensor::from_data(
                TensorData::new(beats, [batch, candidates, candidates]),
                device,
            ),
            pairs: Tensor::from_data(TensorData::new(pairs, [batch]), device),
            best: Tensor::from_data(TensorData::new(best, [batch]), device),
            worst: Tensor::from_data(TensorData::new(worst, [batch]), device),
        }
    }

    /// The mean of `pair_values [B, K, K]` over each prompt's ordered pairs `[B]` (0 when a
    /// prompt has none: all its candidates tie).
    pub(crate) fn mean_over_pairs(&self, pair_values: Tensor<3>) -> Tensor<1> {
        self.sum_over_pairs(pair_values)
            .div(self.pairs.clone().clamp_min(1.0))
    }

    /// The sum of `pair_values [B, K, K]` over each prompt's ordered pairs `[B]`.
    pub(crate) fn sum_over_pairs(&self, pair_values: Tensor<3>) -> Tensor<1> {
        // mask_where rather than a product: a non-pair entry never leaks a NaN or inf.
        let outside = self.beats.clone().equal_elem(0.0);
        pair_values
            .mask_fill(outside, 0.0)
            .sum_dims_squeeze::<1, _>(&[1, 2])
    }

    /// `x_i − x_j` for every `(i, j)`: `[B, K]` → `[B, K, K]`.
    pub(crate) fn differences(values: Tensor<2>) -> Tensor<3> {
        let [batch, candidates] = values.dims();
        let rows = values.clone().reshape([batch, candidates, 1]);
        let cols = values.reshape([batch, 1, candidates]);
        rows.sub(cols)
    }

    /// `values [B, K]` at the best-scored candidate `[B]`.
    pub(crate) fn at_best(&self, values: Tensor<2>) -> Tensor<1> {
        pick(values, self.best.clone())
    }

    /// `values [B, K]` at the worst-scored candidate `[B]`.
    pub(crate) fn at_worst(&self, values: Tensor<2>) -> Tensor<1> {
        pick(values, self.worst.clone())
    }
}

fn pick(values: Tensor<2>, index: Tensor<1, Int>) -> Tensor<1> {
    let [batch] = index.dims();
    values.gather(1, index.reshape([batch, 1])).reshape([batch])
}
