//! The DPO loss's metrics against hand-computed values, and its ranking accuracy over ranked
//! lists.

use burn_preference::prelude::*;

use crate::common::{assert_close, devices, floats, logged, pair_columns};

/// The logged value of `name`, which must be there.
fn value(metrics: &[(&'static str, f64)], name: &str) -> f32 {
    logged(metrics, name).unwrap_or_else(|| panic!("{name} not logged: {metrics:?}")) as f32
}

#[test]
fn metrics_match_hand_computed_values() {
    for (name, device) in devices() {
        // ρ_chosen = (1, −1, 0.5), ρ_rejected = (0, 0, 0.5), β = 0.5.
        let batch = PairedBatch::new(pair_columns(
            floats(vec![-2.0, -5.0, -1.0], [3], &device),
            floats(vec![-4.0, -3.0, -2.0], [3], &device),
        ))
        .unwrap()
        .with_reference(pair_columns(
            floats(vec![-3.0, -4.0, -1.5], [3], &device),
            floats(vec![-4.0, -3.0, -2.5], [3], &device),
        ))
        .unwrap();
        let out = DpoConfig::new()
            .with_beta(0.5)
            .init()
            .unwrap()
            .forward(batch)
            .unwrap();
        // 0.1 returned the per-pair rewards; 0.2 logs their means (of the same hand values).
        let metrics = out.metrics.log().unwrap();
        let mean = |v: [f64; 3]| v.iter().sum::<f64>() / 3.0;
        for (metric, per_pair) in [
            ("rewards/chosen", [0.5, -0.5, 0.25]),
            ("rewards/rejected", [0.0, 0.0, 0.25]),
            ("rewards/margins", [0.5, -0.5, 0.0]),
            ("logps/chosen", [-2.0, -5.0, -1.0]),
            ("logps/rejected", [-4.0, -3.0, -2.0]),
        ] {
            assert_close(
                name,
                metric,
                &[value(&metrics, metric)],
                &[mean(per_pair)],
                1e-6,
                1e-6,
            );
        }
        // Strict: the tie in the third pair does not count.
        assert_close(
            name,
            "rewards/accuracies",
            &[value(&metrics, "rewards/accuracies")],
            &[1.0 / 3.0],
            1e-6,
            0.0,
        );
        // For pairs the ranking accuracy is the accuracy above (0.1 returned both, equal):
        // 0.2 logs it only for K > 2.
        assert_eq!(logged(&metrics, "rewards/ranking_accuracy"), None);

        // Ranked lists: reference-free with β = 1, the rewards are the policy values 3, 1, 2.
        let loss = PsiPoConfig::new(Psi::Logit)
            .with_beta(1.0)
            .with_reference_free(true)
            .init()
            .unwrap();
        let ranked = |scores: Vec<f32>| {
            let batch = PairedBatch::new(floats(vec![3.0, 1.0, 2.0], [1, 3], &device))
                .unwrap()
                .with_scores(floats(scores, [1, 3], &device))
                .unwrap();
            loss.forward(batch).unwrap().metrics
        };
        // Scores 3 > 2 > 1: pairs (0,1) and (0,2) agree with the values, (1,2) does not.
        let metrics = ranked(vec![3.0, 2.0, 1.0]).log().unwrap();
        assert_close(
            name,
            "ranking accuracy",
            &[value(&metrics, "rewards/ranking_accuracy")],
            &[2.0 / 3.0],
            1e-6,
            0.0,
        );
        // Tied scores 1 = 1 form no pair: (0,2) agrees, (1,2) does not.
        let metrics = ranked(vec![1.0, 1.0, 0.0]).log().unwrap();
        assert_close(
            name,
            "ranking accuracy with a tie",
            &[value(&metrics, "rewards/ranking_accuracy")],
            &[0.5],
            1e-6,
            0.0,
        );
        // All tied: no pair agrees out of no pairs (0.1 reported 0; a metric that counted
        // nothing is not logged now).
        let metrics = ranked(vec![1.0; 3]);
        let accuracy = metrics.get("rewards/ranking_accuracy").unwrap();
        let read = |t: burn::tensor::Tensor<1>| crate::common::to_vec(t)[0];
        assert_eq!(
            (read(accuracy.sum.clone()), read(accuracy.count.clone())),
            (0.0, 0.0)
        );
        assert_eq!(
            logged(&metrics.log().unwrap(), "rewards/ranking_accuracy"),
            None
        );
    }
}
