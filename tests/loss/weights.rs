//! Per-example weights for every loss: uniform weights are the plain mean, any weights give
//! `Σ w·losses / Σ w` (checked in f64) with its gradient, `losses` and the metrics stay
//! unweighted, and a zero weight drops an example whose loss is inf or NaN. The seven newest
//! losses also check weighted batches against their f64 references in their own files.

use burn::tensor::{Device, Tensor};
use burn_preference::prelude::*;

use super::kto::unpaired;
use crate::common::cases::f1;
use crate::common::ranked::Ranked;
use crate::common::reference::{as_f64, sigmoid, softplus};
use crate::common::trl_fixture::one_token_rows;
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices, floats, ints, to_vec};

/// Every example count of the batches below.
const N: usize = 4;

/// One loss on one batch of `N` examples, with the given weights: the output and the leaf its
/// gradient is taken with respect to (the policy log-probs).
type Run = Box<dyn Fn(&Device, Option<&[f32]>) -> (LossOutput, Tensor<2>)>;

/// Four prompts of three candidates, scored with ties (the scores are LiPO's grades).
fn ranked_case() -> Ranked {
    Ranked::new(
        vec![
            -3.0, -5.5, -1.0, -2.0, -4.0, -6.0, -2.5, -2.5, -7.0, -0.5, -1.5, -9.0,
        ],
        vec![
            -2.0, -5.0, -3.0, -1.0, -4.5, -5.0, -2.0, -3.5, -6.0, -1.0, -2.5, -8.0,
        ],
        3,
    )
    .with_scores(vec![
        2.0, 1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0,
    ])
    .with_lengths(vec![
        3.0, 7.0, 2.0, 5.0, 1.0, 4.0, 6.0, 2.0, 8.0, 3.0, 3.0, 9.0,
    ])
}

/// Four pairs, chosen first.
fn pair_case() -> Ranked {
    Ranked::new(
        vec![-3.0, -5.5, -1.0, -2.0, -4.0, -6.0, -2.5, -1.5],
        vec![-2.0, -5.0, -3.0, -1.0, -4.5, -5.0, -2.0, -3.5],
        2,
    )
}

/// A loss on `case`'s batch (its lengths when `lengths`), weighted as asked.
fn paired<L>(loss: L, case: Ranked, lengths: bool) -> Run
where
    L: PreferenceLoss<Batch = PairedBatch> + 'static,
{
    Box::new(move |device, weights| {
        let case = match weights {
            Some(w) => case.clone().with_weights(w.to_vec()),
            None => case.clone(),
        };
        let (policy, batch) = case.batch(device, lengths);
        (loss.forward(batch).expect("valid batch"), policy)
    })
}

/// One-token rows `[2N]` (chosen rows first) as the pairs of a gathered batch.
fn gathered_pairs(device: &Device, weights: Option<&[f32]>) -> (PairedBatch, Tensor<2>) {
    let logps = [-1.5f32, -0.5, -2.0, -0.25, -3.0, -1.0, -0.75, -2.5];
    let (policy, token) = one_token_rows(&logps, device);
    let mut batch = PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs: N })
        .and_then(|b| b.with_completion_labels(ints(vec![1; 2 * N], [2 * N, 1], device)))
        .expect("a gathered batch");
    if let Some(w) = weights {
        batch = batch.with_weights(f1(w, device)).expect("weights [B]");
    }
    (batch, token)
}

/// `N` unpaired one-token examples with KL pairs, weighted as asked.
fn unpaired_batch(device: &Device, weights: Option<&[f32]>) -> (UnpairedBatch, Tensor<2>) {
    let (batch, token) = unpaired(&[1.5, -2.0, 0.5, 3.0], &[1, 0, 0, 1], device);
    let mut batch = batch
        .with_kl(
            f1(&[-1.0, -2.0, -0.5, -1.5], device),
            f1(&[-1.2; 4], device),
        )
        .expect("KL pairs [N]");
    if let Some(w) = weights {
        batch = batch.with_weights(f1(w, device)).expect("weights [N]");
    }
    (batch, token)
}

