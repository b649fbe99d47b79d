//! TRL 1.16 fixtures of the reference-free and unpaired trainers
//! (`tests/fixtures/trl_reference_free.json`, written by `tests/fixtures/trl_oracle.py`) and
//! the helpers that read them: tensors, the two gather paths, TRL-keyed configs, metric and
//! gradient checks.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_preference::logps::{SequenceLogps, SequenceLogpsOutput};
use burn_preference::prelude::*;
use serde_json::Value;

use super::{assert_close, floats, ints, logged, to_vec};

fn fixture() -> &'static Value {
    static FIXTURE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/trl_reference_free.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
    })
}

pub fn cases(trainer: &str) -> Vec<Value> {
    let cases: Vec<Value> = fixture()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["trainer"] == trainer)
        .cloned()
        .collect();
    assert!(!cases.is_empty(), "no {trainer} cases in the fixture");
    cases
}

pub fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

pub fn data_f64(v: &Value) -> Vec<f64> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

pub fn data_i64(v: &Value) -> Vec<i64> {
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

pub fn float_tensor<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let dims: [usize; D] = shape(v).try_into().expect("rank");
    let values = data_f64(v).iter().map(|&x| x as f32).collect();
    floats(values, dims, device)
}

pub fn int_tensor<const D: usize>(v: &Value, device: &Device) -> Tensor<D, Int> {
    let dims: [usize; D] = shape(v).try_into().expect("rank");
    ints(data_i64(v), dims, device)
}

/// `ids` where `mask == 1`, −100 elsewhere (TRL's `masked_fill(mask == 0, -100)`).
pub fn masked_labels(ids: &Value, mask: &Value, device: &Device) -> Tensor<2, Int> {
    let dims: [usize; 2] = shape(ids).try_into().expect("rank");
    let values = data_i64(ids)
        .iter()
        .zip(data_i64(mask))
        .map(|(&id, m)| if m == 1 { id } else { -100 })
        .collect();
    ints(values, dims, device)
}

/// The gatherer every loss here reads: per-token log-probs on, default shift and ignore index.
pub fn gatherer() -> SequenceLogps {
    SequenceLogpsConfig::new()
        .with_return_token_logps(true)
        .with_chunk_rows(7)
        .init()
        .unwrap()
}

/// The two ways to the log-probs: the fused linear head, or `forward` on `hidden·Wᵀ` logits.
#[derive(Clone, Copy, Debug)]
pub enum Path {
    Linear,
    Logits,
}

pub fn gather(
    path: Path,
    hidden: Tensor<3>,
    weight: Tensor<2>,
    labels: Tensor<2, Int>,
) -> SequenceLogpsOutput {
    match path {
        Path::Linear => gatherer()
            .forward_linear(hidden, weight, labels, None)
            .unwrap(),
        Path::Logits => {
            let logits = hidden.matmul(weight.transpose().unsqueeze_dim::<3>(0));
            gatherer().forward(logits, labels, None).unwrap()
        }
    }
}

/// A config from TRL's keys: `keys` (a TRL config dict, possibly partial) laid over the
/// defaults, as TRL fills in its own; burn's `Config` deserialiser itself wants every field.
pub fn from_trl<C: serde::Serialize + serde::de::DeserializeOwned>(defaults: C, keys: &Value) -> C {
    let mut merged = serde_json::to_value(defaults).unwrap();
    for (key, value) in keys.as_object().expect("config object") {
        merged[key] = value.clone();
    }
    serde_json::from_value(merged).unwrap_or_else(|e| panic!("TRL keys {keys}: {e}"))
}

/// Every fixture metric except the excluded ones is present and within `rel`; none of ours is
/// missing from TRL's.
pub fn check_metrics(
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
        let got = logged(ours, name).unwrap_or_else(|| panic!("[{device}] {case}: no `{name}`"));
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

pub fn assert_grad_within(device: &str, what: &str, grad: Tensor<2>, expected: &Value, rel: f64) {
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

pub fn grad_of<const D: usize>(tensor: &Tensor<D>, grads: &burn::tensor::Gradients) -> Tensor<2> {
    let g = tensor.grad(grads).expect("gradient");
    let dims = g.dims();
    let rows: usize = dims[..D - 1].iter().product();
    g.reshape([rows, dims[D - 1]])
}

/// A `[2B]` concatenated output with one valid token per row holding `logps`, as a gatherer
/// would return it; the leaf to differentiate is returned too.
pub fn one_token_rows(logps: &[f32], device: &Device) -> (SequenceLogpsOutput, Tensor<2>) {
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
        reduction: LogpReduction::Sum,
    };
    (out, token)
}

/// The pairs of `one_token_rows` (chosen rows first) as a batch.
pub fn one_token_pairs(logps: &[f32], device: &Device) -> (PairedBatch, Tensor<2>) {
    let (out, token) = one_token_rows(logps, device);
    let pairs = logps.len() / 2;
    let batch = PairedBatch::from_output(out, BatchLayout::ChosenFirst { pairs }).unwrap();
    (batch, token)
}

/// A case's policy hidden states and LM-head weight, as leaves that take gradients.
pub fn policy_leaves(inputs: &Value, device: &Device) -> (Tensor<3>, Tensor<2>) {
    (
        float_tensor::<3>(&inputs["policy_hidden"], device).require_grad(),
        float_tensor::<2>(&inputs["policy_weight"], device).require_grad(),
    )
}

/// The loss's gradients with respect to the policy's hidden states and head against TRL's
/// (`case["grads"]`), within `rel`.
pub fn assert_policy_grads(
    device: &str,
    what: &str,
    (hidden, weight): (&Tensor<3>, &Tensor<2>),
    grads: &burn::tensor::Gradients,
    case: &Value,
    rel: f64,
) {
    assert_grad_within(
        device,
        &format!("{what} d/d hidden"),
        grad_of(hidden, grads),
        &case["grads"]["policy_hidden"],
        rel,
    );
    assert_grad_within(
        device,
        &format!("{what} d/d weight"),
        grad_of(weight, grads),
        &case["grads"]["policy_weight"],
        rel,
    );
}
