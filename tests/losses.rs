//! The losses (SPEC §2–§6) against SPEC §5's closed forms and naive f64 references written
//! here, with autodiff gradients against the analytic derivatives, on every device.

mod common;

use burn::tensor::{Device, Tensor};
use burn_preference::{
    DpoConfig, IpoConfig, PreferenceBatch, PreferenceError, PreferenceLoss, PreferenceOutput, Psi,
    PsiPoConfig, RankLoss, Reduction, RrhfConfig, SequenceLogpsConfig, categorical_kl,
    ranking_accuracy, token_kl,
};
use common::{assert_close, autodiff_devices, devices, floats, ints, to_vec};
use proptest::prelude::*;

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn scalar(tensor: Tensor<1>) -> f64 {
    f64::from(to_vec(tensor)[0])
}

/// Per-pair ΨPO loss and `∂L/∂h` in f64, straight from SPEC §3: the label `q` (1 for a hard
/// label) is smoothed to `q(1 − ε) + (1 − q)ε`.
fn naive_pair(psi: Psi, beta: f64, eps: f64, q: Option<f64>, h: f64) -> (f64, f64) {
    let q = q.unwrap_or(1.0);
    let q = q * (1.0 - eps) + (1.0 - q) * eps;
    match psi {
        Psi::Logit => {
            let x = beta * h;
            let loss = q * softplus(-x) + (1.0 - q) * softplus(x);
            (loss, beta * (-q * sigmoid(-x) + (1.0 - q) * sigmoid(x)))
        }
        Psi::Identity => {
            let target = (2.0 * q - 1.0) / (2.0 * beta);
            ((h - target).powi(2), 2.0 * (h - target))
        }
    }
}

/// A pairwise batch whose margins are `h` exactly: reference-free, rejected at 0.
/// Returns the loss output and the gradient with respect to the chosen log-probs.
fn loss_and_grad_at(
    config: &PsiPoConfig,
    margins: &[f32],
    device: &Device,
) -> (PreferenceOutput, Vec<f32>) {
    let n = margins.len();
    let chosen = floats(margins.to_vec(), [n], device).require_grad();
    let rejected = floats(vec![0.0; n], [n], device);
    let batch = PreferenceBatch::pairwise(chosen.clone(), rejected).unwrap();
    let out = config
        .clone()
        .with_reference_free(true)
        .with_reduction(Reduction::Sum)
        .init()
        .unwrap()
        .forward(batch)
        .unwrap();
    let grads = out.loss.clone().backward();
    let grad = to_vec(
        chosen
            .grad(&grads)
            .expect("gradient of the chosen log-probs"),
    );
    (out, grad)
}

#[test]
fn dpo_and_ipo_match_spec_closed_forms() {
    let dpo = PsiPoConfig::new(Psi::Logit);
    let ipo = PsiPoConfig::new(Psi::Identity);
    for (name, device) in autodiff_devices() {
        // DPO at h = 0: ln 2 and −β/2; at β = 0.1, h = 2: 0.598139 and −0.045017.
        let (out, grad) = loss_and_grad_at(&dpo, &[0.0, 2.0], &device);
        assert_close(
            name,
            "DPO loss",
            &to_vec(out.losses),
            &[std::f64::consts::LN_2, 0.598139],
            1e-5,
            1e-6,
        );
        assert_close(name, "DPO gradient", &grad, &[-0.05, -0.045017], 1e-4, 1e-6);

        // IPO, τ = 0.1: loss 9 at h = 2, zero loss and gradient at h = 1/(2τ) = 5,
        // ∂L/∂h = 2(h − 5).
        let (out, grad) = loss_and_grad_at(&ipo, &[2.0, 5.0, 7.5], &device);
        assert_close(
            name,
            "IPO loss",
            &to_vec(out.losses),
            &[9.0, 0.0, 6.25],
            1e-5,
            1e-6,
        );
        assert_close(name, "IPO gradient", &grad, &[-6.0, 0.0, 5.0], 1e-5, 1e-6);
    }
}

