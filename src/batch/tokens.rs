//! The per-token tensors a batch built from the gatherer's output carries along: what `sft`,
//! WPO, LD-DPO, CPO's and ORPO's NLL terms and TRL's token metrics read.

use burn::tensor::{Bool, Int, Tensor};

use crate::check;
use crate::error::{PreferenceError, Result};
use crate::logps::SequenceLogpsOutput;

/// Per-token tensors of one model over the batch's sequences `[N, T']` (for a pairwise
/// batch the `2B` concatenated rows, chosen first), all 0 / false at invalid positions.
#[derive(Debug, Clone)]
pub(crate) struct TokenSide {
    pub(crate) token_logps: Option<Tensor<2>>,
    pub(crate) valid: Tensor<2, Bool>,
    pub(crate) log_sum_sq_probs: Option<Tensor<2>>,
    pub(crate) mean_logits: Option<Tensor<2>>,
    pub(crate) entropy: Option<Tensor<2>>,
    pub(crate) is_top1: Option<Tensor<2, Bool>>,
    /// The completion positions (ORPO's log-odds), when they differ from `valid`.
    pub(crate) completion: Option<Tensor<2, Bool>>,
}

impl TokenSide {
    /// The per-token tensors of `output`, checked against its valid mask; `model` names the
    /// side (`"policy"` or `"reference"`) in errors.
    pub(crate) fn from_output(model: &'static str, output: &SequenceLogpsOutput) -> Result<Self> {
        let rows = output.logps.dims()[0];
        let dims = output.valid.dims();
        let (logps_arg, valid_arg) = match model {
            "policy" => ("policy.logps", "policy.valid"),
            _ => ("reference.logps", "reference.valid"),
        };
        check::batch(valid_arg, dims[0], logps_arg, rows)?;
        let want = dims.map(Some);
        let layout = "the valid mask's [N, T']";
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
            token_logps: output.token_logps.clone(),
            valid: output.valid.clone(),
            log_sum_sq_probs: output.log_sum_sq_probs.clone(),
            mean_logits: output.mean_logits.clone(),
            entropy: output.entropy.clone(),
            is_top1: output.is_top1.clone(),
            completion: None,
        })
    }

    /// The per-token log-probs, or the error saying how to get them.
    pub(crate) fn token_logps(&self, loss: &'static str, why: &'static str) -> Result<Tensor<2>> {
        self.token_logps
            .clone()
            .ok_or(PreferenceError::MissingInput {
                loss,
                arg: "policy.token_logps",
                why,
            })
    }
}

/// The completion positions `[N, T']` of labels `[N, T]` against per-token outputs `[N, T']`,
/// shifted by one when `T = T' + 1` (the gatherer's causal shift); a label `< 0` marks a
/// position outside the completion.
pub(crate) fn completion_positions(
    labels: Tensor<2, Int>,
    [rows, positions]: [usize; 2],
) -> Result<Tensor<2, Bool>> {
    let [label_rows, time] = labels.dims();
    check::batch("completion_labels", label_rows, "policy.valid", rows)?;
    let aligned = if time == positions + 1 {
        labels.narrow(1, 1, positions)
    } else if time == positions {
        labels
    } else {
        return Err(PreferenceError::Shape {
            arg: "completion_labels",
            expected: format!(
                "[N, T' + 1] = [{rows}, {}] (or [{rows}, {positions}] unshifted)",
                positions + 1
            ),
            actual: vec![label_rows, time],
        });
    };
    Ok(aligned.greater_equal_elem(0))
}
