//! The reference-free and unpaired losses (CPO, SimPO, AlphaPO, ORPO, KTO, BCO) against TRL
//! 1.16.0's own code (tests/fixtures/trl_reference_free.json, written by trl_oracle.py), f64
//! references written here, and finite differences, on every device.

mod common;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_preference::loss::{KlSequence, kl_pairs, token_mean_nll};
use burn_preference::{
    BcoConfig, BcoState, CpoConfig, CpoLossType, KtoConfig, KtoLossType, OrpoConfig,
    PreferenceError, SequenceLogpsConfig, SequenceLogpsOutput, UnpairedBatch,
};
use common::{assert_close, autodiff_devices, devices, floats, ints, to_vec};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/trl_reference_free.json");

fn cases(trainer: &str) -> Vec<Value> {
    let root: Value = serde_json::from_str(FIXTURE).expect("fixture JSON");
    let cases: Vec<Value> = root["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["trainer"] == trainer)
        .cloned()
        .collect();
    assert!(!cases.is_empty(), "no {trainer} cases in the fixture");
    cases
}

fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

fn data_f64(v: &Value) -> Vec<f64> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn data_i64(v: &Value) -> Vec<i64> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| {
            x.as_i64()
                .or_else(|| x.as_bool().map(i64::from))
                .expect("int")
        })
        .collect()
}

fn float_tensor<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let dims: [usize; D] = shape(v).try_into().expect("rank");
    let values = data_f64(v).iter().map(|&x| x as f32).collect();
    floats(values, dims, device)
}

fn int_tensor<const D: usize>(v: &Value, device: &Device) -> Tensor<D, Int> {
    let dims: [usize; D] = shape(v).try_into().expect("rank");
    ints(data_i64(v), dims, device)
}

/// `ids` where `mask == 1`, −100 elsewhere (TRL's `masked_fill(mask == 0, -100)`).
fn masked_labels(ids: &Value, mask: &Value, device: &Device) -> Tensor<2, Int> {
    let dims: [usize; 2] = shape(ids).try_into().expect("rank");
    let values = data_i64(ids)
        .iter()
        .zip(data_i64(mask))
        .map(|(&id, m)| if m == 1 { id } else { -100 })
        .collect();
    ints(values, dims, device)
}

/// The gatherer every loss here reads: per-token log-probs on, default shift and ignore index.
fn gatherer() -> burn_preference::SequenceLogps {
    SequenceLogpsConfig::new()
        .with_return_token_logps(true)
        .with_chunk_rows(7)
        .init()
        .unwrap()
}

/// The two ways to the log-probs: the fused linear head, or `forward` on `hidden·Wᵀ` logits.
#[derive(Clone, Copy, Debug)]
enum Path {
    Linear,
    Logits,
}

fn gather(
    path: Path,
    hidden: Tensor<3>,
    weight: Tensor<2>,
    labels: Tensor<2, Int>,
) -> SequenceLogpsOutput {
    match path {
        Path::Linear => gatherer().forward_linear(hidden, weight, labels).unwrap(),
        Path::Logits => {
            let logits = hidden.matmul(weight.transpose().unsqueeze_dim::<3>(0));
            gatherer().forward(logits, labels).unwrap()
        }
    }
}

/// A config from TRL's keys: `keys` (a TRL config dict, possibly partial) laid over the
/// defaults, as TRL fills in its own; burn's `Config` deserialiser itself wants every field.
fn from_trl<C: serde::Serialize + serde::de::DeserializeOwned>(defaults: C, keys: &Value) -> C {
    let mut merged = serde_json::to_value(defaults).unwrap();
    for (key, value) in keys.as_object().expect("config object") {
        merged[key] = value.clone();
    }
    serde_json::from_value(merged).unwrap_or_else(|e| panic!("TRL keys {keys}: {e}"))
}

