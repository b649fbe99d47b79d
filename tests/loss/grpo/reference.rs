//! The GRPO family's loss in `f64`, written from TRL 1.16's `GRPOTrainer._compute_loss`,
//! `get_off_policy_mask`, `get_high_entropy_mask` and `get_gamma_weights`, independently of the
//! crate: the loss, each completion's share, the metrics, and the gradients by central finite
//! differences in `f64` (the detached quantities — CISPO's capped ratio, VESPO's weight, the
//! masks, the sampling policy when there are no old log-probs — held at the batch's values).
//! Plus the [`Case`] both sides are built from, and the crate's side of a comparison.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use burn_preference::batch::{CompletionBatch, StepTotals};
use burn_preference::loss::{GrpoConfig, GrpoLossType, ImportanceSamplingLevel};
use burn_preference::prelude::*;

use crate::common::{assert_close, floats, to_vec};

/// A batch of `n` completions × `c` positions, on the host (`f32`, as the tensors hold them).
#[derive(Debug, Clone)]
pub struct Case {
    pub n: usize,
    pub c: usize,
    pub policy: Vec<f32>,
    pub mask: Vec<bool>,
    /// `[n]`, or `[n·c]` with `token_advantages`.
    pub advantages: Vec<f32>,
    pub token_advantages: bool,
    pub old: Option<Vec<f32>>,
    pub reference: Option<Vec<f32>>,
    pub entropy: Option<Vec<f32>>,
    pub is_ratio: Option<Vec<f32>>,
    pub sampling: Option<Vec<f32>>,
    pub truncated: Option<Vec<bool>>,
}

/// A deterministic wave in `[-1, 1]`.
pub fn wave(i: usize, seed: f64) -> f64 {
    (i as f64 * 0.737 + seed).sin()
}

/// The completion lengths of the base case: one empty completion (row 2).
pub const LENGTHS: [usize; 6] = [5, 3, 0, 4, 1, 2];
pub const ADVANTAGES: [f32; 6] = [1.2, -0.7, 0.5, -1.3, 0.9, -0.4];

impl Case {
    /// Six completions of up to five tokens ([`LENGTHS`]), one advantage each, every optional
    /// input present: old log-probs within ±0.3 of the policy's (ratios on both sides of a
    /// 0.2 clip), reference, entropies, the engine's correction and its log-probs. Padding
    /// holds finite garbage (−7), which must not reach the loss.
    pub fn base() -> Self {
        Self::with_lengths(&LENGTHS, &ADVANTAGES)
    }

    pub fn with_lengths(lengths: &[usize], advantages: &[f32]) -> Self {
        let n = lengths.len();
        let c = lengths.iter().copied().max().unwrap_or(1).max(1);
        let mask: Vec<bool> = (0..n * c).map(|i| i % c < lengths[i / c]).collect();
        let fill = |values: Vec<f64>, pad: f32| -> Vec<f32> {
            values
                .iter()
                .zip(&mask)
                .map(|(&v, &m)| if m { v as f32 } else { pad })
                .collect()
        };
        let policy: Vec<f64> = (0..n * c)
            .map(|i| -0.05 - 1.5 * (1.0 + wave(i, 0.3)))
            .collect();
        let old: Vec<f64> = policy
            .iter()
            .enumerate()
            .map(|(i, p)| p + 0.3 * wave(i, 1.1))
            .collect();
        let reference: Vec<f64> = policy
            .iter()
            .enumerate()
            .map(|(i, p)| p + 0.4 * wave(i, 2.9))
            .collect();
        let entropy: Vec<f64> = (0..n * c).map(|i| 1.5 + 1.4 * wave(i, 4.2)).collect();
        let is_ratio: Vec<f64> = (0..n * c).map(|i| 1.0 + 0.45 * wave(i, 5.3)).collect();
        let sampling: Vec<f64> = old
            .iter()
            .enumerate()
            .map(|(i, o)| o + 0.25 * wave(i, 6.7))
            .collect();
        Self {
            n,
            c,
            policy: fill(policy, -7.0),
            advantages: advantages.to_vec(),
            token_advantages: false,
            old: Some(fill(old, -7.5)),
            reference: Some(fill(reference, -6.5)),
            entropy: Some(fill(entropy, 0.0)),
            // The engine's correction is 1 at padding, as TRL's.
            is_ratio: Some(fill(is_ratio, 1.0)),
            sampling: Some(fill(sampling, -8.0)),
            truncated: None,
            mask,
        }
    }

