//! ΨPO (DPO's logit and IPO's identity forms, conservative DPO, soft labels, ranked lists)
//! against closed forms and naive f64 references written here, with autodiff gradients against
//! the analytic derivatives, on every device.

use burn::tensor::Device;
use burn_preference::loss::{PsiPoLoss, RankLoss};
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::assert_error;
use crate::common::reference::{sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, devices, floats, pair_columns, to_vec};

/// Per-pair ΨPO loss and `∂L/∂h` in f64, from the ΨPO definition: the label `q` (1 for a hard
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
/// Returns the loss output and the gradient of the summed per-pair losses with respect to the
/// chosen log-probs (each pair's own slope).
fn loss_and_grad_at(
    config: &PsiPoConfig,
    margins: &[f32],
    device: &Device,
) -> (LossOutput, Vec<f32>) {
    let n = margins.len();
    let chosen = floats(margins.to_vec(), [n], device).require_grad();
    let rejected = floats(vec![0.0; n], [n], device);
    let batch = PairedBatch::new(pair_columns(chosen.clone(), rejected)).unwrap();
    let out = config
        .clone()
        .with_reference_free(true)
        .init()
        .unwrap()
        .forward(batch)
        .unwrap();
    let grads = out.losses.clone().sum().backward();
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
        // β h* = log((1 − ε)/ε): 2.197225 for ε = 0.1, 1.386294 for ε = 0.2.
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
            )
        })
        .prop_map(|(psi, beta, eps, soft_labels, (c, r, rc, rr))| PairCase {
            psi,
            beta,
            eps,
            soft_labels,
            chosen: c,
            rejected: r,
            ref_chosen: rc,
            ref_rejected: rr,
        })
}

