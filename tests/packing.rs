//! Packed (padding-free) batches: the packed log-probs equal the padded layout of the same
//! sequences exactly (values and gradients, plain and LM-head paths, every device), the three
//! ways of giving segments agree, and the collator's padded and packed batches round-trip.

mod common;

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use burn_preference::{
    DpoConfig, Layout, LogpReduction, PreferenceBatch, PreferenceCollatorConfig, PreferenceError,
    PreferenceExample, PreferenceLoss, RankedExample, Segments, SequenceLogpsConfig,
};
use common::{autodiff_devices, devices, floats, ints, to_vec};
use proptest::prelude::*;

const VOCAB: usize = 7;

/// Sequences of tokens with their labels (−100 on the prompt), and one logits row per token.
#[derive(Debug, Clone)]
struct PackCase {
    /// `(labels, per-token logits [len · V])` of each sequence.
    sequences: Vec<(Vec<i64>, Vec<f32>)>,
    row_len: usize,
}

/// 1..6 sequences of 1..7 tokens: a prompt of 0..3 tokens, then completion tokens (a sequence
/// of one token has no prediction; one of prompt only has none counted either).
fn pack_case() -> impl Strategy<Value = PackCase> {
    let sequence = (0..=3usize, 0..=4usize).prop_flat_map(|(prompt, completion)| {
        let len = (prompt + completion).max(1);
        (
            Just(prompt),
            prop::collection::vec(0..VOCAB as i64, len),
            prop::collection::vec(-4.0f32..4.0, len * VOCAB),
        )
    });
    (prop::collection::vec(sequence, 1..=6), 0..=3usize).prop_map(|(raw, extra)| {
        let sequences: Vec<(Vec<i64>, Vec<f32>)> = raw
            .into_iter()
            .map(|(prompt, tokens, logits)| {
                let labels = tokens
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| if i < prompt { -100 } else { t })
                    .collect();
                (labels, logits)
            })
            .collect();
        let longest = sequences.iter().map(|(l, _)| l.len()).max().unwrap_or(1);
        PackCase {
            sequences,
            // The causal shift needs T >= 2 in both layouts.
            row_len: (longest + extra).max(2),
        }
    })
}

/// `(logits [R, T, V], labels [R, T], segment ids)` of the packed layout, next-fit.
fn packed_layout(case: &PackCase) -> (Vec<f32>, Vec<i64>, Vec<i64>, usize) {
    let t = case.row_len;
    let mut starts = Vec::new();
    let (mut row, mut used) = (0, 0);
    for (labels, _) in &case.sequences {
        if used + labels.len() > t {
            row += 1;
            used = 0;
        }
        starts.push(row * t + used);
        used += labels.len();
    }
    let rows = row + 1;
    let mut logits = vec![0.0f32; rows * t * VOCAB];
    let mut labels = vec![-100i64; rows * t];
    let mut ids = vec![-1i64; rows * t];
    for (s, ((l, z), &start)) in case.sequences.iter().zip(&starts).enumerate() {
        labels[start..start + l.len()].copy_from_slice(l);
        ids[start..start + l.len()].fill(s as i64);
        logits[start * VOCAB..(start + l.len()) * VOCAB].copy_from_slice(z);
    }
    (logits, labels, ids, rows)
}

