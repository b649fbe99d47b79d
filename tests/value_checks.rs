//! `set_value_checks(false)`: the checks that read tensor values back to the host are skipped
//! (and bad values go through as documented); shapes are still checked. One test: the switch
//! is process wide.

mod common;

use burn::tensor::Tensor;
use burn_preference::{PreferenceBatch, SequenceLogpsConfig, set_value_checks, value_checks};
use common::{devices, floats, ints, to_vec};

#[test]
fn value_checks_can_be_switched_off_and_on() {
    assert!(value_checks(), "on by default");
    for (name, device) in devices() {
        let logits = floats(
            (0..2 * 3 * 5).map(|i| (i % 7) as f32 * 0.3).collect(),
            [2, 3, 5],
            &device,
        );
        // A label outside V = 5, and a mask value of 2.
        let labels = ints(vec![1, 9, 2, 0, 4, 3], [2, 3], &device);
        let mask = ints(vec![1, 1, 1, 1, 2, 1], [2, 3], &device);
        let strict = SequenceLogpsConfig::new().init().expect("valid");
        let lenient = SequenceLogpsConfig::new()
            .with_strict_labels(false)
            .init()
            .expect("valid");
        let soft = floats(vec![1.5], [1], &device);
        let lengths = floats(vec![-1.0, 3.0], [1, 2], &device);
        let pair = || {
            PreferenceBatch::pairwise(
                floats(vec![-1.0], [1], &device),
                floats(vec![-2.0], [1], &device),
            )
        };

        assert!(
            strict.forward(logits.clone(), labels.clone()).is_err(),
            "[{name}] label"
        );
        assert!(
            strict
                .forward_masked(
                    logits.clone(),
                    ints(vec![1, 1, 1, 1, 1, 1], [2, 3], &device),
                    mask.clone()
                )
                .is_err(),
            "[{name}] mask"
        );
        assert!(
            pair()
                .expect("valid")
                .with_soft_labels(soft.clone())
                .is_err(),
            "[{name}] soft"
        );
        assert!(
            pair()
                .expect("valid")
                .with_lengths(lengths.clone())
                .is_err(),
            "[{name}] lengths"
        );

        set_value_checks(false);
        // The out-of-vocabulary label counts as ignored: the lenient rule's result.
        let off = strict
            .forward(logits.clone(), labels.clone())
            .expect("not checked");
        let want = lenient
            .forward(logits.clone(), labels.clone())
            .expect("lenient");
        assert_eq!(to_vec(off.logps), to_vec(want.logps), "[{name}]");
        // A mask value other than 1 is masked out.
        let labels_ok = ints(vec![1, 3, 2, 0, 4, 3], [2, 3], &device);
        let with_two = strict
            .forward_masked(logits.clone(), labels_ok.clone(), mask)
            .expect("not checked");
        let zeroed = ints(vec![1, 1, 1, 1, 0, 1], [2, 3], &device);
        let want = strict
            .forward_masked(logits.clone(), labels_ok, zeroed)
            .expect("valid");
        assert_eq!(to_vec(with_two.logps), to_vec(want.logps), "[{name}]");
        assert!(
            pair()
                .expect("valid")
                .with_soft_labels(soft.clone())
                .is_ok(),
            "[{name}] soft"
        );
        assert!(
            pair().expect("valid").with_lengths(lengths.clone()).is_ok(),
            "[{name}] lengths"
        );
        // Shapes are still checked.
        let wrong: Tensor<1> = floats(vec![0.5, 0.5], [2], &device);
        assert!(
            pair().expect("valid").with_soft_labels(wrong).is_err(),
            "[{name}] shape"
        );
        set_value_checks(true);
    }
}
