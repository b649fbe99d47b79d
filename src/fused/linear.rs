//! Fused LM head + token log-probs: `ℓ_n` of the logits `z = h Wᵀ` without ever storing the
//! `[N, V]` logits, chunk by chunk of rows, with the backward recomputing each chunk (the
//! approach of TRL 1.16's `ChunkedLogProbFunction`; Liger-Kernel's fused linear losses chunk
//! the same way but compute the gradients during the forward and keep them).
//!
//! ```text
//! forward, per row chunk c:   z_c = h_c Wᵀ + b  [C, V]  →  ℓ_c, extras, row stats
//! backward, per tile (t, v):  z = h_t W_vᵀ + b_v  [T, V_b] again  →  dz  (token_logps_backward)
//!                             dh_t += dz W_v,  dW_v (+)= dzᵀ h_t,  db_v (+)= Σ_rows dz
//! ```
//!
//! The backward tiles tokens × vocabulary (up to 4096 rows per token block, as TRL 1.16's
//! does), each tile no larger than a forward chunk (`C × V` elements): with every row in one
//! token block, each block of the weight gradient is written once instead of once per chunk.
//!
//! The head is read in the layout it comes in (`[V, H]`, or burn-nn `Linear`'s `[H, V]`): the
//! products take a transposed *view* where needed, never a transposed copy.
//!
//! At most one `C × V`-element logits chunk or tile and its gradient are alive at a time; the
//! backward costs one extra `h Wᵀ` product for never holding `[N, V]`. Generic over backend
//! ops, so every backend with [`TokenLogpKernels`] runs it, on its own kernels for the logits.

use std::ops::Range;

use burn::backend::{
    Backend, TensorMetadata, get_or_init_device_settings,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{IndexingUpdateOp, Int, Shape, Slice, Tensor, TensorData};

use super::composed::dims2;
use super::{LinearSpec, RowStats, TokenLogpKernels, TokenLogpOps};
use crate::check;
use crate::error;

/// How an LM head's weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HeadLayout {
    /// `[V, H]`: one row per vocabulary entry, as Hugging Face's `lm_head.weight` and TRL's
    /// fused head take it.
    VocabHidden,
    /// `[H, V]`: burn-nn `Linear`'s own `weight` layout (`y = x · W`).
    HiddenVocab,
}

/// Row ranges of at most `chunk_rows` rows covering `0..rows` (one empty range when
/// `rows == 0`, so that the outputs still get built with the right shapes).
fn row_chunks(rows: usize, chunk_rows: usize) -> impl Iterator<Item = Range<usize>> {
    let step = chunk_rows.max(1);
    (0..rows.div_ceil(step).max(1)).map(move |i| i * step..((i + 1) * step).min(rows))
}

fn rows_of<B: Backend>(tensor: &FloatTensor<B>, rows: &Range<usize>) -> FloatTensor<B> {
    let all_columns = (1..tensor.shape().num_dims()).map(|_| Slice::full());
    let slices: Vec<Slice> = std::iter::once(Slice::from(rows.clone()))
        .chain(all_columns)
        .collect();
    B::float_slice(tensor.clone(), &slices)
}

fn columns_of<B: Backend>(tensor: &FloatTensor<B>, columns: &Range<usize>) -> FloatTensor<B> {
    B::float_slice(
        tensor.clone(),
        &[Slice::full(), Slice::from(columns.clone())],
    )
}

fn targets_of<B: Backend>(targets: &IntTensor<B>, rows: &Range<usize>) -> IntTensor<B> {
    B::int_slice(targets.clone(), &[Slice::from(rows.clone())])
}

