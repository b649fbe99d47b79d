//! Sequence log-probs `Σ_t log softmax(z_t)[y_t]` against a naive f64 reference, closed
//! forms, gradients and errors, on every device in `common::devices()`.

use burn::tensor::{Device, Int, Tensor};
use burn_preference::PreferenceError;
use burn_preference::logps::{LogpReduction, SequenceLogpsConfig, SequenceLogpsOutput};
use proptest::prelude::*;

use crate::common::{assert_close, autodiff_devices, devices, floats, ints, to_vec};

/// One input to the log-prob gatherer, with the options used.
#[derive(Debug, Clone)]
struct Case {
    dims: [usize; 3],
    logits: Vec<f32>,
    labels: Vec<i64>,
    mask: Option<Vec<i64>>,
    shift: bool,
    reduction: LogpReduction,
}

struct Naive {
    logps: Vec<f64>,
    counts: Vec<f64>,
    tokens: Vec<f64>,
}

/// The textbook definition in f64: full log-softmax per position, then gather and reduce.
fn naive(case: &Case) -> Naive {
    let [b, t, v] = case.dims;
    let offset = usize::from(case.shift);
    let steps = t - offset;
    let (mut logps, mut counts, mut tokens) = (vec![], vec![], vec![]);
    for row in 0..b {
        let (mut sum, mut n) = (0.0f64, 0.0f64);
        for step in 0..steps {
            let label = case.labels[row * t + step + offset];
            let masked_out = case
                .mask
                .as_ref()
                .is_some_and(|m| m[row * t + step + offset] == 0);
            let z: Vec<f64> = (0..v)
                .map(|k| f64::from(case.logits[(row * t + step) * v + k]))
                .collect();
            let token = if label < 0 || label >= v as i64 || masked_out {
                0.0
            } else {
                let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
                n += 1.0;
                z[label as usize] - lse
            };
            sum += token;
            tokens.push(token);
        }
        let denom = match case.reduction {
            LogpReduction::Sum => 1.0,
            LogpReduction::Mean => n.max(1.0),
            LogpReduction::LengthPower(a) => n.max(1.0).powf(a),
        };
        logps.push(sum / denom);
        counts.push(n);
    }
    Naive {
        logps,
        counts,
        tokens,
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..=4,
        2usize..=8,
        2usize..=50,
        any::<bool>(),
        0usize..4,
        any::<bool>(),
    )
        .prop_flat_map(|(b, t, v, shift, reduction, masked)| {
            let logits = prop::collection::vec(-8.0f32..8.0, b * t * v);
            // -100 (ignored) about one time in five, out-of-range labels now and then.
            let label = prop_oneof![8 => 0..v as i64, 2 => Just(-100i64), 1 => Just(v as i64 + 3)];
            let labels = prop::collection::vec(label, b * t);
            let mask = prop::collection::vec(prop_oneof![4 => Just(1i64), 1 => Just(0i64)], b * t);
            let reduction = match reduction {
                0 => Just(LogpReduction::Sum).boxed(),
                1 => Just(LogpReduction::Mean).boxed(),
                _ => (0.0f64..2.0).prop_map(LogpReduction::LengthPower).boxed(),
            };
            (logits, labels, mask, reduction).prop_map(move |(logits, labels, mask, reduction)| {
                Case {
                    dims: [b, t, v],
                    logits,
                    labels,
                    mask: masked.then_some(mask),
                    shift,
                    reduction,
                }
            })
        })
}

/// Summed sequence log-probs with the default options (causal shift, `ignore_index` −100).
fn summed_logps(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Sum)
        .init()
        .unwrap()
        .forward(logits, labels, None)
        .unwrap()
        .logps
}

fn run(case: &Case, device: &Device) -> SequenceLogpsOutput {
    let [b, t, v] = case.dims;
    let gatherer = SequenceLogpsConfig::new()
        .with_value_checks(false) // out-of-range labels are generated on purpose
        .with_shift(case.shift)
        .with_reduction(case.reduction)
        .with_return_token_logps(true)
        .init()
        .unwrap();
    let logits = floats(case.logits.clone(), [b, t, v], device);
    let labels = ints(case.labels.clone(), [b, t], device);
    let mask = case.mask.as_ref().map(|m| ints(m.clone(), [b, t], device));
    gatherer.forward(logits, labels, mask).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn matches_naive_f64_reference(case in case_strategy()) {
        let expected = naive(&case);
        for (name, device) in devices() {
            let out = run(&case, &device);
            assert_close(name, "logps", &to_vec(out.logps), &expected.logps, 1e-5, 1e-6);
            assert_close(name, "counts", &to_vec(out.counts), &expected.counts, 0.0, 0.0);
            let tokens = to_vec(out.token_logps.unwrap());
            assert_close(name, "token_logps", &tokens, &expected.tokens, 1e-5, 1e-6);
        }
    }
}

