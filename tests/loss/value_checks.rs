//! Value checks are a per-config switch: with `with_value_checks(false)` neither the batch
//! builders nor any loss's forward read a tensor back to the host (the calling thread's
//! `host_reads()` does not move); with the default (on) the losses that check values read,
//! and refuse bad values naming the argument. Two configs, one on and one off, used on the
//! same thread, each behave as configured: there is no process-wide switch.

use burn::tensor::{Device, Tensor};
use burn_preference::diagnostics::host_reads;
use burn_preference::loss::{FDivergence, KtoLossType};
use burn_preference::prelude::*;

use crate::assert_error;
use crate::common::gathered::{Gathered, gather};
use crate::common::{devices, floats, ints, pair_columns, to_vec};

/// The host reads `f` makes on this thread, and its result.
fn reads<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = host_reads();
    let out = f();
    (host_reads() - before, out)
}

/// Two pairs (four rows, chosen first) with every per-token tensor.
fn pairs(device: &Device) -> Gathered {
    gather(4, 5, LogpReduction::Sum, true, device)
}

fn paired(g: Gathered) -> burn_preference::Result<PairedBatch> {
    PairedBatch::from_output(g.policy, BatchLayout::ChosenFirst { pairs: 2 })?
        .with_reference_output(g.reference)
}

/// A forward of one loss over a batch it builds itself (inside the measured window).
type Forward = Box<dyn FnOnce() -> burn_preference::Result<LossOutput>>;

