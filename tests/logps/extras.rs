//! The fused pass's extra outputs (entropy, `log Σ p²`, mean logit, is-argmax) and options
//! (temperature, logit scale, softcap, LM-head bias and layout): against the tensor-op oracle
//! (`forward_unfused`) on every device, the entropy gradient against central finite
//! differences, and against TRL 1.16's own `ChunkedLogProbFunction` outputs
//! (tests/fixtures/trl_logprob.json, written by TRL itself).

use burn::tensor::Tensor;
use burn_preference::logps::{HeadLayout, LmHead, SequenceLogpsConfig, SequenceLogpsOutput};

use crate::common::gatherer::{Options, gatherer, objective};
use crate::common::inputs::values;
use crate::common::reference::as_f64;
use crate::common::{assert_close, autodiff_devices, devices, floats, ints, to_vec};

const REL: f64 = 1e-5;

fn labels_for(b: usize, t: usize, v: usize) -> Vec<i64> {
    (0..b * t)
        .map(|i| if i % 4 == 1 { -100 } else { (i * 7 % v) as i64 })
        .collect()
}

const OPTIONS: &[Options] = &[
    Options {
        temperature: 1.0,
        scale: 1.0,
        softcap: None,
        shift: true,
    },
    Options {
        temperature: 0.7,
        scale: 1.0,
        softcap: None,
        shift: false,
    },
    Options {
        temperature: 1.0,
        scale: 1.3,
        softcap: Some(5.0),
        shift: true,
    },
    Options {
        temperature: 0.7,
        scale: 1.3,
        softcap: Some(3.0),
        shift: false,
    },
];

/// Every per-token output as floats, in a fixed order.
fn outputs(out: &SequenceLogpsOutput) -> Vec<(&'static str, Vec<f32>)> {
    let mut all = vec![("logps", to_vec(out.logps.clone()))];
    let mut push = |name, t: &Option<Tensor<2>>| {
        if let Some(t) = t {
            all.push((name, to_vec(t.clone())));
        }
    };
    push("token_logps", &out.token_logps);
    push("entropy", &out.entropy);
    push("log_sum_sq_probs", &out.log_sum_sq_probs);
    push("mean_logits", &out.mean_logits);
    if let Some(t) = &out.is_top1 {
        all.push(("is_top1", to_vec(t.clone().float())));
    }
    all
}

fn compare_outputs(
    name: &str,
    what: &str,
    fused: &SequenceLogpsOutput,
    oracle: &SequenceLogpsOutput,
) {
    let (a, b) = (outputs(fused), outputs(oracle));
    assert_eq!(a.len(), b.len(), "[{name}] {what}: outputs present");
    for ((key, x), (_, y)) in a.iter().zip(&b) {
        assert_close(name, &format!("{key} {what}"), x, &as_f64(y), REL, 1e-6);
    }
    let valid = |o: &SequenceLogpsOutput| to_vec(o.valid.clone().float());
    assert_eq!(valid(fused), valid(oracle), "[{name}] {what}: valid");
}

#[test]
fn extras_and_transforms_match_the_oracle_on_the_logits_path() {
    let all = devices().into_iter().chain(autodiff_devices());
    for (name, device) in all {
        // Several online-max blocks (V > 2048), and a small V with a tail.
        for dims in [[2, 5, 37], [2, 3, 4500]] {
            let [b, t, v] = dims;
            let logit_values = values(b * t * v, 2.0, (b * t * v) as u64);
            for &o in OPTIONS {
                for extras in [true, false] {
                    let g = gatherer(o, extras);
                    let what = format!("{dims:?} {o:?} extras {extras}");
                    let run = |fused: bool| {
                        let logits = floats(logit_values.clone(), dims, &device);
                        let logits = if device.is_autodiff() {
                            logits.require_grad()
                        } else {
                            logits
                        };
                        let labels = ints(labels_for(b, t, v), [b, t], &device);
                        let out = if fused {
                            g.forward(logits.clone(), labels, None)
                        } else {
                            g.forward_unfused(logits.clone(), labels, None)
                        }
                        .expect("valid inputs");
                        let grad = device.is_autodiff().then(|| {
                            let grads = objective(&out, &device).backward();
                            logits.grad(&grads).map(to_vec).expect("a gradient")
                        });
                        (out, grad)
                    };
                    let (fused, fused_grad) = run(true);
                    let (oracle, oracle_grad) = run(false);
                    compare_outputs(name, &what, &fused, &oracle);
                    if let (Some(a), Some(e)) = (fused_grad, oracle_grad) {
                        assert_close(name, &format!("grad {what}"), &a, &as_f64(&e), REL, 1e-7);
                    }
                }
            }
        }
    }
}

