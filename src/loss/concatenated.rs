//! Building a [`PreferenceBatch`] straight from the log-prob gatherer's output, chosen rows
//! first as trainers run them, keeping the per-token tensors the DPO-family losses and TRL's
//! token metrics read.

use burn::tensor::{Bool, Tensor};

use super::PreferenceBatch;
use crate::check;
use crate::error::{PreferenceError, Result};
use crate::logps::SequenceLogpsOutput;
use crate::ratios::split_concatenated;

/// Per-token tensors of one model over the concatenated `[2B, T']` rows (chosen first), all
/// with 0 / false at invalid positions.
#[derive(Debug, Clone)]
pub(crate) struct TokenSide {
    pub(crate) token_logps: Option<Tensor<2>>,
    pub(crate) valid: Tensor<2, Bool>,
    pub(crate) log_sum_sq_probs: Option<Tensor<2>>,
    pub(crate) mean_logits: Option<Tensor<2>>,
    pub(crate) entropy: Option<Tensor<2>>,
    pub(crate) is_top1: Option<Tensor<2, Bool>>,
}

/// The per-token tensors of a batch built by [`PreferenceBatch::from_concatenated`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenInputs {
    pub(crate) policy: Option<Box<TokenSide>>,
    pub(crate) reference: Option<Box<TokenSide>>,
}

impl TokenSide {
    fn from_output(model: &'static str, output: SequenceLogpsOutput) -> Result<Self> {
        let rows = output.logps.dims()[0];
        let dims = output.valid.dims();
        check::batch(valid_arg(model), dims[0], logps_arg(model), rows)?;
        let want = dims.map(Some);
        let layout = "the valid mask's [2B, T']";
        let float_parts = [
            ("token_logps", &output.token_logps),
            ("log_sum_sq_probs", &output.log_sum_sq_probs),
            ("mean_logits", &output.mean_logits),
            ("entropy", &output.entropy),
        ];
        for (arg, tensor) in float_parts {
            if let Some(t) = tensor {
                check::shape(arg, t.dims(), want, layout)?;
            }
        }
        if let Some(t) = &output.is_top1 {
            check::shape("is_top1", t.dims(), want, layout)?;
        }
        Ok(Self {
            token_logps: output.token_logps,
            valid: output.valid,
            log_sum_sq_probs: output.log_sum_sq_probs,
            mean_logits: output.mean_logits,
            entropy: output.entropy,
            is_top1: output.is_top1,
        })
    }
}

fn logps_arg(model: &'static str) -> &'static str {
    if model == "policy" {
        "policy.logps"
    } else {
        "reference.logps"
    }
}

fn valid_arg(model: &'static str) -> &'static str {
    if model == "policy" {
        "policy.valid"
    } else {
        "reference.valid"
    }
}

impl PreferenceBatch {
    /// A pairwise batch from the gatherer's output over the concatenated `[2B]` rows, chosen
    /// rows first (one forward pass over chosen and rejected, as trainers run it).
    ///
    /// Takes the sequence log-probs (gather with
    /// [`LogpReduction::Sum`](crate::LogpReduction::Sum) for TRL's losses), the counts as the
    /// responses' lengths, and whatever per-token tensors were requested: `token_logps`
    /// (`return_token_logps`: `sft`, WPO, LD-DPO), `log_sum_sq_probs`
    /// (`return_log_sum_sq_probs`: WPO), and `mean_logits`, `entropy`, `is_top1` (TRL's
    /// `logits/*`, `entropy` and `mean_token_accuracy` metrics).
    ///
    /// # Errors
    /// As [`concatenated`](Self::concatenated) and [`with_lengths`](Self::with_lengths), and
    /// [`PreferenceError::Shape`] or [`PreferenceError::BatchMismatch`] when a per-token tensor
    /// is not `[2B, T']` like the valid mask.
    ///
    /// # Shapes
    /// - `policy.logps`, `policy.counts`: `[2B]`; per-token tensors: `[2B, T']`
    pub fn from_concatenated(policy: SequenceLogpsOutput) -> Result<Self> {
        let counts = policy.counts.clone();
        let logps = policy.logps.clone();
        let reduction = policy.reduction;
        let side = TokenSide::from_output("policy", policy)?;
        let (chosen, rejected) = split_concatenated("policy.counts", counts)?;
        check::batch(
            "policy.counts",
            chosen.dims()[0] * 2,
            "policy.logps",
            logps.dims()[0],
        )?;
        let lengths = Tensor::stack(vec![chosen, rejected], 1);
        let mut batch = Self::concatenated(logps)?.with_lengths(lengths)?;
        batch.tokens.policy = Some(Box::new(side));
        batch.reduction = Some(reduction);
        Ok(batch)
    }

    /// The reference model's gatherer output over the same concatenated `[2B]` rows: its
    /// sequence log-probs, and its per-token log-probs when requested (LD-DPO needs them).
    ///
    /// # Errors
    /// As [`with_concatenated_reference`](Self::with_concatenated_reference), and as
    /// [`from_concatenated`](Self::from_concatenated) for the per-token tensors.
    pub fn with_concatenated_reference_output(
        self,
        reference: SequenceLogpsOutput,
    ) -> Result<Self> {
        let logps = reference.logps.clone();
        let side = TokenSide::from_output("reference", reference)?;
        let mut batch = self.with_concatenated_reference(logps)?;
        batch.tokens.reference = Some(Box::new(side));
        Ok(batch)
    }

    /// The policy's per-token tensors, or the error saying how to get them.
    pub(crate) fn policy_tokens(
        &self,
        loss: &'static str,
        why: &'static str,
    ) -> Result<&TokenSide> {
        self.tokens
            .policy
            .as_deref()
            .ok_or(PreferenceError::MissingInput {
                loss,
                arg: "per-token log-probs",
                why,
            })
    }
}
