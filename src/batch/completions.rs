//! [`CompletionBatch`]: `N` sampled completions with their per-token log-probs and
//! advantages — the input of the group-relative policy losses (GRPO and its family, RLOO).

use burn::tensor::{Bool, Tensor};

use super::step::StepTotals;
use crate::check;
use crate::error::{PreferenceError, Result};
use crate::logps::SequenceLogpsOutput;

/// A batch of `N` completions (`K` per prompt, prompt-major, though the policy losses do not
/// need the grouping) of up to `C` tokens: the policy's per-token log-probs `[N, C]`, which of
/// them count (the completion mask), and each completion's advantage; plus what the
/// configured loss reads — the sampling policy's log-probs (`old`, for the importance ratio),
/// the reference's (the KL term), the entropies (entropy mask and bonus), the inference
/// engine's importance-sampling correction and log-probs, and which completions were
/// truncated.
///
/// Two constructors: [`new`](Self::new) from plain tensors, and
/// [`from_output`](Self::from_output) from the gatherer's output over prompt + completion
/// rows, which takes its last `C` positions. The builders check shapes and devices; values
/// are the loss's to check.
///
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use burn_preference::batch::CompletionBatch;
///
/// let device = Device::default();
/// let logps = Tensor::<2>::from_floats([[-0.5, -1.0, 0.0], [-2.0, 0.0, 0.0]], &device);
/// let mask = Tensor::<2, Bool>::from_bool([[true, true, false], [true, false, false]], &device);
/// let batch = CompletionBatch::new(logps, mask, Tensor::from_floats([1.0, -1.0], &device))?;
/// assert_eq!((batch.len(), batch.completion_len()), (2, 3));
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - policy, old, reference, entropy, sampling log-probs, mask: `[N, C]`
/// - importance-sampling ratio: `[N, C]` or `[N, 1]`
/// - advantages: `[N]` (one per completion) or `[N, C]` (one per token)
/// - truncated: `[N]`
#[derive(Debug, Clone)]
pub struct CompletionBatch {
    pub(crate) policy: Tensor<2>,
    pub(crate) mask: Tensor<2, Bool>,
    /// `[N, 1]` or `[N, C]`, detached.
    pub(crate) advantages: Tensor<2>,
    pub(crate) old: Option<Tensor<2>>,
    pub(crate) reference: Option<Tensor<2>>,
    pub(crate) entropy: Option<Tensor<2>>,
    pub(crate) importance_sampling_ratio: Option<Tensor<2>>,
    pub(crate) sampling: Option<Tensor<2>>,
    pub(crate) truncated: Option<Tensor<1, Bool>>,
    pub(crate) step: Option<StepTotals>,
}

impl CompletionBatch {
    /// A batch from the policy's per-token log-probs `[N, C]`, the completion mask `[N, C]`
    /// (true where a token counts) and one advantage per completion `[N]` (detached).
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for `N = 0` or `C = 0`, [`PreferenceError::Shape`] or
    /// [`PreferenceError::BatchMismatch`] when the mask or the advantages do not fit the
    /// log-probs, [`PreferenceError::DeviceMismatch`].
    pub fn new(policy: Tensor<2>, mask: Tensor<2, Bool>, advantages: Tensor<1>) -> Result<Self> {
        let [rows, columns] = policy.dims();
        check::non_empty("policy", rows)?;
        if columns == 0 {
            return Err(PreferenceError::Empty {
                arg: "policy",
                detail: "the completions have no positions (C = 0)".to_string(),
            });
        }
        check::same_device(&[
            ("policy", policy.device()),
            ("mask", mask.device()),
            ("advantages", advantages.device()),
        ])?;
        check::shape("mask", mask.dims(), [Some(rows), Some(columns)], "[N, C]")?;
        check::batch("advantages", advantages.dims()[0], "policy", rows)?;
        Ok(Self {
            policy,
            mask,
            advantages: advantages.detach().reshape([rows, 1]),
            old: None,
            reference: None,
            entropy: None,
            importance_sampling_ratio: None,
            sampling: None,
            truncated: None,
            step: None,
        })
    }