#[test]
fn extras_and_options_match_the_materialised_logits_on_the_lm_head_path() {
    let all = devices().into_iter().chain(autodiff_devices());
    for (name, device) in all {
        let (b, t, h, v) = (2, 5, 6, 41);
        let hidden_values = values(b * t * h, 1.0, 3);
        let weight_values = values(v * h, 0.5, 4); // read as [V, H] or [H, V]
        let bias_values = values(v, 0.5, 5);
        for &o in OPTIONS {
            for (layout, bias) in [
                (HeadLayout::VocabHidden, false),
                (HeadLayout::HiddenVocab, true),
                (HeadLayout::VocabHidden, true),
            ] {
                let g = gatherer(o, true);
                let what = format!("{o:?} {layout:?} bias {bias}");
                let run = |fused: bool| {
                    let track = |x: Tensor<2>| {
                        if device.is_autodiff() {
                            x.require_grad()
                        } else {
                            x
                        }
                    };
                    let hidden = floats(hidden_values.clone(), [b, t, h], &device);
                    let hidden = if device.is_autodiff() {
                        hidden.require_grad()
                    } else {
                        hidden
                    };
                    let shape = match layout {
                        HeadLayout::VocabHidden => [v, h],
                        HeadLayout::HiddenVocab => [h, v],
                    };
                    let weight = track(floats(weight_values.clone(), shape, &device));
                    let bias_t = floats(bias_values.clone(), [v], &device);
                    let bias_t = if device.is_autodiff() {
                        bias_t.require_grad()
                    } else {
                        bias_t
                    };
                    let labels = ints(labels_for(b, t, v), [b, t], &device);
                    let out = if fused {
                        let mut head = LmHead::new(weight.clone(), layout);
                        if bias {
                            head = head.with_bias(bias_t.clone());
                        }
                        g.forward_linear(hidden.clone(), head, labels, None)
                    } else {
                        // The logits written out with tensor ops.
                        let head = match layout {
                            HeadLayout::VocabHidden => weight.clone().transpose(),
                            HeadLayout::HiddenVocab => weight.clone(),
                        };
                        let mut logits = hidden.clone().matmul(head.unsqueeze_dim(0));
                        if bias {
                            logits = logits + bias_t.clone().unsqueeze_dims(&[0, 1]);
                        }
                        g.forward_unfused(logits, labels, None)
                    }
                    .expect("valid inputs");
                    let grads = device.is_autodiff().then(|| {
                        let grads = objective(&out, &device).backward();
                        let dh = hidden.grad(&grads).map(to_vec).expect("d hidden");
                        let dw = weight.grad(&grads).map(to_vec).expect("d weight");
                        let db = bias.then(|| bias_t.grad(&grads).map(to_vec).expect("d bias"));
                        (dh, dw, db)
                    });
                    (out, grads)
                };
                let (fused, fused_grads) = run(true);
                let (oracle, oracle_grads) = run(false);
                compare_outputs(name, &what, &fused, &oracle);
                if let (Some((dh, dw, db)), Some((eh, ew, eb))) = (fused_grads, oracle_grads) {
                    // Chunked products sum in another order than one product: ~1e-7 noise.
                    assert_close(name, &format!("dh {what}"), &dh, &as_f64(&eh), REL, 1e-6);
                    assert_close(name, &format!("dw {what}"), &dw, &as_f64(&ew), REL, 1e-6);
                    if let (Some(db), Some(eb)) = (db, eb) {
                        assert_close(name, &format!("db {what}"), &db, &as_f64(&eb), REL, 1e-6);
                    }
                }
            }
        }
    }
}

