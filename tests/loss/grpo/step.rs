//! Step totals for completion batches: the batch split into micro-batches of unequal sizes,
//! each given the whole step's totals (`StepTotals::of_completions` of every completion's
//! length), sums to the whole batch's loss and gradients — with the same totals, and without
//! any (each type's own normaliser is then the step's) — and its metrics merge to the whole
//! batch's; every loss type under the options that do not read a batch statistic, and RLOO.

use burn_preference::batch::StepTotals;
use burn_preference::loss::{GrpoConfig, ImportanceSamplingLevel, RlooConfig};
use burn_preference::metrics::Metrics;
use burn_preference::prelude::*;

use super::loss::LOSS_TYPES;
use super::reference::{Case, Got, batch, finish, reference, run};
use crate::common::{assert_close, cpu_autodiff_devices};

/// Uneven micro-batches, rows out of order, a micro-batch of one (the empty completion).
const SPLITS: [&[&[usize]]; 2] = [&[&[0, 1], &[2, 3, 4, 5]], &[&[4, 0], &[2], &[5, 1, 3]]];

/// The micro-batches' losses summed, gradients put back in their rows, metrics merged.
fn split_run(
    case: &Case,
    split: &[&[usize]],
    forward: &dyn Fn(&Case) -> Got,
) -> (f64, Vec<f64>, Vec<f64>, Metrics) {
    let c = case.c;
    let mut loss = 0.0;
    let mut grad_policy = vec![0.0; case.n * c];
    let mut grad_entropy = vec![0.0; case.n * c];
    let mut metrics: Option<Metrics> = None;
    for rows in split {
        let part = case.rows(rows);
        let got = forward(&part);
        loss += f64::from(got.loss);
        for (k, &r) in rows.iter().enumerate() {
            for t in 0..c {
                grad_policy[r * c + t] = f64::from(got.grad_policy[k * c + t]);
                grad_entropy[r * c + t] = f64::from(got.grad_entropy[k * c + t]);
            }
        }
        metrics = Some(match metrics {
            None => got.metrics,
            Some(m) => m.merge(got.metrics),
        });
    }
    (loss, grad_policy, grad_entropy, metrics.unwrap())
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The whole batch with and without step totals, and each split, agree.
fn assert_invariant(what: &str, case: &Case, cfg: &GrpoConfig) {
    let step = StepTotals::of_completions(&case.lengths(cfg.mask_truncated_completions));
    // The reference agrees that the step's totals are the batch's own.
    let own = reference(case, cfg, None).loss;
    let stepped = reference(case, cfg, Some(step)).loss;
    assert!(
        (own - stepped).abs() < 1e-12,
        "{what}: reference {own} vs {stepped}"
    );
    for (name, device) in cpu_autodiff_devices() {
        let whole = run(case, cfg, &device, Some(step));
        let plain = run(case, cfg, &device, None);
        let tol = (2e-5, 2e-6);
        assert_close(
            name,
            &format!("{what}: whole vs no step"),
            &[whole.loss],
            &[plain.loss.into()],
            tol.0,
            tol.1,
        );
        assert_close(
            name,
            &format!("{what}: ∂policy no step"),
            &whole.grad_policy,
            &f64s(&plain.grad_policy),
            tol.0,
            tol.1,
        );
        assert_close(
            name,
            &format!("{what}: ∂entropy no step"),
            &whole.grad_entropy,
            &f64s(&plain.grad_entropy),
            tol.0,
            tol.1,
        );
        for split in SPLITS {
            let (loss, gp, ge, metrics) =
                split_run(case, split, &|part| run(part, cfg, &device, Some(step)));
            let what = format!("{what} {split:?}");
            assert_close(
                name,
                &format!("{what}: Σ losses"),
                &[whole.loss],
                &[loss],
                tol.0,
                tol.1,
            );
            assert_close(
                name,
                &format!("{what}: Σ ∂policy"),
                &whole.grad_policy,
                &gp,
                tol.0,
                tol.1,
            );
            assert_close(
                name,
                &format!("{what}: Σ ∂entropy"),
                &whole.grad_entropy,
                &ge,
                tol.0,
                tol.1,
            );
            let merged = metrics.log().unwrap();
            let want = whole.metrics.log().unwrap();
            super::reference::assert_metrics(name, &what, &whole.metrics, &merged);
            assert_eq!(merged.len(), want.len());
        }
    }
}

#[test]
fn every_loss_type_is_step_invariant() {
    let case = Case::base();
    for loss_type in LOSS_TYPES {
        let cfg = GrpoConfig::new()
            .with_loss_type(loss_type)
            .with_max_completion_length(7)
            .with_epsilon_high(Some(0.28));
        assert_invariant(&format!("{loss_type:?}"), &case, &cfg);
    }
}

#[test]
fn step_invariance_with_options() {
    let mut truncated = Case::base();
    truncated.truncated = Some(vec![false, true, false, false, true, false]);
    let token_advantages = Case::base().per_token_advantages();
    for loss_type in LOSS_TYPES {
        let base = GrpoConfig::new()
            .with_loss_type(loss_type)
            .with_max_completion_length(7);
        assert_invariant(
            &format!("{loss_type:?} β sequence off-policy bonus"),
            &Case::base(),
            &base
                .clone()
                .with_beta(0.05)
                .with_use_bias_correction_kl(true)
                .with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
                .with_off_policy_mask_threshold(Some(0.0))
                .with_entropy_coef(0.03),
        );
        assert_invariant(
            &format!("{loss_type:?} truncated"),
            &truncated,
            &base
                .clone()
                .with_mask_truncated_completions(true)
                .with_entropy_coef(0.01),
        );
        assert_invariant(
            &format!("{loss_type:?} token advantages"),
            &token_advantages,
            &base.with_delta(Some(1.3)).with_beta(0.02),
        );
    }
}

#[test]
fn rloo_is_step_invariant() {
    let case = Case::base();
    let step = StepTotals::of_completions(&case.lengths(false));
    let rloo = RlooConfig::new()
        .with_epsilon_high(Some(0.3))
        .init()
        .unwrap();
    for (name, device) in cpu_autodiff_devices() {
        let forward = |part: &Case, step: Option<StepTotals>| {
            let (b, policy, entropy) = batch(part, &device, step);
            finish(part, rloo.forward(b).unwrap(), policy, entropy)
        };
        let whole = forward(&case, Some(step));
        let plain = forward(&case, None);
        assert_close(
            name,
            "RLOO whole vs no step",
            &[whole.loss],
            &[plain.loss.into()],
            1e-5,
            1e-6,
        );
        assert_close(
            name,
            "RLOO ∂ no step",
            &whole.grad_policy,
            &f64s(&plain.grad_policy),
            1e-5,
            1e-7,
        );
        for split in SPLITS {
            let (loss, gp, _, metrics) = split_run(&case, split, &|part| forward(part, Some(step)));
            let what = format!("RLOO {split:?}");
            assert_close(
                name,
                &format!("{what}: Σ losses"),
                &[whole.loss],
                &[loss],
                1e-5,
                1e-6,
            );
            assert_close(
                name,
                &format!("{what}: Σ ∂"),
                &whole.grad_policy,
                &gp,
                1e-5,
                1e-7,
            );
            let merged = metrics.log().unwrap();
            super::reference::assert_metrics(name, &what, &whole.metrics, &merged);
        }
    }
}
