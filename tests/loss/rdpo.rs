//! R-DPO against an f64 reference written from the paper's equation (ranked lists with ties,
//! lengths, weights, reference-free), its α = 0 closed form (DPO) and its values at ±1e4, with
//! gradients, on every device.

use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::ranked::{Ranked, assert_is_dpo, assert_matches, assert_rewards, ranked, rich};
use crate::common::reference::{sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices, to_vec};

/// R-DPO in f64: per ordered pair `i ≻ j`, `z = β(ρ_i − ρ_j) − α(|y_i| − |y_j|)`, loss
/// `softplus(−z)`, the mean over a prompt's pairs. Returns the per-prompt losses and
/// `∂L/∂policy` of the reduced loss.
pub fn naive_rdpo(
    case: &Ranked,
    beta: f64,
    alpha: f64,
    reference_free: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut losses = vec![0.0; case.prompts];
    let mut grad = vec![0.0; case.policy.len()];
    for p in 0..case.prompts {
        let pairs = case.pairs(p);
        let n = pairs.len() as f64;
        let length = |i: usize| f64::from(case.lengths[case.at(p, i)]);
        for &(i, j) in &pairs {
            let h = case.ratio(p, i, reference_free) - case.ratio(p, j, reference_free);
            let z = beta * h - alpha * (length(i) - length(j));
            losses[p] += softplus(-z) / n;
            let slope = -sigmoid(-z) * beta / n * case.share(p);
            grad[case.at(p, i)] += slope;
            grad[case.at(p, j)] -= slope;
        }
    }
    (losses, grad)
}

fn rdpo(beta: f64, alpha: f64, reference_free: bool) -> burn_preference::loss::RdpoLoss {
    RdpoConfig::new()
        .with_beta(beta)
        .with_alpha(alpha)
        .with_reference_free(reference_free)
        .init()
        .expect("config in range")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn rdpo_matches_f64_on_ranked_lists(
        case in ranked(-20.0..0.0),
        beta in 0.05f64..1.0,
        alpha in prop_oneof![Just(0.0), 0.0f64..0.2],
        reference_free in any::<bool>(),
    ) {
        let (losses, grad) = naive_rdpo(&case, beta, alpha, reference_free);
        let loss = rdpo(beta, alpha, reference_free);
        for (name, device) in cpu_autodiff_devices() {
            let (policy, batch) = case.batch(&device, true);
            let out = loss.forward(batch).expect("valid batch");
            assert_matches(name, "R-DPO", &case, out, &policy, &losses, &grad, (2e-4, 2e-5));
        }
    }
}

/// α = 0 is DPO exactly, whatever the lengths: the same losses and gradient as `DpoConfig` at
/// the same β on a ranked list with ties.
#[test]
fn rdpo_at_alpha_zero_is_dpo() {
    let case = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0, -2.5, -2.5],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0, -2.0, -3.5],
        4,
    )
    .with_scores(vec![2.0, 1.0, 1.0, 0.0, 0.0, 3.0, 3.0, 1.0])
    .with_lengths(vec![3.0, 40.0, 7.0, 1.0, 12.0, 2.0, 9.0, 30.0]);
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, true);
        let out = rdpo(0.4, 0.0, false).forward(batch).unwrap();
        assert_is_dpo(name, &case, &device, 0.4, out, &policy, 1e-6);
    }
}

/// The length term by hand: 20 extra chosen tokens at α = 0.01 cancel a margin of 0.2.
#[test]
fn rdpo_charges_the_chosen_response_for_its_extra_tokens() {
    // h = 2 for both pairs; lengths (30, 10) and (10, 30).
    let case = Ranked::new(vec![-12.0, -14.0, -12.0, -14.0], vec![-13.0; 4], 2)
        .with_lengths(vec![30.0, 10.0, 10.0, 30.0]);
    let (beta, alpha) = (0.1, 0.01);
    let z = [0.1 * 2.0 - 0.01 * 20.0, 0.1 * 2.0 + 0.01 * 20.0];
    let expected = z.map(|z: f64| softplus(-z));
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, true);
        let out = rdpo(beta, alpha, false).forward(batch).unwrap();
        assert_close(
            name,
            "losses",
            &to_vec(out.losses.clone()),
            &expected,
            1e-6,
            1e-7,
        );
        let s = z.map(|z| -sigmoid(-z) * beta / 2.0);
        let got = to_vec(policy.grad(&out.loss.backward()).unwrap());
        assert_close(
            name,
            "∂L/∂policy",
            &got,
            &[s[0], -s[0], s[1], -s[1]],
            1e-5,
            1e-8,
        );
    }
}

/// The rich batch (ties, an all-tied prompt, weights, log-ratios of ±1e4 and lengths up to
/// 4096) on every device: finite, and equal to the f64 reference.
#[test]
fn rdpo_matches_f64_on_every_device_including_1e4() {
    let case = rich();
    let (losses, grad) = naive_rdpo(&case, 0.5, 0.05, false);
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, true);
        let out = rdpo(0.5, 0.05, false).forward(batch).unwrap();
        let metrics = out.metrics.log().unwrap();
        assert_rewards(name, "R-DPO", &case, &metrics, |p, i| {
            0.5 * case.ratio(p, i, false)
        });
        assert_matches(
            name,
            "R-DPO",
            &case,
            out,
            &policy,
            &losses,
            &grad,
            (1e-5, 1e-6),
        );
    }
}
