//! Batches straight from a collated layout: the gatherer's `[N]` output and the [`Layout`] the
//! collator recorded go in, the `[B, K]` batch comes out — no hand-written reshape to get wrong.

use burn::tensor::Tensor;

use super::PreferenceBatch;
use crate::check;
use crate::collate::Layout;
use crate::error::{PreferenceError, Result};
use crate::logps::SequenceLogpsOutput;

impl PreferenceBatch {
    /// A batch from the gatherer's output over a collated batch, laid out as the collator says:
    /// [`Layout::ChosenFirst`] is [`from_concatenated`](Self::from_concatenated) (per-token
    /// tensors carried along); [`Layout::PromptMajor`] reshapes the `[B·K]` log-probs and
    /// token counts to `[B, K]` and ranks the candidates by `scores` (else by position, best
    /// first). The token counts become the batch's lengths (RRHF's length penalty, TRL's
    /// length-normalised `ipo`), and the reduction is recorded (RRHF refuses log-probs that
    /// were already length-normalised).
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use burn_preference::{
    ///     PreferenceBatch, PreferenceCollatorConfig, RankedExample, RrhfConfig, PreferenceLoss,
    ///     SequenceLogpsConfig,
    /// };
    ///
    /// let device = Device::default();
    /// let examples = vec![RankedExample {
    ///     prompt: vec![1, 2],
    ///     completions: vec![vec![3, 4], vec![5], vec![6, 7, 8]],
    ///     scores: vec![0.2, 1.0, 0.5],
    /// }];
    /// let batch = PreferenceCollatorConfig::new().init()?.pad_ranked(&examples)?;
    /// let [rows, time] = batch.dims;
    /// let logits = burn::tensor::Tensor::<3>::zeros([rows, time, 9], &device);
    /// let logps = SequenceLogpsConfig::new().init()?.forward(logits, batch.labels(&device))?;
    /// let preference = PreferenceBatch::from_layout(logps, batch.layout, batch.scores(&device))?;
    /// assert_eq!((preference.prompts(), preference.candidates()), (1, 3));
    /// let out = RrhfConfig::new().init()?.forward(preference)?;
    /// assert!(out.loss.into_scalar::<f32>().is_finite());
    /// # Ok::<(), burn_preference::PreferenceError>(())
    /// ```
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] when the output's length is not the layout's `2B` or `B·K`,
    /// or `scores` come with a pairwise layout; otherwise as the builders it calls.
    ///
    /// # Shapes
    /// - `policy.logps`, `policy.counts`: `[2B]` or `[B·K]`; scores: `[B, K]`
    pub fn from_layout(
        policy: SequenceLogpsOutput,
        layout: Layout,
        scores: Option<Tensor<2>>,
    ) -> Result<Self> {
        let rows = policy.logps.dims()[0];
        let (prompts, candidates) = match layout {
            Layout::ChosenFirst { pairs } => (pairs, 2),
            Layout::PromptMajor {
                prompts,
                candidates,
            } => (prompts, candidates),
        };
        if rows != prompts * candidates {
            return Err(PreferenceError::Shape {
                arg: "policy.logps",
                expected: format!("{prompts} × {candidates} sequences, as the layout says"),
                actual: vec![rows],
            });
        }
        match (layout, scores) {
            (Layout::ChosenFirst { .. }, None) => Self::from_concatenated(policy),
            (Layout::ChosenFirst { .. }, Some(scores)) => Err(PreferenceError::Shape {
                arg: "scores",
                expected: "none for a pairwise layout (chosen beats rejected)".to_string(),
                actual: scores.dims().to_vec(),
            }),
            (Layout::PromptMajor { .. }, scores) => {
                check::batch(
                    "policy.counts",
                    policy.counts.dims()[0],
                    "policy.logps",
                    rows,
                )?;
                let logps = policy.logps.reshape([prompts, candidates]);
                let lengths = policy.counts.reshape([prompts, candidates]);
                let batch = match scores {
                    Some(scores) => Self::ranked(logps, scores)?,
                    None => Self::ranked_by_position(logps)?,
                };
                let mut batch = batch.with_lengths(lengths)?;
                batch.reduction = Some(policy.reduction);
                Ok(batch)
            }
        }
    }
}
