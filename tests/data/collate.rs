//! The collator: TRL's padding, padded and packed batches that unpack to the same (truncated)
//! sequences and give the same loss, and ranked lists in prompt-major order.

use burn::tensor::{Distribution, Tensor};
use burn_preference::data::{Collated, PreferenceExample, RankedExample};
use burn_preference::prelude::*;
use proptest::prelude::*;

use crate::common::{devices, to_vec};

/// TRL 1.16's `DataCollatorForPreference` docstring example, batch for batch; its
/// `completion_mask` is where our labels are not ignored.
#[test]
fn collator_pads_as_trl_does() {
    let collator = PreferenceCollatorConfig::new().init().expect("config");
    let examples = vec![
        PreferenceExample {
            prompt: vec![1, 2, 3],
            chosen: vec![4, 5],
            rejected: vec![6],
        },
        PreferenceExample {
            prompt: vec![7, 8],
            chosen: vec![9],
            rejected: vec![10, 11],
        },
    ];
    let batch = collator.pad(&examples).expect("collated");
    assert_eq!(batch.dims(), [4, 5]);
    assert_eq!(
        batch.host_input_ids(),
        [1, 2, 3, 4, 5, 7, 8, 9, 0, 0, 1, 2, 3, 6, 0, 7, 8, 10, 11, 0]
    );
    assert_eq!(
        batch.host_attention_mask(),
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0]
    );
    let completion_mask: Vec<i64> = batch
        .host_labels()
        .iter()
        .map(|&l| i64::from(l != -100))
        .collect();
    assert_eq!(
        completion_mask,
        vec![0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0]
    );
}

#[derive(Debug, Clone)]
struct CollateCase {
    examples: Vec<PreferenceExample>,
    max_prompt: Option<usize>,
    max_completion: Option<usize>,
}

