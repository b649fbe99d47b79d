//! Bad input to the batch builders: each case returns the typed error naming the offending
//! argument, never a panic. The builders check shapes and devices only (never a value: the
//! loss does, see `tests/loss/bad_input.rs`); tensors on two devices are in `devices.rs`.

use burn::tensor::{Bool, Device, Int, Tensor};
use burn_preference::logps::{LogpReduction, SequenceLogpsOutput};
use burn_preference::prelude::*;

use crate::common::cases::{Case, assert_covers, case, check_cases, f1, f2};
use crate::common::{devices, ints};

/// A gatherer's output over `rows` sequences (log-probs −1, one valid token each), built by
/// hand so that it can have any number of rows, including ones no layout accepts.
pub fn output(rows: usize, reduction: LogpReduction, device: &Device) -> SequenceLogpsOutput {
    SequenceLogpsOutput {
        logps: Tensor::<1>::full([rows], -1.0, device),
        counts: Tensor::<1>::ones([rows], device),
        token_logps: None,
        valid: Tensor::<2, Bool>::from_data(
            burn::tensor::TensorData::new(vec![true; rows], [rows, 1]),
            device,
        ),
        entropy: None,
        log_sum_sq_probs: None,
        mean_logits: None,
        is_top1: None,
        reduction,
    }
}

/// Paired and ranked batches.
fn paired_cases(device: &Device) -> Vec<Case> {
    let v = |values: &[f32]| f1(values, device);
    let m = |values: &[f32], dims: [usize; 2]| f2(values, dims, device);
    let pair = || PairedBatch::new(m(&[-1.0, -3.0, -2.0, -4.0], [2, 2]));
    let ranked3 = || PairedBatch::new(m(&[-1.0; 6], [2, 3]));
    let sums = |rows| output(rows, LogpReduction::Sum, device);
    let pairs = |pairs| BatchLayout::ChosenFirst { pairs };
    let inf = f32::INFINITY;
    vec![
        case(
            "new: no pairs",
            PairedBatch::new(m(&[], [0, 2])),
            "Empty",
            "policy",
        ),
        case(
            "new: no ranked prompts",
            PairedBatch::new(m(&[], [0, 3])),
            "Empty",
            "policy",
        ),
        case(
            "new: K = 1",
            PairedBatch::new(m(&[-1.0, -2.0], [2, 1])),
            "Shape",
            "policy",
        ),
        case(
            "from_output: an odd number of concatenated rows",
            PairedBatch::from_output(sums(3), pairs(1)),
            "Shape",
            "policy.logps",
        ),
        case(
            "from_output: no rows",
            PairedBatch::from_output(sums(0), pairs(0)),
            "Empty",
            "policy.logps",
        ),
        case(
            "with_scores: another K",
            ranked3().and_then(|b| b.with_scores(m(&[0.0; 4], [2, 2]))),
            "Shape",
            "scores",
        ),
        case(
            "with_scores: another batch size",
            ranked3().and_then(|b| b.with_scores(m(&[0.0; 3], [1, 3]))),
            "BatchMismatch",
            "scores",
        ),
        case(
            "with_reference: another K",
            ranked3().and_then(|b| b.with_reference(m(&[-1.0; 4], [2, 2]))),
            "Shape",
            "reference",
        ),
        case(
            "with_reference: another batch size",
            ranked3().and_then(|b| b.with_reference(m(&[-1.0; 3], [1, 3]))),
            "BatchMismatch",
            "reference",
        ),
        case(
            "with_reference: pairs of another batch size",
            pair().and_then(|b| b.with_reference(m(&[-1.0, -1.0], [1, 2]))),
            "BatchMismatch",
            "reference",
        ),
        case(
            "with_reference_output: an odd number of rows",
            PairedBatch::from_output(sums(4), pairs(2))
                .and_then(|b| b.with_reference_output(sums(3))),
            "Shape",
            "reference.logps",
        ),
        case(
            "with_reference_output: a batch from plain tensors",
            pair().and_then(|b| b.with_reference_output(sums(4))),
            "MissingInput",
            "policy layout",
        ),
        case(
            "with_completion_labels: a batch from plain tensors",
            pair().and_then(|b| b.with_completion_labels(ints(vec![1; 8], [4, 2], device))),
            "MissingInput",
            "policy.valid",
        ),
        case(
            "with_lengths: another K",
            ranked3().and_then(|b| b.with_lengths(m(&[1.0; 4], [2, 2]))),
            "Shape",
            "lengths",
        ),
        // Soft labels are a pair's `P(chosen ≻ rejected)`: a ranked batch has no such pair.
        case(
            "with_soft_labels: K = 3 names the policy's shape",
            ranked3().and_then(|b| b.with_soft_labels(v(&[0.5, 0.5]))),
            "Shape",
            "policy",
        ),
        case(
            "with_soft_labels: another batch size",
            pair().and_then(|b| b.with_soft_labels(v(&[0.5, 0.5, 0.5]))),
            "BatchMismatch",
            "soft_labels",
        ),
        case(
            "require_finite: NaN policy",
            PairedBatch::new(m(&[-1.0, -1.0, f32::NAN, -2.0], [2, 2]))
                .and_then(PairedBatch::require_finite),
            "NonFinite",
            "policy",
        ),
        case(
            "require_finite: -inf policy",
            PairedBatch::new(m(&[-1.0, -inf, -2.0, -2.0], [2, 2]))
                .and_then(PairedBatch::require_finite),
            "NonFinite",
            "policy",
        ),
        case(
            "require_finite: +inf reference",
            pair()
                .and_then(|b| b.with_reference(m(&[-1.0, -1.0, inf, -2.0], [2, 2])))
                .and_then(PairedBatch::require_finite),
            "NonFinite",
            "reference",
        ),
    ]
}

