//! Batches straight from the gatherer's output: the `[N]` log-probs and the [`BatchLayout`]
//! the collator recorded go in, the batch comes out — no hand-written reshape to get wrong.

use burn::tensor::{Int, Tensor};

use super::paired::pairs_of;
use super::tokens::TokenSide;
use super::{PairedBatch, UnpairedBatch};
use crate::check;
use crate::data::BatchLayout;
use crate::error::{PreferenceError, Result};
use crate::logps::SequenceLogpsOutput;

impl PairedBatch {
    /// A batch from the gatherer's output over a collated batch, laid out as the collator
    /// says ([`Collated::layout`](crate::data::Collated::layout)):
    ///
    /// - [`BatchLayout::ChosenFirst`]: `2B` rows, the chosen responses then the rejected ones
    ///   (one forward pass over both, as trainers run it) → `[B, 2]`. The per-token tensors
    ///   that were requested come along: `token_logps` (`sft`, WPO, LD-DPO, CPO's and ORPO's
    ///   NLL), `log_sum_sq_probs` (WPO), `mean_logits`, `entropy`, `is_top1` (TRL's
    ///   `logits/*`, `entropy` and `mean_token_accuracy` metrics).
    /// - [`BatchLayout::PromptMajor`]: `B·K` rows, prompt-major → `[B, K]`; rank them with
    ///   [`with_scores`](Self::with_scores) (else by position, best first).
    ///
    /// The token counts become the batch's lengths and the gatherer's reduction is recorded:
    /// a loss that divides by the lengths itself refuses log-probs that were not sums.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use burn_preference::data::RankedExample;
    /// use burn_preference::prelude::*;
    ///
    /// let device = Device::default();
    /// let examples = vec![RankedExample {
    ///     prompt: vec![1, 2],
    ///     completions: vec![vec![3, 4], vec![5], vec![6, 7, 8]],
    ///     scores: vec![0.2, 1.0, 0.5],
    /// }];
    /// let collated = PreferenceCollatorConfig::new().init()?.pad_ranked(&examples)?;
    /// let [rows, time] = collated.dims();
    /// let logits = Tensor::<3>::zeros([rows, time, 9], &device);
    /// let logps = SequenceLogpsConfig::new().init()?.forward(logits, collated.labels(&device), None)?;
    /// let scores = collated.scores(&device).ok_or("ranked examples have scores")?;
    /// let batch = PairedBatch::from_output(logps, collated.layout())?.with_scores(scores)?;
    /// assert_eq!((batch.prompts(), batch.candidates()), (1, 3));
    /// let out = RrhfConfig::new().init()?.forward(batch)?;
    /// assert!(out.loss.into_scalar::<f32>().is_finite());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] when the output's length is not the layout's `2B` or `B·K`,
    /// or a per-token tensor is not `[N, T']` like the valid mask;
    /// [`PreferenceError::BatchMismatch`] when the counts disagree with the log-probs.
    ///
    /// # Shapes
    /// - `policy.logps`, `policy.counts`: `[2B]` or `[B·K]`; per-token tensors: `[2B, T']`
    pub fn from_output(policy: SequenceLogpsOutput, layout: BatchLayout) -> Result<Self> {
        let [prompts, candidates] = candidates_of("policy.logps", &policy, layout)?;
        let counts = policy.counts.clone();
        check::batch(
            "policy.counts",
            counts.dims()[0],
            "policy.logps",
            prompts * candidates,
        )?;
        let (logps, lengths, tokens) = match layout {
            BatchLayout::ChosenFirst { .. } => {
                let side = TokenSide::from_output("policy", &policy)?;
                let logps = pairs_of("policy.logps", policy.logps)?;
                let lengths = pairs_of("policy.counts", counts)?;
                (logps, lengths, Some(Box::new(side)))
            }
            BatchLayout::PromptMajor { .. } => (
                policy.logps.reshape([prompts, candidates]),
                counts.reshape([prompts, candidates]),
                None,
            ),
        };
        let mut batch = Self::new(logps)?.with_lengths(lengths)?;
        batch.tokens = tokens;
        batch.reduction = Some(policy.reduction);
        batch.layout = Some(layout);
        Ok(batch)
    }

