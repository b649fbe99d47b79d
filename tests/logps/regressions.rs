//! Regression tests for log-prob defects found in review: each failed (panicked, gave NaN, or
//! named the wrong thing) before its fix, on flex and wgpu.

use burn::tensor::{Device, Int, Tensor};
use burn_preference::PreferenceError;
use burn_preference::logps::{HeadLayout, LmHead, LogpReduction, SequenceLogpsConfig};
use burn_preference::metrics::token_kl;

use crate::common::{autodiff_devices, devices, floats, ints, to_vec};

fn zeros3(dims: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::zeros(dims, device)
}

/// Tensors on two devices were a panic inside burn; now a typed error naming both
/// arguments. The same device with and without autodiff stays fine.
#[test]
fn tensors_on_two_devices_are_a_device_mismatch() {
    let gatherer = SequenceLogpsConfig::new().init().expect("valid");
    let all = devices();
    for (a_name, a) in &all {
        for (b_name, b) in &all {
            let same = a_name == b_name;
            let logits = zeros3([2, 3, 5], a);
            let labels_b = Tensor::<2, Int>::zeros([2, 3], b);
            let labels_a = Tensor::<2, Int>::zeros([2, 3], a);
            let mask_b = Tensor::<2, Int>::ones([2, 3], b);
            let expect = |result: burn_preference::Result<_>, arg: &str, reference: &str| match (
                same, result,
            ) {
                (true, Ok(_)) => {}
                (
                    false,
                    Err(PreferenceError::DeviceMismatch {
                        arg: got,
                        reference_arg,
                        device,
                        reference_device,
                    }),
                ) => {
                    assert_eq!(
                        (got, reference_arg),
                        (arg, reference),
                        "[{a_name}×{b_name}]"
                    );
                    assert_ne!(device, reference_device, "[{a_name}×{b_name}]");
                }
                (_, other) => panic!("[{a_name}×{b_name}] {arg}: {:?}", other.map(|_| ())),
            };
            expect(
                gatherer
                    .forward(logits.clone(), labels_b.clone(), None)
                    .map(|_| ()),
                "labels",
                "logits",
            );
            expect(
                gatherer
                    .forward(logits.clone(), labels_a.clone(), Some(mask_b.clone()))
                    .map(|_| ()),
                "mask",
                "logits",
            );
            let hidden = zeros3([2, 3, 4], a);
            let weight_b = Tensor::<2>::zeros([5, 4], b);
            expect(
                gatherer
                    .forward_linear(hidden.clone(), weight_b, labels_a.clone(), None)
                    .map(|_| ()),
                "weight",
                "hidden",
            );
            let head = LmHead::new(Tensor::<2>::zeros([4, 5], a), HeadLayout::HiddenVocab)
                .with_bias(Tensor::zeros([5], b));
            expect(
                gatherer
                    .forward_linear(hidden.clone(), head, labels_a.clone(), None)
                    .map(|_| ()),
                "bias",
                "hidden",
            );
            expect(
                gatherer
                    .forward_linear(
                        hidden,
                        Tensor::<2>::zeros([5, 4], a),
                        labels_a.clone(),
                        Some(mask_b),
                    )
                    .map(|_| ()),
                "mask",
                "hidden",
            );
            expect(
                token_kl(
                    &gatherer,
                    logits.clone(),
                    zeros3([2, 3, 5], b),
                    labels_a,
                    None,
                )
                .map(|_| ()),
                "reference_logits",
                "policy_logits",
            );
        }
        // Autodiff on one side only is the same device.
        let logits = zeros3([2, 3, 5], &a.clone().autodiff()).require_grad();
        gatherer
            .forward(logits, Tensor::<2, Int>::zeros([2, 3], a), None)
            .expect("flex and flex+autodiff are one device");
    }
}

/// A huge `LengthPower(α)` passed `init`, then panicked in burn's `powf_scalar`.
#[test]
fn length_power_is_bounded_at_init() {
    for alpha in [1e19, 1e7, f64::INFINITY, f64::NAN, -1.0] {
        let err = SequenceLogpsConfig::new()
            .with_reduction(LogpReduction::LengthPower(alpha))
            .init()
            .expect_err("out of range");
        assert!(
            matches!(err, PreferenceError::OutOfRange { name: "alpha", .. }),
            "{alpha}: {err}"
        );
    }
    let g = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::LengthPower(1e6))
        .init()
        .expect("the bound itself is allowed");
    for (name, device) in devices() {
        let labels = ints(vec![0, 1, 2, 3], [1, 4], &device);
        let logps = to_vec(
            g.forward(zeros3([1, 4, 5], &device), labels, None)
                .expect("valid")
                .logps,
        );
        // 3 tokens: S / 3^1e6 underflows to −0; finite, no panic.
        assert!(logps.iter().all(|x| x.is_finite()), "[{name}] {logps:?}");
    }
}

