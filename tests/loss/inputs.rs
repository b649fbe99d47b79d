//! Typed errors for the inputs of CPO, ORPO, KTO and BCO (builders for shapes and devices,
//! the losses for values), and the NLL term they share.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use burn_preference::loss::{KtoLossType, kl_pairs, token_mean_nll};
use burn_preference::prelude::*;

use crate::assert_error;
use crate::common::trl_fixture::one_token_rows;
use crate::common::{assert_close, devices, floats, ints, to_vec};

#[test]
fn bad_inputs_are_typed_errors() {
    let pairs = |out| PairedBatch::from_output(out, BatchLayout::ChosenFirst { pairs: 1 });
    for (device_name, device) in devices() {
        let cpo = CpoConfig::new().init().unwrap();
        // Without per-token log-probs the NLL term has nothing to read.
        let logits = floats(vec![0.0; 2 * 3 * 4], [2, 3, 4], &device);
        let labels = ints(vec![-100, 1, 2, -100, 3, -100], [2, 3], &device);
        let plain = SequenceLogpsConfig::new()
            .init()
            .unwrap()
            .forward(logits, labels, None)
            .unwrap();
        assert!(
            matches!(
                cpo.forward(pairs(plain).unwrap()),
                Err(PreferenceError::MissingInput { .. })
            ),
            "[{device_name}] missing token_logps"
        );
        // An odd number of rows is no set of pairs: the batch builder says so now.
        let (odd, _) = one_token_rows(&[-1.0, -2.0, -3.0], &device);
        assert_error!(pairs(odd), PreferenceError::Shape { .. });
        let (nan, _) = one_token_rows(&[f32::NAN, -2.0], &device);
        assert!(matches!(
            cpo.forward(pairs(nan).unwrap()),
            Err(PreferenceError::NonFinite { .. })
        ));
        let (mut empty_row, _) = one_token_rows(&[-1.0, -2.0], &device);
        empty_row.counts = floats(vec![1.0, 0.0], [2], &device);
        assert!(matches!(
            cpo.forward(pairs(empty_row).unwrap()),
            Err(PreferenceError::Empty { .. })
        ));

        let orpo = OrpoConfig::new().init().unwrap();
        let (policy, _) = one_token_rows(&[-1.0, -2.0], &device);
        let wrong = ints(vec![1, 1, 1, 1, 1, 1], [2, 3], &device);
        // Completion labels of the wrong width: refused where they join the batch.
        assert_error!(
            pairs(policy.clone()).unwrap().with_completion_labels(wrong),
            PreferenceError::Shape { .. }
        );
        let mut partial = policy.clone();
        partial.valid =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![true, false], [2, 1]), &device);
        let completion = ints(vec![1, 1], [2, 1], &device);
        let batch = pairs(partial)
            .unwrap()
            .with_completion_labels(completion)
            .unwrap();
        assert!(matches!(
            orpo.forward(batch),
            Err(PreferenceError::InvalidValue { .. })
        ));

        // Values of unpaired batches: the loss refuses them (value checks on).
        let kto = KtoConfig::new()
            .with_loss_type(KtoLossType::ApoZeroUnpaired)
            .init()
            .unwrap();
        let (policy, _) = one_token_rows(&[-1.0, -2.0], &device);
        let reference = floats(vec![0.0, 0.0], [2], &device);
        let unpaired = |reference: Tensor<1>, desirable: Vec<i64>| {
            UnpairedBatch::from_output(policy.clone(), ints(desirable, [2], &device))
                .unwrap()
                .with_reference(reference)
                .unwrap()
        };
        assert_error!(
            kto.forward(unpaired(reference.clone(), vec![1, 2])),
            PreferenceError::InvalidValue {
                arg: "desirable",
                ..
            }
        );
        let short = UnpairedBatch::from_output(policy.clone(), ints(vec![1, 0], [2], &device))
            .unwrap()
            .with_reference(floats(vec![0.0], [1], &device));
        assert!(matches!(short, Err(PreferenceError::BatchMismatch { .. })));
        let inf_ref = unpaired(
            floats(vec![0.0, f32::NEG_INFINITY], [2], &device),
            vec![1, 0],
        );
        assert_error!(
            kto.forward(inf_ref),
            PreferenceError::NonFinite {
                arg: "reference",
                ..
            }
        );
        let batch = unpaired(reference, vec![1, 0]);
        let kl = batch.with_kl(
            floats(vec![0.0, 0.0], [2], &device),
            floats(vec![0.0], [1], &device),
        );
        assert!(matches!(kl, Err(PreferenceError::BatchMismatch { .. })));

        let mut state = BcoState::new();
        let none = state.update(Tensor::<1>::zeros([0], &device));
        assert!(matches!(none, Err(PreferenceError::Empty { .. })));
        assert_eq!(state.record().unwrap(), BcoState::new().record().unwrap());
        assert_eq!(state.count(), 0);

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
    let result = UnpairedBatch::from_output(policy, labels)
        .unwrap()
        .with_reference(reference);
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
