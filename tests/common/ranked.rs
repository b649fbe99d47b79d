//! Ranked batches for the listwise losses' tests (DPOP, R-DPO, ODPO, Plackett–Luce, LiPO,
//! SimPER): random `B × K` cases whose scores tie, the ordered pairs an `f64` reference loops
//! over, and the check of a loss's output and gradient against that reference.

use burn::tensor::{Device, Tensor};
use burn_preference::prelude::*;
use proptest::prelude::*;

use super::reference::as_f64;
use super::{assert_close, floats, to_vec};

/// The ordered pairs `(i, j)`, `i ≻ j`, of one prompt of `k` candidates: by `scores` (higher
/// wins, equal scores tie) or, without them, by position (column 0 best).
pub fn ordered_pairs(scores: Option<&[f32]>, k: usize) -> Vec<(usize, usize)> {
    let beats = |i: usize, j: usize| match scores {
        Some(s) => s[i] > s[j],
        None => i < j,
    };
    (0..k)
        .flat_map(|i| (0..k).map(move |j| (i, j)))
        .filter(|&(i, j)| beats(i, j))
        .collect()
}

/// `B` prompts × `K` candidates, row-major, with everything a listwise loss may read.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub prompts: usize,
    pub candidates: usize,
    pub policy: Vec<f32>,
    pub reference: Vec<f32>,
    /// `None`: ranked by position.
    pub scores: Option<Vec<f32>>,
    pub lengths: Vec<f32>,
    /// `None`: the plain mean.
    pub weights: Option<Vec<f32>>,
}

impl Ranked {
    /// Unscored, unweighted rows of `k` candidates with lengths 1.
    pub fn new(policy: Vec<f32>, reference: Vec<f32>, k: usize) -> Self {
        let n = policy.len();
        assert_eq!(reference.len(), n, "policy and reference of one shape");
        Self {
            prompts: n / k,
            candidates: k,
            policy,
            reference,
            scores: None,
            lengths: vec![1.0; n],
            weights: None,
        }
    }

    pub fn with_scores(mut self, scores: Vec<f32>) -> Self {
        self.scores = Some(scores);
        self
    }

    pub fn with_lengths(mut self, lengths: Vec<f32>) -> Self {
        self.lengths = lengths;
        self
    }

    pub fn with_weights(mut self, weights: Vec<f32>) -> Self {
        self.weights = Some(weights);
        self
    }

    /// The flat index of candidate `i` of prompt `p`.
    pub fn at(&self, p: usize, i: usize) -> usize {
        p * self.candidates + i
    }

    /// `ρ = log π − log π_ref` in f64 (`log π` alone when `reference_free`).
    pub fn ratio(&self, p: usize, i: usize, reference_free: bool) -> f64 {
        let policy = f64::from(self.policy[self.at(p, i)]);
        if reference_free {
            policy
        } else {
            policy - f64::from(self.reference[self.at(p, i)])
        }
    }

    /// Prompt `p`'s scores, if scored.
    pub fn scores_of(&self, p: usize) -> Option<&[f32]> {
        let k = self.candidates;
        self.scores.as_ref().map(|s| &s[p * k..(p + 1) * k])
    }

    /// Prompt `p`'s ordered pairs.
    pub fn pairs(&self, p: usize) -> Vec<(usize, usize)> {
        ordered_pairs(self.scores_of(p), self.candidates)
    }

    /// Prompt `p`'s share of the reduced loss: `w_p / Σ w`, or `1/B` unweighted.
    pub fn share(&self, p: usize) -> f64 {
        match &self.weights {
            Some(w) => f64::from(w[p]) / w.iter().map(|&w| f64::from(w)).sum::<f64>(),
            None => 1.0 / self.prompts as f64,
        }
    }

    /// The reduced loss of per-prompt `losses`: `Σ_p share(p)·L_p`, skipping zero shares.
    pub fn reduce(&self, losses: &[f64]) -> f64 {
        (0..self.prompts)
            .filter(|&p| self.share(p) != 0.0)
            .map(|p| self.share(p) * losses[p])
            .sum()
    }