    /// The reference model's gatherer output over the same rows, in the same layout: its
    /// sequence log-probs and, for a pairwise layout, its per-token log-probs when requested
    /// (LD-DPO reads them).
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] unless the batch came from
    /// [`from_output`](Self::from_output); otherwise as [`from_output`](Self::from_output) and
    /// [`with_reference`](Self::with_reference).
    pub fn with_reference_output(self, reference: SequenceLogpsOutput) -> Result<Self> {
        let layout = self.layout.ok_or(PreferenceError::MissingInput {
            loss: "a reference output",
            arg: "policy layout",
            why: "the reference rows are laid out as the policy's: build the batch with \
                  `PairedBatch::from_output`, or add plain log-probs with `with_reference`",
        })?;
        let [prompts, candidates] = candidates_of("reference.logps", &reference, layout)?;
        let (logps, tokens) = match layout {
            BatchLayout::ChosenFirst { .. } => {
                let side = TokenSide::from_output("reference", &reference)?;
                (pairs_of("reference.logps", reference.logps)?, Some(side))
            }
            BatchLayout::PromptMajor { .. } => {
                (reference.logps.reshape([prompts, candidates]), None)
            }
        };
        let mut batch = self.with_reference(logps)?;
        batch.reference_tokens = tokens.map(Box::new);
        Ok(batch)
    }
}

/// `[B, K]` of a layout, checked against the output's number of rows; `arg` names the output.
fn candidates_of(
    arg: &'static str,
    output: &SequenceLogpsOutput,
    layout: BatchLayout,
) -> Result<[usize; 2]> {
    let rows = output.logps.dims()[0];
    let (prompts, candidates) = match layout {
        BatchLayout::ChosenFirst { pairs } => (pairs, 2),
        BatchLayout::PromptMajor {
            prompts,
            candidates,
        } => (prompts, candidates),
    };
    if rows != prompts * candidates {
        return Err(PreferenceError::Shape {
            arg,
            expected: format!("{prompts} × {candidates} sequences, as the layout says"),
            actual: vec![rows],
        });
    }
    Ok([prompts, candidates])
}

impl UnpairedBatch {
    /// A batch from the policy's gatherer output over `N` sequences (each a prompt with one
    /// completion) and their labels `desirable [N]` (1 desirable, 0 undesirable). The
    /// gatherer's optional `entropy` and `mean_logits` give TRL's `entropy` and `logits/*`
    /// metrics; its reduction is recorded (KTO and BCO read sums).
    ///
    /// # Errors
    /// As [`new`](Self::new), and [`PreferenceError::Shape`] when a per-token tensor is not
    /// `[N, T']` like the valid mask.
    pub fn from_output(policy: SequenceLogpsOutput, desirable: Tensor<1, Int>) -> Result<Self> {
        let side = TokenSide::from_output("policy", &policy)?;
        let mut batch = Self::new(policy.logps, desirable)?;
        batch.tokens = Some(Box::new(side));
        batch.reduction = Some(policy.reduction);
        Ok(batch)
    }

    /// The reference model's gatherer output over the same `N` sequences.
    ///
    /// # Errors
    /// As [`with_reference`](Self::with_reference), and [`PreferenceError::InvalidValue`] when
    /// the reference was reduced otherwise than the policy.
    pub fn with_reference_output(self, reference: SequenceLogpsOutput) -> Result<Self> {
        if let Some(policy) = self.reduction.filter(|r| *r != reference.reduction) {
            return Err(PreferenceError::InvalidValue {
                arg: "reference",
                expected: "log-probs reduced as the policy's",
                found: format!("{:?} against the policy's {policy:?}", reference.reduction),
            });
        }
        self.with_reference(reference.logps)
    }
}