/// Every loss, by name, with `value_checks` on (its default).
fn runs() -> Vec<(&'static str, Run)> {
    let ranked = ranked_case();
    let pairs = pair_case();
    vec![
        (
            "DPO",
            paired(DpoConfig::new().init().unwrap(), ranked.clone(), false),
        ),
        (
            "ΨPO identity",
            paired(
                PsiPoConfig::new(Psi::Identity).init().unwrap(),
                ranked.clone(),
                false,
            ),
        ),
        (
            "RRHF",
            paired(RrhfConfig::new().init().unwrap(), ranked.clone(), true),
        ),
        (
            "CPO",
            Box::new(|device, weights| {
                let (batch, token) = gathered_pairs(device, weights);
                (
                    CpoConfig::new().init().unwrap().forward(batch).unwrap(),
                    token,
                )
            }),
        ),
        (
            "ORPO",
            Box::new(|device, weights| {
                let (batch, token) = gathered_pairs(device, weights);
                (
                    OrpoConfig::new().init().unwrap().forward(batch).unwrap(),
                    token,
                )
            }),
        ),
        (
            "KTO",
            Box::new(|device, weights| {
                let (batch, token) = unpaired_batch(device, weights);
                (
                    KtoConfig::new().init().unwrap().forward(batch).unwrap(),
                    token,
                )
            }),
        ),
        (
            "BCO",
            Box::new(|device, weights| {
                let (batch, token) = unpaired_batch(device, weights);
                let batch = batch.with_reward_shift(f1(&[0.3], device)).unwrap();
                (
                    BcoConfig::new().init().unwrap().forward(batch).unwrap(),
                    token,
                )
            }),
        ),
        (
            "BCO forward_train",
            Box::new(|device, weights| {
                let (batch, token) = unpaired_batch(device, weights);
                let loss = BcoConfig::new().init().unwrap();
                let out = loss.forward_train(batch, &mut BcoState::new()).unwrap();
                (out, token)
            }),
        ),
        (
            "DPOP",
            paired(DpopConfig::new().init().unwrap(), ranked.clone(), false),
        ),
        (
            "R-DPO",
            paired(RdpoConfig::new().init().unwrap(), ranked.clone(), true),
        ),
        (
            "ODPO",
            paired(OdpoConfig::new().init().unwrap(), ranked.clone(), false),
        ),
        (
            "Plackett-Luce",
            paired(
                PlackettLuceConfig::new().init().unwrap(),
                ranked.clone(),
                false,
            ),
        ),
        (
            "LiPO",
            paired(LipoConfig::new().init().unwrap(), ranked.clone(), false),
        ),
        (
            "SimPER",
            paired(SimperConfig::new().init().unwrap(), ranked, true),
        ),
        (
            "β-DPO",
            paired(BetaDpoConfig::new().init().unwrap(), pairs.clone(), false),
        ),
        (
            "β-DPO forward_train",
            Box::new(move |device, weights| {
                let case = match weights {
                    Some(w) => pairs.clone().with_weights(w.to_vec()),
                    None => pairs.clone(),
                };
                let (policy, batch) = case.batch(device, false);
                // Without the filter the kept pairs are all of them: the step is deterministic.
                let loss = BetaDpoConfig::new().with_filter_ratio(0.0).init().unwrap();
                let out = loss.forward_train(batch, &mut BetaDpoState::new()).unwrap();
                (out, policy)
            }),
        ),
    ]
}