    /// A batch from the gatherer's output over `N` rows of prompt + completion (prompt
    /// left-padded, completion right-padded, the completion in the last `completion_len`
    /// positions): its per-token log-probs and valid mask over those positions, and its
    /// entropies when it has them. Gather with
    /// [`return_token_logps`](crate::logps::SequenceLogpsConfig::return_token_logps) (and
    /// [`return_entropy`](crate::logps::SequenceLogpsConfig::return_entropy) for the entropy
    /// mask, the entropy bonus and the `entropy` metric), with the sampling temperature as
    /// the gatherer's `temperature`.
    ///
    /// Packed rows ([`forward_linear_packed`](crate::logps::SequenceLogps::forward_linear_packed))
    /// give one row per segment `[S, W]`, each segment's predicted tokens from its start: take
    /// all `W` columns (`completion_len = W`). The losses read only the positions the mask
    /// keeps — the completion tokens, the prompt's labels being ignored — so the old and
    /// reference log-probs gathered the same way line up with them.
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] when the output has no per-token log-probs;
    /// [`PreferenceError::Shape`] when `completion_len` is 0 or longer than the output's
    /// positions; as [`new`](Self::new).
    pub fn from_output(
        policy: SequenceLogpsOutput,
        completion_len: usize,
        advantages: Tensor<1>,
    ) -> Result<Self> {
        let token_logps = policy.token_logps.ok_or(PreferenceError::MissingInput {
            loss: "CompletionBatch::from_output",
            arg: "token_logps",
            why: "the policy losses read per-token log-probs: gather with \
                  `SequenceLogpsConfig::return_token_logps` on",
        })?;
        let [rows, positions] = token_logps.dims();
        if completion_len == 0 || completion_len > positions {
            return Err(PreferenceError::Shape {
                arg: "policy.token_logps",
                expected: format!("[N, T'] with T' >= completion_len = {completion_len} >= 1"),
                actual: vec![rows, positions],
            });
        }
        let tail = positions - completion_len..positions;
        let batch = Self::new(
            token_logps.slice([0..rows, tail.clone()]),
            policy.valid.slice([0..rows, tail.clone()]),
            advantages,
        )?;
        match policy.entropy {
            Some(entropy) => batch.with_entropy(entropy.slice([0..rows, tail])),
            None => Ok(batch),
        }
    }

    /// One advantage per token `[N, C]` instead of per completion (detached).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`], [`PreferenceError::DeviceMismatch`].
    pub fn with_token_advantages(mut self, advantages: Tensor<2>) -> Result<Self> {
        self.advantages = self.per_token("advantages", advantages)?.detach();
        Ok(self)
    }

    /// The sampling policy's per-token log-probs `[N, C]` (TRL's `old_per_token_logps`,
    /// detached): the importance ratio is `π/π_old`. Without them the ratio is 1 (one update
    /// per generation: the policy *is* the sampling policy).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`], [`PreferenceError::DeviceMismatch`].
    pub fn with_old_logps(mut self, old: Tensor<2>) -> Result<Self> {
        self.old = Some(self.per_token("old", old)?.detach());
        Ok(self)
    }

    /// The sampling policy's per-token log-probs from the gatherer's output over the same
    /// rows (gathered without gradient, e.g. before the first update of a generation): the
    /// same positions [`from_output`](Self::from_output) takes, as
    /// [`with_old_logps`](Self::with_old_logps).
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] without per-token log-probs;
    /// [`PreferenceError::Shape`], [`PreferenceError::DeviceMismatch`].
    pub fn with_old_output(self, old: SequenceLogpsOutput) -> Result<Self> {
        let old = self.completion_positions("old", old)?;
        self.with_old_logps(old)
    }

    /// The reference model's per-token log-probs from the gatherer's output over the same
    /// rows, as [`with_reference`](Self::with_reference).
    ///
    /// # Errors
    /// As [`with_old_output`](Self::with_old_output).
    pub fn with_reference_output(self, reference: SequenceLogpsOutput) -> Result<Self> {
        let reference = self.completion_positions("reference", reference)?;
        self.with_reference(reference)
    }

    /// The reference model's per-token log-probs `[N, C]` (TRL's `ref_per_token_logps`,
    /// detached), for the KL term (`beta > 0`).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`], [`PreferenceError::DeviceMismatch`].
    pub fn with_reference(mut self, reference: Tensor<2>) -> Result<Self> {
        self.reference = Some(self.per_token("reference", reference)?.detach());
        Ok(self)
    }

    /// The policy's per-token entropies `[N, C]` (differentiable, for the entropy bonus), as
    /// the gatherer's `return_entropy` gives them.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`], [`PreferenceError::DeviceMismatch`].
    pub fn with_entropy(mut self, entropy: Tensor<2>) -> Result<Self> {
        self.entropy = Some(self.per_token("entropy", entropy)?);
        Ok(self)
    }

    /// The inference engine's importance-sampling correction, per token `[N, C]` or per
    /// completion `[N, 1]` (TRL's `importance_sampling_ratio` of its token and sequence modes,
    /// computed from vLLM's log-probs; detached): each token's loss is multiplied by it
    /// (VESPO folds it into its weight instead). Give 1 at padded positions, as TRL does.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`], [`PreferenceError::DeviceMismatch`].
    pub fn with_importance_sampling_ratio(mut self, ratio: Tensor<2>) -> Result<Self> {
        let ratio = match ratio.dims()[1] {
            1 => {
                check::same_device(&[
                    ("policy", self.policy.device()),
                    ("importance_sampling_ratio", ratio.device()),
                ])?;
                check::batch(
                    "importance_sampling_ratio",
                    ratio.dims()[0],
                    "policy",
                    self.len(),
                )?;
                ratio
            }
            _ => self.per_token("importance_sampling_ratio", ratio)?,
        };
        self.importance_sampling_ratio = Some(ratio.detach());
        Ok(self)
    }

    /// The inference engine's own per-token log-probs of the sampled tokens `[N, C]` (TRL's
    /// `sampling_per_token_logps`, detached), which the off-policy mask prefers to `old`.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`], [`PreferenceError::DeviceMismatch`].
    pub fn with_sampling_logps(mut self, sampling: Tensor<2>) -> Result<Self> {
        self.sampling = Some(self.per_token("sampling", sampling)?.detach());
        Ok(self)
    }

    /// Which completions were cut at the length limit `[N]` (no end-of-sequence token): with
    /// the loss's `mask_truncated_completions` on, their tokens do not count.
    ///
    /// # Errors
    /// [`PreferenceError::BatchMismatch`], [`PreferenceError::DeviceMismatch`].
    pub fn with_truncated(mut self, truncated: Tensor<1, Bool>) -> Result<Self> {
        check::same_device(&[
            ("policy", self.policy.device()),
            ("truncated", truncated.device()),
        ])?;
        check::batch("truncated", truncated.dims()[0], "policy", self.len())?;
        self.truncated = Some(truncated);
        Ok(self)
    }

    /// Marks the batch as one micro-batch (or one device's shard) of an optimiser step:
    /// `step.examples` its completions and `step.tokens` its counted completion tokens
    /// ([`StepTotals::of_completions`]). The losses that divide by the batch's completions or
    /// tokens then divide by the step's, so that the micro-batches' losses and gradients add
    /// up to the step's.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] for totals no step can have.
    pub fn with_step(mut self, step: StepTotals) -> Result<Self> {
        step.check()?;
        self.step = Some(step);
        Ok(self)
    }

    /// `N`, the completions.
    pub fn len(&self) -> usize {
        self.policy.dims()[0]
    }

    /// Always `false`: a batch has at least one completion.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `C`, the positions of each completion.
    pub fn completion_len(&self) -> usize {
        self.policy.dims()[1]
    }

    /// The last `C` positions of another output's per-token log-probs.
    fn completion_positions(
        &self,
        arg: &'static str,
        output: SequenceLogpsOutput,
    ) -> Result<Tensor<2>> {
        let token_logps = output.token_logps.ok_or(PreferenceError::MissingInput {
            loss: "CompletionBatch",
            arg,
            why: "its per-token log-probs: gather with `SequenceLogpsConfig::return_token_logps` on",
        })?;
        let [rows, positions] = token_logps.dims();
        let width = self.completion_len();
        if positions < width {
            return Err(PreferenceError::Shape {
                arg,
                expected: format!("[N, T'] with T' >= C = {width}"),
                actual: vec![rows, positions],
            });
        }
        Ok(token_logps.slice([0..rows, positions - width..positions]))
    }

    /// Checks a per-token input against the policy's shape and device.
    fn per_token(&self, arg: &'static str, tensor: Tensor<2>) -> Result<Tensor<2>> {
        check::same_device(&[("policy", self.policy.device()), (arg, tensor.device())])?;
        let [rows, columns] = self.policy.dims();
        check::shape(arg, tensor.dims(), [Some(rows), Some(columns)], "[N, C]")?;
        Ok(tensor)
    }
}
