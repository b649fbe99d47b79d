//! β-DPO against an f64 reference written from the paper's algorithm: the running gap
//! statistics carried over steps, the batch β, the filter's subset (found from the gradient
//! and checked against every subset of its size), an outlier the filter drops, the state's
//! checkpoint, the closed forms (DPO at β₀) and values at ±1e4, on every device.

use std::collections::BTreeSet;

use burn::tensor::{Device, Tensor};
use burn_preference::loss::{BETA_DPO_MIN_BETA, BetaDpoLoss, BetaDpoStateRecord};
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::ranked::{Ranked, assert_rewards};
use crate::common::reference::{as_f64, mean, sigmoid, softplus};
use crate::common::{
    assert_close, autodiff_devices, cpu_autodiff_devices, devices, logged, to_vec,
};

/// The running gap statistics `(M₀, σ)` in f64, starting at 0.
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    mean: f64,
    std: f64,
}

impl Moments {
    /// `M₀ ← γM₀ + (1 − γ)·mean(M)`, `σ ← γσ + (1 − γ)·std(M)` (Bessel-corrected, 0 for one gap).
    fn update(self, gaps: &[f64], momentum: f64) -> Self {
        let m = mean(gaps);
        let std = if gaps.len() > 1 {
            let ss: f64 = gaps.iter().map(|g| (g - m).powi(2)).sum();
            (ss / (gaps.len() - 1) as f64).sqrt()
        } else {
            0.0
        };
        Self {
            mean: momentum * self.mean + (1.0 - momentum) * m,
            std: momentum * self.std + (1.0 - momentum) * std,
        }
    }
}

/// One training step in f64 given the kept pairs: the batch β, the per-pair losses
/// `softplus(−β·M)`, the loss (their mean over the kept pairs, times any weights) and its
/// gradient with respect to the policy `[B, 2]` (`∂/∂π_w = −∂/∂π_l`).
#[derive(Debug, Clone)]
struct Step {
    beta: f64,
    losses: Vec<f64>,
    loss: f64,
    grad: Vec<f64>,
}

fn step(
    (beta0, alpha): (f64, f64),
    gaps: &[f64],
    gap_mean: f64,
    kept: &BTreeSet<usize>,
    weights: Option<&[f32]>,
) -> Step {
    let kept_mean = kept.iter().map(|&b| gaps[b]).sum::<f64>() / kept.len() as f64;
    let beta = (beta0 * (1.0 + alpha * (kept_mean - gap_mean))).max(BETA_DPO_MIN_BETA);
    let w: Vec<f64> = (0..gaps.len())
        .map(|b| match (kept.contains(&b), weights) {
            (false, _) => 0.0,
            (true, None) => 1.0,
            (true, Some(w)) => f64::from(w[b]),
        })
        .collect();
    let total: f64 = w.iter().sum();
    let losses: Vec<f64> = gaps.iter().map(|m| softplus(-beta * m)).collect();
    let loss = losses.iter().zip(&w).map(|(l, w)| l * w).sum::<f64>() / total;
    let grad = gaps
        .iter()
        .zip(&w)
        .flat_map(|(m, w)| {
            let g = -beta * sigmoid(-beta * m) * w / total;
            [g, -g]
        })
        .collect();
    Step {
        beta,
        losses,
        loss,
        grad,
    }
}

fn gaps_of(case: &Ranked) -> Vec<f64> {
    (0..case.prompts)
        .map(|b| case.ratio(b, 0, false) - case.ratio(b, 1, false))
        .collect()
}

/// A batch of pairs with gaps `gaps` (reference 0, rejected log-prob −1).
fn pairs_with_gaps(gaps: &[f32]) -> Ranked {
    let policy = gaps.iter().flat_map(|&m| [m - 1.0, -1.0]).collect();
    Ranked::new(policy, vec![0.0; 2 * gaps.len()], 2)
}