    /// Without the optional inputs.
    pub fn bare(mut self) -> Self {
        self.old = None;
        self.reference = None;
        self.entropy = None;
        self.is_ratio = None;
        self.sampling = None;
        self.truncated = None;
        self
    }

    /// One advantage per token: each completion's, varied along the tokens (signs too).
    pub fn per_token_advantages(mut self) -> Self {
        let c = self.c;
        self.advantages = (0..self.n * c)
            .map(|i| (f64::from(self.advantages[i / c]) + 0.6 * wave(i, 7.7)) as f32)
            .collect();
        self.token_advantages = true;
        self
    }

    /// The rows `rows`, in order (a micro-batch).
    pub fn rows(&self, rows: &[usize]) -> Self {
        let c = self.c;
        let pick = |v: &Vec<f32>| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| v[r * c..(r + 1) * c].to_vec())
                .collect()
        };
        let pick_opt = |v: &Option<Vec<f32>>| v.as_ref().map(pick);
        Self {
            n: rows.len(),
            c,
            policy: pick(&self.policy),
            mask: rows
                .iter()
                .flat_map(|&r| self.mask[r * c..(r + 1) * c].to_vec())
                .collect(),
            advantages: if self.token_advantages {
                pick(&self.advantages)
            } else {
                rows.iter().map(|&r| self.advantages[r]).collect()
            },
            token_advantages: self.token_advantages,
            old: pick_opt(&self.old),
            reference: pick_opt(&self.reference),
            entropy: pick_opt(&self.entropy),
            is_ratio: pick_opt(&self.is_ratio),
            sampling: pick_opt(&self.sampling),
            truncated: self
                .truncated
                .as_ref()
                .map(|t| rows.iter().map(|&r| t[r]).collect()),
        }
    }

    /// The counted tokens of each completion (after truncation when `mask_truncated`).
    pub fn lengths(&self, mask_truncated: bool) -> Vec<usize> {
        (0..self.n)
            .map(|i| {
                let cut = mask_truncated && self.truncated.as_ref().is_some_and(|t| t[i]);
                if cut {
                    0
                } else {
                    (0..self.c).filter(|&t| self.mask[i * self.c + t]).count()
                }
            })
            .collect()
    }

    fn advantage(&self, i: usize, t: usize) -> f64 {
        f64::from(if self.token_advantages {
            self.advantages[i * self.c + t]
        } else {
            self.advantages[i]
        })
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `torch.quantile` with linear interpolation, of the non-empty `values`.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let position = (sorted.len() - 1) as f64 * q;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

/// TRL's `get_high_entropy_mask` over the counted tokens `mask`: `entropy >= quantile(q)`.
pub fn high_entropy_mask(entropy: &[f64], mask: &[bool], q: f64) -> Vec<bool> {
    let counted: Vec<f64> = entropy
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(e, _)| *e)
        .collect();
    if counted.is_empty() {
        return vec![false; mask.len()];
    }
    let threshold = quantile(&counted, q);
    entropy
        .iter()
        .zip(mask)
        .map(|(&e, &m)| m && e >= threshold)
        .collect()
}