/// The `[C, V]` logits of the hidden-state rows `hidden [C, H]`: `hidden · head (+ bias)`, with
/// `head` the `[H, V]` view of the weight.
fn chunk_logits<B: Backend>(
    hidden: FloatTensor<B>,
    head: &FloatTensor<B>,
    bias: Option<&FloatTensor<B>>,
) -> FloatTensor<B> {
    let logits = B::float_matmul(hidden, head.clone());
    match bias {
        Some(bias) => {
            let shape = logits.shape();
            let [_, vocab] = dims2(&shape);
            let row = B::float_reshape(bias.clone(), Shape::new([1, vocab]));
            B::float_add(logits, B::float_expand(row, shape))
        }
        None => logits,
    }
}

/// The weight as `[H, V]`: itself, or a transposed view of a `[V, H]` weight.
fn head_view<B: Backend>(weight: &FloatTensor<B>, layout: HeadLayout) -> FloatTensor<B> {
    match layout {
        HeadLayout::VocabHidden => B::float_transpose(weight.clone()),
        HeadLayout::HiddenVocab => weight.clone(),
    }
}

/// `(out [N, K], row stats [N])` of the logits `hidden · head + bias` at `targets`.
pub(crate) fn forward<B: TokenLogpKernels>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    targets: IntTensor<B>,
    head: LinearSpec,
) -> (FloatTensor<B>, RowStats<B>) {
    let [rows, _] = dims2(&hidden.shape());
    let view = head_view::<B>(&weight, head.layout);
    let (mut out, mut max, mut log_sum, mut entropy) = (vec![], vec![], vec![], vec![]);
    for chunk in row_chunks(rows, head.chunk_rows) {
        let logits = chunk_logits::<B>(rows_of::<B>(&hidden, &chunk), &view, bias.as_ref());
        let (o, stats) =
            B::token_logps_forward(logits, targets_of::<B>(&targets, &chunk), head.spec);
        out.push(o);
        max.push(stats.max);
        log_sum.push(stats.log_sum);
        entropy.extend(stats.entropy);
    }
    let has_entropy = !entropy.is_empty();
    (
        B::float_cat(out, 0),
        RowStats {
            max: B::float_cat(max, 0),
            log_sum: B::float_cat(log_sum, 0),
            entropy: has_entropy.then(|| B::float_cat(entropy, 0)),
        },
    )
}

/// What the backward needs besides the upstream gradient.
#[derive(Debug, Clone)]
pub(crate) struct Saved<B: Backend> {
    pub(crate) hidden: FloatTensor<B>,
    pub(crate) weight: FloatTensor<B>,
    pub(crate) bias: Option<FloatTensor<B>>,
    pub(crate) targets: IntTensor<B>,
    pub(crate) stats: RowStats<B>,
    pub(crate) head: LinearSpec,
}

/// Rows per token block of the backward (TRL 1.16's `TOKEN_CHUNK_SIZE`): each block of the
/// weight gradient gets one product per token block, so up to this many rows it is written
/// once.
const TOKEN_BLOCK: usize = 4096;

/// The backward's tiles: `(token block, vocabulary block)` with at most `budget` elements
/// each (`chunk_rows × V`, the forward's chunk), the token block as long as [`TOKEN_BLOCK`]
/// allows and the vocabulary block filling the rest.
fn tile_sizes(rows: usize, vocab: usize, budget: usize) -> (usize, usize) {
    let tokens = rows.clamp(1, TOKEN_BLOCK).min(budget.max(1));
    let columns = (budget / tokens).clamp(1, vocab.max(1));
    (tokens, columns)
}

/// The row-targets of a token block for the vocabulary block `columns`: `y − start` where `y`
/// falls in the block, `columns.len()` (a valid row with no target column here) where it does
/// not, and the invalid rows' negative targets unchanged.
fn tile_targets<B: Backend>(targets: IntTensor<B>, columns: &Range<usize>) -> IntTensor<B> {
    let bool_dtype = get_or_init_device_settings::<B>(&targets.device()).bool_dtype;
    let (start, end) = (columns.start as i64, columns.end as i64);
    let invalid = B::int_lower_elem(targets.clone(), 0i64.into(), bool_dtype);
    let outside = B::bool_or(
        B::int_lower_elem(targets.clone(), start.into(), bool_dtype),
        B::int_greater_equal_elem(targets.clone(), end.into(), bool_dtype),
    );
    let local = B::int_sub_scalar(targets, start.into());
    let local = B::int_mask_fill(local, outside, (end - start).into());
    B::int_mask_fill(local, invalid, super::INVALID.into())
}

