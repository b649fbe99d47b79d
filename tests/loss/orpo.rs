//! ORPO against TRL 1.16's `ORPOTrainer` (fixtures) and f64 references, on every device.

use burn::tensor::{Device, Int, Tensor};
use burn_preference::logps::SequenceLogpsOutput;
use burn_preference::prelude::*;
use serde_json::Value;

use super::cpo::EXTREMES;
use crate::common::reference::{log1mexp, mean, softplus};
use crate::common::trl_fixture::{
    Path, assert_policy_grads, cases, check_metrics, data_f64, gather, int_tensor, masked_labels,
    one_token_rows, policy_leaves,
};
use crate::common::{assert_close, autodiff_devices, ints, logged, to_vec};

/// ORPO's batch: the gathered pairs (chosen rows first) and TRL's completion labels.
fn orpo_batch(
    policy: SequenceLogpsOutput,
    completion: Tensor<2, Int>,
) -> burn_preference::Result<PairedBatch> {
    let pairs = policy.logps.dims()[0] / 2;
    PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs })?
        .with_completion_labels(completion)
}

/// `orpo_batch` of `one_token_rows`, whose one position per row is a completion token.
fn one_token_orpo(logps: &[f32], device: &Device) -> (PairedBatch, Tensor<2>) {
    let (policy, token) = one_token_rows(logps, device);
    let rows = logps.len();
    let completion = ints(vec![1; rows], [rows, 1], device);
    (orpo_batch(policy, completion).unwrap(), token)
}

#[test]
fn orpo_matches_trl() {
    for case in cases("orpo") {
        let name = case["name"].as_str().unwrap();
        let config = serde_json::from_value::<OrpoConfig>(case["config"].clone()).unwrap();
        let loss_fn = config.init().unwrap();
        let inputs = &case["inputs"];
        for (device_name, device) in autodiff_devices() {
            for path in [Path::Linear, Path::Logits] {
                let what = format!("{name} ({path:?})");
                let (hidden, weight) = policy_leaves(inputs, &device);
                let full = masked_labels(
                    &inputs["concatenated_input_ids"],
                    &inputs["concatenated_attention_mask"],
                    &device,
                );
                let completion = int_tensor::<2>(&inputs["concatenated_labels"], &device);
                let policy = gather(path, hidden.clone(), weight.clone(), full);
                let out = loss_fn
                    .forward(orpo_batch(policy, completion).unwrap())
                    .unwrap();
                let expected = [case["loss"].as_f64().unwrap()];
                assert_close(
                    device_name,
                    &what,
                    &to_vec(out.loss.clone()),
                    &expected,
                    1e-5,
                    0.0,
                );
                // A token-mean log-prob near 0 (−1e-3 in the near-deterministic case) is a
                // difference of two O(1) numbers: f32 holds it to ~1e-7 absolute, whichever
                // order the log-sum-exp adds in, hence the absolute term.
                // 0.1 returned the per-pair log-probs: their logged mean against the mean of
                // TRL's per-pair intermediates.
                let inter = &case["intermediates"];
                let metrics = out.metrics.log().unwrap();
                assert_close(
                    device_name,
                    &format!("{what} chosen logps"),
                    &[logged(&metrics, "logps/chosen").expect("logps/chosen") as f32],
                    &[mean(&data_f64(&inter["chosen_logps"]))],
                    1e-5,
                    1e-6,
                );
                let raw_logits = ["logits/chosen", "logits/rejected"];
                // ∂log_odds/∂s ≈ 1/|s| near s = 0: the ~3e-7 by which two f32 log-sum-exps of
                // s ≈ −1e-3 differ become 3e-4 in that pair's log-odds. The log-odds metrics of
                // that case get 1e-4; the loss term itself is checked at 1e-5 below on TRL's
                // own log-probs.
                let conditioned = ["log_odds_chosen", "log_odds_ratio"];
                let near_deterministic = name.contains("near_deterministic");
                let mut excluded = raw_logits.to_vec();
                if near_deterministic {
                    excluded.extend(conditioned);
                    let trl = &case["metrics"];
                    let subset: serde_json::Map<String, Value> = conditioned
                        .iter()
                        .map(|n| (n.to_string(), trl[*n].clone()))
                        .collect();
                    let ours: Vec<_> = metrics
                        .iter()
                        .copied()
                        .filter(|(n, _)| conditioned.contains(n))
                        .collect();
                    check_metrics(device_name, &what, &ours, &Value::Object(subset), &[], 1e-4);
                }
                let metrics: Vec<_> = metrics
                    .into_iter()
                    .filter(|(n, _)| !excluded.contains(n))
                    .collect();
                check_metrics(
                    device_name,
                    &what,
                    &metrics,
                    &case["metrics"],
                    &excluded,
                    1e-5,
                );
                let grads = out.loss.backward();
                // The same 1/|s| reaches that pair's gradient: (1 − e^s) is known to ~3e-7 / 1e-3
                // relative, and the logits there (up to ~32) round differently in each matmul
                // kernel (gemm's AVX-512 or FMA kernels, torch's): that case's gradients get 1e-3.
                let grad_rel = if near_deterministic { 1e-3 } else { 1e-4 };
                let leaves = (&hidden, &weight);
                assert_policy_grads(device_name, &what, leaves, &grads, &case, grad_rel);
            }
            // The odds-ratio term on TRL's own token-mean log-probs (one-token rows), free of the
            // gather's rounding: log-odds metrics and rewards to 1e-5.
            let inter = &case["intermediates"];
            let logps: Vec<f32> = data_f64(&inter["chosen_logps"])
                .into_iter()
                .chain(data_f64(&inter["rejected_logps"]))
                .map(|x| x as f32)
                .collect();
            let (batch, _) = one_token_orpo(&logps, &device);
            let metrics = loss_fn.forward(batch).unwrap().metrics.log().unwrap();
            let keep = [
                "log_odds_chosen",
                "log_odds_ratio",
                "rewards/chosen",
                "rewards/rejected",
            ];
            let trl = &case["metrics"];
            let subset: serde_json::Map<String, Value> = keep
                .iter()
                .map(|n| (n.to_string(), trl[*n].clone()))
                .collect();
            let ours: Vec<_> = metrics
                .into_iter()
                .filter(|(n, _)| keep.contains(n))
                .collect();
            check_metrics(device_name, name, &ours, &Value::Object(subset), &[], 1e-5);
        }
    }
}

