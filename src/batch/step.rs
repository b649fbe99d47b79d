//! [`StepTotals`]: what one optimiser step holds in all, so that the losses of its
//! micro-batches (and devices) add up to the loss of the whole step.

use burn::tensor::Tensor;

use crate::check;
use crate::data::{BatchLayout, Collated};
use crate::error::{PreferenceError, Result};

/// The totals of one optimiser step — every micro-batch on every device — that a loss divides
/// by instead of its own batch's: give them to every micro-batch
/// ([`PairedBatch::with_step`](super::PairedBatch::with_step),
/// [`UnpairedBatch::with_step`](super::UnpairedBatch::with_step),
/// [`CompletionBatch::with_step`](super::CompletionBatch::with_step)) and the sum of the
/// micro-batches' `loss` — and so of their gradients — is the loss of the step run as one
/// batch, to `f32` rounding. Counted on the host, from the collated batches
/// ([`of`](Self::of)) or the completions' lengths ([`of_completions`](Self::of_completions)),
/// before the step's first forward pass: no device read.
///
/// For paired and unpaired batches a loss is then
///
/// ```text
/// loss = Σ_{b in this batch} w_b·L_b / examples  +  c·Σ_{tokens in this batch} nll_t / tokens
/// ```
///
/// where `L_b` is an example's own loss (`w_b = 1` without weights) and the second term is the
/// token-mean NLL of CPO (`c = cpo_alpha`), ORPO (`c = 1`) and DPO's `sft` (`c` its loss
/// weight). The policy losses of completion batches divide their sums by the step's
/// completions or tokens, as each one's normaliser says. Without step totals a loss divides
/// by its own batch's totals.
///
/// ```
/// use burn_preference::data::PreferenceExample;
/// use burn_preference::prelude::*;
///
/// let collator = PreferenceCollatorConfig::new().init()?;
/// let example = |chosen: Vec<u32>| PreferenceExample { prompt: vec![1, 2], chosen, rejected: vec![9] };
/// // Two micro-batches of one step: 1 pair and 2 pairs, 2 + 4 chosen completion tokens.
/// let first = collator.pad(&[example(vec![3, 4])])?;
/// let second = collator.pad(&[example(vec![5]), example(vec![6, 7, 8])])?;
/// let step = StepTotals::of(&[&first, &second]);
/// assert_eq!((step.examples, step.tokens), (3.0, 6.0));
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepTotals {
    /// The step's examples: prompts of paired and ranked batches, examples of unpaired ones;
    /// their total weight when the batches carry weights.
    pub examples: f64,
    /// The tokens the token means average over in the whole step. Paired batches: the tokens
    /// of the NLL terms, the chosen completions' tokens the gatherer counts (CPO, `sft`; for
    /// ORPO, whose NLL also counts the prompt, the chosen rows' tokens its gatherer counted),
    /// 0 when no loss of the step has an NLL term. Completion batches: the completion tokens
    /// the masks keep.
    pub tokens: f64,
}

impl StepTotals {
    /// Totals given directly.
    pub fn new(examples: f64, tokens: f64) -> Self {
        Self { examples, tokens }
    }

    /// The totals of a step's completions from their lengths: one example per completion and
    /// the sum of the tokens each one's mask keeps (after `mask_truncated_completions`, when
    /// it is on).
    ///
    /// ```
    /// use burn_preference::batch::StepTotals;
    ///
    /// let step = StepTotals::of_completions(&[3, 0, 5]);
    /// assert_eq!((step.examples, step.tokens), (3.0, 8.0));
    /// ```
    pub fn of_completions(lengths: &[usize]) -> Self {
        Self::new(lengths.len() as f64, lengths.iter().sum::<usize>() as f64)
    }

    /// The totals of the collated batches of one step: their prompts, and the chosen
    /// completions' tokens the gatherer counts — every label `≥ 0` after a sequence's first
    /// token (the causal shift) — of pairwise batches (ranked batches add their prompts only:
    /// the NLL terms read pairs).
    pub fn of(batches: &[&Collated]) -> Self {
        batches.iter().fold(Self::default(), |total, batch| {
            total + Self::of_batch(batch)
        })
    }

    fn of_batch(batch: &Collated) -> Self {
        match batch.layout() {
            BatchLayout::PromptMajor { prompts, .. } => Self::new(prompts as f64, 0.0),
            BatchLayout::ChosenFirst { pairs } => {
                let [rows, time] = batch.dims();
                // Which sequence each token belongs to: the row when padded.
                let sequence: Vec<i64> = match batch.segments() {
                    Some(segments) => segments.segment_ids(),
                    None => (0..rows * time).map(|i| (i / time) as i64).collect(),
                };
                let labels = batch.host_labels();
                let mut tokens = 0usize;
                for i in 0..rows * time {
                    let chosen = (0..pairs as i64).contains(&sequence[i]);
                    // The first token of a sequence is never a target.
                    let first = i % time == 0 || sequence[i - 1] != sequence[i];
                    if chosen && !first && labels[i] >= 0 {
                        tokens += 1;
                    }
                }
                Self::new(pairs as f64, tokens as f64)
            }
        }
    }

    /// Refuses totals no step can have: `examples` not finite and `> 0`, `tokens` not
    /// finite and `≥ 0`.
    pub(crate) fn check(&self) -> Result<()> {
        check::param("step.examples", self.examples, "finite and > 0", |e| {
            e.is_finite() && e > 0.0
        })?;
        check::param("step.tokens", self.tokens, "finite and >= 0", |t| {
            t.is_finite() && t >= 0.0
        })
    }

    /// Refuses a step for a loss whose batch statistic no step total can split.
    pub(crate) fn refuse(loss: &str, why: &'static str) -> PreferenceError {
        PreferenceError::InvalidValue {
            arg: "step",
            expected: why,
            found: format!("step totals, for {loss}"),
        }
    }
}

impl std::ops::Add for StepTotals {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self::new(self.examples + other.examples, self.tokens + other.tokens)
    }
}

/// Checks example weights against the batch's policy log-probs (`rows` examples, on `device`)
/// and detaches them: a weight is data, not a parameter.
pub(crate) fn example_weights(
    weights: Tensor<1>,
    rows: usize,
    device: burn::tensor::Device,
) -> Result<Tensor<1>> {
    check::same_device(&[("policy", device), ("weights", weights.device())])?;
    check::batch("weights", weights.dims()[0], "policy", rows)?;
    Ok(weights.detach())
}

/// How a batch's per-example losses become its loss: its example weights and, for a
/// micro-batch of a larger optimiser step, the step's totals.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reduction {
    pub(crate) weights: Option<Tensor<1>>,
    pub(crate) step: Option<StepTotals>,
}