#[test]
fn conservative_dpo_is_minimised_at_the_spec_margin() {
    for (name, device) in autodiff_devices() {
        // β h* = log((1 − ε)/ε): 2.197225 for ε = 0.1, 1.386294 for ε = 0.2 (SPEC §5).
        for (eps, beta_h) in [(0.1, 2.197225f32), (0.2, 1.386294)] {
            let config = PsiPoConfig::new(Psi::Logit)
                .with_beta(1.0)
                .with_label_smoothing(eps);
            let (_, grad) =
                loss_and_grad_at(&config, &[beta_h - 0.5, beta_h, beta_h + 0.5], &device);
            assert!(
                grad[0] < 0.0 && grad[2] > 0.0,
                "[{name}] ε = {eps}: not a minimum: {grad:?}"
            );
            assert!(
                grad[1].abs() < 1e-6,
                "[{name}] ε = {eps}: gradient {} at the minimiser",
                grad[1]
            );
        }
    }
}

#[derive(Debug, Clone)]
struct PairCase {
    psi: Psi,
    beta: f64,
    eps: f64,
    soft_labels: Option<Vec<f64>>,
    chosen: Vec<f32>,
    rejected: Vec<f32>,
    ref_chosen: Vec<f32>,
    ref_rejected: Vec<f32>,
    reduction: Reduction,
}

fn pair_case() -> impl Strategy<Value = PairCase> {
    let values = |b| prop::collection::vec(-30.0f32..30.0, b);
    (1..=4usize)
        .prop_flat_map(move |b| {
            (
                prop_oneof![Just(Psi::Logit), Just(Psi::Identity)],
                0.01f64..5.0,
                prop_oneof![Just(0.0), 0.0f64..0.49],
                prop::option::of(prop::collection::vec(0.0f64..=1.0, b)),
                (values(b), values(b), values(b), values(b)),
                prop_oneof![
                    Just(Reduction::Mean),
                    Just(Reduction::Sum),
                    Just(Reduction::None)
                ],
            )
        })
        .prop_map(
            |(psi, beta, eps, soft_labels, (c, r, rc, rr), reduction)| PairCase {
                psi,
                beta,
                eps,
                soft_labels,
                chosen: c,
                rejected: r,
                ref_chosen: rc,
                ref_rejected: rr,
                reduction,
            },
        )
}

fn check_pair_case(case: &PairCase, name: &str, device: &Device) {
    let b = case.chosen.len();
    let chosen = floats(case.chosen.clone(), [b], device).require_grad();
    let rejected = floats(case.rejected.clone(), [b], device).require_grad();
    let reference = floats(case.ref_chosen.clone(), [b], device).require_grad();
    let mut batch = PreferenceBatch::pairwise(chosen.clone(), rejected.clone())
        .unwrap()
        .with_pairwise_reference(
            reference.clone(),
            floats(case.ref_rejected.clone(), [b], device),
        )
        .unwrap();
    if let Some(q) = &case.soft_labels {
        let q = q.iter().map(|&q| q as f32).collect();
        batch = batch.with_soft_labels(floats(q, [b], device)).unwrap();
    }
    let out = PsiPoConfig::new(case.psi)
        .with_beta(case.beta)
        .with_label_smoothing(case.eps)
        .with_reduction(case.reduction)
        .init()
        .unwrap()
        .forward(batch)
        .unwrap();

    let (mut losses, mut slopes) = (Vec::new(), Vec::new());
    for i in 0..b {
        let h = (f64::from(case.chosen[i]) - f64::from(case.ref_chosen[i]))
            - (f64::from(case.rejected[i]) - f64::from(case.ref_rejected[i]));
        // The soft label is stored in f32, as the crate receives it.
        let q = case.soft_labels.as_ref().map(|q| f64::from(q[i] as f32));
        let (loss, slope) = naive_pair(case.psi, case.beta, case.eps, q, h);
        losses.push(loss);
        slopes.push(slope);
    }
    let scale = if case.reduction == Reduction::Mean {
        1.0 / b as f64
    } else {
        1.0
    };
    let expected_loss = match case.reduction {
        Reduction::Mean => vec![losses.iter().sum::<f64>() * scale],
        Reduction::Sum => vec![losses.iter().sum::<f64>()],
        Reduction::None => losses.clone(),
    };
    assert_close(
        name,
        "per-pair losses",
        &to_vec(out.losses),
        &losses,
        2e-4,
        2e-5,
    );
    assert_close(
        name,
        "reduced loss",
        &to_vec(out.loss.clone()),
        &expected_loss,
        2e-4,
        2e-5,
    );

    let grads = out.loss.sum().backward();
    let expected: Vec<f64> = slopes.iter().map(|s| s * scale).collect();
    let negated: Vec<f64> = expected.iter().map(|g| -g).collect();
    assert_close(
        name,
        "∂L/∂chosen",
        &to_vec(chosen.grad(&grads).unwrap()),
        &expected,
        2e-4,
        2e-5,
    );
    assert_close(
        name,
        "∂L/∂rejected",
        &to_vec(rejected.grad(&grads).unwrap()),
        &negated,
        2e-4,
        2e-5,
    );
    let reference_grad = reference.grad(&grads).map(to_vec).unwrap_or_default();
    assert!(
        reference_grad.iter().all(|g| *g == 0.0),
        "[{name}] gradient reached the reference: {reference_grad:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn psipo_matches_the_closed_forms_with_gradients(case in pair_case()) {
        for (name, device) in autodiff_devices() {
            check_pair_case(&case, name, &device);
        }
    }
}