#[test]
fn uniform_logits_give_minus_n_ln_v() {
    // Uniform logits over V = 32000: each valid token is −ln 32000; 5 tokens → −51.867456.
    for (name, device) in devices() {
        let logits = Tensor::<3>::full([1, 6, 32000], 0.25, &device);
        let labels =
            ints(vec![-100, 17, 31999, 0, -100, 4, 5], [1, 7], &device).slice([0..1, 1..7]);
        let out = SequenceLogpsConfig::new()
            .init()
            .unwrap()
            .forward(logits, labels, None)
            .unwrap();
        // Shifted labels [31999, 0, -100, 4, 5]: 4 valid tokens; add the unshifted 6-token case.
        assert_close(
            name,
            "4 tokens",
            &to_vec(out.logps),
            &[-4.0 * 32000f64.ln()],
            1e-6,
            0.0,
        );
        let logits = Tensor::<3>::zeros([1, 5, 32000], &device);
        let labels = ints(vec![1, 2, 3, 4, 5], [1, 5], &device);
        let logp = SequenceLogpsConfig::new()
            .with_shift(false)
            .init()
            .unwrap()
            .forward(logits, labels, None)
            .unwrap()
            .logps;
        assert_close(name, "5 tokens", &to_vec(logp), &[-51.867456], 1e-6, 0.0);
    }
}

#[test]
fn adding_a_constant_to_one_position_changes_nothing() {
    let (b, t, v) = (2, 5, 7);
    let base: Vec<f32> = (0..b * t * v)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 3.0)
        .collect();
    let mut shifted = base.clone();
    for k in 0..v {
        shifted[(t + 2) * v + k] += 1000.0; // row 1, position 2
    }
    let labels: Vec<i64> = (0..b * t).map(|i| (i * 3 % v) as i64).collect();
    for (name, device) in devices() {
        let logp = |logits: Vec<f32>| {
            let out = summed_logps(
                floats(logits, [b, t, v], &device),
                ints(labels.clone(), [b, t], &device),
            );
            to_vec(out)
        };
        let expected: Vec<f64> = logp(base.clone()).into_iter().map(f64::from).collect();
        assert_close(
            name,
            "shift invariance",
            &logp(shifted.clone()),
            &expected,
            1e-5,
            1e-5,
        );
    }
}

/// Logits and labels where row 1 is entirely ignored.
fn gradient_case() -> ([usize; 3], Vec<f32>, Vec<i64>) {
    let dims = [2, 4, 6];
    let logits = (0..48)
        .map(|i| ((i * 29 % 17) as f32 - 8.0) / 2.5)
        .collect();
    let labels = vec![0, 5, -100, 2, -100, -100, -100, -100];
    (dims, logits, labels)
}

#[test]
fn gradient_is_onehot_minus_softmax_and_zero_when_ignored() {
    let ([b, t, v], logits, labels) = gradient_case();
    for (name, device) in autodiff_devices() {
        let x = floats(logits.clone(), [b, t, v], &device).require_grad();
        let out = SequenceLogpsConfig::new()
            .init()
            .unwrap()
            .forward(x.clone(), ints(labels.clone(), [b, t], &device), None)
            .unwrap();
        let grads = out.logps.sum().backward();
        let grad = to_vec(x.grad(&grads).unwrap());
        let mut expected = vec![0.0f64; b * t * v];
        for row in 0..b {
            for step in 0..t - 1 {
                let label = labels[row * t + step + 1];
                if label < 0 {
                    continue;
                }
                let z: Vec<f64> = (0..v)
                    .map(|k| f64::from(logits[(row * t + step) * v + k]))
                    .collect();
                let total: f64 = z.iter().map(|x| x.exp()).sum();
                for k in 0..v {
                    let onehot = if k as i64 == label { 1.0 } else { 0.0 };
                    expected[(row * t + step) * v + k] = onehot - z[k].exp() / total;
                }
            }
        }
        assert_close(name, "d logp / d logits", &grad, &expected, 1e-5, 1e-6);
        // The all-ignored row and the last position (no next label) get exactly zero.
        assert!(
            grad[t * v..].iter().all(|g| *g == 0.0),
            "[{name}] ignored row gradient"
        );
    }
}

