//! Tensors on two devices: every pair of the compiled-in backends, both ways round, is a typed
//! error; a device with autodiff and the same device without it is one device.

use burn::tensor::{Device, Int, Tensor};
use burn_preference::logps::LogpReduction;
use burn_preference::prelude::*;

use super::bad_input::output;
use crate::common::cases::{Case, case, check_cases, device_pairs, f1, f2};
use crate::common::{assert_close, devices, ints, to_vec};

/// Batch builders given a tensor on `b` for a batch on `a`.
fn device_cases(a: &Device, b: &Device) -> Vec<Case> {
    let vb = |values: &[f32]| f1(values, b);
    let ma = |values: &[f32], dims: [usize; 2]| f2(values, dims, a);
    let mb = |values: &[f32], dims: [usize; 2]| f2(values, dims, b);
    let pair = || PairedBatch::new(ma(&[-1.0, -3.0, -2.0, -4.0], [2, 2]));
    let layout = BatchLayout::ChosenFirst { pairs: 2 };
    vec![
        case(
            "with_reference: elsewhere",
            pair().and_then(|p| p.with_reference(mb(&[-1.0; 4], [2, 2]))),
            "DeviceMismatch",
            "reference",
        ),
        case(
            "with_reference_output: elsewhere",
            PairedBatch::from_output(output(4, LogpReduction::Sum, a), layout)
                .and_then(|p| p.with_reference_output(output(4, LogpReduction::Sum, b))),
            "DeviceMismatch",
            "reference",
        ),
        case(
            "with_soft_labels: elsewhere",
            pair().and_then(|p| p.with_soft_labels(vb(&[0.5, 0.5]))),
            "DeviceMismatch",
            "soft_labels",
        ),
        case(
            "with_lengths: elsewhere",
            pair().and_then(|p| p.with_lengths(mb(&[1.0; 4], [2, 2]))),
            "DeviceMismatch",
            "lengths",
        ),
        case(
            "with_scores: elsewhere",
            pair().and_then(|p| p.with_scores(mb(&[0.0, 1.0, 0.0, 1.0], [2, 2]))),
            "DeviceMismatch",
            "scores",
        ),
        case(
            "unpaired: reference elsewhere",
            UnpairedBatch::from_output(
                output(2, LogpReduction::Sum, a),
                Tensor::<1, Int>::zeros([2], a),
            )
            .and_then(|u| u.with_reference(vb(&[0.0, 0.0]))),
            "DeviceMismatch",
            "reference",
        ),
    ]
}

#[test]
fn tensors_on_two_devices_are_a_typed_error() {
    for (name, a, b) in device_pairs() {
        check_cases(&name, device_cases(&a, &b));
    }
}

#[test]
fn a_device_with_and_without_autodiff_is_one_device() {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    for (name, device) in devices() {
        let tracked = device.clone().autodiff();
        let logits = Tensor::<3>::zeros([2, 3, 4], &tracked).require_grad();
        let labels = ints(vec![-100, 1, 2, -100, 3, 0], [2, 3], &device);
        let out = gatherer
            .forward(logits, labels, None)
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let batch = PairedBatch::from_output(out, BatchLayout::ChosenFirst { pairs: 1 })
            .and_then(|b| b.with_reference(f2(&[-2.0, -2.0], [1, 2], &device)))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let loss = DpoConfig::new()
            .init()
            .and_then(|l| l.forward(batch))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        // Uniform logits over V = 4, two valid tokens per row: both sides log 4^-2, margin 0.
        assert_close(
            name,
            "loss",
            &to_vec(loss.loss),
            &[std::f64::consts::LN_2],
            1e-6,
            0.0,
        );
    }
}
