//! The GRPO family, RLOO and their advantages against TRL 1.16.0's own numbers
//! (`tests/fixtures/trl_grpo.json`, written by `tests/fixtures/trl_grpo_oracle.py` from
//! `GRPOTrainer._compute_loss`, `RLOOTrainer._compute_loss` and the advantage blocks of their
//! `_generate_and_score_completions`): loss, metrics, and the gradients with respect to the
//! hidden states and the LM head, through the fused head and through materialised logits, on
//! every device.

use burn::tensor::{Device, Tensor};
use burn_preference::advantages::{GrpoAdvantagesConfig, RlooAdvantagesConfig, RlooKl};
use burn_preference::batch::CompletionBatch;
use burn_preference::logps::SequenceLogpsOutput;
use burn_preference::prelude::*;
use serde_json::Value;

use crate::common::trl_fixture::{Path, data_f64, int_tensor, shape};
use crate::common::{assert_close, autodiff_devices, devices, floats, to_vec};

/// f32 against f32: TRL's loss and ours sum the same terms in other orders.
const REL: f64 = 1e-5;

fn fixture() -> &'static Value {
    static FIXTURE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trl_grpo.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
    })
}

/// A tensor whose `null` entries are NaN (a reward function's `None`).
fn nullable<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let dims: [usize; D] = shape(v).try_into().expect("rank");
    let values = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
        .collect();
    floats(values, dims, device)
}

fn tensor<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    nullable(v, device)
}

fn passed(case: &Value, key: &str) -> bool {
    case["inputs_passed"]
        .as_array()
        .expect("inputs_passed")
        .iter()
        .any(|k| k == key)
}

/// The policy's per-token log-probs and entropies over `batch`'s rows, by `path`, with the
/// hidden states and the head as gradient leaves.
fn gather(
    batch: &Value,
    temperature: f64,
    path: Path,
    device: &Device,
) -> (SequenceLogpsOutput, Tensor<3>, Tensor<2>) {
    let hidden = tensor::<3>(&batch["hidden"], device).require_grad();
    let head = tensor::<2>(&batch["head_weight"], device).require_grad();
    let labels = int_tensor::<2>(&batch["labels"], device);
    let gatherer = SequenceLogpsConfig::new()
        .with_return_token_logps(true)
        .with_return_entropy(true)
        .with_temperature(temperature)
        .init()
        .unwrap();
    let out = match path {
        Path::Linear => gatherer.forward_linear(hidden.clone(), head.clone(), labels, None),
        Path::Logits => {
            let logits = hidden
                .clone()
                .matmul(head.clone().transpose().unsqueeze_dim::<3>(0));
            gatherer.forward(logits, labels, None)
        }
    }
    .unwrap();
    (out, hidden, head)
}

/// TRL's logged metrics, but for its minimum and maximum over completions (which no sum and
/// count merge; not logged here) and the trainer-level `entropy_coef` constant.
fn assert_metrics(what: &str, ours: &Metrics, expected: &Value, names_to_skip: &[&str]) {
    let logged = ours.log().unwrap();
    for (name, value) in expected.as_object().expect("metrics") {
        if names_to_skip.contains(&name.as_str()) || name.starts_with("rewards/") {
            continue;
        }
        let got = logged
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{what}: no metric {name} (ours: {:?})", ours.names()));
        let expected = value.as_f64().expect("metric");
        assert_close(
            "",
            &format!("{what} {name}"),
            &[got.1 as f32],
            &[expected],
            REL,
            1e-6,
        );
    }
}

/// The gradients of `loss` with respect to the hidden states and the head against TRL's,
/// elementwise, with the absolute floor at `REL` of the largest entry.
fn assert_grads(
    what: &str,
    loss: Tensor<1>,
    hidden: &Tensor<3>,
    head: &Tensor<2>,
    expected: &Value,
) {
    let grads = loss.backward();
    let check = |name: &str, actual: Vec<f32>, expected: &Value| {
        let expected = data_f64(expected);
        let scale = expected.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert_close(
            "",
            &format!("{what} d/d{name}"),
            &actual,
            &expected,
            REL,
            REL * scale,
        );
    };
    check(
        "hidden",
        to_vec(hidden.grad(&grads).unwrap()),
        &expected["hidden"],
    );
    check(
        "head",
        to_vec(head.grad(&grads).unwrap()),
        &expected["head_weight"],
    );
}