fn beta_dpo(beta: f64, alpha: f64, filter_ratio: f64, momentum: f64) -> BetaDpoLoss {
    BetaDpoConfig::new()
        .with_beta(beta)
        .with_alpha(alpha)
        .with_filter_ratio(filter_ratio)
        .with_momentum(momentum)
        .init()
        .expect("config in range")
}

/// The pairs one `forward_train` keeps: those whose gradient is not 0.
fn kept_pairs(
    loss: &BetaDpoLoss,
    case: &Ranked,
    state: &mut BetaDpoState,
    device: &Device,
) -> BTreeSet<usize> {
    let (policy, batch) = case.batch(device, false);
    let out = loss.forward_train(batch, state).expect("valid batch");
    let grad = to_vec(policy.grad(&out.loss.backward()).expect("policy gradient"));
    (0..case.prompts).filter(|b| grad[2 * b] != 0.0).collect()
}

/// One `forward_train` on `device`: the output's per-pair losses, loss, gradient, logged β and
/// kept fraction, and the kept pairs (those whose gradient is not 0).
struct Observed {
    losses: Vec<f32>,
    loss: f32,
    grad: Vec<f32>,
    beta: f64,
    kept_fraction: f64,
    kept: BTreeSet<usize>,
    metrics: Vec<(&'static str, f64)>,
}

fn observe(
    loss: &BetaDpoLoss,
    case: &Ranked,
    state: &mut BetaDpoState,
    device: &Device,
) -> Observed {
    let (policy, batch) = case.batch(device, false);
    let out = loss.forward_train(batch, state).expect("valid batch");
    let metrics = out.metrics.log().expect("metrics");
    let grad = to_vec(policy.grad(&out.loss.backward()).expect("policy gradient"));
    let kept = (0..case.prompts).filter(|b| grad[2 * b] != 0.0).collect();
    Observed {
        losses: to_vec(out.losses),
        loss: to_vec(out.loss)[0],
        grad,
        beta: logged(&metrics, "beta_dpo/beta").expect("beta_dpo/beta"),
        kept_fraction: logged(&metrics, "beta_dpo/kept").expect("beta_dpo/kept"),
        kept,
        metrics,
    }
}

/// Checks an observed step against the f64 step of its kept pairs.
fn assert_step(device: &str, what: &str, got: &Observed, want: &Step, tol: (f64, f64)) {
    let (rel, abs) = tol;
    assert_close(
        device,
        &format!("{what}: β"),
        &[got.beta as f32],
        &[want.beta],
        rel,
        abs,
    );
    assert_close(
        device,
        &format!("{what}: losses"),
        &got.losses,
        &want.losses,
        rel,
        abs,
    );
    assert_close(
        device,
        &format!("{what}: loss"),
        &[got.loss],
        &[want.loss],
        rel,
        abs,
    );
    assert_close(
        device,
        &format!("{what}: ∂L/∂policy"),
        &got.grad,
        &want.grad,
        rel,
        abs,
    );
}

fn assert_state(device: &str, state: &BetaDpoState, want: Moments, steps: u64) {
    let record = state.record().expect("record");
    assert_close(
        device,
        "state (M₀, σ)",
        &[record.gap_mean as f32, record.gap_std as f32],
        &[want.mean, want.std],
        1e-5,
        1e-6,
    );
    assert_eq!((state.steps(), record.steps), (steps, steps), "[{device}]");
}

/// Without the filter, two steps with the state carried (the second weighted): the state
/// update comes first, β follows the batch's mean gap, every pair is kept, the rewards are
/// logged at β₀.
#[test]
fn beta_dpo_without_filter_matches_f64_over_two_steps() {
    let (beta0, alpha, momentum) = (0.1, 0.6, 0.9);
    let first = pairs_with_gaps(&[2.0, 0.5, -1.0]);
    let weights = [1.0f32, 0.0, 2.0, 0.5];
    let second = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0, -2.5, -2.5],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0, -2.0, -3.5],
        2,
    )
    .with_weights(weights.to_vec());
    let loss = beta_dpo(beta0, alpha, 0.0, momentum);
    for (name, device) in autodiff_devices() {
        let mut state = BetaDpoState::new();
        let mut moments = Moments::default();
        for (n, (case, w)) in [(&first, None), (&second, Some(&weights[..]))]
            .into_iter()
            .enumerate()
        {
            let gaps = gaps_of(case);
            moments = moments.update(&gaps, momentum);
            let all = (0..gaps.len()).collect();
            let want = step((beta0, alpha), &gaps, moments.mean, &all, w);
            let got = observe(&loss, case, &mut state, &device);
            assert_step(name, &format!("step {}", n + 1), &got, &want, (1e-5, 1e-7));
            assert_eq!(got.kept_fraction, 1.0, "[{name}] kept");
            // The rewards are logged at β₀, as the paper's code logs them.
            let rewards = |p, i| beta0 * case.ratio(p, i, false);
            assert_rewards(name, "rewards", case, &got.metrics, rewards);
            assert_state(name, &state, moments, n as u64 + 1);
        }
    }
}

