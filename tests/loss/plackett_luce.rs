//! Plackett–Luce DPO against an f64 reference written from the ranking likelihood (ties share a
//! stage, Breslow), its K = 2 closed form (DPO), a tied list by hand and values at ±1e4, with
//! gradients, on every device.

use burn::tensor::Tensor;
use burn_preference::loss::PlackettLuceLoss;
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::ranked::{Ranked, assert_is_dpo, assert_matches, assert_rewards, ranked, rich};
use crate::common::reference::as_f64;
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices, to_vec};

/// `log Σ exp` of `values`, about their maximum.
fn logsumexp(values: &[f64]) -> f64 {
    let m = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + values.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// Plackett–Luce in f64: per prompt `−Σ_k [r_k − log Σ_{j not ranked above k} exp(r_j)]` over
/// the candidates `k` that beat at least one other, `r = β·ρ`. Returns the per-prompt losses
/// and `∂L/∂policy` of the reduced loss: `β·(Σ_k softmax_k(j)·[j in k's pool] − [j picks])`.
pub fn naive_plackett_luce(case: &Ranked, beta: f64, reference_free: bool) -> (Vec<f64>, Vec<f64>) {
    let k = case.candidates;
    let mut losses = vec![0.0; case.prompts];
    let mut grad = vec![0.0; case.policy.len()];
    for p in 0..case.prompts {
        let pairs = case.pairs(p);
        let beats = |i: usize, j: usize| pairs.contains(&(i, j));
        let r: Vec<f64> = (0..k)
            .map(|i| beta * case.ratio(p, i, reference_free))
            .collect();
        for pick in (0..k).filter(|&i| (0..k).any(|j| beats(i, j))) {
            let pool: Vec<usize> = (0..k).filter(|&j| !beats(j, pick)).collect();
            let lse = logsumexp(&pool.iter().map(|&j| r[j]).collect::<Vec<_>>());
            losses[p] += lse - r[pick];
            for &j in &pool {
                grad[case.at(p, j)] += (r[j] - lse).exp() * beta * case.share(p);
            }
            grad[case.at(p, pick)] -= beta * case.share(p);
        }
    }
    (losses, grad)
}

fn plackett_luce(beta: f64, reference_free: bool) -> PlackettLuceLoss {
    PlackettLuceConfig::new()
        .with_beta(beta)
        .with_reference_free(reference_free)
        .init()
        .expect("config in range")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn plackett_luce_matches_f64_on_ranked_lists(
        case in ranked(-20.0..0.0),
        beta in 0.05f64..2.0,
        reference_free in any::<bool>(),
    ) {
        let (losses, grad) = naive_plackett_luce(&case, beta, reference_free);
        let loss = plackett_luce(beta, reference_free);
        for (name, device) in cpu_autodiff_devices() {
            let (policy, batch) = case.batch(&device, false);
            let out = loss.forward(batch).expect("valid batch");
            let tol = (2e-4, 2e-5);
            assert_matches(name, "Plackett-Luce", &case, out, &policy, &losses, &grad, tol);
        }
    }
}

/// K = 2 is DPO exactly, pairs ranked by position or by scores (a tie: 0 for both), with the
/// same gradient as `DpoConfig` at the same β.
#[test]
fn plackett_luce_at_k2_is_dpo() {
    let pairs = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0, -2.5, -2.5],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0, -2.0, -3.5],
        2,
    );
    let scored = pairs
        .clone()
        .with_scores(vec![1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 0.5, 0.0]);
    for case in [pairs, scored] {
        for (name, device) in autodiff_devices() {
            let (policy, batch) = case.batch(&device, false);
            let out = plackett_luce(0.7, false).forward(batch).unwrap();
            assert_is_dpo(name, &case, &device, 0.7, out, &policy, 1e-5);
        }
    }
}

