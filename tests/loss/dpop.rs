//! DPOP against an f64 reference written from the paper's equation (ranked lists with ties,
//! weights), its λ = 0 closed form (DPO) and its values at ±1e4, with gradients, on every
//! device.

use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::ranked::{Ranked, assert_is_dpo, assert_matches, assert_rewards, ranked, rich};
use crate::common::reference::{sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices, to_vec};

/// DPOP in f64: per ordered pair `i ≻ j`, `z = β(ρ_i − ρ_j − λ·max(0, −ρ_i))`, loss
/// `softplus(−z)`, the mean over a prompt's pairs. Returns the per-prompt losses and
/// `∂L/∂policy` of the reduced loss.
pub fn naive_dpop(case: &Ranked, beta: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let mut losses = vec![0.0; case.prompts];
    let mut grad = vec![0.0; case.policy.len()];
    for p in 0..case.prompts {
        let pairs = case.pairs(p);
        let n = pairs.len() as f64;
        for &(i, j) in &pairs {
            let (ri, rj) = (case.ratio(p, i, false), case.ratio(p, j, false));
            let z = beta * (ri - rj - lambda * (-ri).max(0.0));
            losses[p] += softplus(-z) / n;
            // ∂softplus(−z)/∂z = −σ(−z); ∂z/∂ρ_i = β(1 + λ·[ρ_i < 0]), ∂z/∂ρ_j = −β.
            let slope = -sigmoid(-z) / n * case.share(p);
            let penalty = if ri < 0.0 { lambda } else { 0.0 };
            grad[case.at(p, i)] += slope * beta * (1.0 + penalty);
            grad[case.at(p, j)] -= slope * beta;
        }
    }
    (losses, grad)
}

fn dpop(beta: f64, lambda: f64) -> burn_preference::loss::DpopLoss {
    DpopConfig::new()
        .with_beta(beta)
        .with_lambda(lambda)
        .init()
        .expect("config in range")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Values and gradients on random ranked lists with ties and weights; λ spans 0 to the
    /// paper's 50, so both sides of the penalty's kink are reached.
    #[test]
    fn dpop_matches_f64_on_ranked_lists(
        case in ranked(-20.0..0.0),
        beta in 0.05f64..1.0,
        lambda in prop_oneof![Just(0.0), 0.0f64..60.0],
    ) {
        let (losses, grad) = naive_dpop(&case, beta, lambda);
        let loss = dpop(beta, lambda);
        for (name, device) in cpu_autodiff_devices() {
            let (policy, batch) = case.batch(&device, false);
            let out = loss.forward(batch).expect("valid batch");
            assert_matches(name, "DPOP", &case, out, &policy, &losses, &grad, (2e-4, 2e-5));
        }
    }
}

/// λ = 0 is DPO exactly, on a ranked list with ties (the mean over ordered pairs): the same
/// losses and the same gradient as `DpoConfig` at the same β.
#[test]
fn dpop_at_lambda_zero_is_dpo() {
    let case = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0, -2.5, -2.5],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0, -2.0, -3.5],
        4,
    )
    .with_scores(vec![2.0, 1.0, 1.0, 0.0, 0.0, 3.0, 3.0, 1.0]);
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = dpop(0.3, 0.0).forward(batch).unwrap();
        assert_is_dpo(name, &case, &device, 0.3, out, &policy, 1e-6);
    }
}

/// The paper's penalty at its default λ = 50 on hand-picked pairs: a chosen log-ratio below 0
/// and two above.
#[test]
fn dpop_penalises_only_a_chosen_ratio_below_zero() {
    // ρ_w = −1, 0.5, 2; ρ_l = −3, −0.5, 1 (reference 0).
    let case = Ranked::new(vec![-1.0, -3.0, 0.5, -0.5, 2.0, 1.0], vec![0.0; 6], 2);
    let (beta, lambda) = (0.3, 50.0);
    // z = β(ρ_w − ρ_l − λ·max(0, −ρ_w)): 0.3·(2 − 50) = −14.4, 0.3·1, 0.3·1.
    let expected = [softplus(14.4), softplus(-0.3), softplus(-0.3)];
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = dpop(beta, lambda).forward(batch).unwrap();
        assert_close(
            name,
            "losses",
            &to_vec(out.losses.clone()),
            &expected,
            1e-6,
            1e-7,
        );
        // ∂/∂ρ_w = −σ(−z)·β·(1 + λ·[ρ_w < 0]) / B, ∂/∂ρ_l = σ(−z)·β / B: the first pair's
        // chosen slope carries the factor 1 + λ = 51.
        let slope = |z: f64, penalised: bool| {
            let factor = if penalised { 1.0 + lambda } else { 1.0 };
            -sigmoid(-z) * beta * factor / 3.0
        };
        let grad = [
            slope(-14.4, true),
            sigmoid(14.4) * beta / 3.0,
            slope(0.3, false),
            sigmoid(-0.3) * beta / 3.0,
            slope(0.3, false),
            sigmoid(-0.3) * beta / 3.0,
        ];
        let got = to_vec(policy.grad(&out.loss.backward()).unwrap());
        assert_close(name, "∂L/∂policy", &got, &grad, 1e-5, 1e-8);
    }
}

/// The rich batch (ties, an all-tied prompt, weights, log-ratios of ±1e4 where z reaches
/// ~3·10⁵ at λ = 50) on every device: finite, and equal to the f64 reference.
#[test]
fn dpop_matches_f64_on_every_device_including_1e4() {
    let case = rich();
    let (losses, grad) = naive_dpop(&case, 0.3, 50.0);
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = dpop(0.3, 50.0).forward(batch).unwrap();
        let metrics = out.metrics.log().unwrap();
        assert_rewards(name, "DPOP", &case, &metrics, |p, i| {
            0.3 * case.ratio(p, i, false)
        });
        assert_matches(
            name,
            "DPOP",
            &case,
            out,
            &policy,
            &losses,
            &grad,
            (1e-5, 1e-6),
        );
    }
}
