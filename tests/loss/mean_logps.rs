//! Losses that divide by the lengths themselves (DPO's `ipo` and `sigmoid_norm`, RRHF, CPO,
//! KTO, BCO) refuse log-probs a gatherer already reduced with `Mean` or `LengthPower`: the
//! error names `policy` (0.1 divided the means by the lengths a second time, silently). The
//! same batches gathered with `Sum` work, and the length-normalised DPO losses then give the
//! closed form on the gatherer's own means: one division, not two.

use burn::tensor::Device;
use burn_preference::loss::KtoLossType;
use burn_preference::prelude::*;

use crate::assert_error;
use crate::common::gathered::{Gathered, gather};
use crate::common::reference::softplus;
use crate::common::{assert_close, devices, floats, ints, to_vec};

const MEAN_LIKE: [LogpReduction; 2] = [LogpReduction::Mean, LogpReduction::LengthPower(0.5)];

/// Two pairs (four rows, chosen first), with per-token log-probs for CPO's NLL term.
fn four_rows(reduction: LogpReduction, device: &Device) -> Gathered {
    gather(4, 5, reduction, true, device)
}

fn paired(g: Gathered) -> PairedBatch {
    PairedBatch::from_output(g.policy, BatchLayout::ChosenFirst { pairs: 2 })
        .unwrap()
        .with_reference_output(g.reference)
        .unwrap()
}

/// Two prompts with three scored candidates each (six rows, prompt-major), for RRHF.
fn ranked(reduction: LogpReduction, device: &Device) -> PairedBatch {
    let g = gather(6, 5, reduction, false, device);
    let layout = BatchLayout::PromptMajor {
        prompts: 2,
        candidates: 3,
    };
    PairedBatch::from_output(g.policy, layout)
        .unwrap()
        .with_scores(floats(vec![0.0, 2.0, 1.0, 1.0, 3.0, 0.0], [2, 3], device))
        .unwrap()
}

fn unpaired(g: Gathered, device: &Device) -> UnpairedBatch {
    UnpairedBatch::from_output(g.policy, ints(vec![1, 0, 1, 0], [4], device))
        .unwrap()
        .with_reference_output(g.reference)
        .unwrap()
        .with_kl(
            floats(vec![-3.0, -2.0], [2], device),
            floats(vec![-3.5, -2.5], [2], device),
        )
        .unwrap()
}

/// The refusal every loss gives for log-probs that were not summed.
macro_rules! refuses_policy {
    ($result:expr, $what:expr) => {{
        let err = assert_error!($result, PreferenceError::InvalidValue { arg: "policy", .. });
        assert!(err.to_string().contains("Sum"), "{}: {err}", $what);
    }};
}

#[test]
fn length_normalising_losses_refuse_mean_gathered_logps() {
    for (name, device) in devices() {
        for reduction in MEAN_LIKE {
            let what = format!("[{name}] {reduction:?}");
            for loss_type in [DpoLossType::Ipo, DpoLossType::SigmoidNorm] {
                let loss = DpoConfig::new().with_loss_type(loss_type).init().unwrap();
                refuses_policy!(loss.forward(paired(four_rows(reduction, &device))), what);
            }
            let batch = ranked(reduction, &device);
            refuses_policy!(RrhfConfig::new().init().unwrap().forward(batch), what);
            for loss_type in [
                CpoLossType::Sigmoid,
                CpoLossType::Hinge,
                CpoLossType::Ipo,
                CpoLossType::Simpo,
                CpoLossType::Alphapo,
            ] {
                let loss = CpoConfig::new().with_loss_type(loss_type).init().unwrap();
                let g = four_rows(reduction, &device);
                let batch =
                    PairedBatch::from_output(g.policy, BatchLayout::ChosenFirst { pairs: 2 })
                        .unwrap();
                refuses_policy!(loss.forward(batch), format!("{what} CPO {loss_type}"));
            }
            for loss_type in [KtoLossType::Kto, KtoLossType::ApoZeroUnpaired] {
                let loss = KtoConfig::new().with_loss_type(loss_type).init().unwrap();
                refuses_policy!(
                    loss.forward(unpaired(four_rows(reduction, &device), &device)),
                    what
                );
            }
            let bco = BcoConfig::new().init().unwrap();
            let mut state = BcoState::new();
            refuses_policy!(
                bco.forward_train(unpaired(four_rows(reduction, &device), &device), &mut state),
                what
            );
            assert_eq!(state.count(), 0, "{what}: a refused batch does not move δ");
            let batch = unpaired(four_rows(reduction, &device), &device)
                .with_reward_shift(state.delta(&device))
                .unwrap();
            refuses_policy!(bco.forward(batch), what);
        }
    }
}

#[test]
fn the_same_batches_gathered_with_sum_work() {
    let beta = 0.1;
    for (name, device) in devices() {
        // The gatherer's own token means: what TRL's length-normalised losses compare.
        let means = four_rows(LogpReduction::Mean, &device);
        let (policy, reference) = (
            crate::common::reference::as_f64(&to_vec(means.policy.logps)),
            crate::common::reference::as_f64(&to_vec(means.reference.logps)),
        );
        // Rows 0, 1 chosen; 2, 3 rejected.
        let h: Vec<f64> = (0..2)
            .map(|b| (policy[b] - reference[b]) - (policy[b + 2] - reference[b + 2]))
            .collect();
        let ipo: Vec<f64> = h.iter().map(|h| (h - 0.5 / beta).powi(2)).collect();
        let norm: Vec<f64> = h.iter().map(|h| softplus(-beta * h)).collect();
        for (loss_type, expected) in [(DpoLossType::Ipo, ipo), (DpoLossType::SigmoidNorm, norm)] {
            let loss = DpoConfig::new()
                .with_beta(beta)
                .with_loss_type(loss_type)
                .init()
                .unwrap();
            let out = loss
                .forward(paired(four_rows(LogpReduction::Sum, &device)))
                .unwrap();
            assert_close(
                name,
                &format!("{loss_type} on summed log-probs"),
                &to_vec(out.losses),
                &expected,
                1e-4,
                1e-5,
            );
        }
        let batch = ranked(LogpReduction::Sum, &device);
        let loss = to_vec(
            RrhfConfig::new()
                .init()
                .unwrap()
                .forward(batch)
                .unwrap()
                .loss,
        )[0];
        assert!(loss.is_finite(), "[{name}] RRHF {loss}");
        for loss_type in [CpoLossType::Sigmoid, CpoLossType::Simpo] {
            let g = four_rows(LogpReduction::Sum, &device);
            let batch =
                PairedBatch::from_output(g.policy, BatchLayout::ChosenFirst { pairs: 2 }).unwrap();
            let out = CpoConfig::new()
                .with_loss_type(loss_type)
                .init()
                .unwrap()
                .forward(batch)
                .unwrap();
            assert!(to_vec(out.loss)[0].is_finite(), "[{name}] CPO {loss_type}");
        }
        let kto = KtoConfig::new().init().unwrap();
        let out = kto
            .forward(unpaired(four_rows(LogpReduction::Sum, &device), &device))
            .unwrap();
        assert!(to_vec(out.loss)[0].is_finite(), "[{name}] KTO");
        let bco = BcoConfig::new().init().unwrap();
        let mut state = BcoState::new();
        let out = bco
            .forward_train(
                unpaired(four_rows(LogpReduction::Sum, &device), &device),
                &mut state,
            )
            .unwrap();
        assert!(to_vec(out.loss)[0].is_finite(), "[{name}] BCO");
        assert_eq!(state.count(), 1);
    }
}