/// One forward of each loss, by name; `checks` is every config's `value_checks`.
fn forwards(checks: bool, device: &Device) -> Vec<(&'static str, Forward)> {
    let d = device.clone();
    let dpo = |config: DpoConfig| config.with_value_checks(checks).init().unwrap();
    let mut cases: Vec<(&'static str, Forward)> = Vec::new();
    let soft = |device: &Device| floats(vec![0.9, 0.25], [2], device);
    for (name, config) in [
        ("dpo sigmoid + soft labels", DpoConfig::new()),
        ("dpo ipo", DpoConfig::new().with_loss_type(DpoLossType::Ipo)),
        (
            "dpo sigmoid_norm",
            DpoConfig::new().with_loss_type(DpoLossType::SigmoidNorm),
        ),
        (
            "dpo sigmoid + sft",
            DpoConfig::new()
                .with_loss_types(vec![DpoLossType::Sigmoid, DpoLossType::Sft])
                .with_loss_weights(Some(vec![1.0, 0.5])),
        ),
        (
            "dpo wpo",
            DpoConfig::new()
                .with_use_weighting(true)
                .with_f_divergence_type(FDivergence::JsDivergence),
        ),
        ("dpo ld", DpoConfig::new().with_ld_alpha(Some(0.5))),
        (
            "dpo nca_pair",
            DpoConfig::new().with_loss_type(DpoLossType::NcaPair),
        ),
    ] {
        let loss = dpo(config);
        let device = d.clone();
        let with_soft = name.contains("soft");
        cases.push((
            name,
            Box::new(move || {
                let mut batch = paired(pairs(&device))?;
                if with_soft {
                    batch = batch.with_soft_labels(soft(&device))?;
                }
                loss.forward(batch)
            }),
        ));
    }
    // DPO on a ranked list with scores (K = 3).
    let loss = dpo(DpoConfig::new());
    let device = d.clone();
    cases.push((
        "dpo ranked",
        Box::new(move || {
            let g = gather(6, 5, LogpReduction::Sum, false, &device);
            let layout = BatchLayout::PromptMajor {
                prompts: 2,
                candidates: 3,
            };
            PairedBatch::from_output(g.policy, layout)?
                .with_reference_output(g.reference)?
                .with_scores(floats(vec![0.5, 2.0, 1.0, 3.0, 3.0, 0.0], [2, 3], &device))
                .and_then(|b| loss.forward(b))
        }),
    ));
    for psi in [Psi::Logit, Psi::Identity] {
        let loss = PsiPoConfig::new(psi)
            .with_value_checks(checks)
            .init()
            .unwrap();
        let device = d.clone();
        cases.push((
            match psi {
                Psi::Logit => "psipo logit",
                Psi::Identity => "psipo identity",
            },
            Box::new(move || {
                loss.forward(paired(pairs(&device))?.with_soft_labels(soft(&device))?)
            }),
        ));
    }
    let loss = RrhfConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "rrhf",
        Box::new(move || {
            let g = gather(6, 5, LogpReduction::Sum, false, &device);
            let layout = BatchLayout::PromptMajor {
                prompts: 2,
                candidates: 3,
            };
            let scores = floats(vec![0.5, 2.0, 1.0, 3.0, 3.0, 0.0], [2, 3], &device);
            loss.forward(PairedBatch::from_output(g.policy, layout)?.with_scores(scores)?)
        }),
    ));
    for (name, config) in [
        ("cpo sigmoid", CpoConfig::new()),
        (
            "cpo simpo",
            CpoConfig::new().with_loss_type(CpoLossType::Simpo),
        ),
        (
            "cpo alphapo",
            CpoConfig::new()
                .with_loss_type(CpoLossType::Alphapo)
                .with_alpha(0.25),
        ),
    ] {
        let loss = config.with_value_checks(checks).init().unwrap();
        let device = d.clone();
        cases.push((
            name,
            Box::new(move || {
                let g = pairs(&device);
                loss.forward(PairedBatch::from_output(
                    g.policy,
                    BatchLayout::ChosenFirst { pairs: 2 },
                )?)
            }),
        ));
    }
    let loss = OrpoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "orpo",
        Box::new(move || {
            let g = pairs(&device);
            let batch = PairedBatch::from_output(g.policy, BatchLayout::ChosenFirst { pairs: 2 })?
                .with_completion_labels(g.labels)?;
            loss.forward(batch)
        }),
    ));
    let unpaired = |device: &Device| -> burn_preference::Result<UnpairedBatch> {
        let g = pairs(device);
        let kl = gather(4, 5, LogpReduction::Sum, false, device);
        UnpairedBatch::from_output(g.policy, ints(vec![1, 0, 1, 0], [4], device))?
            .with_reference_output(g.reference)?
            .with_kl(kl.policy.logps, kl.reference.logps)
    };
    for loss_type in [KtoLossType::Kto, KtoLossType::ApoZeroUnpaired] {
        let loss = KtoConfig::new()
            .with_loss_type(loss_type)
            .with_value_checks(checks)
            .init()
            .unwrap();
        let device = d.clone();
        cases.push((
            match loss_type {
                KtoLossType::Kto => "kto",
                KtoLossType::ApoZeroUnpaired => "kto apo_zero_unpaired",
            },
            Box::new(move || loss.forward(unpaired(&device)?)),
        ));
    }
    let bco = BcoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "bco forward_train",
        Box::new(move || {
            let mut state = BcoState::new();
            let first = bco.forward_train(unpaired(&device)?, &mut state)?;
            // A second step moves δ on the device; evaluation reads it there.
            bco.forward_train(unpaired(&device)?, &mut state)?;
            let eval = bco.forward(unpaired(&device)?.with_reward_shift(state.delta(&device))?)?;
            Ok(LossOutput {
                loss: first.loss.add(eval.loss),
                ..first
            })
        }),
    ));
    let bco = BcoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "bco forward",
        Box::new(move || {
            let delta = Tensor::<1>::from_floats([0.3], &device);
            bco.forward(unpaired(&device)?.with_reward_shift(delta)?)
        }),
    ));
    cases.extend(listwise_forwards(checks, &d));
    cases
}

/// A ranked list of two prompts × three candidates with scores (LiPO's grades), gathered.
fn ranked(device: &Device) -> burn_preference::Result<PairedBatch> {
    let g = gather(6, 5, LogpReduction::Sum, false, device);
    let layout = BatchLayout::PromptMajor {
        prompts: 2,
        candidates: 3,
    };
    PairedBatch::from_output(g.policy, layout)?
        .with_reference_output(g.reference)?
        .with_scores(floats(vec![0.5, 2.0, 1.0, 3.0, 3.0, 0.0], [2, 3], device))
}