/// Ties by hand, β = 1, reference 0: scores (2, 1, 1, 0) pick the first against all four, then
/// each tied response against the tied pair and the last, and the last picks nothing; a list
/// whose responses all tie contributes 0.
#[test]
fn plackett_luce_ties_share_a_stage() {
    let r = [1.0f64, -0.5, 0.25, 2.0];
    let case = Ranked::new(
        r.iter()
            .map(|&x| x as f32)
            .chain([-1.0, 3.0, 0.0, 2.0])
            .collect(),
        vec![0.0; 8],
        4,
    )
    .with_scores(vec![2.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0, 5.0]);
    let lse = |v: &[f64]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
    let tail = lse(&r[1..]);
    let first = lse(&r) - r[0];
    let expected = [first + (tail - r[1]) + (tail - r[2]), 0.0];
    // ∂/∂r_j: Σ over the stages whose pool holds j of softmax(j) − [j picks], over B = 2.
    let soft = |j: usize, pool: f64| (r[j] - pool).exp();
    let grad = [
        (soft(0, lse(&r)) - 1.0) / 2.0,
        (soft(1, lse(&r)) + 2.0 * soft(1, tail) - 1.0) / 2.0,
        (soft(2, lse(&r)) + 2.0 * soft(2, tail) - 1.0) / 2.0,
        (soft(3, lse(&r)) + 2.0 * soft(3, tail)) / 2.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = plackett_luce(1.0, false).forward(batch).unwrap();
        assert_matches(
            name,
            "tied",
            &case,
            out,
            &policy,
            &expected,
            &grad,
            (1e-5, 1e-7),
        );
    }
}

/// The rich batch (ties, an all-tied prompt, weights, rewards of ±1e4: log Σ exp about its
/// maximum) on every device: finite, and equal to the f64 reference.
#[test]
fn plackett_luce_matches_f64_on_every_device_including_1e4() {
    let case = rich();
    let (losses, grad) = naive_plackett_luce(&case, 1.0, false);
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = plackett_luce(1.0, false).forward(batch).unwrap();
        let metrics = out.metrics.log().unwrap();
        assert_rewards(name, "Plackett-Luce", &case, &metrics, |p, i| {
            case.ratio(p, i, false)
        });
        assert_matches(
            name,
            "Plackett-Luce",
            &case,
            out,
            &policy,
            &losses,
            &grad,
            (1e-5, 1e-6),
        );
    }
}

/// A reference that gives the best response probability 0 makes its log-ratio +inf: the pick
/// has DPO's limit there (loss 0, gradient 0), not the NaN of inf − inf; the other prompt is
/// untouched.
#[test]
fn plackett_luce_at_an_infinite_log_ratio_is_dpos_limit() {
    for (name, device) in autodiff_devices() {
        let policy = Tensor::<2>::from_floats([[-1.0, -3.0], [-2.0, -2.5]], &device).require_grad();
        let reference =
            Tensor::<2>::from_floats([[f32::NEG_INFINITY, -2.0], [-2.2, -2.0]], &device);
        let batch = |policy: Tensor<2>| {
            PairedBatch::new(policy)
                .unwrap()
                .with_reference(reference.clone())
                .unwrap()
        };
        let out = plackett_luce(0.5, false)
            .forward(batch(policy.clone()))
            .unwrap();
        let dpo_policy = policy.clone().detach().require_grad();
        let dpo = DpoConfig::new()
            .with_beta(0.5)
            .init()
            .unwrap()
            .forward(batch(dpo_policy.clone()))
            .unwrap();
        let expected = as_f64(&to_vec(dpo.losses));
        assert_eq!(expected[0], 0.0, "[{name}] DPO's limit");
        assert_close(name, "losses", &to_vec(out.losses), &expected, 1e-6, 1e-7);
        let got = to_vec(policy.grad(&out.loss.backward()).unwrap());
        let want = as_f64(&to_vec(dpo_policy.grad(&dpo.loss.backward()).unwrap()));
        assert!(got.iter().all(|g| g.is_finite()), "[{name}] {got:?}");
        assert_close(name, "∂L/∂policy", &got, &want, 1e-6, 1e-8);
    }
}