/// `tensor[range] = value` along `dim` (0 or 1) when `first`, else `tensor[range] += value`.
/// The slice is taken and written back while `tensor` is uniquely owned, so CPU backends
/// update it in place.
fn write_block<B: Backend>(
    tensor: FloatTensor<B>,
    dim: usize,
    range: &Range<usize>,
    value: FloatTensor<B>,
    first: bool,
) -> FloatTensor<B> {
    let slices: Vec<Slice> = (0..tensor.shape().num_dims())
        .map(|d| {
            if d == dim {
                Slice::from(range.clone())
            } else {
                Slice::full()
            }
        })
        .collect();
    let value = if first {
        value
    } else {
        B::float_add(B::float_slice(tensor.clone(), &slices), value)
    };
    B::float_slice_assign(tensor, &slices, value)
}

fn zeros_like<B: Backend>(tensor: &FloatTensor<B>) -> FloatTensor<B> {
    B::float_zeros(tensor.shape(), &tensor.device(), tensor.dtype().into())
}

/// `[∂/∂hidden [N, H], ∂/∂weight (its layout), ∂/∂bias [V]]` for the upstream gradient
/// `grad [N, K]`, each computed only when asked for.
///
/// Tiled as TRL 1.16's backward is: for each token block `h_t` and vocabulary block `v`, the
/// logits tile `z = h_t W_vᵀ (+ b_v)` is recomputed, turned into `dz` by the kernels (the
/// row stats of the forward make it elementwise), and
/// `dh_t += dz W_v`, `dW_v (+)= dzᵀ h_t`, `db_v (+)= Σ_rows dz`. Each block of the weight
/// gradient is written once per token block, not once per row chunk.
pub(crate) fn backward<B: TokenLogpKernels>(
    saved: Saved<B>,
    grad: FloatTensor<B>,
    [want_hidden, want_weight, want_bias]: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let [rows, _] = dims2(&saved.hidden.shape());
    let layout = saved.head.layout;
    let view = head_view::<B>(&saved.weight, layout); // [H, V]
    let [_, vocab] = dims2(&view.shape());
    let view_t = B::float_transpose(view.clone()); // [V, H], for dh = dz · headᵀ
    let (token_block, vocab_block) =
        tile_sizes(rows, vocab, saved.head.chunk_rows.saturating_mul(vocab));
    let mut hidden_grads = Vec::new();
    let mut weight_grad = want_weight.then(|| zeros_like::<B>(&saved.weight));
    let mut bias_grad = saved
        .bias
        .as_ref()
        .filter(|_| want_bias)
        .map(|b| zeros_like::<B>(b));
    // The weight gradient's vocabulary axis.
    let weight_dim = match layout {
        HeadLayout::VocabHidden => 0,
        HeadLayout::HiddenVocab => 1,
    };
    for (t, tokens) in row_chunks(rows, token_block).enumerate() {
        let hidden = rows_of::<B>(&saved.hidden, &tokens);
        let stats = RowStats {
            max: rows_of::<B>(&saved.stats.max, &tokens),
            log_sum: rows_of::<B>(&saved.stats.log_sum, &tokens),
            entropy: saved
                .stats
                .entropy
                .as_ref()
                .map(|h| rows_of::<B>(h, &tokens)),
        };
        let targets = targets_of::<B>(&saved.targets, &tokens);
        let grad = rows_of::<B>(&grad, &tokens);
        let mut hidden_grad: Option<FloatTensor<B>> = None;
        for columns in row_chunks(vocab, vocab_block) {
            let bias = saved.bias.as_ref().map(|b| rows_of::<B>(b, &columns));
            let logits = chunk_logits::<B>(
                hidden.clone(),
                &columns_of::<B>(&view, &columns),
                bias.as_ref(),
            );
            let dlogits = B::token_logps_backward(
                logits,
                tile_targets::<B>(targets.clone(), &columns),
                stats.clone(),
                grad.clone(),
                saved.head.spec,
            );
            if want_hidden {
                let part = B::float_matmul(dlogits.clone(), rows_of::<B>(&view_t, &columns));
                hidden_grad = Some(match hidden_grad {
                    Some(sum) => B::float_add(sum, part),
                    None => part,
                });
            }
            if let Some(sum) = bias_grad {
                let [_, width] = dims2(&dlogits.shape());
                let part =
                    B::float_reshape(B::float_sum_dim(dlogits.clone(), 0), Shape::new([width]));
                bias_grad = Some(write_block::<B>(sum, 0, &columns, part, t == 0));
            }
            if let Some(sum) = weight_grad {
                let part = match layout {
                    HeadLayout::VocabHidden => {
                        B::float_matmul(B::float_transpose(dlogits), hidden.clone())
                    }
                    HeadLayout::HiddenVocab => {
                        B::float_matmul(B::float_transpose(hidden.clone()), dlogits)
                    }
                };
                weight_grad = Some(write_block::<B>(sum, weight_dim, &columns, part, t == 0));
            }
        }
        hidden_grads.extend(hidden_grad);
    }
    let hidden_grad = want_hidden.then(|| B::float_cat(hidden_grads, 0));
    [hidden_grad, weight_grad, bias_grad]
}