/// What the reference gives.
#[derive(Debug, Clone)]
pub struct Reference {
    pub loss: f64,
    pub losses: Vec<f64>,
    pub metrics: Vec<(&'static str, f64)>,
    pub grad_policy: Vec<f64>,
    pub grad_entropy: Vec<f64>,
}

/// The loss at policy log-probs `p` and entropies `h` (the differentiable inputs); everything
/// detached is computed from the case's own values.
fn objective(
    case: &Case,
    cfg: &GrpoConfig,
    step: Option<StepTotals>,
    p: &[f64],
    h: &[f64],
) -> (f64, Vec<f64>, Vec<(&'static str, f64)>) {
    let (n, c) = (case.n, case.c);
    let truncated =
        |i: usize| cfg.mask_truncated_completions && case.truncated.as_ref().is_some_and(|t| t[i]);
    let m: Vec<bool> = (0..n * c)
        .map(|j| case.mask[j] && !truncated(j / c))
        .collect();
    let count = |i: usize| (0..c).filter(|&t| m[i * c + t]).count() as f64;
    let el = cfg.epsilon;
    let eh = cfg.epsilon_high.unwrap_or(cfg.epsilon);
    let p0 = f64s(&case.policy);
    let old = case.old.as_deref().map(f64s).unwrap_or_else(|| p0.clone());
    let sequence = cfg.importance_sampling_level == ImportanceSamplingLevel::Sequence;
    // The log importance weight of every position, at log-probs `pp`.
    let log_weights = |pp: &[f64]| -> Vec<f64> {
        let lr: Vec<f64> = (0..n * c)
            .map(|j| if m[j] { pp[j] - old[j] } else { 0.0 })
            .collect();
        if !sequence {
            return lr;
        }
        (0..n * c)
            .map(|j| {
                let i = j / c;
                let s: f64 = (0..c).map(|t| lr[i * c + t]).sum();
                s / count(i).max(1.0)
            })
            .collect()
    };
    let r: Vec<f64> = log_weights(p).iter().map(|w| w.exp()).collect();
    let r0: Vec<f64> = log_weights(&p0).iter().map(|w| w.exp()).collect();
    let a = |j: usize| case.advantage(j / c, j % c);
    // The shape of the clip metrics: [N, 1] only for sequence ratios and one advantage each.
    let per_sequence = sequence && !case.token_advantages;

    // VESPO's weights, from the detached log ratios (token-level, unclamped by the sequence).
    let phi: Vec<f64> = (0..n * c)
        .map(|j| {
            let i = j / c;
            let floor = 1e-8f64.ln();
            let mut log_w: f64 = (0..c)
                .map(|t| {
                    let k = i * c + t;
                    if m[k] {
                        (p0[k] - old[k]).clamp(-20.0, 20.0)
                    } else {
                        0.0
                    }
                })
                .sum();
            if let Some(is) = &case.is_ratio {
                log_w += (0..c)
                    .map(|t| f64::from(is[i * c + t]).ln().clamp(floor, 20.0))
                    .sum::<f64>();
            }
            let log_w = log_w.clamp(floor, 20.0);
            let (k, lambda) = if a(j) >= 0.0 {
                (cfg.vespo_k_pos, cfg.vespo_lambda_pos)
            } else {
                (cfg.vespo_k_neg, cfg.vespo_lambda_neg)
            };
            let lambda = lambda.max(1e-4);
            let value = (lambda + k * log_w - lambda * log_w.exp()).exp();
            if value.is_finite() { value } else { 0.0 }
        })
        .collect();

    let mut ratio_for_clip = r.clone();
    let mut f: Vec<f64> = (0..n * c)
        .map(|j| match cfg.loss_type {
            GrpoLossType::Cispo => -r0[j].min(eh) * a(j) * p[j],
            GrpoLossType::Sapo => {
                let tau = if a(j) > 0.0 {
                    cfg.sapo_temperature_pos
                } else {
                    cfg.sapo_temperature_neg
                };
                -sigmoid(tau * (r[j] - 1.0)) * 4.0 / tau * a(j)
            }
            GrpoLossType::Vespo => -phi[j] * a(j) * p[j],
            _ => {
                let unclipped = cfg.delta.map_or(r[j], |d| r[j].min(d));
                ratio_for_clip[j] = unclipped;
                let clipped = r[j].clamp(1.0 - el, 1.0 + eh);
                -(unclipped * a(j)).min(clipped * a(j))
            }
        })
        .collect();

    if let Some(threshold) = cfg.off_policy_mask_threshold {
        let sampling = case.sampling.as_deref().map(f64s).unwrap_or(old.clone());
        for i in 0..n {
            let drift: f64 = (0..c)
                .filter(|&t| m[i * c + t])
                .map(|t| {
                    let d = sampling[i * c + t] - p0[i * c + t];
                    if d.is_nan() { 0.0 } else { d }
                })
                .sum::<f64>()
                / count(i).max(1.0);
            for t in 0..c {
                let j = i * c + t;
                if !(a(j) >= 0.0 || drift <= threshold) {
                    f[j] = 0.0;
                }
            }
        }
    }
    let kept = (cfg.top_entropy_quantile < 1.0).then(|| {
        let h0 = f64s(case.entropy.as_ref().expect("entropies"));
        high_entropy_mask(&h0, &m, 1.0 - cfg.top_entropy_quantile)
    });
    if let Some(kept) = &kept {
        for j in 0..n * c {
            if !kept[j] {
                f[j] = 0.0;
            }
        }
    }
    if let Some(is) = &case.is_ratio
        && cfg.vllm_importance_sampling_correction
        && cfg.loss_type != GrpoLossType::Vespo
    {
        for j in 0..n * c {
            f[j] *= f64::from(is[j]);
        }
    }
    let mut kl = vec![0.0; n * c];
    if cfg.beta != 0.0 {
        let reference = f64s(case.reference.as_ref().expect("reference"));
        for j in 0..n * c {
            let gap = if m[j] { reference[j] - p[j] } else { 0.0 };
            kl[j] = gap.exp() - gap - 1.0;
            if cfg.use_bias_correction_kl {
                kl[j] *= r[j];
            }
            f[j] += cfg.beta * kl[j];
        }
    }

    let sums: Vec<f64> = (0..n)
        .map(|i| (0..c).filter(|&t| m[i * c + t]).map(|t| f[i * c + t]).sum())
        .collect();
    let tokens: f64 = m.iter().filter(|&&x| x).count() as f64;
    let (values, by_tokens): (Vec<f64>, bool) = match cfg.loss_type {
        GrpoLossType::Grpo | GrpoLossType::Sapo => {
            ((0..n).map(|i| sums[i] / count(i).max(1.0)).collect(), false)
        }
        GrpoLossType::Luspo => (sums.clone(), false),
        GrpoLossType::DrGrpo => (
            sums.iter()
                .map(|s| s / cfg.max_completion_length as f64)
                .collect(),
            false,
        ),
        _ => (sums.clone(), true),
    };
    let denominator = match (by_tokens, step) {
        (false, Some(s)) => s.examples,
        (false, None) => n as f64,
        (true, Some(s)) => s.tokens.max(1.0),
        (true, None) => tokens.max(1.0),
    };
    let mut loss: f64 = values.iter().sum::<f64>() / denominator;
    let mut losses: Vec<f64> = values.iter().map(|v| n as f64 * v / denominator).collect();

    let mut metrics: Vec<(&'static str, f64)> = Vec::new();
    let masked_mean = |x: &dyn Fn(usize) -> f64| -> Option<f64> {
        (tokens > 0.0).then(|| (0..n * c).filter(|&j| m[j]).map(x).sum::<f64>() / tokens)
    };
    if cfg.entropy_coef != 0.0 {
        let effective: Vec<bool> = kept.clone().unwrap_or(m.clone());
        let count = match step {
            Some(s) => s.tokens.max(1.0),
            None => (effective.iter().filter(|&&x| x).count() as f64).max(1.0),
        };
        let bonus = cfg.entropy_coef
            * (0..n * c)
                .filter(|&j| effective[j])
                .map(|j| h[j])
                .sum::<f64>()
            / count;
        if step.is_none() {
            metrics.push(("policy_loss", loss));
        }
        metrics.push(("entropy_coef", cfg.entropy_coef));
        loss -= bonus;
        for l in &mut losses {
            *l -= bonus;
        }
    }
    if cfg.beta != 0.0
        && let Some(v) = masked_mean(&|j| kl[j])
    {
        metrics.push(("kl", v));
    }
    if case.entropy.is_some()
        && let Some(v) = masked_mean(&|j| h[j])
    {
        metrics.push(("entropy", v));
    }
    // A shaped mean of a 0/1 predicate: over completions ([N, 1]) or counted tokens.
    let shaped = |pred: &dyn Fn(usize) -> bool, per_completion: bool| -> Option<f64> {
        if per_completion {
            Some((0..n).filter(|&i| pred(i * c)).count() as f64 / n as f64)
        } else {
            masked_mean(&|j| if pred(j) { 1.0 } else { 0.0 })
        }
    };
    match cfg.loss_type {
        GrpoLossType::Cispo => {
            if let Some(v) = shaped(&|j| r0[j] > eh && a(j) > 0.0, per_sequence) {
                metrics.push(("cispo_clip_ratio", v));
            }
        }
        GrpoLossType::Vespo => {
            let v = if case.token_advantages {
                masked_mean(&|j| phi[j])
            } else {
                Some((0..n).map(|i| phi[i * c]).sum::<f64>() / n as f64)
            };
            if let Some(v) = v {
                metrics.push(("vespo/phi_seq_mean", v));
            }
        }
        GrpoLossType::Sapo => {}
        _ => {
            let low = |j: usize| ratio_for_clip[j] < 1.0 - el && a(j) < 0.0;
            let high = |j: usize| ratio_for_clip[j] > 1.0 + eh && a(j) > 0.0;
            for (name, value) in [
                ("clip_ratio/low_mean", shaped(&low, per_sequence)),
                ("clip_ratio/high_mean", shaped(&high, per_sequence)),
                (
                    "clip_ratio/region_mean",
                    shaped(&|j| low(j) || high(j), per_sequence),
                ),
            ] {
                if let Some(v) = value {
                    metrics.push((name, v));
                }
            }
        }
    }
    (loss, losses, metrics)
}

/// The reference at the case's own values, with gradients by central differences.
pub fn reference(case: &Case, cfg: &GrpoConfig, step: Option<StepTotals>) -> Reference {
    let p = f64s(&case.policy);
    let h = case
        .entropy
        .as_deref()
        .map(f64s)
        .unwrap_or(vec![0.0; case.n * case.c]);
    let (loss, losses, metrics) = objective(case, cfg, step, &p, &h);
    let step_size = 1e-6;
    let differences = |which: usize| -> Vec<f64> {
        (0..case.n * case.c)
            .map(|j| {
                let at = |delta: f64| {
                    let (mut p, mut h) = (p.clone(), h.clone());
                    if which == 0 {
                        p[j] += delta;
                    } else {
                        h[j] += delta;
                    }
                    objective(case, cfg, step, &p, &h).0
                };
                (at(step_size) - at(-step_size)) / (2.0 * step_size)
            })
            .collect()
    };
    Reference {
        loss,
        losses,
        metrics,
        grad_policy: differences(0),
        grad_entropy: differences(1),
    }
}

/// What the crate gives.
#[derive(Debug, Clone)]
pub struct Got {
    pub loss: f32,
    pub losses: Vec<f32>,
    pub metrics: Metrics,
    pub grad_policy: Vec<f32>,
    /// Zeros when the batch has no entropies or the loss does not depend on them.
    pub grad_entropy: Vec<f32>,
}

pub fn bools(values: &[bool], shape: [usize; 2], device: &Device) -> Tensor<2, Bool> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// The case's batch on `device`, and its differentiable leaves (policy, entropy).
pub fn batch(
    case: &Case,
    device: &Device,
    step: Option<StepTotals>,
) -> (CompletionBatch, Tensor<2>, Option<Tensor<2>>) {
    let shape = [case.n, case.c];
    let policy = floats(case.policy.clone(), shape, device).require_grad();
    let mask = bools(&case.mask, shape, device);
    let per_completion = if case.token_advantages {
        Tensor::zeros([case.n], device)
    } else {
        floats(case.advantages.clone(), [case.n], device)
    };
    let mut batch = CompletionBatch::new(policy.clone(), mask, per_completion).expect("batch");
    if case.token_advantages {
        batch = batch
            .with_token_advantages(floats(case.advantages.clone(), shape, device))
            .unwrap();
    }
    let tensor = |v: &Vec<f32>| floats(v.clone(), shape, device);
    if let Some(old) = &case.old {
        batch = batch.with_old_logps(tensor(old)).unwrap();
    }
    if let Some(reference) = &case.reference {
        batch = batch.with_reference(tensor(reference)).unwrap();
    }
    let entropy = case.entropy.as_ref().map(|e| tensor(e).require_grad());
    if let Some(entropy) = &entropy {
        batch = batch.with_entropy(entropy.clone()).unwrap();
    }
    if let Some(ratio) = &case.is_ratio {
        batch = batch.with_importance_sampling_ratio(tensor(ratio)).unwrap();
    }
    if let Some(sampling) = &case.sampling {
        batch = batch.with_sampling_logps(tensor(sampling)).unwrap();
    }
    if let Some(truncated) = &case.truncated {
        let flags =
            Tensor::<1, Bool>::from_data(TensorData::new(truncated.clone(), [case.n]), device);
        batch = batch.with_truncated(flags).unwrap();
    }
    if let Some(step) = step {
        batch = batch.with_step(step).unwrap();
    }
    (batch, policy, entropy)
}

/// The crate's GRPO loss of the case on an autodiff `device`.
pub fn run(case: &Case, cfg: &GrpoConfig, device: &Device, step: Option<StepTotals>) -> Got {
    let (batch, policy, entropy) = batch(case, device, step);
    let out = cfg.init().expect("config").forward(batch).expect("forward");
    finish(case, out, policy, entropy)
}

/// The loss, shares, metrics and gradients of an output.
pub fn finish(case: &Case, out: LossOutput, policy: Tensor<2>, entropy: Option<Tensor<2>>) -> Got {
    let loss = to_vec(out.loss.clone())[0];
    let losses = to_vec(out.losses.clone());
    let grads = out.loss.backward();
    let zeros = vec![0.0; case.n * case.c];
    let grad_policy = policy.grad(&grads).map(to_vec).unwrap_or(zeros.clone());
    let grad_entropy = entropy
        .and_then(|e| e.grad(&grads))
        .map(to_vec)
        .unwrap_or(zeros);
    Got {
        loss,
        losses,
        metrics: out.metrics,
        grad_policy,
        grad_entropy,
    }
}

/// Asserts the crate's loss, shares (and that their mean is the loss), gradients and metrics
/// equal the reference's.
pub fn assert_matches(device: &str, what: &str, got: &Got, want: &Reference) {
    let tol = (1e-4, 1e-5);
    assert_close(
        device,
        &format!("{what}: loss"),
        &[got.loss],
        &[want.loss],
        tol.0,
        tol.1,
    );
    assert_close(
        device,
        &format!("{what}: losses"),
        &got.losses,
        &want.losses,
        tol.0,
        tol.1,
    );
    let mean = got.losses.iter().map(|&l| f64::from(l)).sum::<f64>() / got.losses.len() as f64;
    assert_close(
        device,
        &format!("{what}: mean(losses)"),
        &[got.loss],
        &[mean],
        1e-5,
        1e-6,
    );
    assert_close(
        device,
        &format!("{what}: ∂/∂policy"),
        &got.grad_policy,
        &want.grad_policy,
        1e-3,
        2e-5,
    );
    assert_close(
        device,
        &format!("{what}: ∂/∂entropy"),
        &got.grad_entropy,
        &want.grad_entropy,
        1e-3,
        2e-5,
    );
    assert_metrics(device, what, &got.metrics, &want.metrics);
}

/// The logged metrics equal `want`, name for name.
pub fn assert_metrics(device: &str, what: &str, got: &Metrics, want: &[(&'static str, f64)]) {
    let logged = got.log().expect("metrics");
    let mut names: Vec<&str> = logged.iter().map(|(n, _)| *n).collect();
    let mut wanted: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(names, wanted, "[{device}] {what}: metric names");
    for (name, value) in want {
        let actual = crate::common::logged(&logged, name).unwrap();
        assert_close(
            device,
            &format!("{what}: metric {name}"),
            &[actual as f32],
            &[*value],
            1e-4,
            1e-6,
        );
    }
}
