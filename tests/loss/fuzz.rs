//! Randomized properties at extreme inputs (logits ±1e4 / ±1e30, margins ±1e6, ties, soft
//! labels exactly 0 and 1) against f64 references written here: values and autodiff
//! gradients finite wherever the math is finite.
//!
//! The number of randomized cases is `FUZZ_CASES` (default 2000, split over the properties):
//! `FUZZ_CASES=100000 cargo test --release --test loss fuzz` runs the long campaign.

use burn_preference::logps::SequenceLogpsConfig;
use burn_preference::metrics::categorical_kl;
use burn_preference::prelude::{PairedBatch, PreferenceLoss, Psi, PsiPoConfig};
use proptest::prelude::*;

use crate::common::cases::f1;
use crate::common::reference::{sigmoid, softplus};
use crate::common::{
    assert_close, autodiff_devices, cpu_autodiff_devices, devices, floats, fuzz_cases, ints, to_vec,
};

#[derive(Debug, Clone)]
struct LogpsCase {
    dims: [usize; 3],
    logits: Vec<f32>,
    labels: Vec<i64>,
}

/// Logits at one of three scales (1, 1e4, 1e30), sometimes rounded to a few values so that
/// the max ties; labels valid or −100.
fn logps_case() -> impl Strategy<Value = LogpsCase> {
    (1..=3usize, 1..=4usize, 1..=9usize, 0..3usize, any::<bool>())
        .prop_flat_map(|(b, t, v, scale, ties)| {
            let scale = [1.0f32, 1e4, 1e30][scale];
            let logit = (-1.0f32..1.0).prop_map(move |u| {
                let x = if ties { (u * 2.0).round() / 2.0 } else { u };
                x * scale
            });
            (
                Just([b, t, v]),
                prop::collection::vec(logit, b * t * v),
                prop::collection::vec(prop_oneof![1 => Just(-100i64), 3 => 0..v as i64], b * t),
            )
        })
        .prop_map(|(dims, logits, labels)| LogpsCase {
            dims,
            logits,
            labels,
        })
}

/// Per-sequence sums and the gradient of their total, in f64.
fn logps_reference(case: &LogpsCase) -> (Vec<f64>, Vec<f64>) {
    let [b, t, v] = case.dims;
    let mut sums = vec![0.0; b];
    let mut grad = vec![0.0; b * t * v];
    for row in 0..b * t {
        let Ok(y) = usize::try_from(case.labels[row]) else {
            continue;
        };
        let z: Vec<f64> = case.logits[row * v..(row + 1) * v]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        // `m` and `log s` kept apart: at |z| ~ 1e30 even f64 loses `log s` in `m + log s`.
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_s = z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        sums[row / t] += (z[y] - m) - log_s;
        for (i, x) in z.iter().enumerate() {
            grad[row * v + i] = f64::from(u8::from(i == y)) - ((x - m) - log_s).exp();
        }
    }
    (sums, grad)
}

#[derive(Debug, Clone)]
struct PsiCase {
    psi: Psi,
    beta: f64,
    eps: f64,
    candidates: usize,
    policy: Vec<f32>,
    scores: Option<Vec<f32>>,
    soft_labels: Option<Vec<f32>>,
}

/// Reference-free ΨPO batches whose log-probs reach ±1e6: pairs with soft labels that are
/// exactly 0 or 1 (or anything between), or ranked lists with tied scores.
fn psi_case() -> impl Strategy<Value = PsiCase> {
    let psi = prop_oneof![Just(Psi::Logit), Just(Psi::Identity)];
    let beta = (-3.0f64..1.0).prop_map(|e| 10f64.powf(e));
    let eps = prop_oneof![2 => Just(0.0), 1 => 0.0f64..0.49];
    let logp = prop_oneof![(-1e6f32..1e6), (-50.0f32..0.0)];
    (psi, beta, eps, 1..=3usize, 2..=4usize, any::<bool>())
        .prop_flat_map(move |(psi, beta, eps, b, k, pairwise)| {
            let k = if pairwise { 2 } else { k };
            let label = prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0];
            (
                Just((psi, beta, eps, k, pairwise)),
                prop::collection::vec(logp.clone(), b * k),
                prop::collection::vec((0..3i32).prop_map(|s| s as f32), b * k),
                prop::collection::vec(label, b),
            )
        })
        .prop_map(
            |((psi, beta, eps, candidates, pairwise), policy, scores, labels)| PsiCase {
                psi,
                beta,
                eps,
                candidates,
                policy,
                scores: (!pairwise).then_some(scores),
                soft_labels: pairwise.then_some(labels),
            },
        )
}

/// The per-pair loss and its slope `∂/∂h` in f64.
fn psi_pair(case: &PsiCase, q: f64, h: f64) -> (f64, f64) {
    let q = q * (1.0 - 2.0 * case.eps) + case.eps;
    let beta = case.beta;
    match case.psi {
        Psi::Logit => (
            q * softplus(-beta * h) + (1.0 - q) * softplus(beta * h),
            beta * (-q * sigmoid(-beta * h) + (1.0 - q) * sigmoid(beta * h)),
        ),
        Psi::Identity => {
            let target = (2.0 * q - 1.0) / (2.0 * beta);
            ((h - target).powi(2), 2.0 * (h - target))
        }
    }
}