/// `(logits [S, L, V], labels [S, L])` of the padded layout, `L` the longest sequence.
fn padded_layout(case: &PackCase) -> (Vec<f32>, Vec<i64>, usize) {
    let width = case
        .sequences
        .iter()
        .map(|(l, _)| l.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let s = case.sequences.len();
    let mut logits = vec![0.0f32; s * width * VOCAB];
    let mut labels = vec![-100i64; s * width];
    for (i, (l, z)) in case.sequences.iter().enumerate() {
        labels[i * width..i * width + l.len()].copy_from_slice(l);
        logits[i * width * VOCAB..(i * width + l.len()) * VOCAB].copy_from_slice(z);
    }
    (logits, labels, width)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Sum and Mean, values, token log-probs and gradients: bit-identical to the padded layout.
    #[test]
    fn packed_log_probs_equal_the_padded_layout(case in pack_case()) {
        let (packed_logits, packed_labels, ids, rows) = packed_layout(&case);
        let (padded_logits, padded_labels, width) = padded_layout(&case);
        let s = case.sequences.len();
        let t = case.row_len;
        let segments = Segments::from_segment_ids(&ids, rows, t).expect("valid segments");
        for reduction in [LogpReduction::Sum, LogpReduction::Mean] {
            let gatherer = SequenceLogpsConfig::new()
                .with_reduction(reduction)
                .with_return_token_logps(true)
                .init()
                .expect("config");
            for (name, device) in autodiff_devices() {
                let packed = floats(packed_logits.clone(), [rows, t, VOCAB], &device).require_grad();
                let padded = floats(padded_logits.clone(), [s, width, VOCAB], &device).require_grad();
                let a = gatherer
                    .forward_packed(packed.clone(), ints(packed_labels.clone(), [rows, t], &device), &segments)
                    .expect("packed");
                let b = gatherer
                    .forward(padded.clone(), ints(padded_labels.clone(), [s, width], &device))
                    .expect("padded");
                prop_assert_eq!(to_vec(a.logps.clone()), to_vec(b.logps.clone()), "[{}] logps", name);
                prop_assert_eq!(to_vec(a.counts.clone()), to_vec(b.counts.clone()), "[{}] counts", name);
                let tokens = |o: &burn_preference::SequenceLogpsOutput| to_vec(o.token_logps.clone().expect("requested"));
                prop_assert_eq!(tokens(&a), tokens(&b), "[{}] token log-probs", name);

                // Weighted so every sequence's gradient differs.
                let weights = floats((1..=s).map(|i| i as f32).collect(), [s], &device);
                let ga = to_vec(packed.grad(&a.logps.mul(weights.clone()).sum().backward()).expect("grad"));
                let gb = to_vec(padded.grad(&b.logps.mul(weights).sum().backward()).expect("grad"));
                for (i, (l, _)) in case.sequences.iter().enumerate() {
                    let start = ids.iter().position(|&x| x == i as i64).expect("segment present");
                    let n = l.len() * VOCAB;
                    prop_assert_eq!(
                        &ga[start * VOCAB..start * VOCAB + n],
                        &gb[i * width * VOCAB..i * width * VOCAB + n],
                        "[{}] gradient of sequence {}", name, i
                    );
                }
                // Padding between and after segments gets no gradient.
                let in_segment: f32 = ids
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| **id < 0)
                    .map(|(p, _)| ga[p * VOCAB..(p + 1) * VOCAB].iter().map(|g| g.abs()).sum::<f32>())
                    .sum();
                prop_assert_eq!(in_segment, 0.0, "[{}] padding gradient", name);
            }
        }
    }
}

