//! BCO: the running reward shift δ and the loss against f64 references and finite
//! differences, on every device.

use burn_preference::prelude::*;

use super::kto::unpaired;
use crate::common::reference::softplus;
use crate::common::{assert_close, autodiff_devices, logged, to_vec};

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
            let record = state.record().unwrap();
            assert!(
                (record.delta - delta).abs() < 1e-6,
                "[{device_name}] δ {} vs {delta}",
                record.delta
            );
            assert_eq!(state.count(), means.len() as u64);
            assert_eq!(record.count, means.len() as u64);
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
        let before = state.record().unwrap();
        let (batch, _) = unpaired(&[10.0], &[1], &device);
        let batch = batch.with_reward_shift(state.delta(&device)).unwrap();
        let out = loss_fn.forward(batch).unwrap();
        assert_eq!(state.record().unwrap(), before);
        // δ is held in f32 on the device: the logged value is its f32, as the record's.
        assert_eq!(
            logged(&out.metrics.log().unwrap(), "delta"),
            Some(before.delta)
        );
    }
}