/// Per-prompt losses and the gradient of their mean w.r.t. the policy, in f64.
fn psi_reference(case: &PsiCase) -> (Vec<f64>, Vec<f64>) {
    let k = case.candidates;
    let b = case.policy.len() / k;
    let (mut losses, mut grad) = (vec![0.0; b], vec![0.0; b * k]);
    for p in 0..b {
        let score = |i: usize| case.scores.as_ref().map_or(-(i as f32), |s| s[p * k + i]);
        let pairs: Vec<(usize, usize)> = (0..k)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .filter(|&(i, j)| score(i) > score(j))
            .collect();
        let q = case.soft_labels.as_ref().map_or(1.0, |l| f64::from(l[p]));
        for &(i, j) in &pairs {
            let h = f64::from(case.policy[p * k + i]) - f64::from(case.policy[p * k + j]);
            let (loss, slope) = psi_pair(case, q, h);
            let n = pairs.len() as f64;
            losses[p] += loss / n;
            grad[p * k + i] += slope / n / b as f64;
            grad[p * k + j] -= slope / n / b as f64;
        }
    }
    (losses, grad)
}

/// `softmax(θ)` of random θ spanning up to ±40 (probabilities down to ~1e-35), in f64 and as
/// the f32 vector the crate gets.
fn distribution(theta: &[f64]) -> Vec<f32> {
    let m = theta.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = theta.iter().map(|t| (t - m).exp()).sum();
    theta
        .iter()
        .map(|t| ((t - m).exp() / total) as f32)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(3), ..ProptestConfig::default() })]

    /// Sequence log-probs and their gradients at logits up to ±1e30, with ties.
    #[test]
    fn log_probs_match_f64_at_extreme_logits(case in logps_case()) {
        let gatherer = SequenceLogpsConfig::new().with_shift(false).init().expect("config");
        let (sums, grad) = logps_reference(&case);
        let [b, t, _] = case.dims;
        for (name, device) in autodiff_devices() {
            let logits = floats(case.logits.clone(), case.dims, &device).require_grad();
            let labels = ints(case.labels.clone(), [b, t], &device);
            let out = gatherer.forward(logits.clone(), labels, None).expect("valid input");
            let got = to_vec(out.logps.clone());
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite {:?}", name, got);
            assert_close(name, "logps", &got, &sums, 1e-5, 1e-5);
            let got = to_vec(logits.grad(&out.logps.sum().backward()).expect("gradient"));
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite gradient", name);
            assert_close(name, "gradient", &got, &grad, 1e-5, 2e-6);
        }
    }

    /// ΨPO (DPO and IPO) at log-probs up to ±1e6: values and gradients finite and equal to the
    /// f64 reference; soft labels exactly 0 and 1; ranked lists with ties.
    #[test]
    fn psipo_matches_f64_at_extreme_margins(case in psi_case()) {
        let (losses, grad) = psi_reference(&case);
        let k = case.candidates;
        let b = case.policy.len() / k;
        let loss = PsiPoConfig::new(case.psi)
            .with_beta(case.beta)
            .with_label_smoothing(case.eps)
            .with_reference_free(true)
            .init()
            .expect("config in range");
        // The loss is tensor ops, the same on every device: its randomized cases run on the
        // CPU backends (a wgpu forward+backward costs ~0.1 s on CI's CPU Vulkan driver);
        // wgpu runs the fixed extreme batches of `zoo` and `stability`.
        for (name, device) in cpu_autodiff_devices() {
            let policy = floats(case.policy.clone(), [b, k], &device).require_grad();
            let mut batch = PairedBatch::new(policy.clone()).expect("valid batch");
            if let Some(scores) = &case.scores {
                batch = batch.with_scores(floats(scores.clone(), [b, k], &device)).expect("scores [B, K]");
            }
            if let Some(q) = &case.soft_labels {
                batch = batch.with_soft_labels(floats(q.clone(), [b], &device)).expect("labels in [0, 1]");
            }
            let out = loss.forward(batch).expect("valid batch");
            let got = to_vec(out.losses.clone());
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite {:?}", name, got);
            // The margins are f32 differences of values up to 1e6: an absolute slack of
            // 1e-6 of the largest loss covers their rounding.
            let scale = losses.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            assert_close(name, "losses", &got, &losses, 1e-4, 1e-6 * scale);
            let got = to_vec(policy.grad(&out.loss.backward()).expect("gradient"));
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite gradient", name);
            let scale = grad.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            assert_close(name, "gradient", &got, &grad, 1e-4, 1e-6 * scale);
        }
    }

    /// The exact KL of two categorical distributions with probabilities down to ~1e-17.
    #[test]
    fn categorical_kl_matches_f64(
        theta_p in prop::collection::vec(-40.0f64..0.0, 2..6),
        shift in prop::collection::vec(-5.0f64..5.0, 6),
    ) {
        let p = distribution(&theta_p);
        let theta_q: Vec<f64> = theta_p.iter().zip(&shift).map(|(t, s)| t + s).collect();
        let q = distribution(&theta_q);
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(p, _)| **p > 0.0)
            .map(|(&p, &q)| f64::from(p) * (f64::from(p).ln() - f64::from(q).ln()))
            .sum();
        for (name, device) in devices() {
            let got = to_vec(
                categorical_kl(f1(&p, &device), f1(&q, &device)).expect("distributions"),
            );
            prop_assert!(got[0].is_finite() && got[0] >= -1e-6, "[{}] {:?}", name, got);
            assert_close(name, "KL", &got, &[kl], 1e-4, 1e-6);
        }
    }
}