#[test]
fn gradient_agrees_with_central_finite_differences() {
    let ([b, t, v], logits, labels) = gradient_case();
    let gatherer = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Mean)
        .init()
        .unwrap();
    for (name, device) in autodiff_devices() {
        let x = floats(logits.clone(), [b, t, v], &device).require_grad();
        let loss = gatherer
            .forward(x.clone(), ints(labels.clone(), [b, t], &device), None)
            .unwrap()
            .logps
            .sum();
        let grad = to_vec(x.grad(&loss.backward()).unwrap());
        let eval = |values: Vec<f32>| -> f64 {
            let out = gatherer
                .forward(
                    floats(values, [b, t, v], &device),
                    ints(labels.clone(), [b, t], &device),
                    None,
                )
                .unwrap();
            f64::from(out.logps.sum().into_scalar::<f32>())
        };
        let step = 1e-2f32;
        for i in (0..b * t * v).step_by(5) {
            let (mut up, mut down) = (logits.clone(), logits.clone());
            up[i] += step;
            down[i] -= step;
            let numeric = (eval(up) - eval(down)) / (2.0 * f64::from(step));
            assert_close(
                name,
                "finite difference",
                &grad[i..=i],
                &[numeric],
                1e-2,
                2e-4,
            );
        }
    }
}

#[test]
fn all_ignored_row_is_zero_and_extreme_logits_stay_finite() {
    let (b, t, v) = (2, 4, 8);
    let logits: Vec<f32> = (0..b * t * v)
        .map(|i| if i % 3 == 0 { 1e4 } else { -1e4 })
        .collect();
    let labels = vec![-100, 1, 2, 3, -100, -100, -100, -100];
    for reduction in [
        LogpReduction::Sum,
        LogpReduction::Mean,
        LogpReduction::LengthPower(0.5),
    ] {
        let gatherer = SequenceLogpsConfig::new()
            .with_reduction(reduction)
            .init()
            .unwrap();
        for (name, device) in autodiff_devices() {
            let x = floats(logits.clone(), [b, t, v], &device).require_grad();
            let out = gatherer
                .forward(x.clone(), ints(labels.clone(), [b, t], &device), None)
                .unwrap();
            let counts = to_vec(out.counts);
            assert_eq!(counts, vec![3.0, 0.0], "[{name}] counts");
            let logps = to_vec(out.logps.clone());
            assert!(logps.iter().all(|x| x.is_finite()), "[{name}] {logps:?}");
            assert_eq!(logps[1], 0.0, "[{name}] all-ignored row");
            let grad = to_vec(x.grad(&out.logps.sum().backward()).unwrap());
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "[{name}] gradient not finite"
            );
            assert!(
                grad[t * v..].iter().all(|g| *g == 0.0),
                "[{name}] ignored row gradient"
            );
        }
    }
}

#[test]
fn half_precision_logits_are_reduced_in_f32() {
    use burn::tensor::{DType, TensorCreationOptions, TensorData, f16};
    for (name, device) in devices() {
        if !device.supports_dtype(DType::F16) {
            eprintln!("[{name}] no f16 support, skipped"); // burn says which backends store f16
            continue;
        }
        let (b, t, v) = (2, 3, 40);
        let values: Vec<f32> = (0..b * t * v)
            .map(|i| ((i * 13 % 31) as f32 - 15.0) / 4.0)
            .collect();
        let half: Vec<f16> = values.iter().map(|x| f16::from_f32(*x)).collect();
        let options = TensorCreationOptions::new(device.clone()).with_dtype(DType::F16);
        let logits = Tensor::<3>::from_data(TensorData::new(half.clone(), [b, t, v]), options);
        assert_eq!(logits.dtype(), DType::F16, "[{name}] input dtype");
        let labels = vec![0, 7, 39, 3, -100, 12];
        let case = Case {
            dims: [b, t, v],
            logits: half.iter().map(|h| h.to_f32()).collect(),
            labels: labels.clone(),
            mask: None,
            shift: true,
            reduction: LogpReduction::Sum,
        };
        let out = summed_logps(logits, ints(labels, [b, t], &device));
        assert_eq!(out.dtype(), DType::F32, "[{name}] output dtype");
        assert_close(
            name,
            "f16 logps",
            &to_vec(out),
            &naive(&case).logps,
            1e-5,
            1e-5,
        );
    }
}

