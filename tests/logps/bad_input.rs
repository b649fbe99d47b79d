//! Bad input to the gatherer and its configuration: each case returns the typed error naming
//! the offending argument, never a panic.

use burn::tensor::{Device, Tensor};
use burn_preference::data::Segments;
use burn_preference::logps::{HeadLayout, LmHead, LogpReduction, SequenceLogpsConfig};

use crate::common::cases::{Case, assert_covers, case, check_cases, device_pairs, izeros, zeros3};
use crate::common::{devices, ints};

/// Configurations: every option outside its range, non-finite values, and values `f32`
/// cannot hold.
fn config_cases() -> Vec<Case> {
    let logps = SequenceLogpsConfig::new;
    let power = |alpha: f64| {
        logps()
            .with_reduction(LogpReduction::LengthPower(alpha))
            .init()
    };
    vec![
        case("LengthPower(NaN)", power(f64::NAN), "OutOfRange", "alpha"),
        case(
            "LengthPower(inf)",
            power(f64::INFINITY),
            "OutOfRange",
            "alpha",
        ),
        case("LengthPower(-0.5)", power(-0.5), "OutOfRange", "alpha"),
        case("LengthPower(-1)", power(-1.0), "OutOfRange", "alpha"),
        // 1e19 is past 2^63, where a float exponent would be taken as an integral one.
        case("LengthPower(1e19)", power(1e19), "OutOfRange", "alpha"),
        case(
            "chunk_rows = 0",
            logps().with_chunk_rows(0).init(),
            "OutOfRange",
            "chunk_rows",
        ),
        // GPU backends store labels as i32.
        case(
            "ignore_index below i32",
            logps().with_ignore_index(i64::from(i32::MIN) - 1).init(),
            "OutOfRange",
            "ignore_index",
        ),
        case(
            "ignore_index above i32",
            logps().with_ignore_index(i64::from(i32::MAX) + 1).init(),
            "OutOfRange",
            "ignore_index",
        ),
        case(
            "temperature 0",
            logps().with_temperature(0.0).init(),
            "OutOfRange",
            "temperature",
        ),
        case(
            "temperature NaN",
            logps().with_temperature(f64::NAN).init(),
            "OutOfRange",
            "temperature",
        ),
        case(
            "logit_scale < 0",
            logps().with_logit_scale(-1.0).init(),
            "OutOfRange",
            "logit_scale",
        ),
        case(
            "softcap 0",
            logps().with_final_logit_softcapping(Some(0.0)).init(),
            "OutOfRange",
            "final_logit_softcapping",
        ),
        case(
            "softcap inf",
            logps()
                .with_final_logit_softcapping(Some(f64::INFINITY))
                .init(),
            "OutOfRange",
            "final_logit_softcapping",
        ),
    ]
}

