//! `value_checks` on the gatherer: with it on, a label outside the vocabulary and a mask value
//! other than 0 or 1 are errors; with it off, they take the lenient rule (such a label counts
//! as ignored, such a mask value masks its position out) and the gatherer reads nothing back
//! to the host, on the logits and LM-head paths alike.

use burn_preference::PreferenceError;
use burn_preference::diagnostics::host_reads;
use burn_preference::logps::{SequenceLogps, SequenceLogpsConfig, SequenceLogpsOutput};

use crate::common::{devices, floats, ints, to_vec};

fn gatherer(value_checks: bool) -> SequenceLogps {
    SequenceLogpsConfig::new()
        .with_value_checks(value_checks)
        .init()
        .expect("valid config")
}

/// `(logps, counts)` of an output.
fn values(out: SequenceLogpsOutput) -> (Vec<f32>, Vec<f32>) {
    (to_vec(out.logps), to_vec(out.counts))
}

#[test]
fn bad_labels_and_mask_values_are_errors_with_checks_and_lenient_without() {
    for (name, device) in devices() {
        let logits = || {
            floats(
                (0..2 * 3 * 5).map(|i| (i % 7) as f32 * 0.3).collect(),
                [2, 3, 5],
                &device,
            )
        };
        let checked = gatherer(true);
        let unchecked = gatherer(false);

        // A label outside V = 5 at [0, 1] (counted: the shift predicts it from position 0).
        let labels = || ints(vec![1, 9, 2, 0, 4, 3], [2, 3], &device);
        let err = checked
            .forward(logits(), labels(), None)
            .map(|_| ())
            .expect_err("a label outside [0, V)");
        assert!(
            matches!(err, PreferenceError::InvalidValue { arg: "labels", .. }),
            "[{name}] {err}"
        );
        // Without checks it counts as ignored: the results of the same label ignored (−100),
        // and of its position masked out, both valid inputs.
        let off = values(
            unchecked
                .forward(logits(), labels(), None)
                .expect("not checked"),
        );
        let ignored = ints(vec![1, -100, 2, 0, 4, 3], [2, 3], &device);
        let want = values(
            checked
                .forward(logits(), ignored, None)
                .expect("valid inputs"),
        );
        assert_eq!(off, want, "[{name}] bad label vs ignored label");
        let masked = ints(vec![1, 0, 1, 1, 1, 1], [2, 3], &device);
        let want = values(
            checked
                .forward(
                    logits(),
                    ints(vec![1, 0, 2, 0, 4, 3], [2, 3], &device),
                    Some(masked),
                )
                .expect("valid inputs"),
        );
        assert_eq!(off, want, "[{name}] bad label vs masked position");

        // A mask value of 2 at [1, 1].
        let labels_ok = || ints(vec![1, 3, 2, 0, 4, 3], [2, 3], &device);
        let mask = || ints(vec![1, 1, 1, 1, 2, 1], [2, 3], &device);
        let err = checked
            .forward(logits(), labels_ok(), Some(mask()))
            .map(|_| ())
            .expect_err("a mask value of 2");
        assert!(
            matches!(&err, PreferenceError::InvalidValue { arg: "mask", found, .. } if found == "2"),
            "[{name}] {err}"
        );
        // Without checks it masks its position out: the results of a 0 there.
        let with_two = values(
            unchecked
                .forward(logits(), labels_ok(), Some(mask()))
                .expect("not checked"),
        );
        let zeroed = ints(vec![1, 1, 1, 1, 0, 1], [2, 3], &device);
        let want = values(
            checked
                .forward(logits(), labels_ok(), Some(zeroed))
                .expect("valid inputs"),
        );
        assert_eq!(with_two, want, "[{name}] mask value 2 vs 0");

        // Shapes are still checked without value checks.
        let err = unchecked
            .forward(logits(), ints(vec![1, 3, 2, 0], [2, 2], &device), None)
            .map(|_| ())
            .expect_err("labels [2, 2] for logits [2, 3, 5]");
        assert!(
            matches!(err, PreferenceError::Shape { arg: "labels", .. }),
            "[{name}] {err}"
        );
    }
}

/// Host reads the gatherer made on this thread during `f`, and `f`'s output.
fn host_reads_of(
    f: impl FnOnce() -> burn_preference::Result<SequenceLogpsOutput>,
) -> (u64, SequenceLogpsOutput) {
    let before = host_reads();
    let out = f().expect("valid inputs");
    (host_reads() - before, out)
}

#[test]
fn without_value_checks_the_gatherer_never_reads_back() {
    // Valid inputs, so that the checked calls succeed; the LM head's row selection (which reads
    // the row-targets back by design) is off, so that only the value checks could read.
    let (b, t, h, v) = (2, 4, 3, 6);
    let logit_values: Vec<f32> = (0..b * t * v)
        .map(|i| (i % 11) as f32 * 0.25 - 1.0)
        .collect();
    let hidden_values: Vec<f32> = (0..b * t * h).map(|i| (i % 5) as f32 * 0.3 - 0.6).collect();
    let weight_values: Vec<f32> = (0..v * h).map(|i| (i % 7) as f32 * 0.2 - 0.5).collect();
    let labels = vec![-100, 1, 5, 0, -100, -100, 3, 2];
    let mask = vec![1, 1, 0, 1, 1, 1, 1, 1];
    for (name, device) in devices() {
        let run = |checks: bool, lm_head: bool, masked: bool| {
            let g = SequenceLogpsConfig::new()
                .with_value_checks(checks)
                .with_select_labelled_rows(false)
                .init()
                .expect("valid config");
            // Every input exists before the count starts.
            let labels = ints(labels.clone(), [b, t], &device);
            let mask = masked.then(|| ints(mask.clone(), [b, t], &device));
            if lm_head {
                let hidden = floats(hidden_values.clone(), [b, t, h], &device);
                let weight = floats(weight_values.clone(), [v, h], &device);
                host_reads_of(|| g.forward_linear(hidden, weight, labels, mask))
            } else {
                let logits = floats(logit_values.clone(), [b, t, v], &device);
                host_reads_of(|| g.forward(logits, labels, mask))
            }
        };
        for lm_head in [false, true] {
            for masked in [false, true] {
                let what = format!("lm_head {lm_head} mask {masked}");
                let (reads_off, off) = run(false, lm_head, masked);
                assert_eq!(reads_off, 0, "[{name}] {what}: host reads without checks");
                let (reads_on, on) = run(true, lm_head, masked);
                assert!(
                    reads_on > 0,
                    "[{name}] {what}: the checks read nothing back"
                );
                // On valid inputs the checks change nothing.
                assert_eq!(values(off), values(on), "[{name}] {what}");
            }
        }
    }
}