fn check_pair_case(case: &PairCase, name: &str, device: &Device) {
    let b = case.chosen.len();
    let chosen = floats(case.chosen.clone(), [b], device).require_grad();
    let rejected = floats(case.rejected.clone(), [b], device).require_grad();
    let reference = floats(case.ref_chosen.clone(), [b], device).require_grad();
    let mut batch = PairedBatch::new(pair_columns(chosen.clone(), rejected.clone()))
        .unwrap()
        .with_reference(pair_columns(
            reference.clone(),
            floats(case.ref_rejected.clone(), [b], device),
        ))
        .unwrap();
    if let Some(q) = &case.soft_labels {
        let q = q.iter().map(|&q| q as f32).collect();
        batch = batch.with_soft_labels(floats(q, [b], device)).unwrap();
    }
    let out = PsiPoConfig::new(case.psi)
        .with_beta(case.beta)
        .with_label_smoothing(case.eps)
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
    // The loss is the mean of the per-pair losses (0.1's `Reduction::Mean`); their sum is
    // what `Reduction::Sum` returned.
    let scale = 1.0 / b as f64;
    let expected_loss = vec![losses.iter().sum::<f64>() * scale];
    assert_close(
        name,
        "summed losses",
        &to_vec(out.losses.clone().sum()),
        &[losses.iter().sum::<f64>()],
        2e-4,
        2e-5,
    );
    assert_close(
        name,
        "per-pair losses",
        &to_vec(out.losses.clone()),
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

    let grads = out.loss.backward();
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

    /// The mean over ordered pairs `r_i > r_j` of the pairwise loss, ties skipped.
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
            let batch = PairedBatch::new(policy.clone())
                .unwrap()
                .with_scores(floats(case.scores.clone(), [b, k], &device))
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

fn losses_of(loss: &impl PreferenceLoss<Batch = PairedBatch>, batch: PairedBatch) -> Vec<f32> {
    to_vec(loss.forward(batch).unwrap().losses)
}

#[test]
fn named_losses_are_bit_identical_to_psipo() {
    for (name, device) in devices() {
        let batch = PairedBatch::new(pair_columns(
            floats(vec![-3.0, -7.5, -1.25], [3], &device),
            floats(vec![-4.0, -2.0, -1.0], [3], &device),
        ))
        .unwrap()
        .with_reference(pair_columns(
            floats(vec![-3.5, -6.0, -2.0], [3], &device),
            floats(vec![-3.0, -2.5, -0.5], [3], &device),
        ))
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
            .with_loss_type(DpoLossType::Ipo);
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
        // 0.1's `IpoConfig::with_tau(τ)` is ΨPO's identity form with β = τ: the same
        // closed form (h − 1/(2τ))² per pair, written here for the f64 check.
        let psipo_identity = PsiPoConfig::new(Psi::Identity).with_beta(0.7);
        let h = [
            (-3.0 + 3.5) - (-4.0 + 3.0),
            (-7.5 + 6.0) - (-2.0 + 2.5),
            (-1.25 + 2.0) - (-1.0 + 0.5),
        ];
        let expected: Vec<f64> = h.iter().map(|h: &f64| (h - 0.5 / 0.7).powi(2)).collect();
        assert_close(
            name,
            "ΨPO identity: the IPO closed form",
            &losses_of(&psipo_identity.init().unwrap(), batch),
            &expected,
            1e-5,
            1e-6,
        );
    }
}

#[test]
fn label_identities_hold() {
    for (name, device) in devices() {
        let chosen = floats(vec![-3.0, -7.5, -1.25, 2.0], [4], &device);
        let rejected = floats(vec![-4.0, -2.0, -1.0, 2.0], [4], &device);
        let hard = PairedBatch::new(pair_columns(chosen.clone(), rejected.clone())).unwrap();
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
            // Label smoothing ε is the soft label q = 1 − ε.
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
                .with_reference(floats(vec![0.0; 8], [4, 2], &device))
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
        let pairwise = PairedBatch::new(pair_columns(
            floats(chosen.clone(), [3], &device),
            floats(rejected.clone(), [3], &device),
        ))
        .unwrap();
        let policy = floats(interleaved.clone(), [3, 2], &device);
        let chosen_first = PairedBatch::new(policy.clone())
            .unwrap()
            .with_scores(floats(
                vec![1.0, 0.0, 5.0, -2.0, 0.5, 0.25],
                [3, 2],
                &device,
            ))
            .unwrap();
        let rejected_first = PairedBatch::new(policy)
            .unwrap()
            .with_scores(floats(
                vec![0.0, 1.0, -2.0, 5.0, 0.25, 0.5],
                [3, 2],
                &device,
            ))
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
            PairedBatch::new(pair_columns(
                floats(chosen.clone(), [4], &device),
                floats(rejected.clone(), [4], &device),
            ))
            .unwrap(),
        );
        let backward = losses_of(
            &loss,
            PairedBatch::new(pair_columns(
                floats(rejected.clone(), [4], &device),
                floats(chosen.clone(), [4], &device),
            ))
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
    let out_of_range = |result: burn_preference::Result<PsiPoLoss>| match result {
        Err(PreferenceError::OutOfRange { name, .. }) => name,
        other => panic!("expected OutOfRange, got {other:?}"),
    };
    let logit = || PsiPoConfig::new(Psi::Logit);
    assert_eq!(out_of_range(logit().with_beta(0.0).init()), "beta");
    assert_eq!(out_of_range(logit().with_beta(f64::NAN).init()), "beta");
    // 0.1's `IpoConfig::with_tau`: the identity form names its coefficient τ.
    assert_eq!(
        out_of_range(PsiPoConfig::new(Psi::Identity).with_beta(-0.1).init()),
        "tau"
    );
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
    // A config with the rank loss spelled out still initialises (the enum is public).
    assert!(
        RrhfConfig::new()
            .with_rank_loss(RankLoss::Logistic)
            .init()
            .is_ok()
    );

    for (_, device) in devices() {
        let pair = |n: usize| floats(vec![-1.0; n], [n], &device);
        let two = |b: usize, k: usize| floats(vec![-1.0; b * k], [b, k], &device);
        let checked = PsiPoConfig::new(Psi::Logit).init().unwrap();

        // 0.1's `pairwise(c [3], r [2])`: pairs are one `[B, 2]` tensor now, so the mismatch
        // shows where a second tensor meets the policy.
        assert_error!(
            PairedBatch::new(two(3, 2))
                .unwrap()
                .with_reference(two(2, 2)),
            PreferenceError::BatchMismatch { .. }
        );
        assert_error!(PairedBatch::new(two(0, 2)), PreferenceError::Empty { .. });
        // 0.1's `concatenated(x [3])`: an odd number of concatenated rows is no `[2, B]`.
        assert_error!(
            PairedBatch::from_output(
                SequenceLogpsConfig::new()
                    .init()
                    .unwrap()
                    .forward(
                        floats(vec![0.0; 3 * 2 * 4], [3, 2, 4], &device),
                        crate::common::ints(vec![0; 6], [3, 2], &device),
                        None,
                    )
                    .unwrap(),
                BatchLayout::ChosenFirst { pairs: 1 },
            ),
            PreferenceError::Shape { .. }
        );
        assert_error!(
            PairedBatch::new(two(2, 1)),
            PreferenceError::Shape { arg: "policy", .. }
        );
        assert_error!(
            PairedBatch::new(two(2, 3)).unwrap().with_scores(two(2, 2)),
            PreferenceError::Shape { arg: "scores", .. }
        );
        // NaN scores: the builder takes them, the loss refuses them (value checks on).
        let nan_scores = PairedBatch::new(two(1, 3))
            .unwrap()
            .with_reference(two(1, 3))
            .unwrap()
            .with_scores(floats(vec![1.0, f32::NAN, 0.0], [1, 3], &device))
            .unwrap();
        assert_error!(
            checked.forward(nan_scores),
            PreferenceError::InvalidValue { arg: "scores", .. }
        );
        let base = PairedBatch::new(two(2, 2)).unwrap();
        assert_error!(
            base.clone().with_reference(two(3, 2)),
            PreferenceError::BatchMismatch {
                arg: "reference",
                ..
            }
        );
        assert_error!(
            base.clone().with_reference(two(1, 2)),
            PreferenceError::BatchMismatch { .. }
        );
        assert_error!(
            base.clone().with_lengths(two(2, 3)),
            PreferenceError::Shape { arg: "lengths", .. }
        );
        for q in [1.5, -0.25, f32::NAN] {
            let batch = base
                .clone()
                .with_reference(two(2, 2))
                .unwrap()
                .with_soft_labels(floats(vec![0.5, q], [2], &device))
                .unwrap();
            assert_error!(
                checked.forward(batch),
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
            PairedBatch::new(two(2, 3))
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
            PsiPoConfig::new(Psi::Identity)
                .init()
                .unwrap()
                .forward(base),
            PreferenceError::MissingInput { loss: "IPO", .. }
        );
    }
}
