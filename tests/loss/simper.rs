//! SimPER against an f64 reference written from the paper's equation (ranked lists with ties,
//! lengths, weights) and at log-probs down to −1e4, with gradients, on every device.

use burn_preference::loss::SimperLoss;
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::ranked::{Ranked, assert_matches, assert_rewards, ranked};
use crate::common::{autodiff_devices, cpu_autodiff_devices, to_vec};

/// SimPER in f64: `e = exp(S/max(|y|, 1))`; per ordered pair `i ≻ j` the loss `−e_i + e_j`, the
/// mean over a prompt's pairs. Returns the per-prompt losses and `∂L/∂policy` of the reduced
/// loss (`∂e/∂S = e/|y|`).
pub fn naive_simper(case: &Ranked) -> (Vec<f64>, Vec<f64>) {
    let mut losses = vec![0.0; case.prompts];
    let mut grad = vec![0.0; case.policy.len()];
    for p in 0..case.prompts {
        let length = |i: usize| f64::from(case.lengths[case.at(p, i)]).max(1.0);
        let e = |i: usize| (f64::from(case.policy[case.at(p, i)]) / length(i)).exp();
        let pairs = case.pairs(p);
        let n = pairs.len() as f64;
        for &(i, j) in &pairs {
            losses[p] += (-e(i) + e(j)) / n;
            grad[case.at(p, i)] -= e(i) / length(i) / n * case.share(p);
            grad[case.at(p, j)] += e(j) / length(j) / n * case.share(p);
        }
    }
    (losses, grad)
}

fn simper() -> SimperLoss {
    SimperConfig::new().init().expect("no hyperparameter")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Summed log-probs of −40 to 0 over lengths 0 (clamped to 1) to 30.
    #[test]
    fn simper_matches_f64_on_ranked_lists(case in ranked(-40.0..0.0)) {
        let (losses, grad) = naive_simper(&case);
        for (name, device) in cpu_autodiff_devices() {
            let (policy, batch) = case.batch(&device, true);
            let out = simper().forward(batch).expect("valid batch");
            assert_matches(name, "SimPER", &case, out, &policy, &losses, &grad, (2e-4, 2e-5));
        }
    }
}

/// On every device: log-probs of −1e4 to 0 with lengths 0, 1 and long (inverse perplexities
/// from e⁻¹⁰⁰⁰⁰ to 1) beside moderate prompts, ties, an all-tied prompt and weights: the
/// losses stay in [−1, 1], finite, and equal to the f64 reference.
#[test]
fn simper_matches_f64_on_every_device_down_to_minus_1e4() {
    let case = Ranked::new(
        vec![
            -3.0, -5.5, -1.0, //
            -4.0, -6.0, -2.5, //
            -7.0, -1.5, -1.25, //
            0.0, -1e4, -1e4, //
            0.0, -1e4, -1e4, //
            -1.0, -1e4, -5e3,
        ],
        vec![0.0; 18],
        3,
    )
    .with_scores(vec![
        2.0, 1.0, 1.0, //
        0.0, 2.0, 1.0, //
        1.0, 1.0, 1.0, //
        2.0, 1.0, 0.0, //
        1.0, 1.0, 0.0, //
        0.0, 2.0, 1.0,
    ])
    .with_lengths(vec![
        3.0, 7.0, 0.0, //
        1.0, 4.0, 6.0, //
        8.0, 3.0, 3.0, //
        0.0, 1.0, 4096.0, //
        1.0, 1e4, 0.0, //
        1.0, 2e4, 5e3,
    ])
    .with_weights(vec![1.0, 0.5, 0.0, 2.0, 2.5, 1.0]);
    let (losses, grad) = naive_simper(&case);
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, true);
        let out = simper().forward(batch).unwrap();
        let metrics = out.metrics.log().unwrap();
        assert_rewards(name, "SimPER", &case, &metrics, |p, i| {
            let length = f64::from(case.lengths[case.at(p, i)]).max(1.0);
            (f64::from(case.policy[case.at(p, i)]) / length).exp()
        });
        let got = to_vec(out.losses.clone());
        assert!(got.iter().all(|x| x.abs() <= 1.0), "[{name}] {got:?}");
        assert_matches(
            name,
            "SimPER",
            &case,
            out,
            &policy,
            &losses,
            &grad,
            (1e-5, 1e-6),
        );
    }
}