#[test]
fn entropy_gradient_agrees_with_central_finite_differences() {
    let (b, t, v) = (2, 3, 9);
    let logit_values = values(b * t * v, 1.5, 21);
    let labels = labels_for(b, t, v);
    for &o in &[OPTIONS[0], OPTIONS[3]] {
        let g = SequenceLogpsConfig::new()
            .with_shift(false)
            .with_temperature(o.temperature)
            .with_logit_scale(o.scale)
            .with_final_logit_softcapping(o.softcap)
            .with_return_entropy(true)
            .init()
            .expect("valid");
        for (name, device) in autodiff_devices() {
            let x = floats(logit_values.clone(), [b, t, v], &device).require_grad();
            let out = g
                .forward(x.clone(), ints(labels.clone(), [b, t], &device), None)
                .expect("valid");
            let entropy = out.entropy.expect("requested").sum();
            let grad = to_vec(x.grad(&entropy.backward()).expect("a gradient"));
            let eval = |values: Vec<f32>| -> f64 {
                let out = g
                    .forward(
                        floats(values, [b, t, v], &device),
                        ints(labels.clone(), [b, t], &device),
                        None,
                    )
                    .expect("valid");
                f64::from(out.entropy.expect("requested").sum().into_scalar::<f32>())
            };
            let step = 1e-2f32;
            for i in (0..b * t * v).step_by(3) {
                let (mut up, mut down) = (logit_values.clone(), logit_values.clone());
                up[i] += step;
                down[i] -= step;
                let numeric = (eval(up) - eval(down)) / (2.0 * f64::from(step));
                let what = format!("d entropy, finite difference {o:?}");
                assert_close(name, &what, &grad[i..=i], &[numeric], 1e-2, 3e-4);
            }
            // The ignored positions (flat index 1 mod 4) have no entropy and no gradient.
            assert!(
                grad[v..2 * v].iter().all(|&g| g == 0.0),
                "[{name}] ignored row"
            );
        }
    }
}

/// One TRL case: its tensors by name, as flat `f32` with their shapes.
struct TrlCase {
    name: String,
    config: serde_json::Value,
    inputs: serde_json::Value,
    outputs: serde_json::Value,
    grads: serde_json::Value,
}

fn trl_cases() -> Vec<TrlCase> {
    let text = include_str!("../fixtures/trl_logprob.json");
    let root: serde_json::Value = serde_json::from_str(text).expect("fixture JSON");
    let cases = root["cases"].as_array().expect("cases").clone();
    cases
        .into_iter()
        .map(|c| TrlCase {
            name: c["name"].as_str().expect("name").to_string(),
            config: c["config"].clone(),
            inputs: c["inputs"].clone(),
            outputs: c["outputs"].clone(),
            grads: c["grads"].clone(),
        })
        .collect()
}

fn tensor_of(value: &serde_json::Value) -> (Vec<usize>, Vec<f64>) {
    let shape = value["shape"].as_array().expect("shape");
    let shape = shape
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let data = value["data"].as_array().expect("data");
    let data = data
        .iter()
        .map(|x| {
            x.as_f64()
                .or_else(|| x.as_bool().map(|b| f64::from(u8::from(b))))
                .expect("a number")
        })
        .collect();
    (shape, data)
}

fn f32s(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&x| x as f32).collect()
}