fn error_of(result: burn_preference::Result<SequenceLogpsOutput>) -> PreferenceError {
    result.expect_err("bad input must be an error")
}

#[test]
fn bad_inputs_get_typed_errors() {
    let gatherer = SequenceLogpsConfig::new().init().unwrap();
    for (name, device) in devices() {
        let logits = Tensor::<3>::zeros([2, 4, 5], &device);
        let labels = Tensor::<2, Int>::zeros([2, 4], &device);

        let err = error_of(gatherer.forward(
            logits.clone(),
            Tensor::<2, Int>::zeros([3, 4], &device),
            None,
        ));
        assert!(
            matches!(
                err,
                PreferenceError::BatchMismatch {
                    arg: "labels",
                    expected: 2,
                    actual: 3,
                    ..
                }
            ),
            "[{name}] {err}"
        );
        let err = error_of(gatherer.forward(
            logits.clone(),
            Tensor::<2, Int>::zeros([2, 3], &device),
            None,
        ));
        assert!(
            matches!(err, PreferenceError::Shape { arg: "labels", .. }),
            "[{name}] {err}"
        );
        assert!(
            err.to_string().contains("[2, 3]"),
            "[{name}] message names the shape: {err}"
        );

        let mask = Tensor::<2, Int>::zeros([1, 4], &device);
        let err = error_of(gatherer.forward(logits.clone(), labels.clone(), Some(mask)));
        assert!(
            matches!(err, PreferenceError::BatchMismatch { arg: "mask", .. }),
            "[{name}] {err}"
        );
        let mask = ints(vec![1, 1, 0, 2, 1, 1, 1, 1], [2, 4], &device);
        let err = error_of(gatherer.forward(logits.clone(), labels.clone(), Some(mask)));
        assert!(
            matches!(&err, PreferenceError::InvalidValue { arg: "mask", found, .. } if found == "2"),
            "[{name}] {err}"
        );

        let short = Tensor::<3>::zeros([2, 1, 5], &device);
        let err = error_of(gatherer.forward(short, Tensor::<2, Int>::zeros([2, 1], &device), None));
        assert!(
            matches!(err, PreferenceError::Shape { arg: "logits", .. }),
            "[{name}] {err}"
        );

        let empty = Tensor::<3>::zeros([0, 4, 5], &device);
        let err = error_of(gatherer.forward(empty, Tensor::<2, Int>::zeros([0, 4], &device), None));
        assert!(
            matches!(err, PreferenceError::Empty { arg: "logits", .. }),
            "[{name}] {err}"
        );

        // The LM-head path: the weight must be [V, H] with the hidden states' H.
        let hidden = Tensor::<3>::zeros([2, 4, 3], &device);
        let weight = Tensor::<2>::zeros([5, 4], &device);
        let err = error_of(gatherer.forward_linear(hidden.clone(), weight, labels.clone(), None));
        assert!(
            matches!(err, PreferenceError::Shape { arg: "weight", .. }),
            "[{name}] {err}"
        );
        let weight = Tensor::<2>::zeros([5, 3], &device);
        let err = error_of(gatherer.forward_linear(hidden, weight, labels.narrow(0, 0, 1), None));
        assert!(
            matches!(
                err,
                PreferenceError::BatchMismatch {
                    reference_arg: "hidden",
                    ..
                }
            ),
            "[{name}] {err}"
        );
    }
    let err = SequenceLogpsConfig::new()
        .with_chunk_rows(0)
        .init()
        .unwrap_err();
    assert!(
        matches!(
            err,
            PreferenceError::OutOfRange {
                name: "chunk_rows",
                ..
            }
        ),
        "{err}"
    );
    let err = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::LengthPower(-0.5))
        .init()
        .unwrap_err();
    assert!(
        matches!(err, PreferenceError::OutOfRange { name: "alpha", .. }),
        "{err}"
    );
}