/// Token log-probs and extras `[N, K]` of the logits `hidden [N, H] · head (+ bias [V])` at
/// `targets [N]` (row-targets), never holding more than `chunk_rows × V` logits;
/// differentiable in `hidden`, `weight` and `bias` on autodiff devices. Only for
/// [`supported`](super::supported) devices.
///
/// Only rows with a valid target need their logits: with `select_rows`, prompt and padding
/// rows, often most of a preference batch, are left out of the products (their outputs are 0
/// either way). Choosing them reads the `[N]` targets to the host; without `select_rows`
/// nothing is read back.
///
/// # Errors
/// [`PreferenceError::Read`](crate::PreferenceError::Read) when the targets cannot be read.
pub(crate) fn token_logps(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    targets: Tensor<1, Int>,
    head: LinearSpec,
    select_rows: bool,
) -> error::Result<Tensor<2>> {
    let [rows, _] = hidden.dims();
    let kept: Vec<i64> = if select_rows {
        check::read_ints("labels", targets.clone())?
            .iter()
            .enumerate()
            .filter(|(_, target)| **target >= 0)
            .map(|(row, _)| row as i64)
            .collect()
    } else {
        Vec::new()
    };
    let head = LinearSpec {
        has_bias: bias.is_some(),
        ..head
    };
    let bias = bias.unwrap_or_else(|| Tensor::zeros([1], &hidden.device()));
    let run = |hidden: Tensor<2>, targets: Tensor<1, Int>| {
        let out = <burn::backend::Dispatch as TokenLogpOps>::linear_token_logps(
            hidden.into_dispatch(),
            weight.clone().into_dispatch(),
            bias.clone().into_dispatch(),
            targets.into_dispatch(),
            head,
        );
        Tensor::<2>::from_dispatch(out)
    };
    if kept.is_empty() || kept.len() == rows {
        return Ok(run(hidden, targets));
    }
    let device = hidden.device();
    let count = kept.len();
    let kept = Tensor::<1, Int>::from_data(TensorData::new(kept, [count]), &device);
    let out = run(
        hidden.select(0, kept.clone()),
        targets.select(0, kept.clone()),
    );
    let columns = head.spec.extras.columns();
    Ok(Tensor::<2>::zeros([rows, columns], &device).select_assign(
        0,
        kept,
        out,
        IndexingUpdateOp::Add,
    ))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Flex, TensorData, ops::FloatTensorOps, ops::IntTensorOps, read_sync};

    use super::*;
    use crate::fused::{Extras, Spec, Transform, composed};

    fn floats(values: Vec<f32>, shape: [usize; 2]) -> FloatTensor<Flex> {
        Flex::float_from_data(TensorData::new(values, shape), &Default::default())
    }

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn read(tensor: FloatTensor<Flex>) -> TestResult<Vec<f32>> {
        let data = read_sync(Flex::float_into_data(tensor))?;
        Ok(data.iter::<f32>().collect())
    }

    /// The backward of a block of columns, with the block's targets from `tile_targets`, is
    /// that block of the whole rows' backward, on the CPU kernels and on the composed
    /// fallback: targets inside, before and after the block, an invalid row, the entropy's
    /// gradient and a softcap.
    #[test]
    fn a_column_block_backward_is_that_block_of_the_row_backward() -> TestResult {
        let (n, v) = (4, 23);
        let logits: Vec<f32> = (0..n * v)
            .map(|i| ((i * 37 + 11) % 29) as f32 / 4.0 - 3.5)
            .collect();
        let targets = vec![3i64, 0, super::super::INVALID, 22];
        let spec = Spec {
            transform: Transform {
                scale: 1.1,
                softcap: Some(5.0),
                inv_temperature: 1.25,
            },
            extras: Extras {
                entropy: true,
                ..Extras::default()
            },
        };
        let device = Default::default();
        let ints = |t: Vec<i64>| Flex::int_from_data(TensorData::new(t, [n]), &device);
        let grad = floats(vec![1.0, -0.5, 2.0, 0.75, 0.3, -0.2, 0.1, 0.4], [n, 2]);
        let z = floats(logits.clone(), [n, v]);
        let (_, stats) = Flex::token_logps_forward(z.clone(), ints(targets.clone()), spec);
        type Backward = fn(
            FloatTensor<Flex>,
            IntTensor<Flex>,
            RowStats<Flex>,
            FloatTensor<Flex>,
            Spec,
        ) -> FloatTensor<Flex>;
        let implementations: [(&str, Backward); 2] = [
            ("kernels", Flex::token_logps_backward),
            ("composed", composed::backward::<Flex>),
        ];
        for (name, backward) in implementations {
            let whole = read(backward(
                z.clone(),
                ints(targets.clone()),
                stats.clone(),
                grad.clone(),
                spec,
            ))?;
            assert!(whole.iter().any(|&d| d != 0.0), "{name}");
            for columns in [0..7, 7..16, 16..23] {
                let tile = read(backward(
                    columns_of::<Flex>(&z, &columns),
                    tile_targets::<Flex>(ints(targets.clone()), &columns),
                    stats.clone(),
                    grad.clone(),
                    spec,
                ))?;
                let width = columns.len();
                assert_eq!((whole.len(), tile.len()), (n * v, n * width), "{name}");
                for row in 0..n {
                    let want = &whole[row * v + columns.start..row * v + columns.end];
                    let got = &tile[row * width..(row + 1) * width];
                    for (c, (&g, &w)) in got.iter().zip(want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                            "{name} row {row} column {}: {g} vs {w}",
                            columns.start + c
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn tiles_stay_within_the_forward_chunk() {
        for (rows, vocab, chunk_rows) in
            [(10, 37, 1), (2048, 128_256, 256), (5000, 50, 3), (0, 9, 4)]
        {
            let budget = chunk_rows * vocab;
            let (tokens, columns) = tile_sizes(rows, vocab, budget);
            assert!(
                tokens * columns <= budget.max(1),
                "{rows} {vocab} {chunk_rows}"
            );
            assert!((1..=TOKEN_BLOCK).contains(&tokens) && (1..=vocab).contains(&columns));
        }
        // All rows in one token block when they fit: 2048 × 16032 at the 128k vocabulary.
        assert_eq!(tile_sizes(2048, 128_256, 256 * 128_256), (2048, 16_032));
    }
}