#[test]
fn matches_trl_chunked_logprob_function() {
    // TRL folds the head in fp32 on CPU; 1e-5 relative plus a small floor for values near 0.
    for case in trl_cases() {
        let c = &case.config;
        let gatherer = SequenceLogpsConfig::new()
            .with_shift(false) // TRL's function takes already-shifted rows
            .with_temperature(c["temperature"].as_f64().expect("temperature"))
            .with_logit_scale(c["logit_scale"].as_f64().expect("logit_scale"))
            .with_final_logit_softcapping(c["final_logit_softcapping"].as_f64())
            .with_chunk_rows(c["chunk_size"].as_u64().expect("chunk") as usize)
            .with_return_token_logps(true)
            .with_return_entropy(true)
            .with_return_log_sum_sq_probs(true)
            .with_return_mean_logits(true)
            .with_return_is_top1(true)
            .init()
            .expect("valid config");
        let (hidden_shape, hidden) = tensor_of(&case.inputs["hidden"]);
        let (_, weight) = tensor_of(&case.inputs["weight"]);
        let (_, targets) = tensor_of(&case.inputs["targets"]);
        let (_, g1) = tensor_of(&case.inputs["g1"]);
        let (_, g2) = tensor_of(&case.inputs["g2"]);
        let bias = case.inputs.get("bias").map(|b| tensor_of(b).1);
        let (n, h) = (hidden_shape[0], hidden_shape[1]);
        let v = weight.len() / h;
        for (device_name, device) in autodiff_devices() {
            for lm_head_path in [true, false] {
                let name = format!("{device_name} {} lm_head {lm_head_path}", case.name);
                let hidden_t = floats(f32s(&hidden), [1, n, h], &device).require_grad();
                let weight_t = floats(f32s(&weight), [v, h], &device).require_grad();
                let bias_t = bias
                    .as_ref()
                    .map(|b| floats(f32s(b), [v], &device).require_grad());
                let labels: Vec<i64> = targets.iter().map(|&y| y as i64).collect();
                let labels = ints(labels, [1, n], &device);
                let out = if lm_head_path {
                    let mut head = LmHead::new(weight_t.clone(), HeadLayout::VocabHidden);
                    if let Some(b) = &bias_t {
                        head = head.with_bias(b.clone());
                    }
                    gatherer.forward_linear(hidden_t.clone(), head, labels, None)
                } else {
                    let mut logits = hidden_t
                        .clone()
                        .matmul(weight_t.clone().transpose().unsqueeze_dim(0));
                    if let Some(b) = &bias_t {
                        logits = logits + b.clone().unsqueeze_dims(&[0, 1]);
                    }
                    gatherer.forward(logits, labels, None)
                }
                .expect("valid inputs");
                let pairs = [
                    ("logprobs", out.token_logps.clone()),
                    ("entropy", out.entropy.clone()),
                    ("log_sum_sq_probs", out.log_sum_sq_probs.clone()),
                    ("mean_logits", out.mean_logits.clone()),
                    ("is_top1", out.is_top1.clone().map(|t| t.float())),
                ];
                for (key, got) in pairs {
                    let got = to_vec(got.expect("requested"));
                    let (_, want) = tensor_of(&case.outputs[key]);
                    assert_close(&name, key, &got, &want, REL, 2e-6);
                }
                let token_logps = out.token_logps.expect("requested");
                let entropy = out.entropy.expect("requested");
                let objective = (token_logps * floats(f32s(&g1), [1, n], &device)).sum()
                    + (entropy * floats(f32s(&g2), [1, n], &device)).sum();
                let grads = objective.backward();
                let dh = to_vec(hidden_t.grad(&grads).expect("d hidden"));
                let dw = to_vec(weight_t.grad(&grads).expect("d weight"));
                assert_close(
                    &name,
                    "d hidden",
                    &dh,
                    &tensor_of(&case.grads["hidden"]).1,
                    REL,
                    2e-6,
                );
                assert_close(
                    &name,
                    "d weight",
                    &dw,
                    &tensor_of(&case.grads["weight"]).1,
                    REL,
                    2e-6,
                );
                if let Some(b) = &bias_t {
                    let db = to_vec(b.grad(&grads).expect("d bias"));
                    assert_close(
                        &name,
                        "d bias",
                        &db,
                        &tensor_of(&case.grads["bias"]).1,
                        REL,
                        2e-6,
                    );
                }
            }
        }
    }
}

#[test]
fn extras_are_zero_and_false_at_invalid_positions() {
    // Including a fully ignored row and the last position under the shift.
    for (name, device) in devices() {
        let (b, t, v) = (2, 4, 6);
        let logits = floats(values(b * t * v, 1.0, 9), [b, t, v], &device);
        let labels = ints(vec![0, 1, -100, 3, -100, -100, -100, -100], [b, t], &device);
        let out = gatherer(OPTIONS[2], true)
            .forward(logits, labels, None)
            .expect("valid");
        let valid = to_vec(out.valid.clone().float());
        assert_eq!(valid, vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0], "[{name}] valid");
        for (key, values) in outputs(&out).into_iter().skip(1) {
            for (i, x) in values.iter().enumerate() {
                if valid[i] == 0.0 {
                    assert_eq!(*x, 0.0, "[{name}] {key}[{i}] at an invalid position");
                }
            }
        }
    }
}