    /// The policy leaf (`require_grad` on an autodiff device) and the batch: the reference,
    /// the scores and weights the case has, and its lengths when `lengths`.
    pub fn batch(&self, device: &Device, lengths: bool) -> (Tensor<2>, PairedBatch) {
        let dims = [self.prompts, self.candidates];
        let mut policy = floats(self.policy.clone(), dims, device);
        if device.is_autodiff() {
            policy = policy.require_grad();
        }
        let mut batch = PairedBatch::new(policy.clone())
            .and_then(|b| b.with_reference(floats(self.reference.clone(), dims, device)))
            .expect("a valid batch");
        if let Some(scores) = &self.scores {
            batch = batch
                .with_scores(floats(scores.clone(), dims, device))
                .expect("scores [B, K]");
        }
        if lengths {
            batch = batch
                .with_lengths(floats(self.lengths.clone(), dims, device))
                .expect("lengths [B, K]");
        }
        if let Some(weights) = &self.weights {
            batch = batch
                .with_weights(floats(weights.clone(), [self.prompts], device))
                .expect("weights [B]");
        }
        (policy, batch)
    }
}

/// Random ranked cases: `B ∈ 1..=3`, `K ∈ 2..=4`, log-probs in `logp`, ranked by position or by
/// scores from `{0, 1, 2}` (so ties and all-tied prompts happen), lengths `0..=30`, and
/// sometimes weights (some of them 0, never all).
pub fn ranked(logp: std::ops::Range<f32>) -> impl Strategy<Value = Ranked> {
    (1..=3usize, 2..=4usize, any::<bool>(), any::<bool>()).prop_flat_map(
        move |(b, k, scored, weighted)| {
            let n = b * k;
            let weight = prop_oneof![1 => Just(0.0f32), 3 => 0.1f32..3.0];
            (
                prop::collection::vec(logp.clone(), n),
                prop::collection::vec(logp.clone(), n),
                prop::collection::vec((0..3i32).prop_map(|s| s as f32), n),
                prop::collection::vec((0..=30u8).prop_map(f32::from), n),
                prop::collection::vec(weight, b),
            )
                .prop_map(move |(policy, reference, scores, lengths, mut weights)| {
                    if weights.iter().all(|w| *w == 0.0) {
                        weights[0] = 1.0;
                    }
                    let mut case = Ranked::new(policy, reference, k).with_lengths(lengths);
                    if scored {
                        case = case.with_scores(scores);
                    }
                    if weighted {
                        case = case.with_weights(weights);
                    }
                    case
                })
        },
    )
}

/// A fixed ranked batch for the tests that run on every device: five prompts of four
/// candidates ranked by scores — with a tie, a permutation, all tied (weight 0), and two
/// prompts of log-ratios up to ±2e4 (values in {−1e4, 0, 1e4}, so that no f32 sum loses a
/// digit) — with lengths from 0 to 4096 and weights.
pub fn rich() -> Ranked {
    let big = 1e4f32;
    Ranked::new(
        vec![
            -3.0, -5.5, -1.0, -2.0, //
            -4.0, -6.0, -2.5, -0.5, //
            -7.0, -1.5, -1.25, -9.0, //
            big, -big, 0.0, big, //
            -big, 0.0, big, -big,
        ],
        vec![
            -2.0, -5.0, -3.0, -1.0, //
            -4.5, -5.0, -2.0, -3.5, //
            -6.0, -1.0, -2.5, -8.0, //
            -big, big, big, 0.0, //
            0.0, -big, 0.0, big,
        ],
        4,
    )
    .with_scores(vec![
        2.0, 1.0, 1.0, 0.0, //
        0.0, 3.0, 1.0, 2.0, //
        1.0, 1.0, 1.0, 1.0, //
        1.0, 0.0, 2.0, 0.0, //
        0.0, 1.0, 2.0, 3.0,
    ])
    .with_lengths(vec![
        3.0, 7.0, 2.0, 5.0, //
        1.0, 4.0, 6.0, 2.0, //
        8.0, 3.0, 3.0, 9.0, //
        4096.0, 1.0, 0.0, 2048.0, //
        3.0, 1.0, 0.0, 4096.0,
    ])
    .with_weights(vec![1.0, 0.5, 0.0, 2.0, 2.5])
}