fn collate_case() -> impl Strategy<Value = CollateCase> {
    let tokens = |min, max| prop::collection::vec(1u32..50, min..=max);
    let example =
        (tokens(0, 5), tokens(1, 5), tokens(1, 5)).prop_map(|(prompt, chosen, rejected)| {
            PreferenceExample {
                prompt,
                chosen,
                rejected,
            }
        });
    (
        prop::collection::vec(example, 1..=4),
        prop::option::of(1..=4usize),
        prop::option::of(1..=4usize),
    )
        .prop_map(|(examples, max_prompt, max_completion)| CollateCase {
            examples,
            max_prompt,
            max_completion,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// What the collator pads or packs unpacks back to the same (truncated) sequences; labels
    /// are ignored exactly on prompt and padding; packed and padded batches give the same DPO
    /// loss through a model whose logits depend on the current token only.
    #[test]
    fn collator_round_trips_and_packing_changes_no_loss(case in collate_case(), extra in 0..4usize) {
        let collator = PreferenceCollatorConfig::new()
            .with_pad_token_id(0)
            .with_max_prompt_length(case.max_prompt)
            .with_max_completion_length(case.max_completion)
            .init()
            .expect("config");
        let truncate = |prompt: &[u32], completion: &[u32]| {
            let p = case.max_prompt.map_or(prompt, |m| &prompt[prompt.len().saturating_sub(m)..]);
            let c = case.max_completion.map_or(completion, |m| &completion[..completion.len().min(m)]);
            (p.to_vec(), c.to_vec())
        };
        let mut expected = Vec::new();
        for side in 0..2 {
            for e in &case.examples {
                let completion = if side == 0 { &e.chosen } else { &e.rejected };
                expected.push(truncate(&e.prompt, completion));
            }
        }
        let padded = collator.pad(&case.examples).expect("padded");
        let longest = expected.iter().map(|(p, c)| p.len() + c.len()).max().expect("sequences");
        let packed = collator.pack(&case.examples, (longest + extra).max(2)).expect("packed");
        for batch in [&padded, &packed] {
            prop_assert_eq!(batch.layout(), BatchLayout::ChosenFirst { pairs: case.examples.len() });
            let sequences = batch.unpack();
            prop_assert_eq!(sequences.len(), expected.len());
            for (got, (p, c)) in sequences.iter().zip(&expected) {
                let want: Vec<i64> = p.iter().chain(c).map(|&t| i64::from(t)).collect();
                prop_assert_eq!(got, &want);
            }
            // Labels: the token id on completions, ignored on prompts and padding.
            let mut completion_tokens = 0;
            for ((&id, &label), &attended) in batch
                .host_input_ids()
                .iter()
                .zip(batch.host_labels())
                .zip(batch.host_attention_mask())
            {
                if label != -100 {
                    prop_assert_eq!(label, id);
                    prop_assert_eq!(attended, 1);
                    completion_tokens += 1;
                }
            }
            prop_assert_eq!(completion_tokens, expected.iter().map(|(_, c)| c.len()).sum::<usize>());
        }
        prop_assert!(packed.dims()[0] <= padded.dims()[0]);

        // A model whose logits at a position are a function of that position's token only.
        let gatherer = SequenceLogpsConfig::new().init().expect("config");
        for (name, device) in devices() {
            let table = Tensor::<2>::random([50, 13], Distribution::Normal(0.0, 1.0), &device);
            let logits = |batch: &Collated| {
                let [r, t] = batch.dims();
                table.clone().select(0, batch.input_ids(&device).reshape([r * t])).reshape([r, t, 13])
            };
            let labels = |batch: &Collated| {
                // Token ids ≥ 13 are outside this toy vocabulary: map labels into it.
                batch.labels(&device).mask_where(
                    batch.labels(&device).greater_equal_elem(0),
                    batch.labels(&device).remainder_scalar(13),
                )
            };
            let a = gatherer.forward(logits(&padded), labels(&padded), None).expect("padded logps").logps;
            let segments = packed.segments().expect("packed segments");
            let b = gatherer.forward_packed(logits(&packed), labels(&packed), segments).expect("packed logps").logps;
            prop_assert_eq!(to_vec(a.clone()), to_vec(b.clone()), "[{}] log-probs", name);
            let pairs = case.examples.len();
            let loss = |logps: Tensor<1>| {
                // Concatenated [2B] log-probs, chosen first → [B, 2].
                let batch = PairedBatch::new(logps.reshape([2, pairs]).transpose()).expect("pairs");
                DpoConfig::new().with_reference_free(true).init().expect("dpo").forward(batch).expect("loss").loss
            };
            prop_assert_eq!(to_vec(loss(a)), to_vec(loss(b)), "[{}] loss", name);
        }
    }
}

/// Ranked lists: prompt-major rows, scores carried along, and the same RRHF-ready `[B, K]`
/// log-probs from the padded and the packed layout.
#[test]
fn ranked_examples_keep_prompt_major_order() {
    let collator = PreferenceCollatorConfig::new().init().expect("config");
    let examples = vec![
        RankedExample {
            prompt: vec![1, 2],
            completions: vec![vec![3], vec![4, 5], vec![6]],
            scores: vec![0.5, 2.0, 1.0],
        },
        RankedExample {
            prompt: vec![7],
            completions: vec![vec![8, 9], vec![10], vec![11, 12, 13]],
            scores: vec![1.0, 1.0, 0.0],
        },
    ];
    let padded = collator.pad_ranked(&examples).expect("padded");
    assert_eq!(
        padded.layout(),
        BatchLayout::PromptMajor {
            prompts: 2,
            candidates: 3
        }
    );
    assert_eq!(padded.unpack()[1], vec![1, 2, 4, 5]);
    assert_eq!(padded.unpack()[5], vec![7, 11, 12, 13]);
    let packed = collator.pack_ranked(&examples, 7).expect("packed");
    assert_eq!(packed.unpack(), padded.unpack());
    for (name, device) in devices() {
        let scores = padded.scores(&device).expect("ranked");
        assert_eq!(
            to_vec(scores),
            vec![0.5, 2.0, 1.0, 1.0, 1.0, 0.0],
            "[{name}]"
        );
    }
}