/// α = 0 without the filter is DPO at β₀ on every step, whatever the state.
#[test]
fn beta_dpo_at_alpha_zero_without_filter_is_dpo() {
    let case = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0],
        2,
    );
    let loss = beta_dpo(0.3, 0.0, 0.0, 0.5);
    let dpo = DpoConfig::new().with_beta(0.3).init().unwrap();
    for (name, device) in autodiff_devices() {
        let mut state = BetaDpoState::new();
        for n in 0..2 {
            let (policy, batch) = case.batch(&device, false);
            let out = loss.forward_train(batch, &mut state).unwrap();
            let (dpo_policy, dpo_batch) = case.batch(&device, false);
            let want = dpo.forward(dpo_batch).unwrap();
            let what = format!("step {}", n + 1);
            let expected = as_f64(&to_vec(want.losses));
            assert_close(name, &what, &to_vec(out.losses), &expected, 1e-6, 1e-7);
            assert_close(
                name,
                &what,
                &to_vec(out.loss.clone()),
                &as_f64(&to_vec(want.loss.clone())),
                1e-6,
                1e-7,
            );
            let got = to_vec(policy.grad(&out.loss.backward()).unwrap());
            let expected = as_f64(&to_vec(dpo_policy.grad(&want.loss.backward()).unwrap()));
            assert_close(name, &what, &got, &expected, 1e-6, 1e-8);
        }
        assert_eq!(state.steps(), 2);
    }
}

/// Evaluation (`PreferenceLoss::forward`) is DPO at β₀ on every pair, weights included.
#[test]
fn beta_dpo_forward_is_dpo_at_beta0() {
    let case = Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0],
        2,
    )
    .with_weights(vec![0.5, 2.0, 1.0]);
    let loss = beta_dpo(0.25, 0.6, 0.5, 0.9);
    let dpo = DpoConfig::new().with_beta(0.25).init().unwrap();
    for (name, device) in autodiff_devices() {
        let (policy, batch) = case.batch(&device, false);
        let out = loss.forward(batch).unwrap();
        let (dpo_policy, dpo_batch) = case.batch(&device, false);
        let want = dpo.forward(dpo_batch).unwrap();
        let expected = as_f64(&to_vec(want.losses));
        assert_close(name, "losses", &to_vec(out.losses), &expected, 1e-6, 1e-7);
        let got = to_vec(policy.grad(&out.loss.backward()).unwrap());
        let expected = as_f64(&to_vec(dpo_policy.grad(&want.loss.backward()).unwrap()));
        assert_close(name, "∂L/∂policy", &got, &expected, 1e-6, 1e-8);
    }
}