/// On wgpu, an `ignore_index` outside the `i32` range panicked in CubeCL.
#[test]
fn ignore_index_outside_i32_is_rejected_at_init() {
    for index in [i64::MAX, i64::from(i32::MAX) + 1, i64::from(i32::MIN) - 1] {
        let err = SequenceLogpsConfig::new()
            .with_ignore_index(index)
            .init()
            .expect_err("out of range");
        assert!(
            matches!(
                err,
                PreferenceError::OutOfRange {
                    name: "ignore_index",
                    ..
                }
            ),
            "{index}: {err}"
        );
    }
    let g = SequenceLogpsConfig::new()
        .with_ignore_index(i64::from(i32::MIN))
        .init()
        .expect("i32::MIN is in range");
    for (name, device) in devices() {
        let labels = ints(vec![0, i64::from(i32::MIN), 2], [1, 3], &device);
        let out = g
            .forward(zeros3([1, 3, 4], &device), labels, None)
            .expect("valid");
        assert_eq!(to_vec(out.counts), vec![1.0], "[{name}]");
    }
}

/// NaN or all −∞ logits at an ignored position gave NaN gradient rows on wgpu (the
/// composed backward multiplied the softmax by −0); every backend now gives exactly 0 there.
#[test]
fn non_finite_logits_at_ignored_positions_get_exactly_zero_gradient() {
    let (b, t, v) = (2, 3, 4);
    let mut values: Vec<f32> = (0..b * t * v).map(|i| (i % 7) as f32 * 0.3).collect();
    // Row 0, position 2 (label ignored): NaN; row 1, position 0 (masked): all −∞.
    for k in 0..v {
        values[2 * v + k] = f32::NAN;
        values[t * v + k] = f32::NEG_INFINITY;
    }
    let labels = vec![0, 1, -100, 3, 2, 1];
    let mask = vec![1, 1, 1, 0, 1, 1];
    for extras in [false, true] {
        let g = SequenceLogpsConfig::new()
            .with_shift(false)
            .with_return_entropy(extras)
            .with_final_logit_softcapping(extras.then_some(4.0))
            .init()
            .expect("valid");
        for (name, device) in autodiff_devices() {
            let x = floats(values.clone(), [b, t, v], &device).require_grad();
            let out = g
                .forward(
                    x.clone(),
                    ints(labels.clone(), [b, t], &device),
                    Some(ints(mask.clone(), [b, t], &device)),
                )
                .expect("valid");
            let mut loss = out.logps.clone().sum();
            if let Some(h) = &out.entropy {
                loss = loss + h.clone().sum();
            }
            let logps = to_vec(out.logps);
            assert!(logps.iter().all(|x| x.is_finite()), "[{name}] {logps:?}");
            let grad = to_vec(x.grad(&loss.backward()).expect("a gradient"));
            let ignored = |i: usize| i / v == 2 || i / v == t;
            for (i, g) in grad.iter().enumerate() {
                if ignored(i) {
                    assert_eq!(*g, 0.0, "[{name}] extras {extras}: grad[{i}]");
                } else {
                    assert!(g.is_finite(), "[{name}] extras {extras}: grad[{i}] = {g}");
                }
            }
        }
    }
}

/// `forward_linear` with `T = 1` printed the vocabulary size where `H` belongs.
#[test]
fn lm_head_shape_error_prints_the_hidden_states_shape() {
    let g = SequenceLogpsConfig::new().init().expect("valid");
    for (name, device) in devices() {
        let hidden = zeros3([2, 1, 3], &device);
        let weight = Tensor::<2>::zeros([50, 3], &device);
        let labels = Tensor::<2, Int>::zeros([2, 1], &device);
        let err = g
            .forward_linear(hidden, weight, labels, None)
            .expect_err("T = 1");
        match &err {
            PreferenceError::Shape {
                arg: "hidden",
                actual,
                ..
            } => assert_eq!(actual, &vec![2, 1, 3], "[{name}] {err}"),
            other => panic!("[{name}] {other}"),
        }
    }
}