/// The LM-head path over packed rows equals it over the padded rows (hidden states of each
/// token identical in both layouts), gradients for hidden states and head included.
#[test]
fn packed_lm_head_equals_the_padded_layout() {
    let (h, v) = (5, 11);
    let lengths = [3usize, 1, 4, 2];
    let row_len = 6;
    // Packed rows: [3, 1, pad 2], [4, 2]. Padded rows: one per sequence, width 4.
    let ids = vec![0, 0, 0, 1, -1, -1, 2, 2, 2, 2, 3, 3];
    let segments = Segments::from_segment_ids(&ids, 2, row_len).expect("segments");
    let token_labels: Vec<Vec<i64>> = vec![
        vec![-100, 3, 9],
        vec![5],
        vec![-100, -100, 1, 10],
        vec![2, 7],
    ];
    let mut packed_labels = vec![-100i64; 2 * row_len];
    let mut padded_labels = vec![-100i64; 4 * 4];
    let mut packed_positions = Vec::new();
    for (s, labels) in token_labels.iter().enumerate() {
        let start = ids.iter().position(|&x| x == s as i64).expect("segment");
        packed_labels[start..start + labels.len()].copy_from_slice(labels);
        padded_labels[s * 4..s * 4 + labels.len()].copy_from_slice(labels);
        packed_positions.push(start);
    }
    for (name, device) in autodiff_devices() {
        let token_hidden = Tensor::<2>::random([10, h], Distribution::Normal(0.0, 1.0), &device);
        let weight_data =
            Tensor::<2>::random([v, h], Distribution::Normal(0.0, 0.5), &device).into_data();
        // Gather each layout's hidden states from the same per-token rows.
        let gather = |index: Vec<i64>, dims: [usize; 3]| {
            let count = index.len();
            let padded = Tensor::cat(
                vec![token_hidden.clone(), Tensor::<2>::zeros([1, h], &device)],
                0,
            );
            padded
                .select(
                    0,
                    Tensor::<1, Int>::from_data(TensorData::new(index, [count]), &device),
                )
                .reshape(dims)
        };
        let mut packed_index = vec![10i64; 2 * row_len];
        let mut padded_index = vec![10i64; 16];
        let mut token = 0;
        for (s, len) in lengths.iter().enumerate() {
            for j in 0..*len {
                packed_index[packed_positions[s] + j] = token;
                padded_index[s * 4 + j] = token;
                token += 1;
            }
        }
        let packed_hidden = gather(packed_index, [2, row_len, h])
            .detach()
            .require_grad();
        let padded_hidden = gather(padded_index, [4, 4, h]).detach().require_grad();
        let weight_a = Tensor::<2>::from_data(weight_data.clone(), &device).require_grad();
        let weight_b = Tensor::<2>::from_data(weight_data, &device).require_grad();
        let gatherer = SequenceLogpsConfig::new()
            .with_chunk_rows(3)
            .init()
            .expect("config");
        let a = gatherer
            .forward_linear_packed(
                packed_hidden.clone(),
                weight_a.clone(),
                ints(packed_labels.clone(), [2, row_len], &device),
                &segments,
            )
            .expect("packed");
        let b = gatherer
            .forward_linear(
                padded_hidden.clone(),
                weight_b.clone(),
                ints(padded_labels.clone(), [4, 4], &device),
            )
            .expect("padded");
        let va = to_vec(a.logps.clone());
        let vb = to_vec(b.logps.clone());
        common::assert_close(
            name,
            "logps",
            &va,
            &vb.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
            1e-6,
            1e-6,
        );
        assert_eq!(
            to_vec(a.counts),
            vec![2.0, 0.0, 2.0, 1.0],
            "[{name}] counts"
        );
        let grads_a = a.logps.sum().backward();
        let grads_b = b.logps.sum().backward();
        let dwa = to_vec(weight_a.grad(&grads_a).expect("weight grad"));
        let dwb: Vec<f64> = to_vec(weight_b.grad(&grads_b).expect("weight grad"))
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        common::assert_close(name, "∂/∂weight", &dwa, &dwb, 1e-5, 1e-6);
        assert!(packed_hidden.grad(&grads_a).is_some() && padded_hidden.grad(&grads_b).is_some());
    }
}

