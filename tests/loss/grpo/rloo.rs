//! RLOO's loss against an `f64` reference written from TRL 1.16's `RLOOTrainer._compute_loss`:
//! sequence log-probs (sums over the mask), the clipped sequence ratio, the mean over
//! completions; gradients by central differences; the clip and entropy metrics; and the
//! pipeline from rewards through `RlooAdvantages` and `RlooKl`.

use burn_preference::advantages::{RlooAdvantagesConfig, RlooKl};
use burn_preference::batch::CompletionBatch;
use burn_preference::loss::RlooConfig;
use burn_preference::prelude::*;

use super::reference::{Case, assert_metrics, batch, bools, finish};
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices, floats, to_vec};

/// The loss, shares and metrics at policy log-probs `p` (the old ones held).
fn objective(
    case: &Case,
    epsilon: (f64, f64),
    p: &[f64],
) -> (f64, Vec<f64>, Vec<(&'static str, f64)>) {
    let (n, c) = (case.n, case.c);
    let sequence = |v: &[f64], i: usize| -> f64 {
        (0..c)
            .filter(|&t| case.mask[i * c + t])
            .map(|t| v[i * c + t])
            .sum()
    };
    let p0: Vec<f64> = case.policy.iter().map(|&x| x.into()).collect();
    let old: Vec<f64> = case
        .old
        .as_ref()
        .map(|o| o.iter().map(|&x| x.into()).collect())
        .unwrap_or(p0);
    let mut losses = Vec::new();
    let (mut low, mut high) = (0.0, 0.0);
    let mut region = 0.0;
    for i in 0..n {
        let a = f64::from(case.advantages[i]);
        let r = (sequence(p, i) - sequence(&old, i)).exp();
        let clipped = r.clamp(1.0 - epsilon.0, 1.0 + epsilon.1);
        losses.push(-(r * a).min(clipped * a));
        let l = r < 1.0 - epsilon.0 && a < 0.0;
        let h = r > 1.0 + epsilon.1 && a > 0.0;
        low += f64::from(l);
        high += f64::from(h);
        region += f64::from(l || h);
    }
    let loss = losses.iter().sum::<f64>() / n as f64;
    let mut metrics = vec![
        ("clip_ratio/low_mean", low / n as f64),
        ("clip_ratio/high_mean", high / n as f64),
        ("clip_ratio/region_mean", region / n as f64),
    ];
    if let Some(entropy) = &case.entropy {
        let counted: Vec<f64> = (0..n * c)
            .filter(|&j| case.mask[j])
            .map(|j| entropy[j].into())
            .collect();
        metrics.push((
            "entropy",
            counted.iter().sum::<f64>() / counted.len() as f64,
        ));
    }
    (loss, losses, metrics)
}

fn check(
    what: &str,
    case: &Case,
    epsilon: (f64, f64),
    devices: Vec<(&'static str, burn::tensor::Device)>,
) {
    let p: Vec<f64> = case.policy.iter().map(|&x| x.into()).collect();
    let (loss, losses, metrics) = objective(case, epsilon, &p);
    let h = 1e-6;
    let grad: Vec<f64> = (0..p.len())
        .map(|j| {
            let at = |d: f64| {
                let mut q = p.clone();
                q[j] += d;
                objective(case, epsilon, &q).0
            };
            (at(h) - at(-h)) / (2.0 * h)
        })
        .collect();
    let rloo = RlooConfig::new()
        .with_epsilon(epsilon.0)
        .with_epsilon_high(Some(epsilon.1))
        .init()
        .unwrap();
    for (name, device) in devices {
        let (b, policy, entropy) = batch(case, &device, None);
        let got = finish(case, rloo.forward(b).unwrap(), policy, entropy);
        assert_close(
            name,
            &format!("{what}: loss"),
            &[got.loss],
            &[loss],
            1e-4,
            1e-6,
        );
        assert_close(
            name,
            &format!("{what}: losses"),
            &got.losses,
            &losses,
            1e-4,
            1e-6,
        );
        assert_close(
            name,
            &format!("{what}: ∂"),
            &got.grad_policy,
            &grad,
            1e-3,
            1e-6,
        );
        assert_metrics(name, what, &got.metrics, &metrics);
    }
}

#[test]
fn rloo_matches_f64() {
    // Sequence log ratios up to about ±1: both clips bite.
    let case = Case::base();
    check("RLOO", &case, (0.2, 0.2), autodiff_devices());
    check(
        "RLOO clip-higher",
        &case,
        (0.1, 0.35),
        cpu_autodiff_devices(),
    );
    // On-policy: r = 1, the loss −mean(A), the gradient A/N on each counted token.
    check(
        "RLOO on-policy",
        &Case::base().bare(),
        (0.2, 0.2),
        cpu_autodiff_devices(),
    );
    // Log ratios of −2 and +1 per token: sequence ratios far outside the clip range.
    let mut far = Case::base();
    far.old = Some(
        far.policy
            .iter()
            .enumerate()
            .map(|(j, p)| if j % 2 == 0 { p - 2.0 } else { p + 1.0 })
            .collect(),
    );
    check("RLOO far", &far, (0.2, 0.28), cpu_autodiff_devices());
}

/// From rewards to loss: RLOO's advantages with the KL penalty from the batch's own old and
/// reference log-probs, then the loss; on-policy the loss is −mean(A), and the advantages of a
/// group sum to 0 when every completion is scorable.
#[test]
fn rloo_pipeline_from_rewards() {
    let case = Case::base();
    let (n, c) = (case.n, case.c);
    for (name, device) in cpu_autodiff_devices() {
        let shape = [n, c];
        let kl = RlooKl::from_token_logps(
            floats(case.old.clone().unwrap(), shape, &device),
            floats(case.reference.clone().unwrap(), shape, &device),
            bools(&case.mask, shape, &device),
        )
        .unwrap();
        let rewards = floats(vec![1.0, 0.0, 0.5, 2.0, -1.0, 0.25], [n, 1], &device);
        let out = RlooAdvantagesConfig::new()
            .with_num_generations(3)
            .with_beta(0.1)
            .init()
            .unwrap()
            .forward(rewards, Some(kl))
            .unwrap();
        let a = to_vec(out.advantages.clone());
        for g in 0..2 {
            let sum: f32 = a[g * 3..g * 3 + 3].iter().sum();
            assert!(sum.abs() < 1e-5, "[{name}] group {g} sums to {sum}");
        }
        let batch = CompletionBatch::new(
            floats(case.policy.clone(), shape, &device).require_grad(),
            bools(&case.mask, shape, &device),
            out.advantages,
        )
        .unwrap();
        let loss = RlooConfig::new()
            .init()
            .unwrap()
            .forward(batch)
            .unwrap()
            .loss;
        let mean: f32 = a.iter().sum::<f32>() / n as f32;
        assert!((to_vec(loss)[0] + mean).abs() < 1e-6);
    }
}
