//! Bad input to the KL metrics: each case returns the typed error naming the offending
//! argument, never a panic.

use burn::tensor::Device;
use burn_preference::logps::SequenceLogpsConfig;
use burn_preference::metrics::{categorical_kl, token_kl};

use crate::common::cases::{
    Case, assert_covers, case, check_cases, device_pairs, f1, izeros, zeros3,
};
use crate::common::{devices, ints};

fn metric_cases(device: &Device) -> Vec<Case> {
    let v = |values: &[f32]| f1(values, device);
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    let logits = || zeros3([2, 4, 5], device);
    let nan = f32::NAN;
    vec![
        case(
            "token_kl: reference logits with another shape",
            token_kl(
                &gatherer,
                logits(),
                zeros3([2, 4, 6], device),
                izeros([2, 4], device),
                None,
            ),
            "Shape",
            "reference_logits",
        ),
        case(
            "token_kl: labels with another batch size",
            token_kl(&gatherer, logits(), logits(), izeros([1, 4], device), None),
            "BatchMismatch",
            "labels",
        ),
        case(
            "token_kl: a mask value of 2",
            token_kl(
                &gatherer,
                logits(),
                logits(),
                izeros([2, 4], device),
                Some(ints(vec![2, 1, 1, 1, 1, 1, 1, 1], [2, 4], device)),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "categorical_kl: lengths differ",
            categorical_kl(v(&[0.5, 0.5]), v(&[0.2, 0.3, 0.5])),
            "Shape",
            "q",
        ),
        case(
            "categorical_kl: empty",
            categorical_kl(v(&[]), v(&[])),
            "Empty",
            "p",
        ),
        // A KL of vectors that are not distributions can be negative or NaN.
        case(
            "categorical_kl: NaN in p",
            categorical_kl(v(&[nan, 0.5]), v(&[0.5, 0.5])),
            "InvalidValue",
            "p",
        ),
        case(
            "categorical_kl: p outside [0, 1]",
            categorical_kl(v(&[1.5, -0.5]), v(&[0.5, 0.5])),
            "InvalidValue",
            "p",
        ),
        case(
            "categorical_kl: q = [1, 1] is no distribution",
            categorical_kl(v(&[0.5, 0.5]), v(&[1.0, 1.0])),
            "InvalidValue",
            "q",
        ),
        case(
            "categorical_kl: p summing to 0.9",
            categorical_kl(v(&[0.4, 0.5]), v(&[0.5, 0.5])),
            "InvalidValue",
            "p",
        ),
        case(
            "categorical_kl: negative q",
            categorical_kl(v(&[0.5, 0.5]), v(&[1.2, -0.2])),
            "InvalidValue",
            "q",
        ),
    ]
}

/// Tensors of one call on two devices (`a` fixes the device).
fn device_cases(a: &Device, b: &Device) -> Vec<Case> {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    vec![
        case(
            "token_kl: reference logits elsewhere",
            token_kl(
                &gatherer,
                zeros3([2, 4, 5], a),
                zeros3([2, 4, 5], b),
                izeros([2, 4], a),
                None,
            ),
            "DeviceMismatch",
            "reference_logits",
        ),
        case(
            "categorical_kl: q elsewhere",
            categorical_kl(f1(&[0.5, 0.5], a), f1(&[0.5, 0.5], b)),
            "DeviceMismatch",
            "q",
        ),
    ]
}

/// Every case, with unique names, returns its typed error naming the argument, on every device
/// and every pair of devices; together they produce every variant `token_kl` and
/// `categorical_kl` document.
#[test]
fn bad_inputs_get_the_typed_error_naming_the_argument() {
    let mut checked = Vec::new();
    for (name, device) in devices() {
        checked.extend(check_cases(name, metric_cases(&device)));
    }
    for (name, a, b) in device_pairs() {
        checked.extend(check_cases(&name, device_cases(&a, &b)));
    }
    assert_covers(
        "metrics",
        &checked,
        &[
            "Shape",
            "BatchMismatch",
            "Empty",
            "InvalidValue",
            "DeviceMismatch",
        ],
    );
}