#[test]
fn segments_from_ids_lengths_and_positions_agree() {
    // Row 0: segments 0 (3 tokens) and 1 (2), one pad; row 1: segment 2 (6 tokens).
    let ids = [0, 0, 0, 1, 1, -1, 2, 2, 2, 2, 2, 2];
    let by_ids = Segments::from_segment_ids(&ids, 2, 6).expect("ids");
    let by_cu = Segments::from_cu_seqlens(&[0, 3, 5], 1, 6).expect("cu");
    assert_eq!(by_ids.lengths(), vec![3, 2, 6]);
    assert_eq!(by_cu.lengths(), vec![3, 2]);
    assert_eq!(by_ids.segment_ids(), ids.to_vec());
    assert_eq!(
        by_ids.position_ids(),
        vec![0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 4, 5]
    );
    let by_positions = Segments::from_position_ids(&[0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 4, 5], 2, 6)
        .expect("positions");
    assert_eq!(by_positions.lengths(), vec![3, 2, 1, 6]);
    let cu = Segments::from_cu_seqlens(&[0, 3, 5, 12], 2, 6);
    assert!(
        matches!(
            cu,
            Err(PreferenceError::InvalidValue {
                arg: "cu_seqlens",
                ..
            })
        ),
        "a segment across rows: {cu:?}"
    );
    let split = Segments::from_segment_ids(&[0, 1, 0, -1], 1, 4);
    assert!(
        matches!(
            split,
            Err(PreferenceError::InvalidValue {
                arg: "segment_ids",
                ..
            })
        ),
        "{split:?}"
    );
    let gap = Segments::from_segment_ids(&[0, 0, 2, 2], 1, 4);
    assert!(
        matches!(
            gap,
            Err(PreferenceError::InvalidValue {
                arg: "segment_ids",
                ..
            })
        ),
        "{gap:?}"
    );
    let bad = Segments::from_position_ids(&[1, 2, 3], 1, 3);
    assert!(
        matches!(
            bad,
            Err(PreferenceError::InvalidValue {
                arg: "position_ids",
                ..
            })
        ),
        "{bad:?}"
    );
    let short = Segments::from_segment_ids(&[0, 0], 1, 4);
    assert!(
        matches!(
            short,
            Err(PreferenceError::Shape {
                arg: "segment_ids",
                ..
            })
        ),
        "{short:?}"
    );
    let empty = Segments::from_cu_seqlens(&[0, 2, 2], 1, 4);
    assert!(
        matches!(
            empty,
            Err(PreferenceError::InvalidValue {
                arg: "cu_seqlens",
                ..
            })
        ),
        "{empty:?}"
    );

    let gatherer = SequenceLogpsConfig::new().init().expect("config");
    for (name, device) in devices() {
        let wrong = gatherer.forward_packed(
            Tensor::<3>::zeros([1, 5, 3], &device),
            Tensor::<2, Int>::zeros([1, 5], &device),
            &by_ids,
        );
        assert!(
            matches!(wrong, Err(PreferenceError::Shape { arg: "logits", .. })),
            "[{name}] {wrong:?}"
        );
    }
}

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
    assert_eq!(batch.dims, [4, 5]);
    assert_eq!(
        batch.input_ids,
        vec![1, 2, 3, 4, 5, 7, 8, 9, 0, 0, 1, 2, 3, 6, 0, 7, 8, 10, 11, 0]
    );
    assert_eq!(
        batch.attention_mask,
        vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0]
    );
    let completion_mask: Vec<i64> = batch.labels.iter().map(|&l| i64::from(l != -100)).collect();
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
            prop_assert_eq!(batch.layout, Layout::ChosenFirst { pairs: case.examples.len() });
            let sequences = batch.unpack();
            prop_assert_eq!(sequences.len(), expected.len());
            for (got, (p, c)) in sequences.iter().zip(&expected) {
                let want: Vec<i64> = p.iter().chain(c).map(|&t| i64::from(t)).collect();
                prop_assert_eq!(got, &want);
            }
            // Labels: the token id on completions, ignored on prompts and padding.
            let mut completion_tokens = 0;
            for ((&id, &label), &attended) in batch.input_ids.iter().zip(&batch.labels).zip(&batch.attention_mask) {
                if label != -100 {
                    prop_assert_eq!(label, id);
                    prop_assert_eq!(attended, 1);
                    completion_tokens += 1;
                }
            }
            prop_assert_eq!(completion_tokens, expected.iter().map(|(_, c)| c.len()).sum::<usize>());
        }
        prop_assert!(packed.dims[0] <= padded.dims[0]);

        // A model whose logits at a position are a function of that position's token only.
        let gatherer = SequenceLogpsConfig::new().init().expect("config");
        for (name, device) in devices() {
            let table = Tensor::<2>::random([50, 13], Distribution::Normal(0.0, 1.0), &device);
            let logits = |batch: &burn_preference::Collated| {
                let [r, t] = batch.dims;
                table.clone().select(0, batch.input_ids(&device).reshape([r * t])).reshape([r, t, 13])
            };
            let labels = |batch: &burn_preference::Collated| {
                // Token ids ≥ 13 are outside this toy vocabulary: map labels into it.
                batch.labels(&device).mask_where(
                    batch.labels(&device).greater_equal_elem(0),
                    batch.labels(&device).remainder_scalar(13),
                )
            };
            let a = gatherer.forward(logits(&padded), labels(&padded)).expect("padded logps").logps;
            let segments = packed.segments.as_ref().expect("packed segments");
            let b = gatherer.forward_packed(logits(&packed), labels(&packed), segments).expect("packed logps").logps;
            prop_assert_eq!(to_vec(a.clone()), to_vec(b.clone()), "[{}] log-probs", name);
            let loss = |logps| {
                let batch = PreferenceBatch::concatenated(logps).expect("pairs");
                DpoConfig::new().with_reference_free(true).init().expect("dpo").forward(batch).expect("loss").loss
            };
            prop_assert_eq!(to_vec(loss(a)), to_vec(loss(b)), "[{}] loss", name);
        }
    }
}

