//! Which candidate beats which: the ordered pairs of a batch of `B` prompts × `K` candidates,
//! from scores (higher is better, equal scores tie) or from the column order (best first).
//!
//! Built on the device from the scores, so ranking a batch never reads it back. Shared by the
//! losses (averaging over pairs) and the metrics (accuracies); it imports neither.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// The ordered pairs of a batch.
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
    /// The ranking of `scores [B, K]`.
    pub(crate) fn new(scores: Tensor<2>) -> Self {
        let [batch, candidates] = scores.dims();
        let device = scores.device();
        let beats = Self::differences(scores.clone()).greater_elem(0.0).float();
        let pairs = beats.clone().sum_dims_squeeze::<1, _>(&[1, 2]);
        let index = Tensor::<1, Int>::arange(0..candidates as i64, &device)
            .reshape([1, candidates])
            .expand([batch, candidates]);
        // Ties: the first of the best, the last of the worst (index K / −1 marks "not one"; the
        // clamps only matter for NaN scores, which the value checks refuse).
        let is_best = scores
            .clone()
            .equal(scores.clone().max_dim(1).expand([batch, candidates]));
        let best = index
            .clone()
            .mask_fill(is_best.bool_not(), candidates as i64)
            .min_dim(1)
            .clamp_max(candidates as i64 - 1)
            .reshape([batch]);
        let is_worst = scores
            .clone()
            .equal(scores.min_dim(1).expand([batch, candidates]));
        let worst = index
            .mask_fill(is_worst.bool_not(), -1)
            .max_dim(1)
            .clamp_min(0)
            .reshape([batch]);
        Self {
            beats,
            pairs,
            best,
            worst,
        }
    }

    /// Columns ranked by position, column 0 best: known on the host from the shape alone, so
    /// it is uploaded as it is rather than computed on the device every step.
    pub(crate) fn by_position(batch: usize, candidates: usize, device: &Device) -> Self {
        let beats: Vec<f32> = (0..batch * candidates * candidates)
            .map(|n| {
                let (i, j) = ((n / candidates) % candidates, n % candidates);
                if i < j { 1.0 } else { 0.0 }
            })
            .collect();
        let pairs = (candidates * (candidates - 1) / 2) as f32;
        Self {
            beats: Tensor::from_data(
                TensorData::new(beats, [batch, candidates, candidates]),
                device,
            ),
            pairs: Tensor::full([batch], pairs, device),
            best: Tensor::zeros([batch], device),
            worst: Tensor::full([batch], candidates as i64 - 1, device),
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

/// The 1-based rank of each candidate by `values [B, K]`, highest first, ties by position.
pub(crate) fn ranks(values: Tensor<2>) -> Tensor<2> {
    let [prompts, candidates] = values.dims();
    let device = values.device();
    // ahead[b, i, j] = 1 when j is ranked ahead of i.
    let differences = Ranking::differences(values);
    let higher = differences.clone().lower_elem(0.0).float();
    let index = Tensor::<1, Int>::arange(0..candidates as i64, &device);
    let earlier = index
        .clone()
        .reshape([1, candidates, 1])
        .greater(index.reshape([1, 1, candidates]))
        .float()
        .expand([prompts, candidates, candidates]);
    let tied_earlier = differences.equal_elem(0.0).float().mul(earlier);
    higher
        .add(tied_earlier)
        .sum_dim(2)
        .reshape([prompts, candidates])
        .add_scalar(1.0)
}
