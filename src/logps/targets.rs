//! Label validation and the one form in which labels reach the fused op: a row-target per
//! logits row.

use burn::tensor::{Bool, Int, Tensor};

use super::SequenceLogps;
use crate::check;
use crate::error::{self, PreferenceError};
use crate::fused;

/// The one form in which validated labels reach the fused op and its oracle: one row-target per
/// row of the `[B·T, V]` logits (the label, or [`fused::INVALID`] where no valid label is
/// predicted: ignored, masked, and the last position under the shift), and the valid positions
/// `[B, T']`. The unshifted rows stay contiguous, so `[B·T, ·]` views of the inputs are free.
pub(crate) struct RowTargets {
    /// `[B·T]`.
    pub(crate) targets: Tensor<1, Int>,
    /// `[B, T']`.
    pub(crate) valid: Tensor<2, Bool>,
    batch: usize,
    time: usize,
    shift: bool,
}

impl RowTargets {
    /// `[B·T, K]` row outputs back to `[B, T']` per column.
    pub(crate) fn unflatten(&self, rows: Tensor<2>, column: usize) -> Tensor<2> {
        let (batch, time) = (self.batch, self.time);
        let per_token = rows.narrow(1, column, 1).reshape([batch, time]);
        if self.shift {
            per_token.narrow(1, 0, time - 1)
        } else {
            per_token
        }
    }
}

/// Logits after the causal shift, with the valid positions marked.
pub(crate) struct Aligned {
    /// `[B, T', V]`.
    pub(crate) logits: Tensor<3>,
    /// `[B, T']`.
    pub(crate) valid: Tensor<2, Bool>,
}

impl SequenceLogps {
    /// [`row_targets_of`](Self::row_targets_of) for an argument of shape `dims`.
    pub(crate) fn row_targets(
        &self,
        arg: &'static str,
        dims: [usize; 3],
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<RowTargets> {
        self.row_targets_of(arg, dims, dims.to_vec(), labels, mask)
    }

    /// Validates the inputs for logits of shape `[B, T, V]` (`arg`'s own shape is `shape`, for
    /// messages) and builds the one row-target form.
    pub(crate) fn row_targets_of(
        &self,
        arg: &'static str,
        [batch, time, vocab]: [usize; 3],
        shape: Vec<usize>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<RowTargets> {
        check::non_empty(arg, batch)?;
        check::batch("labels", labels.dims()[0], arg, batch)?;
        check::shape("labels", labels.dims(), [Some(batch), Some(time)], "[B, T]")?;
        if time == 0 || vocab == 0 {
            return Err(PreferenceError::Empty {
                arg,
                detail: format!("need T >= 1 and V >= 1, got T = {time}, V = {vocab}"),
            });
        }
        if self.shift && time < 2 {
            return Err(PreferenceError::Shape {
                arg,
                expected: "T >= 2 when shift is on".to_string(),
                actual: shape,
            });
        }
        if let Some(mask) = &mask {
            check::batch("mask", mask.dims()[0], arg, batch)?;
            check::shape("mask", mask.dims(), [Some(batch), Some(time)], "[B, T]")?;
            if self.value_checks {
                check_binary_mask(mask.clone())?;
            }
        }
        let offset = usize::from(self.shift);
        let (labels, mask) = if self.shift {
            (
                labels.narrow(1, 1, time - 1),
                mask.map(|m| m.narrow(1, 1, time - 1)),
            )
        } else {
            (labels, mask)
        };
        let mut counted = labels.clone().not_equal_elem(self.ignore_index);
        if let Some(mask) = mask {
            counted = counted.bool_and(mask.equal_elem(1));
        }
        let in_vocab = labels
            .clone()
            .greater_equal_elem(0)
            .bool_and(labels.clone().lower_elem(vocab as i64));
        if self.value_checks {
            let bad = counted.clone().bool_and(in_vocab.clone().bool_not());
            if check::read_flag("labels", bad.clone().any())? {
                return Err(self.bad_label(labels, bad, vocab, offset));
            }
        }
        let valid = counted.bool_and(in_vocab);
        let mut targets = labels.mask_fill(valid.clone().bool_not(), fused::INVALID);
        if self.shift {
            let last = Tensor::<2, Int>::full([batch, 1], fused::INVALID, &targets.device());
            targets = Tensor::cat(vec![targets, last], 1);
        }
        Ok(RowTargets {
            targets: targets.reshape([batch * time]),
            valid,
            batch,
            time,
            shift: self.shift,
        })
    }

    /// The error for the first counted label outside `[0, V)` (`bad` marks them).
    fn bad_label(
        &self,
        labels: Tensor<2, Int>,
        bad: Tensor<2, Bool>,
        vocab: usize,
        offset: usize,
    ) -> PreferenceError {
        let [_, steps] = labels.dims();
        let first = check::read_ints("labels", bad.int())
            .ok()
            .and_then(|flags| flags.iter().position(|&f| f != 0));
        let values = check::read_ints("labels", labels).unwrap_or_default();
        let found = match first.and_then(|i| values.get(i).map(|v| (i, v))) {
            Some((i, value)) => format!(
                "{value} at [{}, {}] (V = {vocab}, ignore_index = {})",
                i / steps,
                i % steps + offset,
                self.ignore_index
            ),
            None => format!("a label outside [0, {vocab})"),
        };
        PreferenceError::InvalidValue {
            arg: "labels",
            expected: "labels in [0, V) or ignore_index (value_checks)",
            found,
        }
    }
}

fn check_binary_mask(mask: Tensor<2, Int>) -> error::Result<()> {
    let off = mask
        .clone()
        .not_equal_elem(0)
        .bool_and(mask.clone().not_equal_elem(1))
        .any();
    if !check::read_flag("mask", off)? {
        return Ok(());
    }
    let values = check::read_ints("mask", mask)?;
    let found = values
        .iter()
        .find(|v| **v != 0 && **v != 1)
        .map_or_else(|| "a value other than 0 or 1".to_string(), i64::to_string);
    Err(PreferenceError::InvalidValue {
        arg: "mask",
        expected: "0 or 1",
        found,
    })
}