#[test]
fn collator_rejects_what_it_cannot_score() {
    let collator = PreferenceCollatorConfig::new().init().expect("config");
    let empty_chosen = vec![PreferenceExample {
        prompt: vec![1],
        chosen: vec![],
        rejected: vec![2],
    }];
    let err = collator.pad(&empty_chosen);
    assert!(
        matches!(err, Err(PreferenceError::Empty { arg: "chosen", .. })),
        "{err:?}"
    );
    let err = collator.pad(&[]);
    assert!(
        matches!(
            err,
            Err(PreferenceError::Empty {
                arg: "examples",
                ..
            })
        ),
        "{err:?}"
    );
    let long = vec![PreferenceExample {
        prompt: vec![1, 2, 3],
        chosen: vec![4, 5],
        rejected: vec![6],
    }];
    let err = collator.pack(&long, 4);
    assert!(
        matches!(
            err,
            Err(PreferenceError::OutOfRange {
                name: "row_len",
                ..
            })
        ),
        "{err:?}"
    );
    let err = PreferenceCollatorConfig::new()
        .with_max_prompt_length(Some(0))
        .init();
    assert!(
        matches!(
            err,
            Err(PreferenceError::OutOfRange {
                name: "max_prompt_length",
                ..
            })
        ),
        "{err:?}"
    );
    let err = PreferenceCollatorConfig::new().with_ignore_index(3).init();
    assert!(
        matches!(
            err,
            Err(PreferenceError::OutOfRange {
                name: "ignore_index",
                ..
            })
        ),
        "{err:?}"
    );
    let ragged = vec![
        RankedExample {
            prompt: vec![1],
            completions: vec![vec![2], vec![3]],
            scores: vec![1.0, 0.0],
        },
        RankedExample {
            prompt: vec![1],
            completions: vec![vec![2], vec![3], vec![4]],
            scores: vec![1.0, 0.0, 2.0],
        },
    ];
    let err = collator.pad_ranked(&ragged);
    assert!(
        matches!(
            err,
            Err(PreferenceError::Shape {
                arg: "examples",
                ..
            })
        ),
        "{err:?}"
    );
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
        padded.layout,
        Layout::PromptMajor {
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

/// `PreferenceBatch::from_layout` equals the hand-reshaped batch (prompt-major `[B·K]` →
/// `[B, K]`, counts as lengths), on the padded and the packed layout; RRHF refuses log-probs
/// that were already length-normalised.
#[test]
fn batches_from_the_collated_layout_equal_the_hand_reshaped_ones() {
    use burn_preference::{RrhfConfig, SequenceLogpsOutput};
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
        let logits = |batch: &burn_preference::Collated| {
            let [r, t] = batch.dims;
            table
                .clone()
                .select(0, batch.input_ids(&device).reshape([r * t]))
                .reshape([r, t, 13])
        };
        let padded = collator.pad_ranked(&examples).expect("padded");
        let packed = collator.pack_ranked(&examples, 8).expect("packed");
        let gatherer = SequenceLogpsConfig::new().init().expect("config");
        let outputs: [SequenceLogpsOutput; 2] = [
            gatherer
                .forward(logits(&padded), padded.labels(&device))
                .expect("padded logps"),
            gatherer
                .forward_packed(
                    logits(&packed),
                    packed.labels(&device),
                    packed.segments.as_ref().expect("segments"),
                )
                .expect("packed logps"),
        ];
        let mut losses = Vec::new();
        for out in outputs {
            let by_hand = PreferenceBatch::ranked(
                out.logps.clone().reshape([2, 3]),
                padded.scores(&device).expect("scores"),
            )
            .and_then(|b| b.with_lengths(out.counts.clone().reshape([2, 3])))
            .expect("hand-built batch");
            let from_layout =
                PreferenceBatch::from_layout(out, padded.layout, padded.scores(&device))
                    .expect("from layout");
            let a = to_vec(rrhf.forward(from_layout).expect("rrhf").losses);
            let b = to_vec(rrhf.forward(by_hand).expect("rrhf").losses);
            assert_eq!(a, b, "[{name}] from_layout vs by hand");
            losses.push(a);
        }
        assert_eq!(losses[0], losses[1], "[{name}] padded vs packed");

        let means = SequenceLogpsConfig::new()
            .with_reduction(LogpReduction::Mean)
            .init()
            .expect("config")
            .forward(logits(&padded), padded.labels(&device))
            .expect("logps");
        let batch = PreferenceBatch::from_layout(means, padded.layout, padded.scores(&device))
            .expect("batch");
        let err = rrhf.forward(batch);
        assert!(
            matches!(
                err,
                Err(PreferenceError::InvalidValue { arg: "policy", .. })
            ),
            "[{name}] {err:?}"
        );
        let pairs = PreferenceBatch::from_layout(
            gatherer
                .forward(logits(&padded), padded.labels(&device))
                .expect("logps"),
            Layout::ChosenFirst { pairs: 2 },
            None,
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
