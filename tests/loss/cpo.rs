//! CPO, SimPO and AlphaPO against TRL 1.16's `CPOTrainer` (fixtures) and f64 references, on
//! every device.

use burn_preference::prelude::*;

use crate::common::reference::softplus;
use crate::common::trl_fixture::{
    Path, assert_policy_grads, cases, check_metrics, data_f64, gather, int_tensor, one_token_pairs,
    policy_leaves,
};
use crate::common::{assert_close, autodiff_devices, devices, logged, to_vec};

/// Log-prob magnitudes from tiny to huge, where rewards and odds must stay finite or refused.
pub const EXTREMES: [f64; 7] = [-1e-7, -1e-5, -1e-3, -0.5, -30.0, -1e3, -1e4];

#[test]
fn cpo_matches_trl() {
    for case in cases("cpo") {
        let name = case["name"].as_str().unwrap();
        let config = serde_json::from_value::<CpoConfig>(case["config"].clone()).unwrap();
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
                let (hidden, weight) = policy_leaves(inputs, &device);
                let labels = int_tensor::<2>(&inputs["concatenated_labels"], &device);
                let policy = gather(path, hidden.clone(), weight.clone(), labels);
                let pairs = policy.logps.dims()[0] / 2;
                let batch =
                    PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs }).unwrap();
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
                // 0.1 returned the per-pair log-probs; their logged means must equal the
                // means of TRL's per-pair intermediates.
                let inter = &case["intermediates"];
                let metrics = out.metrics.log().unwrap();
                for side in ["chosen", "rejected"] {
                    let trl = crate::common::reference::mean(&data_f64(
                        &inter[format!("{side}_logps").as_str()],
                    ));
                    let got = logged(&metrics, &format!("logps/{side}")).expect("logps");
                    assert_close(
                        device_name,
                        &format!("{what} {side} logps"),
                        &[got as f32],
                        &[trl],
                        1e-5,
                        0.0,
                    );
                }
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
                let leaves = (&hidden, &weight);
                assert_policy_grads(device_name, &what, leaves, &grads, &case, 1e-4);
            }
        }
    }
}

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
                    let (policy, token) = one_token_pairs(&[c as f32, r as f32], &device);
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
        let (policy, _) = one_token_pairs(&[-1e-7, -2e-7], &device);
        let out = loss_fn.forward(policy).unwrap();
        let expected = [0.1 * -(-0.5f64 * -1e-7).exp_m1() / 0.5];
        // One pair: the logged mean is its chosen reward.
        let reward = logged(&out.metrics.log().unwrap(), "rewards/chosen").unwrap();
        assert_close(
            device_name,
            "reward",
            &[reward as f32],
            &expected,
            1e-4,
            0.0,
        );
    }
}
