//! LiPO-λ against an f64 reference written from the paper's equation (graded lists with ties,
//! the policy's ranks with ties by position, weights), its K = 2 closed form (a multiple of
//! DPO) and its values at ±1e4 and at the largest grade, with gradients, on every device.

use burn_preference::loss::{LIPO_MAX_GRADE, LipoLoss};
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::ranked::{Ranked, assert_matches, assert_rewards, ranked, rich};
use crate::common::reference::{as_f64, sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices, floats, to_vec};

/// LiPO-λ in f64: per prompt `Σ_{ψ_i > ψ_j} Δ_ij·softplus(−(s_i − s_j))`, `s = β·ρ`,
/// `Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|` (held constant), `G = 2^ψ − 1`,
/// `D(τ) = log₂(1 + τ)`, `τ` the 1-based rank by `s`, highest first, ties by position.
/// Returns the per-prompt losses and `∂L/∂policy` of the reduced loss.
///
/// The ranks are taken on `s` as the device computes it in f32 (`(π − π_ref)·β`), so that a
/// near-tie sorts as it does there; the loss itself is in f64.
pub fn naive_lipo(case: &Ranked, beta: f64, reference_free: bool) -> (Vec<f64>, Vec<f64>) {
    let k = case.candidates;
    let grades = case.scores.as_ref().expect("LiPO grades");
    let mut losses = vec![0.0; case.prompts];
    let mut grad = vec![0.0; case.policy.len()];
    for p in 0..case.prompts {
        let s32: Vec<f32> = (0..k)
            .map(|i| {
                let policy = case.policy[case.at(p, i)];
                let ratio = if reference_free {
                    policy
                } else {
                    policy - case.reference[case.at(p, i)]
                };
                ratio * beta as f32
            })
            .collect();
        let rank = |i: usize| {
            let ahead = (0..k)
                .filter(|&j| s32[j] > s32[i] || (s32[j] == s32[i] && j < i))
                .count();
            (ahead + 1) as f64
        };
        let discount = |i: usize| 1.0 / (1.0 + rank(i)).log2();
        let gain = |i: usize| 2f64.powf(f64::from(grades[case.at(p, i)])) - 1.0;
        for (i, j) in case.pairs(p) {
            let delta = (gain(i) - gain(j)).abs() * (discount(i) - discount(j)).abs();
            let h = beta * (case.ratio(p, i, reference_free) - case.ratio(p, j, reference_free));
            losses[p] += delta * softplus(-h);
            let slope = -delta * sigmoid(-h) * beta * case.share(p);
            grad[case.at(p, i)] += slope;
            grad[case.at(p, j)] -= slope;
        }
    }
    (losses, grad)
}

fn lipo(beta: f64, reference_free: bool) -> LipoLoss {
    LipoConfig::new()
        .with_beta(beta)
        .with_reference_free(reference_free)
        .init()
        .expect("config in range")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Grades 0–2 with ties; log-probs on a grid of halves half the time, so that the
    /// policy's rewards tie and the ranks fall back on position.
    #[test]
    fn lipo_matches_f64_on_graded_lists(
        case in ranked(-8.0..0.0),
        grades in prop::collection::vec((0..3i32).prop_map(|g| g as f32), 12),
        grid in any::<bool>(),
        beta in 0.05f64..2.0,
        reference_free in any::<bool>(),
    ) {
        let mut case = case;
        let n = case.policy.len();
        if grid {
            let round = |v: &mut Vec<f32>| v.iter_mut().for_each(|x| *x = (*x * 2.0).round() / 2.0);
            round(&mut case.policy);
            round(&mut case.reference);
        }
        let case = case.with_scores(grades[..n].to_vec());
        let (losses, grad) = naive_lipo(&case, beta, reference_free);
        let loss = lipo(beta, reference_free);
        for (name, device) in cpu_autodiff_devices() {
            let (policy, batch) = case.batch(&device, false);
            let out = loss.forward(batch).expect("valid batch");
            assert_matches(name, "LiPO", &case, out, &policy, &losses, &grad, (2e-4, 2e-5));
        }
    }
}

