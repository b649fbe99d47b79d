//! RRHF against a naive f64 double loop with gradients, its fine-tune target and its inputs.

use burn_preference::loss::RankLoss;
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::reference::{sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, devices, floats, to_vec};

fn losses_of(loss: &impl PreferenceLoss<Batch = PairedBatch>, batch: PairedBatch) -> Vec<f32> {
    to_vec(loss.forward(batch).unwrap().losses)
}

#[derive(Debug, Clone)]
struct RrhfCase {
    candidates: usize,
    sums: Vec<f32>,
    lengths: Vec<f32>,
    scores: Vec<f32>,
    alpha: f64,
    rank_loss: RankLoss,
    rank_weight: f64,
    ft_weight: f64,
}

fn rrhf_case() -> impl Strategy<Value = RrhfCase> {
    (1..=3usize, 2..=6usize)
        .prop_flat_map(|(b, k)| {
            (
                Just(k),
                prop::collection::vec(-60.0f32..-0.5, b * k),
                // Length 0 (an all-ignored response) is clamped to 1.
                prop::collection::vec((0..20u8).prop_map(f32::from), b * k),
                prop::collection::vec((0..4i32).prop_map(|s| s as f32), b * k),
                0.0f64..2.0,
                prop_oneof![Just(RankLoss::Hinge), Just(RankLoss::Logistic)],
                0.0f64..3.0,
                0.0f64..3.0,
            )
        })
        .prop_map(
            |(candidates, sums, lengths, scores, alpha, rank_loss, rank_weight, ft_weight)| {
                RrhfCase {
                    candidates,
                    sums,
                    lengths,
                    scores,
                    alpha,
                    rank_loss,
                    rank_weight,
                    ft_weight,
                }
            },
        )
}

/// RRHF per prompt as a double loop in f64: losses `[B]` and `∂(mean L)/∂S`.
fn naive_rrhf(case: &RrhfCase) -> (Vec<f64>, Vec<f64>) {
    let k = case.candidates;
    let b = case.sums.len() / k;
    let mut grads = vec![0.0; b * k];
    let mut losses = Vec::with_capacity(b);
    for p in 0..b {
        let at = |i: usize| p * k + i;
        let length = |i: usize| f64::from(case.lengths[at(i)]).max(1.0);
        let penalty = |i: usize| length(i).powf(case.alpha);
        let score = |i: usize| f64::from(case.sums[at(i)]) / penalty(i);
        let pairs: Vec<(usize, usize)> = (0..k)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .filter(|&(i, j)| case.scores[at(i)] < case.scores[at(j)])
            .collect();
        let mut rank = 0.0;
        for &(i, j) in &pairs {
            let violation = score(i) - score(j);
            let (term, slope) = match case.rank_loss {
                RankLoss::Hinge => (violation.max(0.0), if violation > 0.0 { 1.0 } else { 0.0 }),
                RankLoss::Logistic => {
                    let n = pairs.len() as f64;
                    (softplus(violation) / n, sigmoid(violation) / n)
                }
            };
            rank += term;
            grads[at(i)] += case.rank_weight * slope / penalty(i) / b as f64;
            grads[at(j)] -= case.rank_weight * slope / penalty(j) / b as f64;
        }
        // Best score, lowest index on ties.
        let best = (0..k).fold(0, |best, i| {
            if case.scores[at(i)] > case.scores[at(best)] {
                i
            } else {
                best
            }
        });
        let fine_tune = -f64::from(case.sums[at(best)]) / length(best);
        grads[at(best)] -= case.ft_weight / length(best) / b as f64;
        losses.push(case.rank_weight * rank + case.ft_weight * fine_tune);
    }
    (losses, grads)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn rrhf_matches_a_naive_double_loop(case in rrhf_case()) {
        let k = case.candidates;
        let b = case.sums.len() / k;
        let (losses, grads) = naive_rrhf(&case);
        for (name, device) in autodiff_devices() {
            let sums = floats(case.sums.clone(), [b, k], &device).require_grad();
            let batch = PairedBatch::new(sums.clone())
                .unwrap()
                .with_scores(floats(case.scores.clone(), [b, k], &device))
                .unwrap()
                .with_lengths(floats(case.lengths.clone(), [b, k], &device))
                .unwrap();
            let out = RrhfConfig::new()
                .with_length_penalty(case.alpha)
                .with_rank_loss(case.rank_loss)
                .with_rank_weight(case.rank_weight)
                .with_ft_weight(case.ft_weight)
                .init()
                .unwrap()
                .forward(batch)
                .unwrap();
            assert_close(name, "RRHF losses", &to_vec(out.losses), &losses, 2e-4, 2e-5);
            let grad = to_vec(sums.grad(&out.loss.backward()).unwrap());
            assert_close(name, "∂L/∂S", &grad, &grads, 2e-4, 2e-5);
        }
    }
}

#[test]
fn rrhf_fine_tunes_the_best_scored_candidate_lowest_index_on_ties() {
    for (name, device) in devices() {
        // Prompt 0: best is column 2. Prompt 1: columns 1 and 3 tie for best → column 1.
        let sums = floats(
            vec![-4.0, -6.0, -9.0, -2.0, -5.0, -8.0, -1.0, -3.0],
            [2, 4],
            &device,
        );
        let lengths = floats(
            vec![2.0, 3.0, 3.0, 1.0, 5.0, 4.0, 2.0, 3.0],
            [2, 4],
            &device,
        );
        let scores = floats(
            vec![0.1, 0.5, 0.9, 0.2, 0.0, 7.0, 1.0, 7.0],
            [2, 4],
            &device,
        );
        let batch = PairedBatch::new(sums)
            .unwrap()
            .with_scores(scores)
            .unwrap()
            .with_lengths(lengths)
            .unwrap();
        let fine_tune_only = RrhfConfig::new().with_rank_weight(0.0).init().unwrap();
        assert_close(
            name,
            "fine-tune term",
            &losses_of(&fine_tune_only, batch),
            &[3.0, 2.0],
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn rrhf_needs_lengths() {
    for (_, device) in devices() {
        let batch = PairedBatch::new(floats(vec![-1.0, -2.0], [1, 2], &device)).unwrap();
        let err = RrhfConfig::new()
            .init()
            .unwrap()
            .forward(batch)
            .unwrap_err();
        assert!(
            matches!(err, PreferenceError::MissingInput { arg: "lengths", .. }),
            "{err}"
        );
    }
}