/// One forward of each of DPOP, R-DPO, ODPO (offsets, and scores on a ranked list),
/// Plackett–Luce, LiPO, SimPER and β-DPO (evaluation, and two training steps), and of a
/// weighted paired and unpaired batch.
fn listwise_forwards(checks: bool, device: &Device) -> Vec<(&'static str, Forward)> {
    let mut cases: Vec<(&'static str, Forward)> = Vec::new();
    let d = device;
    let loss = DpopConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "dpop",
        Box::new(move || loss.forward(paired(pairs(&device))?)),
    ));
    let loss = RdpoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push(("rdpo", Box::new(move || loss.forward(ranked(&device)?))));
    let loss = OdpoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "odpo offsets",
        Box::new(move || {
            let offsets = floats(vec![0.2, -0.1], [2], &device);
            loss.forward(paired(pairs(&device))?.with_offsets(offsets)?)
        }),
    ));
    let device = d.clone();
    cases.push((
        "odpo scores",
        Box::new(move || loss.forward(ranked(&device)?)),
    ));
    let loss = PlackettLuceConfig::new()
        .with_value_checks(checks)
        .init()
        .unwrap();
    let device = d.clone();
    cases.push((
        "plackett-luce",
        Box::new(move || loss.forward(ranked(&device)?)),
    ));
    let loss = LipoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push(("lipo", Box::new(move || loss.forward(ranked(&device)?))));
    let loss = SimperConfig::new()
        .with_value_checks(checks)
        .init()
        .unwrap();
    let device = d.clone();
    cases.push(("simper", Box::new(move || loss.forward(ranked(&device)?))));
    let loss = BetaDpoConfig::new()
        .with_value_checks(checks)
        .init()
        .unwrap();
    let device = d.clone();
    cases.push((
        "beta-dpo forward",
        Box::new(move || loss.forward(paired(pairs(&device))?)),
    ));
    let loss = BetaDpoConfig::new()
        .with_value_checks(checks)
        .init()
        .unwrap();
    let device = d.clone();
    cases.push((
        "beta-dpo forward_train",
        Box::new(move || {
            let mut state = BetaDpoState::new();
            let first = loss.forward_train(paired(pairs(&device))?, &mut state)?;
            // The second step filters with the state's statistics, on the device.
            let second = loss.forward_train(paired(pairs(&device))?, &mut state)?;
            Ok(LossOutput {
                loss: first.loss.add(second.loss),
                ..first
            })
        }),
    ));
    let loss = DpoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "dpo weighted",
        Box::new(move || {
            let weights = floats(vec![0.5, 2.0], [2], &device);
            loss.forward(paired(pairs(&device))?.with_weights(weights)?)
        }),
    ));
    let loss = KtoConfig::new().with_value_checks(checks).init().unwrap();
    let device = d.clone();
    cases.push((
        "kto weighted",
        Box::new(move || {
            let g = pairs(&device);
            let kl = gather(4, 5, LogpReduction::Sum, false, &device);
            let weights = floats(vec![1.0, 0.0, 2.0, 0.5], [4], &device);
            let batch = UnpairedBatch::from_output(g.policy, ints(vec![1, 0, 1, 0], [4], &device))?
                .with_reference_output(g.reference)?
                .with_kl(kl.policy.logps, kl.reference.logps)?
                .with_weights(weights)?;
            loss.forward(batch)
        }),
    ));
    cases
}

#[test]
fn no_host_read_with_value_checks_off_and_reads_with_them_on() {
    for (device_name, device) in devices() {
        for (name, forward) in forwards(false, &device) {
            let (count, out) = reads(forward);
            let out = out.unwrap_or_else(|e| panic!("[{device_name}] {name}: {e}"));
            assert_eq!(
                count, 0,
                "[{device_name}] {name}: host reads with checks off"
            );
            // The output is real: the loss is finite (read here, outside the window).
            let loss = to_vec(out.loss)[0];
            assert!(loss.is_finite(), "[{device_name}] {name}: loss {loss}");
        }
        for (name, forward) in forwards(true, &device) {
            let (count, out) = reads(forward);
            out.unwrap_or_else(|e| panic!("[{device_name}] {name}: {e}"));
            assert!(
                count > 0,
                "[{device_name}] {name}: no host read with checks on"
            );
        }
    }
}