#[test]
fn every_grpo_loss_type_matches_trl_1_16() {
    let section = &fixture()["grpo_loss"];
    let cases = section["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40);
    for (device_name, device) in autodiff_devices() {
        for path in [Path::Linear, Path::Logits] {
            for (index, case) in cases.iter().enumerate() {
                // wgpu runs every case through its fused kernels, and every fifth through
                // materialised logits (~0.3 s a case on CI's CPU Vulkan driver).
                if device_name == "wgpu" && matches!(path, Path::Logits) && index % 5 != 0 {
                    continue;
                }
                let what = format!("[{device_name} {path:?}] {}", case["name"]);
                let batch_json = &section["batches"][case["batch"].as_str().unwrap()];
                let config: GrpoConfig = serde_json::from_value(case["config"].clone()).unwrap();
                let temperature = case["config"]["temperature"].as_f64().unwrap();
                let (out, hidden, head) = gather(batch_json, temperature, path, &device);
                let completion = shape(&batch_json["completion_ids"])[1];
                let advantages = tensor::<1>(&batch_json["advantages"], &device);
                let mut batch = CompletionBatch::from_output(out, completion, advantages).unwrap();
                for (key, add) in [
                    (
                        "old_per_token_logps",
                        CompletionBatch::with_old_logps as fn(_, _) -> _,
                    ),
                    ("ref_per_token_logps", CompletionBatch::with_reference),
                    (
                        "sampling_per_token_logps",
                        CompletionBatch::with_sampling_logps,
                    ),
                ] {
                    if passed(case, key) {
                        batch = add(batch, tensor::<2>(&batch_json[key], &device)).unwrap();
                    }
                }
                if let Some(ratio) = case["inputs"].get("importance_sampling_ratio") {
                    batch = batch
                        .with_importance_sampling_ratio(tensor::<2>(ratio, &device))
                        .unwrap();
                }
                let result = config.init().unwrap().forward(batch).unwrap();
                let expected = case["loss"].as_f64().unwrap();
                let loss = result.loss.clone().into_scalar::<f32>();
                assert_close("", &format!("{what} loss"), &[loss], &[expected], REL, 1e-7);
                assert_metrics(
                    &what,
                    &result.metrics,
                    &case["metrics"],
                    &["clip_ratio/low_min", "clip_ratio/high_max"],
                );
                assert_grads(&what, result.loss, &hidden, &head, &case["grads"]);
            }
        }
    }
}

#[test]
fn grpo_advantages_match_trl_1_16() {
    let cases = fixture()["grpo_advantages"]["cases"]
        .as_array()
        .expect("cases");
    for (device_name, device) in devices() {
        for case in cases {
            let what = format!("[{device_name}] {}", case["name"]);
            let config: GrpoAdvantagesConfig =
                serde_json::from_value(case["config"].clone()).unwrap();
            let rewards = nullable::<2>(&case["rewards_per_func"], &device);
            let out = config.init().unwrap().forward(rewards).unwrap();
            let expected = data_f64(&case["advantages"]);
            assert_close(
                &what,
                "advantages",
                &to_vec(out.advantages),
                &expected,
                REL,
                1e-6,
            );
            assert_metrics(&what, &out.metrics, &case["metrics"], &["reward_std"]);
        }
    }
}

#[test]
fn rloo_advantages_and_loss_match_trl_1_16() {
    let section = &fixture()["rloo"];
    let batch_json = &section["batch"];
    let completion = shape(&batch_json["completion_ids"])[1];
    for (device_name, device) in autodiff_devices() {
        for path in [Path::Linear, Path::Logits] {
            for (index, case) in section["cases"]
                .as_array()
                .expect("cases")
                .iter()
                .enumerate()
            {
                // As for GRPO: wgpu's logits path on every fifth case.
                if device_name == "wgpu" && matches!(path, Path::Logits) && index % 5 != 0 {
                    continue;
                }
                let what = format!("[{device_name} {path:?}] {}", case["name"]);
                // Advantages: TRL's block on the case's rewards and the batch's old and
                // reference log-probs.
                let advantages_config: RlooAdvantagesConfig =
                    serde_json::from_value(case["config"].clone()).unwrap();
                let mask = int_tensor::<2>(&batch_json["completion_mask"], &device).equal_elem(1);
                let kl = RlooKl::from_token_logps(
                    tensor(&batch_json["old_per_token_logps"], &device),
                    tensor(&batch_json["ref_per_token_logps"], &device),
                    mask,
                )
                .unwrap();
                let advantages = advantages_config
                    .init()
                    .unwrap()
                    .forward(nullable(&case["rewards_per_func"], &device), Some(kl))
                    .unwrap();
                assert_close(
                    &what,
                    "advantages",
                    &to_vec(advantages.advantages.clone()),
                    &data_f64(&case["advantages"]),
                    REL,
                    1e-6,
                );
                assert_metrics(
                    &what,
                    &advantages.metrics,
                    &case["advantage_metrics"],
                    &["reward_std"],
                );

                // The loss on TRL's advantages (the same values, to f32 rounding).
                let loss_config: RlooConfig =
                    serde_json::from_value(case["config"].clone()).unwrap();
                let (out, hidden, head) = gather(batch_json, 1.0, path, &device);
                let batch = CompletionBatch::from_output(
                    out,
                    completion,
                    tensor(&case["advantages"], &device),
                )
                .unwrap()
                .with_old_logps(tensor(&batch_json["old_per_token_logps"], &device))
                .unwrap();
                let result = loss_config.init().unwrap().forward(batch).unwrap();
                let loss = result.loss.clone().into_scalar::<f32>();
                // The ratio is exp of a difference of two sums over a sequence (|Σ| up to 40
                // here): f32 sums in another order move it by ~REL·|Σ|, the loss by
                // Σ|A·Σ|·REL / N.
                let sums = data_f64(&case["intermediates"]["logps"]);
                let advantages = data_f64(&case["advantages"]);
                let spread = sums.iter().zip(&advantages).map(|(s, a)| (s * a).abs());
                let floor = REL * spread.sum::<f64>() / sums.len() as f64;
                let expected = case["loss"].as_f64().unwrap();
                assert_close(
                    "",
                    &format!("{what} loss"),
                    &[loss],
                    &[expected],
                    REL,
                    floor,
                );
                assert_metrics(
                    &what,
                    &result.metrics,
                    &case["metrics"],
                    &["clip_ratio/low_min", "clip_ratio/high_max"],
                );
                assert_grads(&what, result.loss, &hidden, &head, &case["grads"]);
            }
        }
    }
}