/// Labels outside the vocabulary: a label ≥ V, or negative but not `ignore_index`, was silently
/// not counted (a tokenizer/model vocabulary mismatch went unnoticed); now an error naming
/// `labels`, the allowed range and the first bad value, unless `value_checks` is off.
#[test]
fn labels_outside_the_vocabulary_are_an_error_unless_lenient() {
    let strict = SequenceLogpsConfig::new().init().expect("valid");
    let lenient = SequenceLogpsConfig::new()
        .with_value_checks(false)
        .init()
        .expect("valid");
    for (name, device) in devices() {
        let logits = || zeros3([2, 4, 10], &device);
        for (bad, at) in [(10i64, "[1, 2]"), (-5, "[1, 2]"), (32000, "[1, 2]")] {
            let labels = vec![-100, 1, 2, 3, -100, 4, bad, 5];
            let err = strict
                .forward(logits(), ints(labels.clone(), [2, 4], &device), None)
                .map(|_| ())
                .expect_err("a label outside [0, V)");
            match &err {
                PreferenceError::InvalidValue {
                    arg: "labels",
                    expected,
                    found,
                } => {
                    assert!(expected.contains("[0, V)"), "[{name}] {err}");
                    assert!(
                        found.starts_with(&format!("{bad} at {at}")),
                        "[{name}] {err}"
                    );
                    assert!(found.contains("V = 10"), "[{name}] {err}");
                }
                other => panic!("[{name}] {other}"),
            }
            // The LM-head path checks the same labels.
            let err = strict
                .forward_linear(
                    zeros3([2, 4, 3], &device),
                    Tensor::<2>::zeros([10, 3], &device),
                    ints(labels.clone(), [2, 4], &device),
                    None,
                )
                .map(|_| ())
                .expect_err("a label outside [0, V)");
            assert!(
                matches!(err, PreferenceError::InvalidValue { arg: "labels", .. }),
                "[{name}] {err}"
            );
            let out = lenient
                .forward(logits(), ints(labels, [2, 4], &device), None)
                .expect("lenient");
            // Shifted: row 0 counts 1, 2, 3; row 1 counts 4 and 5, not the bad label.
            assert_eq!(
                to_vec(out.counts),
                vec![3.0, 2.0],
                "[{name}] lenient counts"
            );
        }
        // Not counted anyway: the first label (dropped by the shift) and masked positions.
        let labels = ints(vec![99, 1, 2, 3, -100, 4, 99, 5], [2, 4], &device);
        let mask = ints(vec![1, 1, 1, 1, 1, 1, 0, 1], [2, 4], &device);
        let out = strict
            .forward(logits(), labels, Some(mask))
            .expect("uncounted labels are not checked");
        assert_eq!(to_vec(out.counts), vec![3.0, 2.0], "[{name}]");
    }
}

/// The LM-head options are validated at `init` like every other hyper-parameter.
#[test]
fn bad_temperature_scale_and_softcap_are_rejected_at_init() {
    let cases: [(&str, SequenceLogpsConfig); 6] = [
        (
            "temperature",
            SequenceLogpsConfig::new().with_temperature(0.0),
        ),
        (
            "temperature",
            SequenceLogpsConfig::new().with_temperature(f64::NAN),
        ),
        (
            "temperature",
            SequenceLogpsConfig::new().with_temperature(1e-300),
        ),
        (
            "logit_scale",
            SequenceLogpsConfig::new().with_logit_scale(-1.0),
        ),
        (
            "final_logit_softcapping",
            SequenceLogpsConfig::new().with_final_logit_softcapping(Some(0.0)),
        ),
        (
            "final_logit_softcapping",
            SequenceLogpsConfig::new().with_final_logit_softcapping(Some(f64::INFINITY)),
        ),
    ];
    for (param, config) in cases {
        let err = config.init().expect_err("invalid");
        assert!(
            matches!(&err, PreferenceError::OutOfRange { name, .. } if *name == param),
            "{param}: {err}"
        );
    }
}

/// The bias must be `[V]`.
#[test]
fn lm_head_bias_of_the_wrong_length_is_a_shape_error() {
    let g = SequenceLogpsConfig::new().init().expect("valid");
    for (name, device) in devices() {
        let head = LmHead::new(
            Tensor::<2>::zeros([3, 10], &device),
            HeadLayout::HiddenVocab,
        )
        .with_bias(Tensor::zeros([9], &device));
        let err = g
            .forward_linear(
                zeros3([2, 4, 3], &device),
                head,
                Tensor::zeros([2, 4], &device),
                None,
            )
            .map(|_| ())
            .expect_err("bias [9] for V = 10");
        assert!(
            matches!(err, PreferenceError::Shape { arg: "bias", .. }),
            "[{name}] {err}"
        );
        // An [H, V] head with the wrong H names the weight.
        let head = LmHead::new(
            Tensor::<2>::zeros([4, 10], &device),
            HeadLayout::HiddenVocab,
        );
        let err = g
            .forward_linear(
                zeros3([2, 4, 3], &device),
                head,
                Tensor::zeros([2, 4], &device),
                None,
            )
            .map(|_| ())
            .expect_err("H = 4 vs 3");
        assert!(
            matches!(err, PreferenceError::Shape { arg: "weight", .. }),
            "[{name}] {err}"
        );
    }
}