#[test]
fn orpo_is_finite_at_extreme_logps() {
    let beta = 0.1;
    let loss_fn = OrpoConfig::new().with_beta(beta).init().unwrap();
    for (device_name, device) in autodiff_devices() {
        for &c in &EXTREMES {
            for &r in &EXTREMES {
                // Unshifted completion labels: the one position of each row is a completion token.
                let (batch, token) = one_token_orpo(&[c as f32, r as f32], &device);
                let out = loss_fn.forward(batch).unwrap();
                let (c32, r32) = (f64::from(c as f32), f64::from(r as f32));
                let log_odds = (c32 - r32) - (log1mexp(c32) - log1mexp(r32));
                let expected = -c32 + beta * softplus(-log_odds);
                let what = format!("ORPO at ({c}, {r})");
                assert_close(
                    device_name,
                    &what,
                    &to_vec(out.loss.clone()),
                    &[expected],
                    1e-4,
                    1e-6,
                );
                let grads = out.loss.backward();
                let g = to_vec(token.grad(&grads).unwrap());
                assert!(
                    g.iter().all(|v| v.is_finite()),
                    "[{device_name}] {what}: {g:?}"
                );
                // ∂/∂c = −1 + β·σ(−log_odds)·(−∂log_odds/∂c), ∂log_odds/∂c = 1 + e^c/(1 − e^c).
                let dodds = 1.0 + c32.exp() / -c32.exp_m1();
                let sig = 1.0 / (1.0 + log_odds.exp());
                let expected_grad = -1.0 - beta * sig * dodds;
                assert_close(
                    device_name,
                    &format!("{what} grad"),
                    &g[..1],
                    &[expected_grad],
                    1e-3,
                    1e-6,
                );
            }
        }
    }
}
