//! Batches from the gatherer's output over a collated batch: the layout the collator recorded
//! does the reshape.

use burn::tensor::{Distribution, Tensor};
use burn_preference::data::{Collated, RankedExample};
use burn_preference::logps::SequenceLogpsOutput;
use burn_preference::prelude::*;

use crate::common::{devices, to_vec};

/// `PairedBatch::from_output` (then `with_scores`) equals the hand-reshaped batch
/// (prompt-major `[B·K]` → `[B, K]`, counts as lengths), on the padded and the packed layout;
/// RRHF refuses log-probs that were already length-normalised.
#[test]
fn batches_from_the_collated_layout_equal_the_hand_reshaped_ones() {
    let collator = PreferenceCollatorConfig::new().init().expect("config");
    let examples = vec![
        RankedExample {
            prompt: vec![1, 2],
            completions: vec![vec![3, 4], vec![5], vec![6, 7, 8]],
            scores: vec![0.2, 1.0, 0.5],
        },
        RankedExample {
            prompt: vec![9],
            completions: vec![vec![10], vec![11, 12], vec![2]],
            scores: vec![1.0, 1.0, 0.0],
        },
    ];
    let rrhf = RrhfConfig::new().init().expect("config");
    for (name, device) in devices() {
        let table = Tensor::<2>::random([13, 13], Distribution::Normal(0.0, 1.0), &device);
        let logits = |batch: &Collated| {
            let [r, t] = batch.dims();
            table
                .clone()
                .select(0, batch.input_ids(&device).reshape([r * t]))
                .reshape([r, t, 13])
        };
        let padded = collator.pad_ranked(&examples).expect("padded");
        let packed = collator.pack_ranked(&examples, 8).expect("packed");
        let scores = || padded.scores(&device).expect("scores");
        let gatherer = SequenceLogpsConfig::new().init().expect("config");
        let outputs: [SequenceLogpsOutput; 2] = [
            gatherer
                .forward(logits(&padded), padded.labels(&device), None)
                .expect("padded logps"),
            gatherer
                .forward_packed(
                    logits(&packed),
                    packed.labels(&device),
                    packed.segments().expect("segments"),
                )
                .expect("packed logps"),
        ];
        let mut losses = Vec::new();
        for out in outputs {
            let by_hand = PairedBatch::new(out.logps.clone().reshape([2, 3]))
                .and_then(|b| b.with_scores(scores()))
                .and_then(|b| b.with_lengths(out.counts.clone().reshape([2, 3])))
                .expect("hand-built batch");
            let from_output = PairedBatch::from_output(out, padded.layout())
                .and_then(|b| b.with_scores(scores()))
                .expect("from the layout");
            let a = to_vec(rrhf.forward(from_output).expect("rrhf").losses);
            let b = to_vec(rrhf.forward(by_hand).expect("rrhf").losses);
            assert_eq!(a, b, "[{name}] from_output vs by hand");
            losses.push(a);
        }
        assert_eq!(losses[0], losses[1], "[{name}] padded vs packed");

        let means = SequenceLogpsConfig::new()
            .with_reduction(LogpReduction::Mean)
            .init()
            .expect("config")
            .forward(logits(&padded), padded.labels(&device), None)
            .expect("logps");
        let batch = PairedBatch::from_output(means, padded.layout())
            .and_then(|b| b.with_scores(scores()))
            .expect("batch");
        let err = rrhf.forward(batch);
        assert!(
            matches!(
                err,
                Err(PreferenceError::InvalidValue { arg: "policy", .. })
            ),
            "[{name}] {err:?}"
        );
        // Six sequences are not the four of two pairs.
        let pairs = PairedBatch::from_output(
            gatherer
                .forward(logits(&padded), padded.labels(&device), None)
                .expect("logps"),
            BatchLayout::ChosenFirst { pairs: 2 },
        );
        assert!(
            matches!(
                pairs,
                Err(PreferenceError::Shape {
                    arg: "policy.logps",
                    ..
                })
            ),
            "[{name}] {pairs:?}"
        );
    }
}
