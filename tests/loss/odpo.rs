//! ODPO against an f64 reference written from the paper's equation, with offsets given per
//! pair or computed from scores on ranked lists with ties, `odpo_offsets` against its formula,
//! the zero-offset closed form (DPO) and values at ±1e4, with gradients, on every device.

use burn_preference::loss::{OdpoLoss, odpo_offsets};
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::cases::f1;
use crate::common::ranked::{Ranked, assert_is_dpo, assert_matches, assert_rewards, ranked, rich};
use crate::common::reference::{as_f64, sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices, devices, to_vec};

/// ODPO in f64: per ordered pair `i ≻ j`, `z = β(ρ_i − ρ_j) − Δ_ij`, loss `softplus(−z)`, the
/// mean over a prompt's pairs; `Δ_ij = offsets[p]` when given, else `α·log(s_i − s_j)`.
/// Returns the per-prompt losses and `∂L/∂policy` of the reduced loss.
pub fn naive_odpo(
    case: &Ranked,
    offsets: Option<&[f32]>,
    beta: f64,
    alpha: f64,
    reference_free: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut losses = vec![0.0; case.prompts];
    let mut grad = vec![0.0; case.policy.len()];
    for p in 0..case.prompts {
        let pairs = case.pairs(p);
        let n = pairs.len() as f64;
        for &(i, j) in &pairs {
            let offset = match offsets {
                Some(offsets) => f64::from(offsets[p]),
                None => {
                    let s = case.scores_of(p).expect("scores");
                    alpha * (f64::from(s[i]) - f64::from(s[j])).ln()
                }
            };
            let h = case.ratio(p, i, reference_free) - case.ratio(p, j, reference_free);
            let z = beta * h - offset;
            losses[p] += softplus(-z) / n;
            let slope = -sigmoid(-z) * beta / n * case.share(p);
            grad[case.at(p, i)] += slope;
            grad[case.at(p, j)] -= slope;
        }
    }
    (losses, grad)
}

fn odpo(beta: f64, alpha: f64, reference_free: bool) -> OdpoLoss {
    OdpoConfig::new()
        .with_beta(beta)
        .with_alpha(alpha)
        .with_reference_free(reference_free)
        .init()
        .expect("config in range")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Pairs take explicit offsets (used as they are, whichever column the scores rank first)
    /// or offsets from scores; ranked lists take their offsets from scores (an unscored list
    /// is given distinct scores in column order).
    #[test]
    fn odpo_matches_f64_with_offsets_or_scores(
        case in ranked(-20.0..0.0),
        offsets in prop::collection::vec(-3.0f32..3.0, 3),
        explicit in any::<bool>(),
        beta in 0.05f64..1.0,
        alpha in 0.0f64..2.0,
        reference_free in any::<bool>(),
    ) {
        let mut case = case;
        let (b, k) = (case.prompts, case.candidates);
        let explicit = (explicit || case.scores.is_none()) && k == 2;
        if !explicit && case.scores.is_none() {
            let by_position = (0..b * k).map(|n| (k - n % k) as f32).collect();
            case = case.with_scores(by_position);
        }
        let offsets = &offsets[..b];
        let (losses, grad) =
            naive_odpo(&case, explicit.then_some(offsets), beta, alpha, reference_free);
        let loss = odpo(beta, alpha, reference_free);
        for (name, device) in cpu_autodiff_devices() {
            let (policy, mut batch) = case.batch(&device, false);
            if explicit {
                batch = batch.with_offsets(f1(offsets, &device)).expect("offsets [B]");
            }
            let out = loss.forward(batch).expect("valid batch");
            assert_matches(name, "ODPO", &case, out, &policy, &losses, &grad, (2e-4, 2e-5));
        }
    }
}