/// The reduced loss, the per-example losses, the gradient of the loss and the logged metrics.
type Evaluated = (f32, Vec<f32>, Vec<f32>, Vec<(&'static str, f64)>);

fn evaluate((out, leaf): (LossOutput, Tensor<2>)) -> Evaluated {
    let metrics = out.metrics.log().expect("metrics");
    let grad = to_vec(leaf.grad(&out.loss.clone().backward()).expect("gradient"));
    (to_vec(out.loss)[0], to_vec(out.losses), grad, metrics)
}

/// Checks one loss on one device: uniform weights (2.5 each) give the plain mean, and weights
/// (0.5, 0, 2, 1.25) give `Σ w·losses / Σ w` of the unweighted losses (in f64) with the
/// gradient of that weighted sum; `losses` and the metrics are the unweighted ones.
fn check_weights(device_name: &str, device: &Device, name: &str, run: &Run) {
    let (out, leaf) = run(device, None);
    let metrics = out.metrics.log().unwrap();
    let losses = to_vec(out.losses.clone());
    let weights = [0.5f32, 0.0, 2.0, 1.25];
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    // The gradient of Σ w·losses / Σ w, from the unweighted per-example losses.
    let weighted_sum = out
        .losses
        .clone()
        .mul(f1(&weights, device))
        .sum()
        .div_scalar(total);
    let want_grad = to_vec(leaf.grad(&weighted_sum.backward()).unwrap());
    let expected = losses
        .iter()
        .zip(&weights)
        .map(|(&l, &w)| f64::from(l) * f64::from(w))
        .sum::<f64>()
        / total;
    let (w_loss, w_losses, w_grad, w_metrics) = evaluate(run(device, Some(&weights)));
    let what = format!("{name}, weighted");
    assert_close(device_name, &what, &[w_loss], &[expected], 1e-6, 1e-7);
    assert_eq!(w_losses, losses, "[{device_name}] {what}: losses");
    assert_close(device_name, &what, &w_grad, &as_f64(&want_grad), 1e-5, 1e-8);
    assert_eq!(w_metrics, metrics, "[{device_name}] {what}: metrics");

    let (loss, _, grad, _) = evaluate(run(device, None));
    let (u_loss, u_losses, u_grad, u_metrics) = evaluate(run(device, Some(&[2.5; N])));
    let what = format!("{name}, uniform weights");
    assert_close(
        device_name,
        &what,
        &[u_loss],
        &[f64::from(loss)],
        1e-6,
        1e-7,
    );
    assert_eq!(u_losses, losses, "[{device_name}] {what}: losses");
    assert_close(device_name, &what, &u_grad, &as_f64(&grad), 1e-5, 1e-8);
    assert_eq!(u_metrics, metrics, "[{device_name}] {what}: metrics");
}

/// All 14 losses (and BCO's and β-DPO's training steps) on the CPU backends.
#[test]
fn weights_are_a_weighted_mean_for_every_loss() {
    for (device_name, device) in cpu_autodiff_devices() {
        for (name, run) in runs() {
            check_weights(device_name, &device, name, &run);
        }
    }
}

/// The weighted mean is one function for every loss; on every device it is checked here for a
/// paired loss and an unpaired one (each of the seven newest losses checks a weighted batch on
/// every device in its own file, β-DPO's with its filter).
#[test]
fn weights_are_a_weighted_mean_on_every_device() {
    for (device_name, device) in autodiff_devices() {
        for (name, run) in runs() {
            if matches!(name, "DPO" | "KTO") {
                check_weights(device_name, &device, name, &run);
            }
        }
    }
}

/// A zero weight drops its example even when that example's loss is +inf (a chosen log-prob
/// of −inf) or NaN: the loss is the f64 weighted mean of the others, with their gradients,
/// and no gradient reaches the dropped example's log-probs.
#[test]
fn a_zero_weight_drops_an_inf_or_nan_loss() {
    let beta = 0.1;
    for bad in [f32::NEG_INFINITY, f32::NAN] {
        for (name, device) in autodiff_devices() {
            let chosen = [bad, -1.0, -2.0];
            let rejected = [-1.5f32, -1.5, -1.0];
            let policy = floats(
                chosen
                    .iter()
                    .zip(&rejected)
                    .flat_map(|(&c, &r)| [c, r])
                    .collect(),
                [3, 2],
                &device,
            )
            .require_grad();
            let batch = PairedBatch::new(policy.clone())
                .and_then(|b| b.with_reference(floats(vec![-1.0; 6], [3, 2], &device)))
                .and_then(|b| b.with_weights(f1(&[0.0, 1.0, 3.0], &device)))
                .unwrap();
            let out = DpoConfig::new().init().unwrap().forward(batch).unwrap();
            let h = [0.5, -1.0];
            let expected = (softplus(-beta * h[0]) + 3.0 * softplus(-beta * h[1])) / 4.0;
            assert_close(
                name,
                &format!("{bad}: loss"),
                &to_vec(out.loss.clone()),
                &[expected],
                1e-6,
                1e-7,
            );
            let losses = to_vec(out.losses.clone());
            assert!(
                losses[0].is_nan() || losses[0] == f32::INFINITY,
                "[{name}] the dropped loss: {}",
                losses[0]
            );
            let grad = to_vec(policy.grad(&out.loss.backward()).unwrap());
            let slope = |h: f64, w: f64| -beta * sigmoid(-beta * h) * w / 4.0;
            let kept = [
                slope(h[0], 1.0),
                -slope(h[0], 1.0),
                slope(h[1], 3.0),
                -slope(h[1], 3.0),
            ];
            assert_close(
                name,
                &format!("{bad}: kept gradient"),
                &grad[2..],
                &kept,
                1e-5,
                1e-8,
            );
            if bad.is_infinite() {
                assert_eq!(grad[..2], [0.0, 0.0], "[{name}] the dropped gradient");
            }
        }
    }
}
