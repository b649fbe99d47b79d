//! GRPO's and RLOO's edge cases against the `f64` reference: ratios far outside the clip
//! range, empty completions, all-equal rewards, log-probs and log-ratios of ±1e4 (finite loss
//! and gradients), and NaN at masked-out positions (it must not reach the loss, the gradients
//! or the metrics).

use burn::tensor::Tensor;
use burn_preference::advantages::GrpoAdvantagesConfig;
use burn_preference::batch::CompletionBatch;
use burn_preference::loss::{GrpoConfig, GrpoLossType, ImportanceSamplingLevel, RlooConfig};
use burn_preference::prelude::*;

use super::loss::{LOSS_TYPES, check_every_type};
use super::reference::{Case, Got, bools, finish, reference, run};
use crate::common::{cpu_autodiff_devices, floats, to_vec};

/// Log ratios of ±5 (ratios 148 and 0.0067), alternating by completion, with the KL term.
#[test]
fn ratios_far_outside_the_clip_range() {
    let mut case = Case::base();
    case.is_ratio = None;
    let c = case.c;
    case.old = Some(
        case.policy
            .iter()
            .enumerate()
            .map(|(j, p)| {
                if (j / c).is_multiple_of(2) {
                    p - 5.0
                } else {
                    p + 5.0
                }
            })
            .collect(),
    );
    check_every_type("log ratio ±5", &case, |c| c.with_beta(0.1));
    check_every_type("log ratio ±5 sequence", &case, |c| {
        c.with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
            .with_delta(Some(2.0))
    });
}

/// An empty completion (all-false mask row) adds 0 to the loss and gets no gradient, and a
/// batch of only empty completions has loss 0, no NaN, whatever the options.
#[test]
fn empty_completions_contribute_nothing() {
    let case = Case::base();
    let empty = 2;
    let c = case.c;
    for loss_type in LOSS_TYPES {
        let cfg = GrpoConfig::new()
            .with_loss_type(loss_type)
            .with_beta(0.1)
            .with_off_policy_mask_threshold(Some(0.0));
        for (name, device) in cpu_autodiff_devices() {
            let got = run(&case, &cfg, &device, None);
            assert_eq!(
                got.losses[empty], 0.0,
                "[{name}] {loss_type:?}: the empty row's share"
            );
            assert!(
                got.grad_policy[empty * c..(empty + 1) * c]
                    .iter()
                    .all(|g| *g == 0.0),
                "[{name}] {loss_type:?}: the empty row's gradient"
            );
        }
    }
    let mut all_empty = Case::base();
    all_empty.mask = vec![false; all_empty.n * all_empty.c];
    for loss_type in LOSS_TYPES {
        let cfg = GrpoConfig::new()
            .with_loss_type(loss_type)
            .with_beta(0.1)
            .with_entropy_coef(0.1)
            .with_top_entropy_quantile(0.5)
            .with_off_policy_mask_threshold(Some(0.0));
        for (name, device) in cpu_autodiff_devices() {
            let got = run(&all_empty, &cfg, &device, None);
            assert_eq!(got.loss, 0.0, "[{name}] {loss_type:?}: all empty");
            assert!(got.losses.iter().all(|l| *l == 0.0));
            assert!(
                got.grad_policy
                    .iter()
                    .chain(&got.grad_entropy)
                    .all(|g| *g == 0.0)
            );
            for (metric, value) in got.metrics.log().unwrap() {
                assert!(
                    value.is_finite(),
                    "[{name}] {loss_type:?}: {metric} = {value}"
                );
            }
        }
    }
    // RLOO too.
    for (name, device) in cpu_autodiff_devices() {
        let (batch, policy, _) = super::reference::batch(&all_empty, &device, None);
        let out = RlooConfig::new().init().unwrap().forward(batch).unwrap();
        let got = finish(&all_empty, out, policy, None);
        // r = 1 for every completion: −mean(A).
        let mean: f32 = all_empty.advantages.iter().sum::<f32>() / 6.0;
        assert!((got.loss + mean).abs() < 1e-6, "[{name}] RLOO all empty");
        assert!(got.grad_policy.iter().all(|g| *g == 0.0));
    }
}