fn metric(metrics: &[(&'static str, f64)], name: &str) -> Option<f64> {
    metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Every fixture metric except the excluded ones is present and within `rel`; none of ours is
/// missing from TRL's.
fn check_metrics(
    device: &str,
    case: &str,
    ours: &[(&'static str, f64)],
    trl: &Value,
    excluded: &[&str],
    rel: f64,
) {
    let trl = trl.as_object().expect("metrics object");
    for (name, value) in trl {
        if excluded.contains(&name.as_str()) {
            continue;
        }
        let expected = value.as_f64().expect("number");
        let got = metric(ours, name).unwrap_or_else(|| panic!("[{device}] {case}: no `{name}`"));
        // A margin is a difference of two rewards: f32 holds it relative to their size, not
        // its own (cpo_sigmoid's is −7.6e-4 between rewards of −1.47).
        let mut size = got.abs().max(expected.abs());
        if name == "rewards/margins" {
            for side in ["rewards/chosen", "rewards/rejected"] {
                size = size.max(trl[side].as_f64().map_or(0.0, f64::abs));
            }
        }
        let tol = rel * size + 1e-7;
        assert!(
            (got - expected).abs() <= tol,
            "[{device}] {case} metric {name}: got {got}, TRL {expected}"
        );
    }
    for (name, _) in ours {
        assert!(
            trl.contains_key(*name),
            "[{device}] {case}: `{name}` is not among TRL's metrics"
        );
    }
}

fn assert_grad(device: &str, what: &str, grad: Tensor<2>, expected: &Value) {
    assert_grad_within(device, what, grad, expected, 1e-4);
}

fn assert_grad_within(device: &str, what: &str, grad: Tensor<2>, expected: &Value, rel: f64) {
    let expected = data_f64(expected);
    let scale = expected.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert_close(
        device,
        what,
        &to_vec(grad),
        &expected,
        rel,
        1e-5 * scale + 1e-8,
    );
}

fn grad_of<const D: usize>(tensor: &Tensor<D>, grads: &burn::tensor::Gradients) -> Tensor<2> {
    let g = tensor.grad(grads).expect("gradient");
    let dims = g.dims();
    let rows: usize = dims[..D - 1].iter().product();
    g.reshape([rows, dims[D - 1]])
}

// ---------------------------------------------------------------------------------------------
// CPO / SimPO / AlphaPO

#[test]
fn cpo_matches_trl() {
    for case in cases("cpo") {
        let name = case["name"].as_str().unwrap();
        let config = from_trl(CpoConfig::new(), &case["config"]);
        let loss_fn = config.init().unwrap();
        let resolved = &case["resolved_config"];
        assert_eq!(
            loss_fn.loss_type().as_str(),
            resolved["loss_type"].as_str().unwrap(),
            "{name}: resolved loss_type"
        );
        assert_eq!(
            loss_fn.cpo_alpha(),
            resolved["cpo_alpha"].as_f64().unwrap(),
            "{name}"
        );
        let inputs = &case["inputs"];
        for (device_name, device) in autodiff_devices() {
            for path in [Path::Linear, Path::Logits] {
                let what = format!("{name} ({path:?})");
                let hidden = float_tensor::<3>(&inputs["policy_hidden"], &device).require_grad();
                let weight = float_tensor::<2>(&inputs["policy_weight"], &device).require_grad();
                let labels = int_tensor::<2>(&inputs["concatenated_labels"], &device);
                let policy = gather(path, hidden.clone(), weight.clone(), labels);
                let out = loss_fn.forward(policy).unwrap();
                let expected = [case["loss"].as_f64().unwrap()];
                assert_close(
                    device_name,
                    &what,
                    &to_vec(out.loss.clone()),
                    &expected,
                    1e-5,
                    0.0,
                );
                let inter = &case["intermediates"];
                assert_close(
                    device_name,
                    &format!("{what} chosen logps"),
                    &to_vec(out.logps_chosen.clone()),
                    &data_f64(&inter["chosen_logps"]),
                    1e-5,
                    0.0,
                );
                assert_close(
                    device_name,
                    &format!("{what} rejected logps"),
                    &to_vec(out.logps_rejected.clone()),
                    &data_f64(&inter["rejected_logps"]),
                    1e-5,
                    0.0,
                );
                let metrics = out.metrics().unwrap();
                let raw_logits = ["logits/chosen", "logits/rejected"];
                check_metrics(
                    device_name,
                    &what,
                    &metrics,
                    &case["metrics"],
                    &raw_logits,
                    1e-5,
                );
                let grads = out.loss.backward();
                assert_grad(
                    device_name,
                    &format!("{what} d/d hidden"),
                    grad_of(&hidden, &grads),
                    &case["grads"]["policy_hidden"],
                );
                assert_grad(
                    device_name,
                    &format!("{what} d/d weight"),
                    grad_of(&weight, &grads),
                    &case["grads"]["policy_weight"],
                );
            }
        }
    }
}

/// A `[2B]` concatenated output with one valid token per row holding `logps`, as a gatherer
/// would return it; the leaf to differentiate is returned too.
fn one_token_rows(logps: &[f32], device: &Device) -> (SequenceLogpsOutput, Tensor<2>) {
    let n = logps.len();
    let mut token = floats(logps.to_vec(), [n, 1], device);
    if device.is_autodiff() {
        token = token.require_grad();
    }
    let valid = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; n], [n, 1]), device);
    let out = SequenceLogpsOutput {
        logps: token.clone().reshape([n]),
        counts: floats(vec![1.0; n], [n], device),
        token_logps: Some(token.clone()),
        valid,
        entropy: None,
        log_sum_sq_probs: None,
        mean_logits: None,
        is_top1: None,
        reduction: burn_preference::LogpReduction::Sum,
    };
    (out, token)
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

const EXTREMES: [f64; 7] = [-1e-7, -1e-5, -1e-3, -0.5, -30.0, -1e3, -1e4];

#[test]
fn alphapo_is_finite_or_refused_at_extreme_logps() {
    let (beta, gamma) = (2.0, 0.5);
    for alpha in [0.5, -0.5, 1e-3, -1e-3] {
        let config = CpoConfig::new()
            .with_loss_type(CpoLossType::Alphapo)
            .with_alpha(alpha)
            .with_beta(beta)
            .with_simpo_gamma(gamma);
        let loss_fn = config.init().unwrap();
        for (device_name, device) in autodiff_devices() {
            for &c in &EXTREMES {
                for &r in &EXTREMES {
                    // f64 reference: r = −expm1(−α s)/α, loss = softplus(−(β x − γ)).
                    let reward = |s: f64| -(-alpha * s).exp_m1() / alpha;
                    let fits = |s: f64| {
                        beta * (-alpha * s).exp() <= 1e30 && beta * reward(s).abs() <= 1e30
                    };
                    let (policy, token) = one_token_rows(&[c as f32, r as f32], &device);
                    let result = loss_fn.forward(policy);
                    if !(fits(c) && fits(r)) {
                        assert!(
                            matches!(result, Err(PreferenceError::NonFinite { .. })),
                            "[{device_name}] α {alpha} at ({c}, {r}): expected NonFinite, got {result:?}"
                        );
                        continue;
                    }
                    let out = result.unwrap();
                    let z = beta * (reward(c) - reward(r)) - gamma;
                    let expected = softplus(-z);
                    let got = to_vec(out.loss.clone());
                    let what = format!("α {alpha} at ({c}, {r})");
                    assert_close(device_name, &what, &got, &[expected], 1e-4, 1e-6);
                    let grads = out.loss.backward();
                    let g = to_vec(token.grad(&grads).unwrap());
                    assert!(
                        g.iter().all(|v| v.is_finite()),
                        "[{device_name}] {what}: gradient {g:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn alphapo_reward_near_zero_logp_is_accurate() {
    // (1 − p^{−α})/α → −s as s → 0: 1 − e^{αs} in f32 would round to 0 at s = −1e-7.
    let loss_fn = CpoConfig::new().with_alpha(0.5).init().unwrap();
    for (device_name, device) in devices() {
        let (policy, _) = one_token_rows(&[-1e-7, -2e-7], &device);
        let out = loss_fn.forward(policy).unwrap();
        let expected = [0.1 * -(-0.5f64 * -1e-7).exp_m1() / 0.5];
        assert_close(
            device_name,
            "reward",
            &to_vec(out.rewards_chosen),
            &expected,
            1e-4,
            0.0,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ORPO

#[test]
fn orpo_matches_trl() {
    for case in cases("orpo") {
        let name = case["name"].as_str().unwrap();
        let config = from_trl(OrpoConfig::new(), &case["config"]);
        let loss_fn = config.init().unwrap();
        let inputs = &case["inputs"];
        for (device_name, device) in autodiff_devices() {
            for path in [Path::Linear, Path::Logits] {
                let what = format!("{name} ({path:?})");
                let hidden = float_tensor::<3>(&inputs["policy_hidden"], &device).require_grad();
                let weight = float_tensor::<2>(&inputs["policy_weight"], &device).require_grad();
                let full = masked_labels(
                    &inputs["concatenated_input_ids"],
                    &inputs["concatenated_attention_mask"],
                    &device,
                );
                let completion = int_tensor::<2>(&inputs["concatenated_labels"], &device);
                let policy = gather(path, hidden.clone(), weight.clone(), full);
                let out = loss_fn.forward(policy, completion).unwrap();
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
                let inter = &case["intermediates"];
                assert_close(
                    device_name,
                    &format!("{what} chosen logps"),
                    &to_vec(out.logps_chosen.clone()),
                    &data_f64(&inter["chosen_logps"]),
                    1e-5,
                    1e-6,
                );
                let metrics = out.metrics().unwrap();
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
                assert_grad_within(
                    device_name,
                    &format!("{what} d/d hidden"),
                    grad_of(&hidden, &grads),
                    &case["grads"]["policy_hidden"],
                    grad_rel,
                );
                assert_grad_within(
                    device_name,
                    &format!("{what} d/d weight"),
                    grad_of(&weight, &grads),
                    &case["grads"]["policy_weight"],
                    grad_rel,
                );
            }
            // The odds-ratio term on TRL's own token-mean log-probs (one-token rows), free of the
            // gather's rounding: log-odds metrics and rewards to 1e-5.
            let inter = &case["intermediates"];
            let logps: Vec<f32> = data_f64(&inter["chosen_logps"])
                .into_iter()
                .chain(data_f64(&inter["rejected_logps"]))
                .map(|x| x as f32)
                .collect();
            let rows = logps.len();
            let (policy, _) = one_token_rows(&logps, &device);
            let completion = ints(vec![1; rows], [rows, 1], &device);
            let metrics = loss_fn
                .forward(policy, completion)
                .unwrap()
                .metrics()
                .unwrap();
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

/// `log(1 − e^s)` in f64 (`ln_1p(−e^s)` is accurate there for `s < −ln 2`, `ln(−expm1)` above).
fn log1mexp(s: f64) -> f64 {
    if s < -std::f64::consts::LN_2 {
        (-s.exp()).ln_1p()
    } else {
        (-s.exp_m1()).ln()
    }
}

#[test]
fn orpo_is_finite_at_extreme_logps() {
    let beta = 0.1;
    let loss_fn = OrpoConfig::new().with_beta(beta).init().unwrap();
    for (device_name, device) in autodiff_devices() {
        for &c in &EXTREMES {
            for &r in &EXTREMES {
                let (policy, token) = one_token_rows(&[c as f32, r as f32], &device);
                // Unshifted completion labels: the one position of each row is a completion token.
                let completion = ints(vec![1, 1], [2, 1], &device);
                let out = loss_fn.forward(policy, completion).unwrap();
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

// ---------------------------------------------------------------------------------------------
// KTO

/// Per-token entropy and vocabulary-mean logit `[N, T−1]` of `hidden·Wᵀ` (position `t`
/// predicting token `t + 1`), computed here with plain tensor ops for the metric inputs.
fn token_extras(hidden: Tensor<3>, weight: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let logits = hidden
        .detach()
        .matmul(weight.detach().transpose().unsqueeze_dim::<3>(0));
    let [n, t, v] = logits.dims();
    let logits = logits.narrow(1, 0, t - 1);
    let logp = log_softmax(logits.clone(), 2);
    let entropy = logp
        .clone()
        .exp()
        .mul(logp)
        .sum_dim(2)
        .neg()
        .reshape([n, t - 1]);
    let mean = logits.sum_dim(2).div_scalar(v as f64).reshape([n, t - 1]);
    (entropy, mean)
}

#[test]
fn kto_matches_trl() {
    for case in cases("kto") {
        let name = case["name"].as_str().unwrap();
        // Every KTOConfig key the loss reads, plus one it does not (per_device_train_batch_size).
        let config: KtoConfig = serde_json::from_value(case["config"].clone())
            .unwrap_or_else(|e| panic!("{name}: TRL keys: {e}"));
        let loss_fn = config.init().unwrap();
        let inputs = &case["inputs"];
        for (device_name, device) in autodiff_devices() {
            for path in [Path::Linear, Path::Logits] {
                let what = format!("{name} ({path:?})");
                let hidden = float_tensor::<3>(&inputs["policy_hidden"], &device).require_grad();
                let weight = float_tensor::<2>(&inputs["policy_weight"], &device).require_grad();
                let labels =
                    masked_labels(&inputs["input_ids"], &inputs["completion_mask"], &device);
                let mut policy = gather(path, hidden.clone(), weight.clone(), labels.clone());
                let (entropy, mean_logits) = token_extras(hidden.clone(), weight.clone());
                policy.entropy = Some(entropy);
                policy.mean_logits = Some(mean_logits);
                let reference = gather(
                    path,
                    float_tensor(&inputs["reference_hidden"], &device),
                    float_tensor(&inputs["reference_weight"], &device),
                    labels,
                )
                .logps;
                let desirable = int_tensor::<1>(&inputs["label"], &device);
                let mut batch = UnpairedBatch::new(policy, reference, desirable).unwrap();
                if inputs.get("KL_input_ids").is_some() {
                    let kl_labels = masked_labels(
                        &inputs["KL_input_ids"],
                        &inputs["KL_completion_mask"],
                        &device,
                    );
                    let policy_kl = gather(
                        path,
                        float_tensor(&inputs["policy_KL_hidden"], &device),
                        weight.clone().detach(),
                        kl_labels.clone(),
                    );
                    let reference_kl = gather(
                        path,
                        float_tensor(&inputs["reference_KL_hidden"], &device),
                        float_tensor(&inputs["reference_weight"], &device),
                        kl_labels,
                    );
                    let inter = &case["intermediates"];
                    assert_close(
                        device_name,
                        &format!("{what} KL logps"),
                        &to_vec(policy_kl.logps.clone()),
                        &data_f64(&inter["policy_KL_logps"]),
                        1e-5,
                        0.0,
                    );
                    batch = batch.with_kl(policy_kl.logps, reference_kl.logps).unwrap();
                }
                let out = loss_fn.forward(batch).unwrap();
                let expected = [case["loss"].as_f64().unwrap()];
                assert_close(
                    device_name,
                    &what,
                    &to_vec(out.loss.clone()),
                    &expected,
                    1e-5,
                    0.0,
                );
                let metrics = out.metrics().unwrap();
                check_metrics(
                    device_name,
                    &what,
                    &metrics,
                    &case["metrics"],
                    &["num_tokens"],
                    1e-5,
                );
                let grads = out.loss.backward();
                assert_grad(
                    device_name,
                    &format!("{what} d/d hidden"),
                    grad_of(&hidden, &grads),
                    &case["grads"]["policy_hidden"],
                );
                assert_grad(
                    device_name,
                    &format!("{what} d/d weight"),
                    grad_of(&weight, &grads),
                    &case["grads"]["policy_weight"],
                );
            }
        }
    }
}

#[test]
fn kto_fixture_covers_one_sided_and_single_example_batches() {
    let names: Vec<String> = cases("kto")
        .iter()
        .map(|c| {
            let labels = data_i64(&c["inputs"]["label"]);
            let ones = labels.iter().filter(|&&l| l == 1).count();
            format!("{}:{}/{}", c["name"].as_str().unwrap(), ones, labels.len())
        })
        .collect();
    assert!(
        names.contains(&"kto_all_desirable:6/6".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"kto_all_undesirable:0/6".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"kto_single_example:1/1".to_string()),
        "{names:?}"
    );
}

#[test]
fn kl_pairs_match_trl() {
    for case in cases("kto") {
        let Some(examples) = case["examples"].as_array() else {
            continue;
        };
        if examples[0].get("KL_completion_ids").is_none() {
            continue;
        }
        let ids = |e: &Value, key: &str| -> Vec<u32> {
            e[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let prompts: Vec<Vec<u32>> = examples.iter().map(|e| ids(e, "prompt_ids")).collect();
        let completions: Vec<Vec<u32>> =
            examples.iter().map(|e| ids(e, "completion_ids")).collect();
        let pairs: Vec<KlSequence> = kl_pairs(&prompts, &completions).unwrap();
        let kl_ids = data_i64(&case["inputs"]["KL_input_ids"]);
        let kl_mask = data_i64(&case["inputs"]["KL_completion_mask"]);
        let width = shape(&case["inputs"]["KL_input_ids"])[1];
        for (i, (pair, example)) in pairs.iter().zip(examples).enumerate() {
            let mut expected = ids(example, "prompt_ids");
            expected.extend(ids(example, "KL_completion_ids"));
            assert_eq!(pair.input_ids, expected, "{} example {i}", case["name"]);
            let len = pair.input_ids.len();
            let row: Vec<u32> = kl_ids[i * width..i * width + len]
                .iter()
                .map(|&x| x as u32)
                .collect();
            assert_eq!(pair.input_ids, row, "{} KL_input_ids row {i}", case["name"]);
            let mask: Vec<u8> = kl_mask[i * width..i * width + len]
                .iter()
                .map(|&x| x as u8)
                .collect();
            assert_eq!(
                pair.completion_mask(),
                mask,
                "{} KL_completion_mask row {i}",
                case["name"]
            );
        }
    }
}

/// A batch of one-token examples with these policy log-ratios (reference 0).
fn unpaired(ratios: &[f32], labels: &[i64], device: &Device) -> (UnpairedBatch, Tensor<2>) {
    let n = ratios.len();
    let (policy, token) = one_token_rows(ratios, device);
    let batch = UnpairedBatch::new(
        policy,
        floats(vec![0.0; n], [n], device),
        ints(labels.to_vec(), [n], device),
    )
    .unwrap();
    (batch, token)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn kto_one_sided_batches_against_f64() {
    let (beta, wd, wu) = (0.1, 1.33, 0.7);
    let loss_fn = KtoConfig::new()
        .with_desirable_weight(wd)
        .with_undesirable_weight(wu)
        .init()
        .unwrap();
    let ratios = [3.0f32, -2.0, 0.5];
    let kl = ([1.0f32, 2.0, -1.0], [0.0f32, 0.5, 0.0]); // mean 1.1667 → z
    let z = (1.0 + 1.5 - 1.0) / 3.0;
    for labels in [[1i64, 1, 1], [0, 0, 0], [1, 0, 1]] {
        for (device_name, device) in autodiff_devices() {
            let (batch, token) = unpaired(&ratios, &labels, &device);
            let batch = batch
                .with_kl(
                    floats(kl.0.to_vec(), [3], &device),
                    floats(kl.1.to_vec(), [3], &device),
                )
                .unwrap();
            let out = loss_fn.forward(batch).unwrap();
            let per: Vec<f64> = ratios
                .iter()
                .zip(&labels)
                .map(|(&l, &d)| {
                    let u = beta * (f64::from(l) - z);
                    if d == 1 {
                        wd * (1.0 - sigmoid(u))
                    } else {
                        wu * (1.0 - sigmoid(-u))
                    }
                })
                .collect();
            let mean = per.iter().sum::<f64>() / 3.0;
            assert_close(
                device_name,
                "KTO losses",
                &to_vec(out.losses.clone()),
                &per,
                1e-5,
                1e-7,
            );
            assert_close(
                device_name,
                "KTO loss",
                &to_vec(out.loss.clone()),
                &[mean],
                1e-5,
                0.0,
            );
            let metrics = out.metrics().unwrap();
            let has = |n: &str| metric(&metrics, n).is_some();
            let any_d = labels.contains(&1);
            let any_u = labels.contains(&0);
            assert_eq!(has("rewards/chosen"), any_d);
            assert_eq!(has("rewards/rejected"), any_u);
            assert_eq!(has("rewards/margins"), any_d && any_u);
            assert!(
                !has("entropy") && !has("logits/chosen"),
                "no per-token extras given"
            );
            let grads = out.loss.backward();
            let g = to_vec(token.grad(&grads).unwrap());
            // ∂/∂ℓ: desirable −λ_D β σ(u)(1 − σ(u)) / N, undesirable +λ_U β σ(u)(1 − σ(u)) / N.
            let expected: Vec<f64> = ratios
                .iter()
                .zip(&labels)
                .map(|(&l, &d)| {
                    let s = sigmoid(beta * (f64::from(l) - z));
                    let w = if d == 1 { -wd } else { wu };
                    w * beta * s * (1.0 - s) / 3.0
                })
                .collect();
            assert_close(device_name, "KTO grad", &g, &expected, 1e-4, 1e-8);
        }
    }
}

#[test]
fn kto_single_example_and_clamped_kl() {
    let loss_fn = KtoConfig::new().init().unwrap();
    for (device_name, device) in devices() {
        let (batch, _) = unpaired(&[-1.0], &[0], &device);
        // A negative KL estimate is clamped to z = 0.
        let batch = batch
            .with_kl(
                floats(vec![-3.0], [1], &device),
                floats(vec![-1.0], [1], &device),
            )
            .unwrap();
        let out = loss_fn.forward(batch).unwrap();
        assert_close(device_name, "z", &to_vec(out.kl.clone()), &[0.0], 0.0, 0.0);
        let expected = 1.0 - sigmoid(-0.1 * -1.0);
        assert_close(
            device_name,
            "loss",
            &to_vec(out.loss),
            &[expected],
            1e-5,
            0.0,
        );
    }
}

#[test]
fn apo_zero_unpaired_needs_no_kl() {
    let loss_fn = KtoConfig::new()
        .with_loss_type(KtoLossType::ApoZeroUnpaired)
        .init()
        .unwrap();
    for (device_name, device) in devices() {
        let (batch, _) = unpaired(&[2.0, 2.0], &[1, 0], &device);
        let out = loss_fn.forward(batch).unwrap();
        let expected = [1.0 - sigmoid(0.2), sigmoid(0.2)];
        assert_close(
            device_name,
            "apo_zero_unpaired",
            &to_vec(out.losses),
            &expected,
            1e-5,
            0.0,
        );
        let kto = KtoConfig::new().init().unwrap();
        let (batch, _) = unpaired(&[2.0], &[1], &device);
        assert!(matches!(
            kto.forward(batch),
            Err(PreferenceError::MissingInput { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// BCO

/// BCO's loss of one batch in f64, given δ.
fn bco_reference(beta: f64, ratios: &[f64], labels: &[i64], delta: f64) -> f64 {
    ratios
        .iter()
        .zip(labels)
        .map(|(&l, &d)| {
            let c = beta * l - delta;
            if d == 1 { softplus(-c) } else { softplus(c) }
        })
        .sum::<f64>()
        / ratios.len() as f64
}

#[test]
fn bco_delta_and_loss_against_f64() {
    let beta = 0.5;
    let loss_fn = BcoConfig::new().with_beta(beta).init().unwrap();
    let batches: [(&[f32], &[i64]); 3] = [
        (&[1.0, -2.0, 3.0], &[1, 0, 1]),
        (&[4.0], &[0]),
        (&[-1.0, -1.5], &[0, 0]),
    ];
    for (device_name, device) in autodiff_devices() {
        let mut state = BcoState::new();
        let mut means = Vec::new();
        for (ratios, labels) in batches {
            let (batch, token) = unpaired(ratios, labels, &device);
            let out = loss_fn.forward_train(batch, &mut state).unwrap();
            let r64: Vec<f64> = ratios.iter().map(|&r| f64::from(r)).collect();
            means.push(r64.iter().map(|r| beta * r).sum::<f64>() / r64.len() as f64);
            let delta = means.iter().sum::<f64>() / means.len() as f64;
            assert!(
                (state.delta - delta).abs() < 1e-6,
                "[{device_name}] δ {} vs {delta}",
                state.delta
            );
            assert_eq!(state.count, means.len() as u64);
            let expected = bco_reference(beta, &r64, labels, delta);
            assert_close(
                device_name,
                "BCO loss",
                &to_vec(out.loss.clone()),
                &[expected],
                1e-5,
                0.0,
            );
            // Central finite differences of the f64 reference (δ held: it is a constant).
            let grads = out.loss.backward();
            let g = to_vec(token.grad(&grads).unwrap());
            let h = 1e-5;
            let fd: Vec<f64> = (0..r64.len())
                .map(|i| {
                    let mut up = r64.clone();
                    let mut down = r64.clone();
                    up[i] += h;
                    down[i] -= h;
                    (bco_reference(beta, &up, labels, delta)
                        - bco_reference(beta, &down, labels, delta))
                        / (2.0 * h)
                })
                .collect();
            assert_close(device_name, "BCO grad", &g, &fd, 1e-4, 1e-7);
        }
        // Evaluation reads δ without moving it.
        let before = state;
        let (batch, _) = unpaired(&[10.0], &[1], &device);
        let out = loss_fn.forward(batch, &state).unwrap();
        assert_eq!(state, before);
        assert_eq!(out.delta, before.delta);
        assert_eq!(metric(&out.metrics().unwrap(), "delta"), Some(before.delta));
    }
}

// ---------------------------------------------------------------------------------------------
// Configs and errors

#[test]
fn loss_types_round_trip_trl_strings() {
    for s in ["sigmoid", "hinge", "ipo", "simpo", "alphapo"] {
        let t: CpoLossType = s.parse().unwrap();
        assert_eq!(t.to_string(), s);
        assert_eq!(serde_json::to_value(t).unwrap(), Value::String(s.into()));
    }
    for s in ["kto", "apo_zero_unpaired"] {
        let t: KtoLossType = s.parse().unwrap();
        assert_eq!(t.to_string(), s);
    }
    assert!(matches!(
        "kto_pair".parse::<CpoLossType>(),
        Err(PreferenceError::InvalidValue { .. })
    ));
    assert!(matches!(
        "bco".parse::<KtoLossType>(),
        Err(PreferenceError::InvalidValue { .. })
    ));
}

#[test]
fn configs_deserialise_from_trl_keys_with_defaults() {
    let keys: Value = serde_json::from_str(r#"{"loss_type": "alphapo", "alpha": 0.25}"#).unwrap();
    let cpo = from_trl(CpoConfig::new(), &keys);
    assert_eq!((cpo.beta, cpo.cpo_alpha, cpo.simpo_gamma), (0.1, 1.0, 0.5));
    let loss = cpo.init().unwrap();
    assert_eq!(
        (loss.loss_type(), loss.cpo_alpha()),
        (CpoLossType::Simpo, 0.0)
    );
    let keys: Value = serde_json::from_str(r#"{"loss_type": "apo_zero_unpaired"}"#).unwrap();
    let kto = from_trl(KtoConfig::new(), &keys);
    assert_eq!(
        (kto.beta, kto.desirable_weight, kto.undesirable_weight),
        (0.1, 1.0, 1.0)
    );
    let orpo: OrpoConfig = serde_json::from_str(r#"{"beta": 0.25, "max_length": 1024}"#).unwrap();
    assert_eq!(orpo.beta, 0.25);
    // A full TRL dict deserialises directly (unknown keys are ignored).
    let full = r#"{"beta": 0.1, "label_smoothing": 0.0, "loss_type": "ipo", "cpo_alpha": 1.0,
                   "simpo_gamma": 0.5, "alpha": 0.0, "learning_rate": 1e-6}"#;
    let cpo: CpoConfig = serde_json::from_str(full).unwrap();
    assert_eq!(cpo.loss_type, CpoLossType::Ipo);
}

#[test]
fn configs_refuse_bad_values() {
    let out_of_range = |r: Result<(), PreferenceError>, name: &str| match r {
        Err(PreferenceError::OutOfRange { name: n, .. }) => assert_eq!(n, name),
        other => panic!("{name}: {other:?}"),
    };
    out_of_range(CpoConfig::new().with_beta(0.0).init().map(|_| ()), "beta");
    out_of_range(
        CpoConfig::new()
            .with_label_smoothing(0.5)
            .init()
            .map(|_| ()),
        "label_smoothing",
    );
    out_of_range(
        CpoConfig::new().with_cpo_alpha(-1.0).init().map(|_| ()),
        "cpo_alpha",
    );
    out_of_range(
        CpoConfig::new().with_alpha(f64::NAN).init().map(|_| ()),
        "alpha",
    );
    out_of_range(
        CpoConfig::new()
            .with_simpo_gamma(f64::INFINITY)
            .init()
            .map(|_| ()),
        "simpo_gamma",
    );
    out_of_range(OrpoConfig::new().with_beta(1e9).init().map(|_| ()), "beta");
    out_of_range(
        KtoConfig::new()
            .with_desirable_weight(-0.1)
            .init()
            .map(|_| ()),
        "desirable_weight",
    );
    out_of_range(
        KtoConfig::new()
            .with_undesirable_weight(f64::NAN)
            .init()
            .map(|_| ()),
        "undesirable_weight",
    );
    out_of_range(BcoConfig::new().with_beta(-1.0).init().map(|_| ()), "beta");
}

#[test]
fn bad_inputs_are_typed_errors() {
    for (device_name, device) in devices() {
        let cpo = CpoConfig::new().init().unwrap();
        // Without per-token log-probs the loss cannot form its own reduction.
        let logits = floats(vec![0.0; 2 * 3 * 4], [2, 3, 4], &device);
        let labels = ints(vec![-100, 1, 2, -100, 3, -100], [2, 3], &device);
        let plain = SequenceLogpsConfig::new()
            .init()
            .unwrap()
            .forward(logits, labels)
            .unwrap();
        assert!(
            matches!(
                cpo.forward(plain),
                Err(PreferenceError::MissingInput { .. })
            ),
            "[{device_name}] missing token_logps"
        );
        let (odd, _) = one_token_rows(&[-1.0, -2.0, -3.0], &device);
        assert!(matches!(
            cpo.forward(odd),
            Err(PreferenceError::Shape { .. })
        ));
        let (nan, _) = one_token_rows(&[f32::NAN, -2.0], &device);
        assert!(matches!(
            cpo.forward(nan),
            Err(PreferenceError::NonFinite { .. })
        ));
        let (mut empty_row, _) = one_token_rows(&[-1.0, -2.0], &device);
        empty_row.counts = floats(vec![1.0, 0.0], [2], &device);
        assert!(matches!(
            cpo.forward(empty_row),
            Err(PreferenceError::Empty { .. })
        ));

        let orpo = OrpoConfig::new().init().unwrap();
        let (policy, _) = one_token_rows(&[-1.0, -2.0], &device);
        let wrong = ints(vec![1, 1, 1, 1, 1, 1], [2, 3], &device);
        assert!(matches!(
            orpo.forward(policy.clone(), wrong),
            Err(PreferenceError::Shape { .. })
        ));
        let mut partial = policy.clone();
        partial.valid =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![true, false], [2, 1]), &device);
        let completion = ints(vec![1, 1], [2, 1], &device);
        assert!(matches!(
            orpo.forward(partial, completion),
            Err(PreferenceError::InvalidValue { .. })
        ));

        let (policy, _) = one_token_rows(&[-1.0, -2.0], &device);
        let reference = floats(vec![0.0, 0.0], [2], &device);
        let bad = UnpairedBatch::new(
            policy.clone(),
            reference.clone(),
            ints(vec![1, 2], [2], &device),
        );
        assert!(matches!(
            bad,
            Err(PreferenceError::InvalidValue {
                arg: "desirable",
                ..
            })
        ));
        let short = UnpairedBatch::new(
            policy.clone(),
            floats(vec![0.0], [1], &device),
            ints(vec![1, 0], [2], &device),
        );
        assert!(matches!(short, Err(PreferenceError::BatchMismatch { .. })));
        let inf_ref = UnpairedBatch::new(
            policy.clone(),
            floats(vec![0.0, f32::NEG_INFINITY], [2], &device),
            ints(vec![1, 0], [2], &device),
        );
        assert!(matches!(
            inf_ref,
            Err(PreferenceError::NonFinite {
                arg: "reference",
                ..
            })
        ));
        let batch = UnpairedBatch::new(policy, reference, ints(vec![1, 0], [2], &device)).unwrap();
        let kl = batch.with_kl(
            floats(vec![0.0, 0.0], [2], &device),
            floats(vec![0.0], [1], &device),
        );
        assert!(matches!(kl, Err(PreferenceError::BatchMismatch { .. })));

        let mut state = BcoState::new();
        let none = state.update(Tensor::<1>::zeros([0], &device));
        assert!(matches!(none, Err(PreferenceError::Empty { .. })));
        assert_eq!(state, BcoState::new());

        assert!(matches!(
            kl_pairs(&[], &[]),
            Err(PreferenceError::Empty { .. })
        ));
        assert!(matches!(
            kl_pairs(&[vec![1]], &[]),
            Err(PreferenceError::BatchMismatch { .. })
        ));

        let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true], [1, 1]), &device);
        let nll = token_mean_nll(floats(vec![-1.0, -2.0], [1, 2], &device), mask);
        assert!(matches!(nll, Err(PreferenceError::Shape { .. })));
    }
}

#[cfg(all(feature = "flex", feature = "ndarray"))]
#[test]
#[allow(deprecated)]
fn device_mismatch_is_a_typed_error() {
    let (policy, _) = one_token_rows(&[-1.0, -2.0], &Device::flex());
    let reference = floats(vec![0.0, 0.0], [2], &Device::ndarray());
    let labels = ints(vec![1, 0], [2], &Device::flex());
    let result = UnpairedBatch::new(policy, reference, labels);
    assert!(matches!(
        result,
        Err(PreferenceError::DeviceMismatch {
            arg: "reference",
            ..
        })
    ));
}

#[test]
fn token_mean_nll_weighs_every_token_once() {
    for (device_name, device) in devices() {
        let token = floats(vec![-1.0, -3.0, 0.0, -2.0, 0.0, 0.0], [2, 3], &device);
        let mask = Tensor::<2, Bool>::from_data(
            TensorData::new(vec![true, true, false, true, false, false], [2, 3]),
            &device,
        );
        let nll = token_mean_nll(token.clone(), mask).unwrap();
        // (1 + 3 + 2) / 3 tokens, not the mean of per-row means (2 + 2) / 2.
        assert_close(device_name, "nll", &to_vec(nll), &[2.0], 1e-6, 0.0);
        let none = Tensor::<2, Bool>::from_data(TensorData::new(vec![false; 6], [2, 3]), &device);
        assert_close(
            device_name,
            "empty",
            &to_vec(token_mean_nll(token, none).unwrap()),
            &[0.0],
            0.0,
            0.0,
        );
    }
}