/// Log-prob gathering: shapes, masks, labels, LM heads and packed rows.
fn logps_cases(device: &Device) -> Vec<Case> {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    let means = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Mean)
        .init()
        .expect("config");
    let logits = || zeros3([2, 4, 5], device);
    let labels = || izeros([2, 4], device);
    let valid_labels = || ints(vec![-100, 1, 2, 3, -100, 4, 3, 2], [2, 4], device);
    let mask = |values: Vec<i64>, dims: [usize; 2]| Some(ints(values, dims, device));
    let hidden = || zeros3([2, 4, 3], device);
    let weight = |v: usize, h: usize| Tensor::<2>::zeros([v, h], device);
    let segments = Segments::from_cu_seqlens(&[0, 3], 1, 4).expect("segments");
    vec![
        case(
            "forward: labels with another batch size",
            gatherer.forward(logits(), izeros([3, 4], device), None),
            "BatchMismatch",
            "labels",
        ),
        case(
            "forward: labels with another length",
            gatherer.forward(logits(), izeros([2, 3], device), None),
            "Shape",
            "labels",
        ),
        case(
            "forward: T = 1 with the causal shift",
            gatherer.forward(zeros3([2, 1, 5], device), izeros([2, 1], device), None),
            "Shape",
            "logits",
        ),
        case(
            "forward: no rows",
            gatherer.forward(zeros3([0, 4, 5], device), izeros([0, 4], device), None),
            "Empty",
            "logits",
        ),
        case(
            "forward: V = 0",
            gatherer.forward(zeros3([2, 4, 0], device), labels(), None),
            "Empty",
            "logits",
        ),
        case(
            "forward with Mean: labels with another batch size",
            means.forward(logits(), izeros([1, 4], device), None),
            "BatchMismatch",
            "labels",
        ),
        case(
            "forward: mask with another batch size",
            gatherer.forward(logits(), labels(), Some(izeros([1, 4], device))),
            "BatchMismatch",
            "mask",
        ),
        case(
            "forward: mask with another length",
            gatherer.forward(logits(), labels(), Some(izeros([2, 3], device))),
            "Shape",
            "mask",
        ),
        case(
            "forward: a mask value of 2",
            gatherer.forward(
                logits(),
                labels(),
                mask(vec![1, 1, 0, 2, 1, 1, 1, 1], [2, 4]),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "forward: a mask value of -1",
            gatherer.forward(
                logits(),
                labels(),
                mask(vec![1, -1, 0, 1, 1, 1, 1, 1], [2, 4]),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "value checks: a label outside [0, V)",
            gatherer.forward(
                logits(),
                ints(vec![-100, 1, 2, 99, -100, 4, 3, 2], [2, 4], device),
                None,
            ),
            "InvalidValue",
            "labels",
        ),
        case(
            "value checks: a negative label other than ignore_index",
            gatherer.forward(
                logits(),
                ints(vec![-100, 1, -3, 2, -100, 4, 3, 2], [2, 4], device),
                None,
            ),
            "InvalidValue",
            "labels",
        ),
        case(
            "forward_linear: head width differs from H",
            gatherer.forward_linear(hidden(), weight(5, 4), labels(), None),
            "Shape",
            "weight",
        ),
        case(
            "forward_linear: labels with another batch size",
            gatherer.forward_linear(hidden(), weight(5, 3), izeros([1, 4], device), None),
            "BatchMismatch",
            "labels",
        ),
        case(
            "forward_linear: labels with another length",
            gatherer.forward_linear(hidden(), weight(5, 3), izeros([2, 5], device), None),
            "Shape",
            "labels",
        ),
        case(
            "forward_linear: T = 1 with the causal shift",
            gatherer.forward_linear(
                zeros3([2, 1, 3], device),
                weight(5, 3),
                izeros([2, 1], device),
                None,
            ),
            "Shape",
            "hidden",
        ),
        case(
            "forward_linear: no rows",
            gatherer.forward_linear(
                zeros3([0, 4, 3], device),
                weight(5, 3),
                izeros([0, 4], device),
                None,
            ),
            "Empty",
            "hidden",
        ),
        case(
            "forward_linear: a mask value of 3",
            gatherer.forward_linear(
                hidden(),
                weight(5, 3),
                labels(),
                mask(vec![3, 1, 0, 1, 1, 1, 1, 1], [2, 4]),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "LM head: a bias of the wrong length",
            gatherer.forward_linear(
                hidden(),
                LmHead::new(weight(5, 3), HeadLayout::VocabHidden)
                    .with_bias(Tensor::<1>::zeros([4], device)),
                valid_labels(),
                None,
            ),
            "Shape",
            "bias",
        ),
        case(
            "LM head: [H, V] of the wrong H",
            gatherer.forward_linear(
                hidden(),
                LmHead::new(weight(4, 5), HeadLayout::HiddenVocab),
                valid_labels(),
                None,
            ),
            "Shape",
            "weight",
        ),
        case(
            "forward_packed: logits of another [R, T]",
            gatherer.forward_packed(logits(), valid_labels(), &segments),
            "Shape",
            "logits",
        ),
        case(
            "forward_linear_packed: hidden states of another [R, T]",
            gatherer.forward_linear_packed(hidden(), weight(5, 3), valid_labels(), &segments),
            "Shape",
            "hidden",
        ),
    ]
}

/// Tensors of one call on two devices (`a` fixes the device).
fn device_cases(a: &Device, b: &Device) -> Vec<Case> {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    vec![
        case(
            "forward: labels elsewhere",
            gatherer.forward(zeros3([2, 4, 5], a), izeros([2, 4], b), None),
            "DeviceMismatch",
            "labels",
        ),
        case(
            "forward: mask elsewhere",
            gatherer.forward(
                zeros3([2, 4, 5], a),
                izeros([2, 4], a),
                Some(izeros([2, 4], b)),
            ),
            "DeviceMismatch",
            "mask",
        ),
        case(
            "forward_linear: weight elsewhere",
            gatherer.forward_linear(
                zeros3([2, 4, 3], a),
                Tensor::<2>::zeros([5, 3], b),
                izeros([2, 4], a),
                None,
            ),
            "DeviceMismatch",
            "weight",
        ),
        case(
            "forward_linear: labels elsewhere",
            gatherer.forward_linear(
                zeros3([2, 4, 3], a),
                Tensor::<2>::zeros([5, 3], a),
                izeros([2, 4], b),
                None,
            ),
            "DeviceMismatch",
            "labels",
        ),
        case(
            "forward_linear: mask elsewhere",
            gatherer.forward_linear(
                zeros3([2, 4, 3], a),
                Tensor::<2>::zeros([5, 3], a),
                izeros([2, 4], a),
                Some(izeros([2, 4], b)),
            ),
            "DeviceMismatch",
            "mask",
        ),
        case(
            "forward_linear: bias elsewhere",
            gatherer.forward_linear(
                zeros3([2, 4, 3], a),
                LmHead::new(Tensor::<2>::zeros([5, 3], a), HeadLayout::VocabHidden)
                    .with_bias(Tensor::<1>::zeros([5], b)),
                izeros([2, 4], a),
                None,
            ),
            "DeviceMismatch",
            "bias",
        ),
        case(
            "forward_packed: labels elsewhere",
            gatherer.forward_packed(
                zeros3([1, 4, 5], a),
                izeros([1, 4], b),
                &Segments::from_cu_seqlens(&[0, 4], 1, 4).expect("segments"),
            ),
            "DeviceMismatch",
            "labels",
        ),
    ]
}

/// Every case, with unique names, returns its typed error naming the argument, on every device
/// and every pair of devices; together they produce every variant the gatherer documents.
#[test]
fn bad_inputs_get_the_typed_error_naming_the_argument() {
    let mut checked = check_cases("config", config_cases());
    for (name, device) in devices() {
        checked.extend(check_cases(name, logps_cases(&device)));
    }
    for (name, a, b) in device_pairs() {
        checked.extend(check_cases(&name, device_cases(&a, &b)));
    }
    assert_covers(
        "logps",
        &checked,
        &[
            "Shape",
            "BatchMismatch",
            "Empty",
            "InvalidValue",
            "OutOfRange",
            "DeviceMismatch",
        ],
    );
}
