//! Packed (padding-free) log-probs: `forward_packed` and `forward_linear_packed` equal the
//! padded layout of the same sequences exactly (values and gradients, plain and LM-head paths,
//! every device).

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use burn_preference::data::Segments;
use burn_preference::logps::{LogpReduction, SequenceLogpsConfig, SequenceLogpsOutput};
use proptest::prelude::*;

use crate::common::{self, autodiff_devices, floats, ints, to_vec};

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
                    .forward(padded.clone(), ints(padded_labels.clone(), [s, width], &device), None)
                    .expect("padded");
                prop_assert_eq!(to_vec(a.logps.clone()), to_vec(b.logps.clone()), "[{}] logps", name);
                prop_assert_eq!(to_vec(a.counts.clone()), to_vec(b.counts.clone()), "[{}] counts", name);
                let tokens = |o: &SequenceLogpsOutput| to_vec(o.token_logps.clone().expect("requested"));
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
                None,
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