/// Rewards all equal within every group give advantage 0 (TRL), so the policy term is 0 for
/// every type and only the KL term moves the policy; the pipeline from rewards to loss.
#[test]
fn all_equal_rewards_give_only_the_kl_term() {
    for (name, device) in cpu_autodiff_devices() {
        let rewards = floats(vec![0.5, 0.5, 0.5, -2.0, -2.0, -2.0], [6, 1], &device);
        let advantages = GrpoAdvantagesConfig::new()
            .with_num_generations(3)
            .init()
            .unwrap()
            .forward(rewards)
            .unwrap()
            .advantages;
        assert_eq!(to_vec(advantages.clone()), [0.0; 6]);
        let mut case = Case::base();
        case.advantages = vec![0.0; 6];
        case.entropy = None;
        case.sampling = None;
        for loss_type in LOSS_TYPES {
            for beta in [0.0, 0.2] {
                let cfg = GrpoConfig::new()
                    .with_loss_type(loss_type)
                    .with_beta(beta)
                    .with_max_completion_length(7);
                let (batch, policy) = with_advantages(&case, advantages.clone(), &device);
                let out = cfg.init().unwrap().forward(batch).unwrap();
                let got = finish(&case, out, policy, None);
                if beta == 0.0 {
                    assert_eq!(got.loss, 0.0, "[{name}] {loss_type:?}");
                    assert!(got.grad_policy.iter().all(|g| *g == 0.0));
                } else {
                    let want = reference(&case, &cfg, None);
                    assert!(want.loss > 0.0);
                    super::reference::assert_matches(
                        name,
                        &format!("equal {loss_type:?}"),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
}

/// The case's batch (policy, old, reference, correction) with `advantages`, and its policy
/// leaf.
fn with_advantages(
    case: &Case,
    advantages: Tensor<1>,
    device: &burn::tensor::Device,
) -> (CompletionBatch, Tensor<2>) {
    let shape = [case.n, case.c];
    let tensor = |v: &Option<Vec<f32>>| floats(v.clone().unwrap(), shape, device);
    let policy = floats(case.policy.clone(), shape, device).require_grad();
    let batch = CompletionBatch::new(policy.clone(), bools(&case.mask, shape, device), advantages)
        .unwrap()
        .with_old_logps(tensor(&case.old))
        .unwrap()
        .with_reference(tensor(&case.reference))
        .unwrap()
        .with_importance_sampling_ratio(tensor(&case.is_ratio))
        .unwrap();
    (batch, policy)
}

/// Every value finite.
fn assert_finite(name: &str, what: &str, got: &Got) {
    assert!(got.loss.is_finite(), "[{name}] {what}: loss {}", got.loss);
    for (i, v) in got.losses.iter().enumerate() {
        assert!(v.is_finite(), "[{name}] {what}: losses[{i}] = {v}");
    }
    for (i, g) in got.grad_policy.iter().chain(&got.grad_entropy).enumerate() {
        assert!(g.is_finite(), "[{name}] {what}: gradient[{i}] = {g}");
    }
    for (metric, value) in got.metrics.log().unwrap() {
        assert!(value.is_finite(), "[{name}] {what}: {metric} = {value}");
    }
}

/// Log-probs near −1e4 with ratios near 1 and the reference near the policy: the reference's
/// values, finite.
#[test]
fn log_probs_near_minus_1e4() {
    let mut case = Case::base();
    let shift = |v: &mut Vec<f32>| v.iter_mut().for_each(|x| *x -= 1e4);
    shift(&mut case.policy);
    shift(case.old.as_mut().unwrap());
    shift(case.reference.as_mut().unwrap());
    shift(case.sampling.as_mut().unwrap());
    check_every_type("−1e4", &case, |c| {
        c.with_beta(0.05).with_off_policy_mask_threshold(Some(0.0))
    });
}

/// Log ratios of ±1e4 (ratios 0 and ∞ in f32): finite loss and gradients wherever the
/// objective is bounded — every type for a positive advantage (clipped above), every
/// negative advantage for the capped or soft types (CISPO, SAPO, VESPO, δ).
#[test]
fn log_ratios_of_plus_minus_1e4_stay_finite() {
    let base = {
        let mut case = Case::base();
        case.is_ratio = None;
        case.sampling = None;
        case.reference = Some(case.policy.clone());
        case
    };
    for sign in [1.0f32, -1.0] {
        let mut case = base.clone();
        case.old = Some(case.policy.iter().map(|p| p - sign * 1e4).collect());
        for level in [
            ImportanceSamplingLevel::Token,
            ImportanceSamplingLevel::Sequence,
        ] {
            for loss_type in LOSS_TYPES {
                for advantages in [[1.0, 0.5, 2.0, 0.3, 1.5, 0.7], super::reference::ADVANTAGES] {
                    let bounded = sign < 0.0
                        || advantages.iter().all(|a| *a > 0.0)
                        || matches!(
                            loss_type,
                            GrpoLossType::Cispo | GrpoLossType::Sapo | GrpoLossType::Vespo
                        );
                    let mut case = case.clone();
                    case.advantages = advantages.to_vec();
                    let mut configs = vec![GrpoConfig::new().with_beta(0.1)];
                    // δ bounds the clipped types' negative side.
                    configs.push(GrpoConfig::new().with_delta(Some(1.5)));
                    for (k, cfg) in configs.into_iter().enumerate() {
                        if !bounded && k == 0 {
                            continue;
                        }
                        let cfg = cfg
                            .with_loss_type(loss_type)
                            .with_importance_sampling_level(level)
                            .with_off_policy_mask_threshold(Some(0.5));
                        let what = format!(
                            "log ratio {}e4 {level:?} {loss_type:?} {advantages:?} {k}",
                            sign
                        );
                        for (name, device) in cpu_autodiff_devices() {
                            let got = run(&case, &cfg, &device, None);
                            assert_finite(name, &what, &got);
                        }
                    }
                }
            }
        }
    }
    // RLOO: a sequence log ratio of ±1e4 for positive advantages (clipped above, 0 below).
    for sign in [1.0f32, -1.0] {
        let mut case = base.clone();
        case.old = Some(case.policy.iter().map(|p| p - sign * 1e4).collect());
        case.advantages = vec![1.0, 0.5, 2.0, 0.3, 1.5, 0.7];
        for (name, device) in cpu_autodiff_devices() {
            let (batch, policy, _) = super::reference::batch(&case, &device, None);
            let out = RlooConfig::new().init().unwrap().forward(batch).unwrap();
            let got = finish(&case, out, policy, None);
            assert_finite(name, &format!("RLOO log ratio {sign}e4"), &got);
        }
    }
}

/// NaN at the masked-out positions of the policy, the old and reference log-probs, the
/// engine's log-probs and the entropies changes nothing: the reference's values (which never
/// read them), finite gradients.
#[test]
fn nan_at_masked_positions_does_not_leak() {
    let mut case = Case::base();
    let mask = case.mask.clone();
    let poison = |v: &mut Vec<f32>| {
        for (x, m) in v.iter_mut().zip(&mask) {
            if !m {
                *x = f32::NAN;
            }
        }
    };
    poison(&mut case.policy);
    poison(case.old.as_mut().unwrap());
    poison(case.reference.as_mut().unwrap());
    poison(case.sampling.as_mut().unwrap());
    poison(case.entropy.as_mut().unwrap());
    check_every_type("NaN padding", &case, |c| c.with_beta(0.05));
    check_every_type("NaN padding, every option", &case, |c| {
        c.with_beta(0.05)
            .with_use_bias_correction_kl(true)
            .with_off_policy_mask_threshold(Some(0.0))
            .with_top_entropy_quantile(0.5)
            .with_entropy_coef(0.02)
    });
    let mut sequence = case.clone();
    sequence.sampling = None;
    check_every_type("NaN padding, sequence", &sequence, |c| {
        c.with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
            .with_off_policy_mask_threshold(Some(0.0))
            .with_entropy_coef(0.02)
    });
    // RLOO.
    for (name, device) in cpu_autodiff_devices() {
        let (batch, policy, entropy) = super::reference::batch(&case, &device, None);
        let out = RlooConfig::new().init().unwrap().forward(batch).unwrap();
        let got = finish(&case, out, policy, entropy);
        assert_finite(name, "RLOO NaN padding", &got);
    }
}