/// With the filter on a weighted batch of 6 (ρ = 0.2 keeps ⌊6·0.8⌋ = 4): over several steps,
/// the loss (the weighted mean over the kept pairs) and the logged β are those of some subset
/// of 4 pairs, enumerated here in f64; the subset the gradient shows is one of them, and the
/// gradient is its f64 gradient.
#[test]
fn beta_dpo_filter_keeps_a_subset_of_floor_b_times_one_minus_rho() {
    let (beta0, alpha, ratio, momentum) = (0.1, 0.6, 0.2, 0.9);
    let weights = [1.0f32, 2.0, 0.5, 1.5, 1.0, 3.0];
    let case = pairs_with_gaps(&[0.5, 1.0, 1.5, 2.25, 3.0, -1.0]).with_weights(weights.to_vec());
    let gaps = gaps_of(&case);
    let keep = 4;
    let subsets: Vec<BTreeSet<usize>> = (0u32..1 << 6)
        .filter(|mask| mask.count_ones() == keep)
        .map(|mask| (0..6).filter(|b| mask & (1 << b) != 0).collect())
        .collect();
    assert_eq!(subsets.len(), 15);
    let loss = beta_dpo(beta0, alpha, ratio, momentum);
    for (name, device) in autodiff_devices() {
        let mut state = BetaDpoState::new();
        let mut moments = Moments::default();
        for n in 0..3 {
            moments = moments.update(&gaps, momentum);
            let got = observe(&loss, &case, &mut state, &device);
            let what = format!("step {}", n + 1);
            let consistent: Vec<&BTreeSet<usize>> = subsets
                .iter()
                .filter(|s| {
                    let want = step((beta0, alpha), &gaps, moments.mean, s, Some(&weights));
                    (want.beta - got.beta).abs() < 1e-6
                        && (want.loss - f64::from(got.loss)).abs() < 1e-6
                })
                .collect();
            assert!(
                !consistent.is_empty(),
                "[{name}] {what}: β {} and loss {} fit no subset of 4",
                got.beta,
                got.loss
            );
            assert!(
                consistent.contains(&&got.kept),
                "[{name}] {what}: the kept pairs {:?} are not among {consistent:?}",
                got.kept
            );
            let want = step(
                (beta0, alpha),
                &gaps,
                moments.mean,
                &got.kept,
                Some(&weights),
            );
            assert_step(name, &what, &got, &want, (1e-5, 1e-7));
            assert_close(
                name,
                &what,
                &[got.kept_fraction as f32],
                &[4.0 / 6.0],
                1e-6,
                0.0,
            );
            assert_state(name, &state, moments, n + 1);
        }
    }
}

/// A pair whose gap is ~17 running deviations from the running mean is never kept, over 20
/// draws from the same state; the other pairs are drawn (not a fixed top-k): the dropped one
/// varies.
#[test]
fn beta_dpo_filter_drops_an_outlier() {
    let case = pairs_with_gaps(&[0.9, 1.0, 1.1, 0.95, 1.05, 6.0]);
    let record = BetaDpoStateRecord {
        gap_mean: 1.0,
        gap_std: 0.1,
        steps: 10,
    };
    let loss = beta_dpo(0.1, 0.6, 0.2, 0.9);
    for (name, device) in autodiff_devices() {
        let restored = BetaDpoState::from_record(record, &device);
        let mut subsets = BTreeSet::new();
        for _ in 0..20 {
            let kept = kept_pairs(&loss, &case, &mut restored.clone(), &device);
            assert_eq!(kept.len(), 4, "[{name}] kept {kept:?}");
            assert!(!kept.contains(&5), "[{name}] the outlier was kept");
            subsets.insert(kept);
        }
        assert!(
            subsets.len() > 1,
            "[{name}] the same subset 20 times: {subsets:?}"
        );
    }
}

