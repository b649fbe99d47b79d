//! Which candidate beats which: the ordered pairs of a batch of `B` prompts × `K` candidates,
//! from scores (higher is better, equal scores tie) or from the column order (best first).
//!
//! Shared by the batch (building it), the losses (averaging over pairs) and the metrics
//! (ranking accuracy); it imports none of them.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::check;
use crate::error::{PreferenceError, Result};

/// The ordered pairs of a batch, built on the host from the scores and moved to the device.
#[derive(Debug, Clone)]
pub(crate) struct Ranking {
    /// `[B, K, K]`: 1 where candidate `i` beats `j` (`r_i > r_j`), else 0.
    pub(crate) beats: Tensor<3>,
    /// `[B]`: the number of ordered pairs of each prompt.
    pub(crate) pairs: Tensor<1>,
    /// `[B]`: the best-scored candidate (the lowest index among equals).
    pub(crate) best: Tensor<1, Int>,
    /// `[B]`: the worst-scored candidate (the highest index among equals).
    pub(crate) worst: Tensor<1, Int>,
}

impl Ranking {
    pub(crate) fn new(scores: &[f32], batch: usize, candidates: usize, device: &Device) -> Self {
        let mut beats = vec![0.0f32; batch * candidates * candidates];
        let mut pairs = vec![0.0f32; batch];
        let (mut best, mut worst) = (vec![0i64; batch], vec![0i64; batch]);
        for (b, row) in scores.chunks(candidates).enumerate() {
            for (i, ri) in row.iter().enumerate() {
                for (j, rj) in row.iter().enumerate() {
                    if ri > rj {
                        beats[(b * candidates + i) * candidates + j] = 1.0;
                        pairs[b] += 1.0;
                    }
                }
                if *ri > row[best[b] as usize] {
                    best[b] = i as i64;
                }
                if *ri <= row[worst[b] as usize] {
                    worst[b] = i as i64;
                }
            }
        }
        Self {
            beats: Tensor::from_data(
                TensorData::new(beats, [batch, candidates, candidates]),
                device,
            ),
            pairs: Tensor::from_data(TensorData::new(pairs, [batch]), device),
            best: Tensor::from_data(TensorData::new(best, [batch]), device),
            worst: Tensor::from_data(TensorData::new(worst, [batch]), device),
        }
    }

    /// The mean of `pair_values [B, K, K]` over each prompt's ordered pairs `[B]` (0 when a
    /// prompt has none: all its candidates tie).
    pub(crate) fn mean_over_pairs(&self, pair_values: Tensor<3>) -> Tensor<1> {
        self.sum_over_pairs(pair_values)
            .div(self.pairs.clone().clamp_min(1.0))
    }

    /// The sum of `pair_values [B, K, K]` over each prompt's ordered pairs `[B]`.
    pub(crate) fn sum_over_pairs(&self, pair_values: Tensor<3>) -> Tensor<1> {
        // mask_where rather than a product: a non-pair entry never leaks a NaN or inf.
        let outside = self.beats.clone().equal_elem(0.0);
        pair_values
            .mask_fill(outside, 0.0)
            .sum_dims_squeeze::<1, _>(&[1, 2])
    }

    /// `x_i − x_j` for the ordered pairs `i ≻ j`, 0 elsewhere: `[B, K]` → `[B, K, K]`.
    ///
    /// The non-pairs are zeroed *before* a per-pair loss sees them: the diagonal `x_i − x_i` is
    /// NaN for an infinite `x_i`, and a NaN there would reach the gradient through the loss's
    /// derivative even when its value is masked out afterwards.
    pub(crate) fn margins(&self, values: Tensor<2>) -> Tensor<3> {
        let outside = self.beats.clone().equal_elem(0.0);
        Self::differences(values).mask_fill(outside, 0.0)
    }

    /// `x_i − x_j` for every `(i, j)`: `[B, K]` → `[B, K, K]`.
    pub(crate) fn differences(values: Tensor<2>) -> Tensor<3> {
        let [batch, candidates] = values.dims();
        let rows = values.clone().reshape([batch, candidates, 1]);
        let cols = values.reshape([batch, 1, candidates]);
        rows.sub(cols)
    }

    /// `values [B, K]` at the best-scored candidate `[B]`.
    pub(crate) fn at_best(&self, values: Tensor<2>) -> Tensor<1> {
        pick(values, self.best.clone())
    }

    /// `values [B, K]` at the worst-scored candidate `[B]`.
    pub(crate) fn at_worst(&self, values: Tensor<2>) -> Tensor<1> {
        pick(values, self.worst.clone())
    }
}

fn pick(values: Tensor<2>, index: Tensor<1, Int>) -> Tensor<1> {
    let [batch] = index.dims();
    values.gather(1, index.reshape([batch, 1])).reshape([batch])
}

/// Validates `scores [B, K]` against `values [B, K]` and reads them to the host.
///
/// `values_arg` names the tensor the scores rank (`policy` in a batch, `values` in a metric).
pub(crate) fn read_scores(
    values_arg: &'static str,
    values_dims: [usize; 2],
    scores: Tensor<2>,
) -> Result<Vec<f32>> {
    let [batch, candidates] = values_dims;
    check::non_empty(values_arg, batch)?;
    if candidates < 2 {
        return Err(PreferenceError::Shape {
            arg: values_arg,
            expected: "[B, K] with K >= 2 candidates".to_string(),
            actual: values_dims.to_vec(),
        });
    }
    check::batch("scores", scores.dims()[0], values_arg, batch)?;
    check::shape(
        "scores",
        scores.dims(),
        [Some(batch), Some(candidates)],
        "[B, K]",
    )?;
    check::finite_values("scores", scores)
}
