//! Gatherer outputs over a few deterministic sequences, for tests that need a batch built the
//! way a trainer builds it (`PairedBatch::from_output`, `UnpairedBatch::from_output`).

use burn::tensor::{Device, Int, Tensor};
use burn_preference::logps::{SequenceLogps, SequenceLogpsOutput};
use burn_preference::prelude::*;

use super::{floats, ints};

/// The vocabulary size of the sequences.
pub const VOCAB: usize = 6;

/// A policy's and a reference's gathered outputs over the same rows, and the rows' labels.
pub struct Gathered {
    pub policy: SequenceLogpsOutput,
    pub reference: SequenceLogpsOutput,
    pub labels: Tensor<2, Int>,
}

/// The labels of `rows` sequences of `time` tokens: the first is a prompt token (−100), odd
/// rows end with a padding position (−100).
pub fn labels(rows: usize, time: usize) -> Vec<i64> {
    (0..rows)
        .flat_map(|r| {
            (0..time).map(move |t| {
                if t == 0 || (r % 2 == 1 && t == time - 1) {
                    -100
                } else {
                    ((r * 7 + t * 3) % VOCAB) as i64
                }
            })
        })
        .collect()
}

/// Deterministic logits `[rows, time, VOCAB]`, different for each `seed`.
pub fn logits(rows: usize, time: usize, seed: f32, device: &Device) -> Tensor<3> {
    let values = (0..rows * time * VOCAB)
        .map(|i| (i as f32 * 0.37 + seed).sin() * 2.0)
        .collect();
    floats(values, [rows, time, VOCAB], device)
}

/// A gatherer with `reduction`; `extras` asks for every per-token tensor (token log-probs,
/// `log Σ p²`, entropy, mean logits, top-1). Its own value checks are off: it reads nothing
/// back, so what a test counts is the batch's and the loss's reads.
pub fn gatherer(reduction: LogpReduction, extras: bool) -> SequenceLogps {
    SequenceLogpsConfig::new()
        .with_reduction(reduction)
        .with_return_token_logps(extras)
        .with_return_log_sum_sq_probs(extras)
        .with_return_entropy(extras)
        .with_return_mean_logits(extras)
        .with_return_is_top1(extras)
        .with_value_checks(false)
        .init()
        .expect("valid gatherer")
}

/// `rows` sequences gathered with `reduction` (see [`gatherer`]).
pub fn gather(
    rows: usize,
    time: usize,
    reduction: LogpReduction,
    extras: bool,
    device: &Device,
) -> Gathered {
    let gatherer = gatherer(reduction, extras);
    let labels = ints(labels(rows, time), [rows, time], device);
    let run = |seed| {
        gatherer
            .forward(logits(rows, time, seed, device), labels.clone(), None)
            .expect("gathered")
    };
    Gathered {
        policy: run(0.0),
        reference: run(1.5),
        labels,
    }
}