/// Checks `out` against an f64 reference: the per-prompt `losses`, the (weighted) mean `loss`
/// and its gradient `grad` with respect to the policy log-probs, within `rel` of each value
/// plus `abs` of the largest magnitude of its prompt (each prompt's inputs are f32
/// differences of its own scale); the values and gradients must be finite where the
/// reference is.
#[allow(clippy::too_many_arguments)]
pub fn assert_matches(
    device: &str,
    what: &str,
    case: &Ranked,
    out: LossOutput,
    policy: &Tensor<2>,
    losses: &[f64],
    grad: &[f64],
    (rel, abs): (f64, f64),
) {
    let k = case.candidates;
    let scale = |v: &[f64]| v.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let got_losses = to_vec(out.losses.clone());
    let got_loss = to_vec(out.loss.clone());
    let got_grad = to_vec(policy.grad(&out.loss.backward()).expect("policy gradient"));
    for p in 0..case.prompts {
        let prompt = &losses[p..=p];
        assert_close(
            device,
            &format!("{what}: losses[{p}]"),
            &got_losses[p..=p],
            prompt,
            rel,
            abs * scale(prompt),
        );
        let prompt = &grad[p * k..(p + 1) * k];
        assert_close(
            device,
            &format!("{what}: ∂L/∂policy[{p}]"),
            &got_grad[p * k..(p + 1) * k],
            prompt,
            rel,
            abs * scale(prompt),
        );
    }
    let loss = [case.reduce(losses)];
    assert_close(
        device,
        &format!("{what}: loss"),
        &got_loss,
        &loss,
        rel,
        abs * scale(&loss),
    );
}

/// Checks the logged `rewards/chosen` and `rewards/rejected`: the means over the prompts of
/// `reward(p, i)` at each prompt's best candidate (the first of the highest scores) and worst
/// (the last of the lowest), unweighted; within 1e-6 of the largest term (an f32 mean of
/// terms of ±1e4 keeps no more).
pub fn assert_rewards(
    device: &str,
    what: &str,
    case: &Ranked,
    metrics: &[(&'static str, f64)],
    reward: impl Fn(usize, usize) -> f64,
) {
    let k = case.candidates;
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for p in 0..case.prompts {
        let score = |i: usize| case.scores_of(p).map_or(-(i as f32), |s| s[i]);
        let best = (0..k).fold(0, |b, i| if score(i) > score(b) { i } else { b });
        let worst = (0..k).fold(0, |w, i| if score(i) <= score(w) { i } else { w });
        chosen.push(reward(p, best));
        rejected.push(reward(p, worst));
    }
    for (name, terms) in [("rewards/chosen", chosen), ("rewards/rejected", rejected)] {
        let got = super::logged(metrics, name).unwrap_or_else(|| panic!("{name} not logged"));
        let scale = terms.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        assert_close(
            device,
            &format!("{what}: {name}"),
            &[got as f32],
            &[super::reference::mean(&terms)],
            1e-5,
            1e-6 * scale,
        );
    }
}

/// Asserts that `out` — a loss's output on `case` at `device`, `policy` its leaf — has DPO's
/// per-prompt losses and gradient at `beta` on the same batch: the closed form several losses
/// reduce to (DPOP at λ = 0, R-DPO at α = 0, ODPO with zero offsets, Plackett–Luce at K = 2).
pub fn assert_is_dpo(
    device_name: &str,
    case: &Ranked,
    device: &Device,
    beta: f64,
    out: LossOutput,
    policy: &Tensor<2>,
    grad_rel: f64,
) {
    let (dpo_policy, dpo_batch) = case.batch(device, false);
    let dpo = DpoConfig::new()
        .with_beta(beta)
        .init()
        .unwrap()
        .forward(dpo_batch)
        .unwrap();
    let expected = as_f64(&to_vec(dpo.losses));
    assert_close(
        device_name,
        "losses",
        &to_vec(out.losses),
        &expected,
        1e-6,
        1e-7,
    );
    let got = to_vec(policy.grad(&out.loss.backward()).unwrap());
    let want = as_f64(&to_vec(dpo_policy.grad(&dpo.loss.backward()).unwrap()));
    assert_close(device_name, "∂L/∂policy", &got, &want, grad_rel, 1e-8);
}