/// K = 2: `Δ = (1 − 1/log₂3)·|G_1 − G_2|`, so each prompt's loss is that multiple of DPO's (0
/// for tied grades), and so is its gradient.
#[test]
fn lipo_at_k2_is_a_multiple_of_dpo() {
    let case = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0, -2.5, -2.5],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0, -2.0, -3.5],
        2,
    )
    .with_scores(vec![1.0, 0.0, 0.0, 3.0, 2.0, 2.0, 4.0, 1.0]);
    let c = 1.0 - 1.0 / 3f64.log2();
    // |G_1 − G_2| per prompt: 1, 7, 0, 14.
    let multiple = [c, 7.0 * c, 0.0, 14.0 * c];
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = lipo(0.7, false).forward(batch).unwrap();
        let (dpo_policy, dpo_batch) = case.batch(&device, false);
        let dpo = DpoConfig::new()
            .with_beta(0.7)
            .init()
            .unwrap()
            .forward(dpo_batch)
            .unwrap();
        let expected: Vec<f64> = as_f64(&to_vec(dpo.losses.clone()))
            .iter()
            .zip(multiple)
            .map(|(l, m)| l * m)
            .collect();
        assert_close(
            name,
            "losses",
            &to_vec(out.losses.clone()),
            &expected,
            1e-5,
            1e-7,
        );
        let got = to_vec(policy.grad(&out.loss.backward()).unwrap());
        let factors = floats(multiple.map(|m| m as f32).to_vec(), [4], &device);
        let scaled = dpo.losses.mul(factors).mean();
        let want = as_f64(&to_vec(dpo_policy.grad(&scaled.backward()).unwrap()));
        assert_close(name, "∂L/∂policy", &got, &want, 1e-5, 1e-8);
    }
}

/// The weights by hand on one list of three, β = 1, reference 0: rewards (0, 2, 1) rank the
/// candidates 3, 1, 2; grades (2, 1, 0) give gains 3, 1, 0.
#[test]
fn lipo_weighs_pairs_by_the_swap_in_ndcg() {
    let case = Ranked::new(vec![0.0, 2.0, 1.0], vec![0.0; 3], 3).with_scores(vec![2.0, 1.0, 0.0]);
    let d = |rank: f64| 1.0 / (1.0 + rank).log2();
    // (0 ≻ 1): |3 − 1|·|D(3) − D(1)|; (0 ≻ 2): |3 − 0|·|D(3) − D(2)|; (1 ≻ 2): |1|·|D(1) − D(2)|.
    let terms = [
        (2.0 * (d(3.0) - d(1.0)).abs(), -2.0),
        (3.0 * (d(3.0) - d(2.0)).abs(), -1.0),
        ((d(1.0) - d(2.0)).abs(), 1.0),
    ];
    let expected = [terms.iter().map(|(w, h)| w * softplus(-h)).sum::<f64>()];
    let slope = |t: usize| -terms[t].0 * sigmoid(-terms[t].1);
    let grad = [
        slope(0) + slope(1),
        -slope(0) + slope(2),
        -slope(1) - slope(2),
    ];
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = lipo(1.0, false).forward(batch).unwrap();
        assert_matches(
            name,
            "by hand",
            &case,
            out,
            &policy,
            &expected,
            &grad,
            (1e-5, 1e-7),
        );
    }
}

/// The rich batch (tied grades, an all-tied prompt, weights, rewards of ±1e4) on every
/// device, and the largest grade LiPO takes (gain 2⁶⁴ − 1) in place of its top grades: finite,
/// and equal to the f64 reference.
#[test]
fn lipo_matches_f64_on_every_device_including_1e4_and_the_largest_grade() {
    let case = rich();
    let mut top = case.clone();
    if let Some(grades) = top.scores.as_mut() {
        grades
            .iter_mut()
            .filter(|g| **g >= 2.0)
            .for_each(|g| *g = LIPO_MAX_GRADE as f32);
    }
    for case in [case, top] {
        let (losses, grad) = naive_lipo(&case, 1.0, false);
        for (name, device) in autodiff_devices() {
            let (policy, batch) = case.batch(&device, false);
            let out = lipo(1.0, false).forward(batch).unwrap();
            let metrics = out.metrics.log().unwrap();
            assert_rewards(name, "LiPO", &case, &metrics, |p, i| {
                case.ratio(p, i, false)
            });
            assert_matches(
                name,
                "LiPO",
                &case,
                out,
                &policy,
                &losses,
                &grad,
                (1e-5, 1e-6),
            );
        }
    }
}