/// `odpo_offsets` is `α·log(s_w − s_l)`, detached; and a batch given those offsets has the loss
/// of the same batch given the scores.
#[test]
fn odpo_offsets_are_alpha_log_score_gaps_and_match_the_scores_path() {
    let (chosen, rejected) = ([8.0f32, 3.5, 1.0], [8.0 - std::f32::consts::E, 0.5, -1.0]);
    let alpha = 0.7;
    let expected: Vec<f64> = chosen
        .iter()
        .zip(&rejected)
        .map(|(&w, &l)| alpha * (f64::from(w) - f64::from(l)).ln())
        .collect();
    let case = Ranked::new(vec![-3.0, -4.0, -6.0, -5.0, -1.0, -1.5], vec![-3.5; 6], 2).with_scores(
        chosen
            .iter()
            .zip(&rejected)
            .flat_map(|(&w, &l)| [w, l])
            .collect(),
    );
    let loss = odpo(0.5, alpha, false);
    for (name, device) in autodiff_devices() {
        let scores_w = f1(&chosen, &device).require_grad();
        let offsets = odpo_offsets(scores_w.clone(), f1(&rejected, &device), alpha).unwrap();
        assert_close(
            name,
            "offsets",
            &to_vec(offsets.clone()),
            &expected,
            1e-6,
            1e-7,
        );
        let (_, from_scores) = case.batch(&device, false);
        let (_, unscored) = Ranked {
            scores: None,
            ..case.clone()
        }
        .batch(&device, false);
        let from_offsets = unscored.with_offsets(offsets.clone()).unwrap();
        let a = to_vec(loss.forward(from_scores).unwrap().losses);
        let b = to_vec(loss.forward(from_offsets).unwrap().losses);
        assert_close(name, "offsets vs scores", &a, &as_f64(&b), 1e-6, 1e-7);
        // Detached: an offset is data, and no gradient would reach the scores.
        assert!(
            !offsets.is_tracked(),
            "[{name}] the offsets are on the autodiff graph"
        );
    }
}

/// Zero offsets are DPO exactly: the same losses and gradient as `DpoConfig` at the same β.
#[test]
fn odpo_with_zero_offsets_is_dpo() {
    let case = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0],
        2,
    );
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let batch = batch.with_offsets(f1(&[0.0; 3], &device)).unwrap();
        let out = odpo(0.4, 1.0, false).forward(batch).unwrap();
        assert_is_dpo(name, &case, &device, 0.4, out, &policy, 1e-6);
    }
}

/// The rich batch (ties, an all-tied prompt, weights, log-ratios of ±1e4) with offsets from
/// its scores on every device: finite, and equal to the f64 reference.
#[test]
fn odpo_matches_f64_on_every_device_including_1e4() {
    let case = rich();
    let (losses, grad) = naive_odpo(&case, None, 0.5, 2.0, false);
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = odpo(0.5, 2.0, false).forward(batch).unwrap();
        let metrics = out.metrics.log().unwrap();
        assert_rewards(name, "ODPO", &case, &metrics, |p, i| {
            0.5 * case.ratio(p, i, false)
        });
        assert_matches(
            name,
            "ODPO",
            &case,
            out,
            &policy,
            &losses,
            &grad,
            (1e-5, 1e-6),
        );
    }
}

/// Offsets on a pair whose scores tie form no pair: the prompt contributes 0.
#[test]
fn odpo_tied_scores_form_no_pair() {
    for (name, device) in devices() {
        let case = Ranked::new(vec![-1.0, -2.0, -3.0, -1.0], vec![-2.0; 4], 2)
            .with_scores(vec![1.0, 1.0, 2.0, 0.0]);
        let (_, batch) = case.batch(&device, false);
        let out = odpo(1.0, 1.0, false).forward(batch).unwrap();
        // Prompt 1: z = (−1 − 1) − log 2.
        let expected = [0.0, softplus(2.0 + 2f64.ln())];
        assert_close(name, "losses", &to_vec(out.losses), &expected, 1e-6, 1e-7);
    }
}
