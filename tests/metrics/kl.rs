//! The KL helpers the losses' users log next to them (`token_kl`, `categorical_kl`), against
//! naive f64 references and hand values, on every device.

use burn_preference::metrics::{categorical_kl, token_kl};
use burn_preference::prelude::*;

use crate::assert_error;
use crate::common::{assert_close, devices, floats, ints, to_vec};

/// Per-token `KL(π ‖ π_ref)` in f64 with the causal shift: `(per-sequence means, batch mean)`.
fn naive_token_kl(
    policy: &[f32],
    reference: &[f32],
    labels: &[i64],
    [b, t, v]: [usize; 3],
) -> (Vec<f64>, f64) {
    let log_softmax = |row: &[f32]| {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z)));
        let lse = max
            + row
                .iter()
                .map(|&z| (f64::from(z) - max).exp())
                .sum::<f64>()
                .ln();
        row.iter()
            .map(|&z| f64::from(z) - lse)
            .collect::<Vec<f64>>()
    };
    let (mut per_sequence, mut total, mut count) = (Vec::new(), 0.0, 0.0);
    for row in 0..b {
        let (mut sum, mut n) = (0.0, 0.0);
        for pos in 0..t - 1 {
            let label = labels[row * t + pos + 1];
            if label < 0 || label >= v as i64 {
                continue;
            }
            let at = (row * t + pos) * v;
            let lp = log_softmax(&policy[at..at + v]);
            let lq = log_softmax(&reference[at..at + v]);
            sum += lp
                .iter()
                .zip(&lq)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
            n += 1.0;
        }
        per_sequence.push(if n > 0.0 { sum / n } else { 0.0 });
        total += sum;
        count += n;
    }
    (per_sequence, total / count.max(1.0))
}

#[test]
fn token_kl_matches_a_naive_reference_and_vanishes_for_identical_models() {
    let shape @ [b, t, v] = [3, 5, 7];
    let values = |seed: u32| -> Vec<f32> {
        (0..b * t * v)
            .map(|i| (i as f32 * 0.7 + seed as f32).sin() * 3.0)
            .collect()
    };
    let (policy, reference) = (values(1), values(2));
    // Row 2 is fully ignored; 99 is out of range for V = 7 and is ignored too.
    let labels = vec![
        -100, 1, 6, 2, -100, -100, -100, 3, 99, 0, -100, -100, -100, -100, -100,
    ];
    let (per_sequence, mean) = naive_token_kl(&policy, &reference, &labels, shape);
    assert_eq!(per_sequence[2], 0.0);
    // Lenient labels: the out-of-range 99 is ignored, not an error.
    let gatherer = SequenceLogpsConfig::new()
        .with_value_checks(false)
        .init()
        .unwrap();
    for (name, device) in devices() {
        let kl = token_kl(
            &gatherer,
            floats(policy.clone(), shape, &device),
            floats(reference.clone(), shape, &device),
            ints(labels.clone(), [b, t], &device),
            None,
        )
        .unwrap();
        assert_close(
            name,
            "KL per sequence",
            &to_vec(kl.per_sequence),
            &per_sequence,
            1e-5,
            1e-6,
        );
        assert_close(name, "KL mean", &to_vec(kl.mean), &[mean], 1e-5, 1e-6);

        let same = token_kl(
            &gatherer,
            floats(policy.clone(), shape, &device),
            floats(policy.clone(), shape, &device),
            ints(labels.clone(), [b, t], &device),
            None,
        )
        .unwrap();
        assert_close(
            name,
            "KL(π ‖ π)",
            &to_vec(same.per_sequence),
            &[0.0; 3],
            0.0,
            1e-6,
        );
    }
}

#[test]
fn categorical_kl_matches_hand_values() {
    for (name, device) in devices() {
        let p = floats(vec![0.5, 0.5, 0.0], [3], &device);
        let q = floats(vec![0.25, 0.5, 0.25], [3], &device);
        // 0.5 ln 2 + 0.5 ln 1 + 0 (the p = 0 term contributes nothing).
        let expected = 0.5 * 2f64.ln();
        assert_close(
            name,
            "KL(p ‖ q)",
            &to_vec(categorical_kl(p.clone(), q.clone()).unwrap()),
            &[expected],
            1e-6,
            1e-7,
        );
        assert_close(
            name,
            "KL(p ‖ p)",
            &to_vec(categorical_kl(p.clone(), p.clone()).unwrap()),
            &[0.0],
            0.0,
            1e-7,
        );
        // q = 0 where p > 0: infinite, not NaN.
        let kl = f64::from(to_vec(categorical_kl(q, p).unwrap())[0]);
        assert!(
            kl.is_infinite() && kl > 0.0,
            "[{name}] KL with q = 0 where p > 0: {kl}"
        );
    }
}

#[test]
fn kl_bad_inputs_get_typed_errors() {
    for (_, device) in devices() {
        let pair = |n: usize| floats(vec![-1.0; n], [n], &device);
        assert_error!(
            categorical_kl(pair(3), pair(2)),
            PreferenceError::Shape { arg: "q", .. }
        );
        assert_error!(
            categorical_kl(pair(0), pair(0)),
            PreferenceError::Empty { .. }
        );

        let gatherer = SequenceLogpsConfig::new().init().unwrap();
        let logits = floats(vec![0.0; 2 * 3 * 4], [2, 3, 4], &device);
        assert_error!(
            token_kl(
                &gatherer,
                logits.clone(),
                floats(vec![0.0; 2 * 3 * 5], [2, 3, 5], &device),
                ints(vec![0; 6], [2, 3], &device),
                None,
            ),
            PreferenceError::Shape {
                arg: "reference_logits",
                ..
            }
        );
    }
}
