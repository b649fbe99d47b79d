//! KTO against TRL 1.16's `KTOTrainer` (fixtures, including its KL pairs) and f64
//! references, on every device.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use burn_preference::loss::{KlSequence, KtoLossType, kl_pairs};
use burn_preference::prelude::*;
use serde_json::Value;

use crate::common::reference::sigmoid;
use crate::common::trl_fixture::{
    Path, assert_policy_grads, cases, check_metrics, data_f64, data_i64, float_tensor, gather,
    int_tensor, masked_labels, one_token_rows, policy_leaves, shape,
};
use crate::common::{assert_close, autodiff_devices, devices, floats, ints, logged, to_vec};

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
        // Every KTOConfig key the loss reads, plus one it does not (per_device_train_batch_size):
        // TRL's dict loads as it is (no `value_checks` key: its default).
        let config = serde_json::from_value::<KtoConfig>(case["config"].clone()).unwrap();
        let loss_fn = config.init().unwrap();
        let inputs = &case["inputs"];
        for (device_name, device) in autodiff_devices() {
            for path in [Path::Linear, Path::Logits] {
                let what = format!("{name} ({path:?})");
                let (hidden, weight) = policy_leaves(inputs, &device);
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
                let mut batch = UnpairedBatch::from_output(policy, desirable)
                    .unwrap()
                    .with_reference(reference)
                    .unwrap();
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
                let metrics = out.metrics.log().unwrap();
                check_metrics(
                    device_name,
                    &what,
                    &metrics,
                    &case["metrics"],
                    &["num_tokens"],
                    1e-5,
                );
                let grads = out.loss.backward();
                let leaves = (&hidden, &weight);
                assert_policy_grads(device_name, &what, leaves, &grads, &case, 1e-4);
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
pub fn unpaired(ratios: &[f32], labels: &[i64], device: &Device) -> (UnpairedBatch, Tensor<2>) {
    let n = ratios.len();
    let (policy, token) = one_token_rows(ratios, device);
    let batch = UnpairedBatch::from_output(policy, ints(labels.to_vec(), [n], device))
        .unwrap()
        .with_reference(floats(vec![0.0; n], [n], device))
        .unwrap();
    (batch, token)
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
            let metrics = out.metrics.log().unwrap();
            let has = |n: &str| logged(&metrics, n).is_some();
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
        // 0.1's `out.kl`: one batch, so the logged `kl` is z itself.
        let z = logged(&out.metrics.log().unwrap(), "kl").expect("kl");
        assert_eq!(z, 0.0, "[{device_name}] z");
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