/// Unpaired batches.
fn unpaired_cases(device: &Device) -> Vec<Case> {
    let v = |values: &[f32]| f1(values, device);
    let labels = |values: Vec<i64>| {
        Tensor::<1, Int>::from_data(
            burn::tensor::TensorData::new(values.clone(), [values.len()]),
            device,
        )
    };
    let batch =
        || UnpairedBatch::from_output(output(2, LogpReduction::Sum, device), labels(vec![1, 0]));
    vec![
        case(
            "unpaired new: no examples",
            UnpairedBatch::new(v(&[]), labels(vec![])),
            "Empty",
            "policy",
        ),
        case(
            "unpaired new: labels of another size",
            UnpairedBatch::new(v(&[-1.0, -2.0]), labels(vec![1])),
            "BatchMismatch",
            "desirable",
        ),
        case(
            "unpaired: a reference of another size",
            batch().and_then(|b| b.with_reference(v(&[0.0]))),
            "BatchMismatch",
            "reference",
        ),
        case(
            "unpaired: a reference output reduced otherwise",
            batch().and_then(|b| b.with_reference_output(output(2, LogpReduction::Mean, device))),
            "InvalidValue",
            "reference",
        ),
        case(
            "unpaired: KL log-probs of another size",
            batch().and_then(|b| b.with_kl(v(&[0.0, 0.0]), v(&[0.0]))),
            "BatchMismatch",
            "reference_kl",
        ),
        case(
            "unpaired: no KL pairs",
            batch().and_then(|b| b.with_kl(v(&[]), v(&[]))),
            "Empty",
            "policy_kl",
        ),
        case(
            "unpaired: a reward shift of two values",
            batch().and_then(|b| b.with_reward_shift(v(&[0.0, 0.0]))),
            "Shape",
            "reward_shift",
        ),
        case(
            "unpaired require_finite: NaN policy",
            UnpairedBatch::new(v(&[-1.0, f32::NAN]), labels(vec![1, 0]))
                .and_then(UnpairedBatch::require_finite),
            "NonFinite",
            "policy",
        ),
    ]
}

/// Every case, with unique names, returns its typed error naming the argument, on every
/// device; together they produce every variant the builders document (`DeviceMismatch` is
/// checked by `devices.rs`).
#[test]
fn bad_inputs_get_the_typed_error_naming_the_argument() {
    let mut checked = Vec::new();
    for (name, device) in devices() {
        let mut cases = paired_cases(&device);
        cases.extend(unpaired_cases(&device));
        checked.extend(check_cases(name, cases));
    }
    assert_covers(
        "batch",
        &checked,
        &[
            "Empty",
            "Shape",
            "BatchMismatch",
            "InvalidValue",
            "MissingInput",
            "NonFinite",
        ],
    );
}