#[derive(Debug, Clone)]
struct RankedCase {
    psi: Psi,
    beta: f64,
    eps: f64,
    candidates: usize,
    policy: Vec<f32>,
    reference: Vec<f32>,
    scores: Vec<f32>,
}

fn ranked_case() -> impl Strategy<Value = RankedCase> {
    (1..=3usize, 2..=5usize)
        .prop_flat_map(|(b, k)| {
            (
                prop_oneof![Just(Psi::Logit), Just(Psi::Identity)],
                0.05f64..2.0,
                prop_oneof![Just(0.0), 0.0f64..0.49],
                Just(k),
                prop::collection::vec(-20.0f32..20.0, b * k),
                prop::collection::vec(-20.0f32..20.0, b * k),
                // Few distinct scores, so ties (and all-tied prompts) happen.
                prop::collection::vec((0..3i32).prop_map(|s| s as f32), b * k),
            )
        })
        .prop_map(
            |(psi, beta, eps, candidates, policy, reference, scores)| RankedCase {
                psi,
                beta,
                eps,
                candidates,
                policy,
                reference,
                scores,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// SPEC §3: the mean over ordered pairs `r_i > r_j` of the pairwise loss, ties skipped.
    #[test]
    fn ranked_lists_average_the_pairwise_loss_over_ordered_pairs(case in ranked_case()) {
        let k = case.candidates;
        let b = case.policy.len() / k;
        let (mut losses, mut grads) = (vec![0.0f64; b], vec![0.0f64; b * k]);
        for p in 0..b {
            let rho = |i: usize| f64::from(case.policy[p * k + i]) - f64::from(case.reference[p * k + i]);
            let pairs: Vec<(usize, usize)> = (0..k)
                .flat_map(|i| (0..k).map(move |j| (i, j)))
                .filter(|&(i, j)| case.scores[p * k + i] > case.scores[p * k + j])
                .collect();
            for &(i, j) in &pairs {
                let (loss, slope) = naive_pair(case.psi, case.beta, case.eps, None, rho(i) - rho(j));
                let n = pairs.len() as f64;
                losses[p] += loss / n;
                grads[p * k + i] += slope / n / b as f64;
                grads[p * k + j] -= slope / n / b as f64;
            }
        }
        for (name, device) in autodiff_devices() {
            let policy = floats(case.policy.clone(), [b, k], &device).require_grad();
            let batch = PreferenceBatch::ranked(policy.clone(), floats(case.scores.clone(), [b, k], &device))
                .unwrap()
                .with_reference(floats(case.reference.clone(), [b, k], &device))
                .unwrap();
            let out = PsiPoConfig::new(case.psi)
                .with_beta(case.beta)
                .with_label_smoothing(case.eps)
                .init()
                .unwrap()
                .forward(batch)
                .unwrap();
            assert_close(name, "per-prompt losses", &to_vec(out.losses), &losses, 2e-4, 2e-5);
            let grad = to_vec(policy.grad(&out.loss.backward()).unwrap());
            assert_close(name, "∂L/∂policy", &grad, &grads, 2e-4, 2e-5);
        }
    }
}

fn losses_of(loss: &dyn PreferenceLoss, batch: PreferenceBatch) -> Vec<f32> {
    to_vec(loss.forward(batch).unwrap().losses)
}

#[test]
fn named_losses_are_bit_identical_to_psipo() {
    for (_, device) in devices() {
        let batch = PreferenceBatch::pairwise(
            floats(vec![-3.0, -7.5, -1.25], [3], &device),
            floats(vec![-4.0, -2.0, -1.0], [3], &device),
        )
        .unwrap()
        .with_pairwise_reference(
            floats(vec![-3.5, -6.0, -2.0], [3], &device),
            floats(vec![-3.0, -2.5, -0.5], [3], &device),
        )
        .unwrap();
        // The zoo's `sigmoid` (TRL 1.16: no smoothing) is ΨPO's logit form without ε.
        let dpo = DpoConfig::new().with_beta(0.3);
        let psipo_logit = PsiPoConfig::new(Psi::Logit).with_beta(0.3);
        assert_eq!(
            losses_of(&dpo.init().unwrap(), batch.clone()),
            losses_of(&psipo_logit.init().unwrap(), batch.clone())
        );
        // The zoo's `ipo` length-normalises; with unit lengths it is ΨPO's identity form.
        let zoo_ipo = DpoConfig::new()
            .with_beta(0.7)
            .with_loss_type(burn_preference::DpoLossType::Ipo);
        let unit = batch
            .clone()
            .with_lengths(floats(vec![1.0; 6], [3, 2], &device))
            .unwrap();
        assert_eq!(
            losses_of(&zoo_ipo.init().unwrap(), unit),
            losses_of(
                &PsiPoConfig::new(Psi::Identity)
                    .with_beta(0.7)
                    .init()
                    .unwrap(),
                batch.clone()
            )
        );
        let ipo = IpoConfig::new().with_tau(0.7);
        let psipo_identity = PsiPoConfig::new(Psi::Identity).with_beta(0.7);
        assert_eq!(
            losses_of(&ipo.init().unwrap(), batch.clone()),
            losses_of(&psipo_identity.init().unwrap(), batch)
        );
    }
}

#[test]
fn label_identities_hold() {
    for (name, device) in devices() {
        let chosen = floats(vec![-3.0, -7.5, -1.25, 2.0], [4], &device);
        let rejected = floats(vec![-4.0, -2.0, -1.0, 2.0], [4], &device);
        let hard = PreferenceBatch::pairwise(chosen.clone(), rejected.clone()).unwrap();
        let soft = |q: f32| {
            hard.clone()
                .with_soft_labels(floats(vec![q; 4], [4], &device))
                .unwrap()
        };
        for psi in [Psi::Logit, Psi::Identity] {
            let plain = PsiPoConfig::new(psi)
                .with_beta(0.4)
                .with_reference_free(true);
            let loss = plain.init().unwrap();
            let hard_losses = losses_of(&loss, hard.clone());
            let expected: Vec<f64> = hard_losses.iter().map(|&l| f64::from(l)).collect();
            // q = 1 is the hard label.
            assert_close(
                name,
                "q = 1 vs hard",
                &losses_of(&loss, soft(1.0)),
                &expected,
                1e-6,
                1e-7,
            );
            // Label smoothing ε is the soft label q = 1 − ε (SPEC §3).
            let smoothed = plain.clone().with_label_smoothing(0.2).init().unwrap();
            let smoothed_losses: Vec<f64> = losses_of(&smoothed, hard.clone())
                .iter()
                .map(|&l| f64::from(l))
                .collect();
            assert_close(
                name,
                "q = 0.8 vs ε = 0.2",
                &losses_of(&loss, soft(0.8)),
                &smoothed_losses,
                1e-6,
                1e-6,
            );
            // A zero reference is reference-free.
            let zero_reference = hard
                .clone()
                .with_pairwise_reference(
                    floats(vec![0.0; 4], [4], &device),
                    floats(vec![0.0; 4], [4], &device),
                )
                .unwrap();
            let with_reference = plain.clone().with_reference_free(false).init().unwrap();
            assert_close(
                name,
                "zero reference",
                &losses_of(&with_reference, zero_reference),
                &expected,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn two_ranked_candidates_equal_the_pairwise_form() {
    let (chosen, rejected) = (vec![-3.0f32, -7.5, -1.25], vec![-4.0f32, -2.0, -1.0]);
    let interleaved: Vec<f32> = chosen
        .iter()
        .zip(&rejected)
        .flat_map(|(c, r)| [*c, *r])
        .collect();
    for (name, device) in devices() {
        let pairwise = PreferenceBatch::pairwise(
            floats(chosen.clone(), [3], &device),
            floats(rejected.clone(), [3], &device),
        )
        .unwrap();
        let policy = floats(interleaved.clone(), [3, 2], &device);
        let chosen_first = PreferenceBatch::ranked(
            policy.clone(),
            floats(vec![1.0, 0.0, 5.0, -2.0, 0.5, 0.25], [3, 2], &device),
        )
        .unwrap();
        let rejected_first = PreferenceBatch::ranked(
            policy,
            floats(vec![0.0, 1.0, -2.0, 5.0, 0.25, 0.5], [3, 2], &device),
        )
        .unwrap();
        for psi in [Psi::Logit, Psi::Identity] {
            let loss = PsiPoConfig::new(psi)
                .with_reference_free(true)
                .init()
                .unwrap();
            // Each prompt's one ordered pair, in f64: the winner's log-prob minus the loser's.
            let reference = |sign: f64| -> Vec<f64> {
                chosen
                    .iter()
                    .zip(&rejected)
                    .map(|(&c, &r)| {
                        let h = sign * (f64::from(c) - f64::from(r));
                        naive_pair(psi, 0.1, 0.0, None, h).0
                    })
                    .collect()
            };
            let forward = reference(1.0);
            for (what, batch, expected) in [
                ("pairwise", pairwise.clone(), &forward),
                (
                    "ranked, chosen scored higher",
                    chosen_first.clone(),
                    &forward,
                ),
                (
                    "ranked, rejected scored higher",
                    rejected_first.clone(),
                    &reference(-1.0),
                ),
            ] {
                assert_close(name, what, &losses_of(&loss, batch), expected, 1e-6, 1e-7);
            }
        }
    }
}

#[test]
fn swapping_chosen_and_rejected_obeys_softplus_symmetry() {
    let (chosen, rejected) = (
        vec![-3.0f32, -7.5, -1.25, 0.0],
        vec![-4.0f32, -2.0, -1.0, 0.0],
    );
    let beta = 0.5;
    for (name, device) in devices() {
        let loss = DpoConfig::new()
            .with_beta(beta)
            .with_reference_free(true)
            .init()
            .unwrap();
        let forward = losses_of(
            &loss,
            PreferenceBatch::pairwise(
                floats(chosen.clone(), [4], &device),
                floats(rejected.clone(), [4], &device),
            )
            .unwrap(),
        );
        let backward = losses_of(
            &loss,
            PreferenceBatch::pairwise(
                floats(rejected.clone(), [4], &device),
                floats(chosen.clone(), [4], &device),
            )
            .unwrap(),
        );
        let difference: Vec<f32> = forward.iter().zip(&backward).map(|(f, b)| f - b).collect();
        // softplus(−βh) − softplus(βh) = −βh.
        let expected: Vec<f64> = chosen
            .iter()
            .zip(&rejected)
            .map(|(c, r)| -beta * f64::from(c - r))
            .collect();
        assert_close(
            name,
            "L(c, r) − L(r, c)",
            &difference,
            &expected,
            1e-5,
            1e-6,
        );
    }
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

/// RRHF per prompt (SPEC §3) as a double loop in f64: losses `[B]` and `∂(mean L)/∂S`.
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
            let batch = PreferenceBatch::ranked(sums.clone(), floats(case.scores.clone(), [b, k], &device))
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
        let batch = PreferenceBatch::ranked(sums, scores)
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
        let batch =
            PreferenceBatch::ranked_by_position(floats(vec![-1.0, -2.0], [1, 2], &device)).unwrap();
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

#[test]
fn metrics_match_hand_computed_values() {
    for (name, device) in devices() {
        // ρ_chosen = (1, −1, 0.5), ρ_rejected = (0, 0, 0.5), β = 0.5.
        let batch = PreferenceBatch::pairwise(
            floats(vec![-2.0, -5.0, -1.0], [3], &device),
            floats(vec![-4.0, -3.0, -2.0], [3], &device),
        )
        .unwrap()
        .with_pairwise_reference(
            floats(vec![-3.0, -4.0, -1.5], [3], &device),
            floats(vec![-4.0, -3.0, -2.5], [3], &device),
        )
        .unwrap();
        let metrics = DpoConfig::new()
            .with_beta(0.5)
            .init()
            .unwrap()
            .forward(batch)
            .unwrap()
            .metrics;
        assert_close(
            name,
            "rewards/chosen",
            &to_vec(metrics.rewards_chosen),
            &[0.5, -0.5, 0.25],
            1e-6,
            1e-6,
        );
        assert_close(
            name,
            "rewards/rejected",
            &to_vec(metrics.rewards_rejected),
            &[0.0, 0.0, 0.25],
            1e-6,
            1e-6,
        );
        assert_close(
            name,
            "rewards/margins",
            &to_vec(metrics.margins),
            &[0.5, -0.5, 0.0],
            1e-6,
            1e-6,
        );
        // Strict: the tie in the third pair does not count.
        assert_close(
            name,
            "rewards/accuracies",
            &to_vec(metrics.accuracy),
            &[1.0 / 3.0],
            1e-6,
            0.0,
        );
        assert_close(
            name,
            "ranking accuracy (pairwise)",
            &to_vec(metrics.ranking_accuracy),
            &[1.0 / 3.0],
            1e-6,
            0.0,
        );

        // Scores 3 > 2 > 1: pairs (0,1) and (0,2) agree with the values, (1,2) does not.
        let values = floats(vec![3.0, 1.0, 2.0], [1, 3], &device);
        let accuracy =
            ranking_accuracy(values.clone(), floats(vec![3.0, 2.0, 1.0], [1, 3], &device)).unwrap();
        assert_close(
            name,
            "ranking accuracy",
            &to_vec(accuracy),
            &[2.0 / 3.0],
            1e-6,
            0.0,
        );
        // Tied scores 1 = 1 form no pair: (0,2) agrees, (1,2) does not.
        let accuracy =
            ranking_accuracy(values.clone(), floats(vec![1.0, 1.0, 0.0], [1, 3], &device)).unwrap();
        assert_close(
            name,
            "ranking accuracy with a tie",
            &to_vec(accuracy),
            &[0.5],
            1e-6,
            0.0,
        );
        let accuracy = ranking_accuracy(values, floats(vec![1.0; 3], [1, 3], &device)).unwrap();
        assert_close(
            name,
            "ranking accuracy, all tied",
            &to_vec(accuracy),
            &[0.0],
            0.0,
            0.0,
        );
    }
}

/// Per-token `KL(π ‖ π_ref)` in f64 with the causal shift: `(per-sequence means, batch mean)`.
fn naive_token_kl(
    policy: &[f32],
    reference: &[f32],
    labels: &[i64],
    [b, t, v]: [usize; 3],
) -> (Vec<f64>, f64) {
    let log_softmax = |row: &[f32]| {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z)));
        let lse = max
            + row
                .iter()
                .map(|&z| (f64::from(z) - max).exp())
                .sum::<f64>()
                .ln();
        row.iter()
            .map(|&z| f64::from(z) - lse)
            .collect::<Vec<f64>>()
    };
    let (mut per_sequence, mut total, mut count) = (Vec::new(), 0.0, 0.0);
    for row in 0..b {
        let (mut sum, mut n) = (0.0, 0.0);
        for pos in 0..t - 1 {
            let label = labels[row * t + pos + 1];
            if label < 0 || label >= v as i64 {
                continue;
            }
            let at = (row * t + pos) * v;
            let lp = log_softmax(&policy[at..at + v]);
            let lq = log_softmax(&reference[at..at + v]);
            sum += lp
                .iter()
                .zip(&lq)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
            n += 1.0;
        }
        per_sequence.push(if n > 0.0 { sum / n } else { 0.0 });
        total += sum;
        count += n;
    }
    (per_sequence, total / count.max(1.0))
}

#[test]
fn token_kl_matches_a_naive_reference_and_vanishes_for_identical_models() {
    let shape @ [b, t, v] = [3, 5, 7];
    let values = |seed: u32| -> Vec<f32> {
        (0..b * t * v)
            .map(|i| (i as f32 * 0.7 + seed as f32).sin() * 3.0)
            .collect()
    };
    let (policy, reference) = (values(1), values(2));
    // Row 2 is fully ignored; 99 is out of range for V = 7 and is ignored too.
    let labels = vec![
        -100, 1, 6, 2, -100, -100, -100, 3, 99, 0, -100, -100, -100, -100, -100,
    ];
    let (per_sequence, mean) = naive_token_kl(&policy, &reference, &labels, shape);
    assert_eq!(per_sequence[2], 0.0);
    // Lenient labels: the out-of-range 99 is ignored, not an error.
    let gatherer = SequenceLogpsConfig::new()
        .with_strict_labels(false)
        .init()
        .unwrap();
    for (name, device) in devices() {
        let kl = token_kl(
            &gatherer,
            floats(policy.clone(), shape, &device),
            floats(reference.clone(), shape, &device),
            ints(labels.clone(), [b, t], &device),
            None,
        )
        .unwrap();
        assert_close(
            name,
            "KL per sequence",
            &to_vec(kl.per_sequence),
            &per_sequence,
            1e-5,
            1e-6,
        );
        assert_close(name, "KL mean", &to_vec(kl.mean), &[mean], 1e-5, 1e-6);

        let same = token_kl(
            &gatherer,
            floats(policy.clone(), shape, &device),
            floats(policy.clone(), shape, &device),
            ints(labels.clone(), [b, t], &device),
            None,
        )
        .unwrap();
        assert_close(
            name,
            "KL(π ‖ π)",
            &to_vec(same.per_sequence),
            &[0.0; 3],
            0.0,
            1e-6,
        );
    }
}

#[test]
fn categorical_kl_matches_hand_values() {
    for (name, device) in devices() {
        let p = floats(vec![0.5, 0.5, 0.0], [3], &device);
        let q = floats(vec![0.25, 0.5, 0.25], [3], &device);
        // 0.5 ln 2 + 0.5 ln 1 + 0 (the p = 0 term contributes nothing).
        let expected = 0.5 * 2f64.ln();
        assert_close(
            name,
            "KL(p ‖ q)",
            &to_vec(categorical_kl(p.clone(), q.clone()).unwrap()),
            &[expected],
            1e-6,
            1e-7,
        );
        assert_close(
            name,
            "KL(p ‖ p)",
            &to_vec(categorical_kl(p.clone(), p.clone()).unwrap()),
            &[0.0],
            0.0,
            1e-7,
        );
        // q = 0 where p > 0: infinite, not NaN.
        let kl = scalar(categorical_kl(q, p).unwrap());
        assert!(
            kl.is_infinite() && kl > 0.0,
            "[{name}] KL with q = 0 where p > 0: {kl}"
        );
    }
}

#[test]
fn extreme_margins_give_finite_losses_and_gradients() {
    for (name, device) in autodiff_devices() {
        let configs = [
            PsiPoConfig::new(Psi::Logit).with_beta(1.0),
            PsiPoConfig::new(Psi::Logit)
                .with_beta(1.0)
                .with_label_smoothing(0.2),
            PsiPoConfig::new(Psi::Identity).with_beta(1.0),
        ];
        for config in configs {
            let (out, grad) = loss_and_grad_at(&config, &[1e4, -1e4, 0.0], &device);
            let losses = to_vec(out.losses);
            assert!(
                losses.iter().chain(&grad).all(|x| x.is_finite()),
                "[{name}] {config:?}: {losses:?} {grad:?}"
            );
            if config.psi == Psi::Logit {
                // The logistic loss's gradient is bounded by β.
                assert!(
                    grad.iter().all(|g| g.abs() <= 1.0 + 1e-6),
                    "[{name}] unbounded gradient {grad:?}"
                );
            }
        }
        // DPO at βh = ±1e4 in closed form: 0 and 1e4.
        let (out, _) = loss_and_grad_at(
            &PsiPoConfig::new(Psi::Logit).with_beta(1.0),
            &[1e4, -1e4],
            &device,
        );
        assert_close(
            name,
            "DPO at ±1e4",
            &to_vec(out.losses),
            &[0.0, 1e4],
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn bad_inputs_get_typed_errors() {
    let out_of_range = |result: burn_preference::Result<burn_preference::PsiPoLoss>| match result {
        Err(PreferenceError::OutOfRange { name, .. }) => name,
        other => panic!("expected OutOfRange, got {other:?}"),
    };
    let logit = || PsiPoConfig::new(Psi::Logit);
    assert_eq!(out_of_range(logit().with_beta(0.0).init()), "beta");
    assert_eq!(out_of_range(logit().with_beta(f64::NAN).init()), "beta");
    assert_eq!(out_of_range(IpoConfig::new().with_tau(-0.1).init()), "tau");
    assert_eq!(
        out_of_range(logit().with_label_smoothing(0.5).init()),
        "label_smoothing"
    );
    assert_eq!(
        out_of_range(logit().with_label_smoothing(-0.01).init()),
        "label_smoothing"
    );
    for (config, expected) in [
        (
            RrhfConfig::new().with_length_penalty(-1.0),
            "length_penalty",
        ),
        (RrhfConfig::new().with_rank_weight(-1.0), "rank_weight"),
        (RrhfConfig::new().with_ft_weight(-0.5), "ft_weight"),
    ] {
        let err = config.init().unwrap_err();
        assert!(
            matches!(err, PreferenceError::OutOfRange { name, .. } if name == expected),
            "{err}"
        );
    }

    for (_, device) in devices() {
        let pair = |n: usize| floats(vec![-1.0; n], [n], &device);
        let two = |b: usize, k: usize| floats(vec![-1.0; b * k], [b, k], &device);

        assert_error!(
            PreferenceBatch::pairwise(pair(3), pair(2)),
            PreferenceError::BatchMismatch { .. }
        );
        assert_error!(
            PreferenceBatch::pairwise(pair(0), pair(0)),
            PreferenceError::Empty { .. }
        );
        assert_error!(
            PreferenceBatch::concatenated(pair(3)),
            PreferenceError::Shape { .. }
        );
        assert_error!(
            PreferenceBatch::ranked_by_position(two(2, 1)),
            PreferenceError::Shape { arg: "policy", .. }
        );
        assert_error!(
            PreferenceBatch::ranked(two(2, 3), two(2, 2)),
            PreferenceError::Shape { arg: "scores", .. }
        );
        assert_error!(
            PreferenceBatch::ranked(two(1, 3), floats(vec![1.0, f32::NAN, 0.0], [1, 3], &device),),
            PreferenceError::InvalidValue { arg: "scores", .. }
        );
        let base = PreferenceBatch::pairwise(pair(2), pair(2)).unwrap();
        assert_error!(
            base.clone().with_reference(two(3, 2)),
            PreferenceError::BatchMismatch {
                arg: "reference",
                ..
            }
        );
        assert_error!(
            base.clone().with_pairwise_reference(pair(2), pair(1)),
            PreferenceError::BatchMismatch { .. }
        );
        assert_error!(
            base.clone().with_lengths(two(2, 3)),
            PreferenceError::Shape { arg: "lengths", .. }
        );
        for q in [1.5, -0.25, f32::NAN] {
            assert_error!(
                base.clone()
                    .with_soft_labels(floats(vec![0.5, q], [2], &device)),
                PreferenceError::InvalidValue {
                    arg: "soft_labels",
                    ..
                }
            );
        }
        assert_error!(
            base.clone().with_soft_labels(pair(3)),
            PreferenceError::BatchMismatch {
                arg: "soft_labels",
                ..
            }
        );
        assert_error!(
            PreferenceBatch::ranked_by_position(two(2, 3))
                .unwrap()
                .with_soft_labels(pair(2)),
            PreferenceError::Shape { arg: "policy", .. }
        );

        // A loss that needs a reference says so, unless told to train reference-free.
        assert_error!(
            DpoConfig::new().init().unwrap().forward(base.clone()),
            PreferenceError::MissingInput {
                loss: "DPO",
                arg: "reference",
                ..
            }
        );
        assert_error!(
            IpoConfig::new().init().unwrap().forward(base),
            PreferenceError::MissingInput { loss: "IPO", .. }
        );

        assert_error!(
            ranking_accuracy(two(1, 3), floats(vec![0.0, f32::NAN, 1.0], [1, 3], &device)),
            PreferenceError::InvalidValue { .. }
        );
        assert_error!(
            categorical_kl(pair(3), pair(2)),
            PreferenceError::Shape { arg: "q", .. }
        );
        assert_error!(
            categorical_kl(pair(0), pair(0)),
            PreferenceError::Empty { .. }
        );

        let gatherer = SequenceLogpsConfig::new().init().unwrap();
        let logits = floats(vec![0.0; 2 * 3 * 4], [2, 3, 4], &device);
        assert_error!(
            token_kl(
                &gatherer,
                logits.clone(),
                floats(vec![0.0; 2 * 3 * 5], [2, 3, 5], &device),
                ints(vec![0; 6], [2, 3], &device),
                None,
            ),
            PreferenceError::Shape {
                arg: "reference_logits",
                ..
            }
        );
    }
}