#[test]
fn checks_are_per_config_and_bad_values_name_their_argument() {
    for (device_name, device) in devices() {
        let checked = DpoConfig::new().init().unwrap();
        let unchecked = DpoConfig::new().with_value_checks(false).init().unwrap();
        let ipo = |checks: bool| {
            DpoConfig::new()
                .with_loss_type(DpoLossType::Ipo)
                .with_value_checks(checks)
                .init()
                .unwrap()
        };
        let pair = || {
            PairedBatch::new(pair_columns(
                floats(vec![-1.0], [1], &device),
                floats(vec![-2.0], [1], &device),
            ))
            .unwrap()
            .with_reference(floats(vec![-1.5, -1.5], [1, 2], &device))
            .unwrap()
        };
        let soft = || {
            pair()
                .with_soft_labels(floats(vec![1.5], [1], &device))
                .unwrap()
        };
        let lengths = || {
            pair()
                .with_lengths(floats(vec![-1.0, 3.0], [1, 2], &device))
                .unwrap()
        };
        // Interleaved on one thread: each config does what it says, whatever the other did.
        for _ in 0..2 {
            assert_error!(
                checked.forward(soft()),
                PreferenceError::InvalidValue {
                    arg: "soft_labels",
                    ..
                }
            );
            let (count, out) = reads(|| unchecked.forward(soft()));
            assert_eq!(count, 0, "[{device_name}] soft labels, checks off");
            // q = 1.5 goes through: q·softplus(−βh) + (1 − q)·softplus(βh) at h = 1, β = 0.1.
            let h = 0.1;
            let softplus = crate::common::reference::softplus;
            let expected = 1.5 * softplus(-h) - 0.5 * softplus(h);
            crate::common::assert_close(
                device_name,
                "q = 1.5 unchecked",
                &to_vec(out.unwrap().loss),
                &[expected],
                1e-5,
                1e-7,
            );
            assert_error!(
                ipo(true).forward(lengths()),
                PreferenceError::InvalidValue { arg: "lengths", .. }
            );
            let (count, out) = reads(|| ipo(false).forward(lengths()));
            assert_eq!(count, 0, "[{device_name}] lengths, checks off");
            assert!(out.is_ok(), "[{device_name}] length −1 unchecked: {out:?}");
        }

        // NaN scores, checked by RRHF (and any ranked loss) when on.
        let ranked = || {
            PairedBatch::new(floats(vec![-1.0, -2.0, -3.0], [1, 3], &device))
                .unwrap()
                .with_lengths(floats(vec![1.0, 2.0, 3.0], [1, 3], &device))
                .unwrap()
                .with_scores(floats(vec![1.0, f32::NAN, 0.0], [1, 3], &device))
                .unwrap()
        };
        let rrhf = |checks: bool| RrhfConfig::new().with_value_checks(checks).init().unwrap();
        assert_error!(
            rrhf(true).forward(ranked()),
            PreferenceError::InvalidValue { arg: "scores", .. }
        );
        let (count, out) = reads(|| rrhf(false).forward(ranked()));
        assert_eq!(count, 0, "[{device_name}] NaN scores, checks off");
        assert!(out.is_ok(), "[{device_name}] NaN scores unchecked: {out:?}");

        // A desirable label of 2, checked by KTO when on.
        let unpaired = || {
            UnpairedBatch::new(
                floats(vec![-1.0, -2.0], [2], &device),
                ints(vec![1, 2], [2], &device),
            )
            .unwrap()
            .with_reference(floats(vec![-1.5, -1.5], [2], &device))
            .unwrap()
        };
        let kto = |checks: bool| {
            KtoConfig::new()
                .with_loss_type(KtoLossType::ApoZeroUnpaired)
                .with_value_checks(checks)
                .init()
                .unwrap()
        };
        assert_error!(
            kto(true).forward(unpaired()),
            PreferenceError::InvalidValue {
                arg: "desirable",
                ..
            }
        );
        let (count, out) = reads(|| kto(false).forward(unpaired()));
        assert_eq!(count, 0, "[{device_name}] desirable 2, checks off");
        assert!(
            out.is_ok(),
            "[{device_name}] desirable 2 unchecked: {out:?}"
        );

        // Shapes are checked either way, from metadata.
        assert_error!(
            pair().with_soft_labels(floats(vec![0.5, 0.5], [2], &device)),
            PreferenceError::BatchMismatch { .. }
        );
    }
}