fn random_pairs() -> impl Strategy<Value = Ranked> {
    (1..=6usize).prop_flat_map(|b| {
        (
            prop::collection::vec(-1.0f32..1.0, 2 * b),
            prop::collection::vec(-1.0f32..1.0, 2 * b),
        )
            .prop_map(|(policy, reference)| Ranked::new(policy, reference, 2))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random batches of 1 to 6 pairs, two steps with the state carried: the kept pairs number
    /// `max(1, ⌊B(1 − ρ)⌋)`, and β, the losses, the loss, the gradient and the state are those
    /// of the f64 step over them. (Gaps within ±4 and β ≤ 1.7 keep every kept pair's gradient
    /// away from 0, which is how the kept pairs are seen.)
    #[test]
    fn beta_dpo_matches_f64_on_random_batches(
        case in random_pairs(),
        beta0 in 0.01f64..0.5,
        alpha in 0.0f64..0.3,
        ratio in prop_oneof![Just(0.0), 0.0f64..0.9],
        momentum in 0.0f64..0.99,
    ) {
        let gaps = gaps_of(&case);
        let keep = ((gaps.len() as f64 * (1.0 - ratio)).floor() as usize).max(1);
        let loss = beta_dpo(beta0, alpha, ratio, momentum);
        for (name, device) in cpu_autodiff_devices() {
            let mut state = BetaDpoState::new();
            let mut moments = Moments::default();
            for n in 0..2 {
                moments = moments.update(&gaps, momentum);
                let got = observe(&loss, &case, &mut state, &device);
                let what = format!("step {}", n + 1);
                prop_assert_eq!(got.kept.len(), keep, "[{}] {}", name, what);
                let want = step((beta0, alpha), &gaps, moments.mean, &got.kept, None);
                assert_step(name, &what, &got, &want, (2e-4, 2e-5));
                assert_state(name, &state, moments, n + 1);
            }
        }
    }
}

/// A state survives a checkpoint: the record round-trips through serde and `from_record`, and
/// the next step from the restored state is the next step from the original.
#[test]
fn beta_dpo_state_round_trips_through_its_record() {
    let loss = beta_dpo(0.1, 0.6, 0.0, 0.9);
    let batches = [
        pairs_with_gaps(&[2.0, 0.5, -1.0]),
        pairs_with_gaps(&[1.0, 3.0]),
    ];
    let next = pairs_with_gaps(&[0.25, -0.5, 4.0, 1.0]);
    for (name, device) in devices() {
        let mut state = BetaDpoState::new();
        assert_eq!(state.record().unwrap(), BetaDpoStateRecord::default());
        for batch in &batches {
            let (_, b) = batch.batch(&device, false);
            loss.forward_train(b, &mut state).unwrap();
        }
        let record = state.record().unwrap();
        let json = serde_json::to_string(&record).unwrap();
        let loaded: BetaDpoStateRecord = serde_json::from_str(&json).unwrap();
        // serde_json parses the last digit of an f64 approximately; the state is f32.
        assert_eq!(loaded.steps, record.steps, "[{name}] serde");
        assert_close(
            name,
            "serde",
            &[loaded.gap_mean as f32, loaded.gap_std as f32],
            &[record.gap_mean, record.gap_std],
            0.0,
            0.0,
        );
        let mut restored = BetaDpoState::from_record(loaded, &device);
        assert_eq!(restored.record().unwrap(), record, "[{name}] from_record");
        assert_eq!(restored.steps(), 2);
        let (_, a) = next.batch(&device, false);
        let (_, b) = next.batch(&device, false);
        let original = to_vec(loss.forward_train(a, &mut state).unwrap().loss);
        let resumed = to_vec(loss.forward_train(b, &mut restored).unwrap().loss);
        assert_eq!(original, resumed, "[{name}] the step after the checkpoint");
        assert_eq!(restored.record().unwrap(), state.record().unwrap());
    }
}

/// One pair: σ = 0 (no deviation of one gap), the filter keeps it (at least one pair); and a
/// batch of very negative gaps floors β at 1e-3.
#[test]
fn beta_dpo_one_pair_and_the_beta_floor() {
    let (beta0, alpha, momentum) = (0.1, 0.6, 0.9);
    let loss = beta_dpo(beta0, alpha, 0.2, momentum);
    let one = pairs_with_gaps(&[1.5]);
    let negative = pairs_with_gaps(&[-10.0, -12.0]);
    for (name, device) in autodiff_devices() {
        let mut state = BetaDpoState::new();
        let moments = Moments::default().update(&[1.5], momentum);
        let got = observe(&loss, &one, &mut state, &device);
        let want = step((beta0, alpha), &[1.5], moments.mean, &[0].into(), None);
        assert_step(name, "one pair", &got, &want, (1e-5, 1e-7));
        assert_state(name, &state, moments, 1);

        // M₀ = 0.1·(−11) = −1.1; β₀(1 + 0.6·(−11 + 1.1)) < 0 → the floor, whichever pair is kept.
        let mut state = BetaDpoState::new();
        let got = observe(&loss, &negative, &mut state, &device);
        assert_eq!(
            got.beta, BETA_DPO_MIN_BETA as f32 as f64,
            "[{name}] β floor"
        );
        let want = step((beta0, alpha), &[-10.0, -12.0], -1.1, &got.kept, None);
        assert_eq!(want.beta, BETA_DPO_MIN_BETA, "the case reaches the floor");
        assert_step(name, "β floor", &got, &want, (1e-5, 1e-7));
    }
}

/// Gaps of ±4e4 (β grows with their mean: β·M reaches ~10⁷): finite, and equal to the f64
/// step; with the filter on, finite.
#[test]
fn beta_dpo_is_finite_at_1e4() {
    let big = 1e4f32;
    // Gaps 4e4, 2e4, 0, −2e4: M₀ = 500, β = 0.1·(1 + 0.6·4500) = 270.1.
    let case = Ranked::new(
        vec![big, -big, big, -big, 0.0, 0.0, -big, big],
        vec![-big, big, 0.0, 0.0, big, big, 0.0, 0.0],
        2,
    );
    let gaps = gaps_of(&case);
    let (beta0, alpha, momentum) = (0.1, 0.6, 0.9);
    for (name, device) in autodiff_devices() {
        let moments = Moments::default().update(&gaps, momentum);
        let unfiltered = beta_dpo(beta0, alpha, 0.0, momentum);
        let got = observe(&unfiltered, &case, &mut BetaDpoState::new(), &device);
        let want = step((beta0, alpha), &gaps, moments.mean, &(0..4).collect(), None);
        assert_step(name, "±1e4", &got, &want, (1e-5, 1e-7));
        let filtered = beta_dpo(beta0, alpha, 0.5, momentum);
        let got = observe(&filtered, &case, &mut BetaDpoState::new(), &device);
        assert!(
            got.loss.is_finite() && got.grad.iter().all(|g| g.is_finite()),
            "[{name}] filtered ±1e4: {} {:?}",
            got.loss,
            got.grad
        );
        assert_eq!(got.kept_fraction, 0.5, "[{name}] kept");
    }
}

/// With value checks, a training step refuses a non-finite gap before it reaches the running
/// statistics (which it would poison for every later step): the state is left as it was.
#[test]
fn beta_dpo_refuses_a_non_finite_gap_before_the_state() {
    let device = Device::default();
    let policy = Tensor::<2>::from_floats([[-1.0, -3.0], [-2.0, -2.5]], &device);
    let reference = Tensor::<2>::from_floats([[f32::NEG_INFINITY, -2.0], [-2.2, -2.0]], &device);
    let batch = PairedBatch::new(policy)
        .unwrap()
        .with_reference(reference)
        .unwrap();
    let mut state = BetaDpoState::new();
    let err = beta_dpo(0.1, 0.6, 0.0, 0.9).forward_train(batch, &mut state);
    assert!(
        matches!(err, Err(PreferenceError::NonFinite { arg: "policy", .. })),
        "{err:?}"
    );
    assert_eq!(state.steps(), 0);
}
