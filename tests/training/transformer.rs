//! The `packed_transformer` example's model and training loop (the shared code in
//! examples/common/transformer.rs): a sequence's logits and log-probs are the same padded,
//! packed and alone, and a few training steps of every loss in both layouts lower the loss.

use burn::tensor::{Bool, Device, Tensor};
use burn_preference::data::{Collated, PreferenceExample};
use burn_preference::prelude::*;

use crate::common;
use crate::transformer_example::{
    self as transformer, Inputs, Layout, METHODS, Setup, Size, Transformer, attention_mask,
    collator, make_data, sequence_logps, sft, train,
};

/// Where sequence `s` of a collated batch lies: flat start in `[R·T]` and length.
fn span(batch: &Collated, s: usize) -> (usize, usize) {
    let ids = transformer::sequence_ids(batch);
    let first = ids.iter().position(|&id| id == s as i64).unwrap();
    let len = ids.iter().filter(|&&id| id == s as i64).count();
    (first, len)
}

/// The logits `[L·V]` and summed completion log-prob of `prompt ++ completion` run alone: one
/// row, no padding, burn's own lower-triangular mask.
fn alone(
    model: &Transformer,
    prompt: &[u32],
    completion: &[u32],
    device: &Device,
) -> (Vec<f32>, f32) {
    let example = PreferenceExample {
        prompt: prompt.to_vec(),
        chosen: completion.to_vec(),
        rejected: completion.to_vec(),
    };
    let batch = collator().unwrap().pad(&[example]).unwrap();
    let len = batch.dims()[1];
    let rows = |t: burn::tensor::Tensor<2, burn::tensor::Int>| t.narrow(0, 0, 1);
    let inputs = Inputs {
        input_ids: rows(batch.input_ids(device)),
        position_ids: rows(batch.position_ids(device)),
        labels: rows(batch.labels(device)),
        mask: Tensor::<2, Bool>::tril_mask([len, len], 0, device).unsqueeze_dim(0),
    };
    let logits = model.logits(&inputs);
    let logp = SequenceLogpsConfig::new()
        .init()
        .unwrap()
        .forward(logits.clone(), inputs.labels, None)
        .unwrap()
        .logps;
    (common::to_vec(logits), common::to_vec(logp)[0])
}

#[test]
fn the_mask_is_block_diagonal_causal() {
    // One row: a 2-token sequence, a 2-token sequence, one padding token.
    let mask = attention_mask(&[0, 0, 1, 1, -1], 1, 5);
    let seen: Vec<Vec<usize>> = (0..5)
        .map(|q| (0..5).filter(|&k| !mask[q * 5 + k]).collect())
        .collect();
    assert_eq!(seen, vec![vec![0], vec![0, 1], vec![2], vec![2, 3], vec![]]);
}

#[test]
fn a_sequence_has_the_same_logits_and_logps_padded_packed_and_alone() {
    for (name, device) in common::devices() {
        device.seed(3);
        let model = Transformer::new(Size::TINY, &device);
        let examples = make_data(4, 0, 5).train;
        let collator = collator().unwrap();
        let padded = collator.pad(&examples).unwrap();
        let packed = collator.pack(&examples, 32).unwrap();
        let sequences = 2 * examples.len();
        // The two layouts really differ: the padded batch pads, the packed one shares rows.
        let (real, all) = transformer::token_counts(&padded);
        assert!(real < all, "[{name}] the padded batch has no padding");
        assert!(
            packed.dims()[0] < sequences,
            "[{name}] {} packed rows for {sequences} sequences",
            packed.dims()[0]
        );

        let vocab = transformer::VOCAB;
        let logits = |batch: &Collated| {
            let inputs = Inputs::new(batch, &device);
            common::to_vec(model.logits(&inputs))
        };
        let (padded_logits, packed_logits) = (logits(&padded), logits(&packed));
        let gatherer = SequenceLogpsConfig::new().init().unwrap();
        // forward on the padded logits, forward_linear_packed on the packed hidden states.
        let padded_logps = common::to_vec(
            sequence_logps(&model, &gatherer, &padded, &device)
                .unwrap()
                .logps,
        );
        let packed_logps = common::to_vec(
            sequence_logps(&model, &gatherer, &packed, &device)
                .unwrap()
                .logps,
        );
        for s in 0..sequences {
            let example = &examples[s % examples.len()];
            let completion = if s < examples.len() {
                &example.chosen
            } else {
                &example.rejected
            };
            let (expected, expected_logp) = alone(&model, &example.prompt, completion, &device);
            let expected: Vec<f64> = expected.iter().map(|&v| f64::from(v)).collect();
            for (layout, batch, values) in [
                ("padded", &padded, &padded_logits),
                ("packed", &packed, &packed_logits),
            ] {
                let (first, len) = span(batch, s);
                assert_eq!(
                    len * vocab,
                    expected.len(),
                    "[{name}] {layout} length of {s}"
                );
                common::assert_close(
                    name,
                    &format!("{layout} logits of sequence {s}"),
                    &values[first * vocab..(first + len) * vocab],
                    &expected,
                    1e-5,
                    1e-5,
                );
            }
            for (layout, logps) in [("padded", &padded_logps), ("packed", &packed_logps)] {
                common::assert_close(
                    name,
                    &format!("{layout} log-prob of sequence {s}"),
                    &[logps[s]],
                    &[f64::from(expected_logp)],
                    1e-5,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn a_few_steps_of_every_loss_lower_the_loss_in_both_layouts() {
    // The training set is one batch, so every step sees the same pairs. Two steps each: the
    // loss after one update is below the starting one (wgpu on lavapipe in a debug build takes
    // seconds per step of this model).
    let data = make_data(8, 8, 1);
    let setup = Setup {
        size: Size::TINY,
        sft_steps: 2,
        sft_learning_rate: 1e-2,
        steps: 2,
        learning_rate: 1e-2,
        batch: 8,
        eval_every: 2,
        seed: 2,
    };
    for (name, device) in common::autodiff_devices() {
        let (reference, sft_losses) = sft(&data, &setup, 32, &device, || {}).unwrap();
        assert!(
            sft_losses.iter().all(|l| l.is_finite()),
            "[{name}] SFT {sft_losses:?}"
        );
        assert!(
            sft_losses[1] < sft_losses[0],
            "[{name}] SFT NLL does not decrease: {sft_losses:?}"
        );
        for method in METHODS {
            let mut losses = Vec::new();
            for layout in [Layout::Padded, Layout::Packed { row_len: 32 }] {
                let run = train(method, layout, &reference, &data, &setup, &device, || {}).unwrap();
                let what = format!("[{name}] {} {}", method.name(), layout.name());
                let train_losses = &run.train_losses;
                assert_eq!(train_losses.len(), 2, "{what}");
                assert!(
                    train_losses.iter().all(|l| l.is_finite()),
                    "{what}: {train_losses:?}"
                );
                assert!(
                    train_losses[1] < train_losses[0],
                    "{what}: the loss does not decrease: {train_losses:?}"
                );
                assert!(
                    run.held_out
                        .iter()
                        .all(|p| p.loss.is_finite() && p.margin.is_finite()),
                    "{what}: held-out metrics not finite"
                );
                losses.push(run.train_losses);
            }
            // Same batches, same start: the two layouts train the same model.
            let padded: Vec<f64> = losses[0].iter().map(|&l| f64::from(l)).collect();
            common::assert_close(
                name,
                &format!("{} packed vs padded training losses", method.name()),
                &losses[1],
                &padded,
                1e-4,
                1e-5,
            );
        }
    }
}
