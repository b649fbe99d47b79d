//! Fused LM head + token log-probs: `ℓ_n` of the logits `z = h Wᵀ` without ever storing the
//! `[N, V]` logits, chunk by chunk of rows, with the backward recomputing each chunk (the
//! approach of TRL 1.16's `ChunkedLogProbFunction`; Liger-Kernel's fused linear losses chunk
//! the same way but compute the gradients during the forward and keep them).
//!
//! ```text
//! forward, per chunk c:   z_c = h_c Wᵀ + b  [C, V]  →  ℓ_c, extras, row stats
//! backward, per chunk c:  z_c again  →  dz_c  [C, V]   (token_logps_backward)
//!                         dh_c = dz_c W  [C, H],   dW += dz_cᵀ h_c  [V, H],   db += Σ_rows dz_c
//! ```
//!
//! The head is read in the layout it comes in (`[V, H]`, or burn-nn `Linear`'s `[H, V]`): the
//! products take a transposed *view* where needed, never a transposed copy.
//!
//! At most one `[C, V]` logits chunk and its gradient are alive at a time; the backward costs
//! one extra `h Wᵀ` product for never holding `[N, V]`. Generic over backend ops, so every
//! backend with [`TokenLogpKernels`] runs it, on its own kernels for the `[C, V]` part.

use std::ops::Range;

use burn::backend::{
    Backend, TensorMetadata,
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

/// Vocabulary entries of the weight gradient updated per product: `[WEIGHT_BLOCK, H]` is the
/// largest weight-shaped temporary (64 MiB at `H = 2048`), not a second `[V, H]`.
const WEIGHT_BLOCK: usize = 8192;

/// `dW[block] += dz_cᵀ[block] h_c` (`[V, H]`) or `dW[:, block] += h_cᵀ dz_c[:, block]`
/// (`[H, V]`) for every vocabulary block. Slicing a block out of `dW` and writing it back keeps
/// `dW` uniquely owned in between, so CPU backends update it in place.
fn accumulate_weight_grad<B: Backend>(
    weight_grad: FloatTensor<B>,
    dlogits: &FloatTensor<B>,
    hidden: &FloatTensor<B>,
    layout: HeadLayout,
) -> FloatTensor<B> {
    let [_, vocab] = dims2(&dlogits.shape());
    let mut weight_grad = weight_grad;
    for block in row_chunks(vocab, WEIGHT_BLOCK) {
        let dz_block = columns_of::<B>(dlogits, &block);
        weight_grad = match layout {
            HeadLayout::VocabHidden => {
                let part = B::float_matmul(B::float_transpose(dz_block), hidden.clone());
                let updated = B::float_add(rows_of::<B>(&weight_grad, &block), part);
                let rows = [Slice::from(block), Slice::full()];
                B::float_slice_assign(weight_grad, &rows, updated)
            }
            HeadLayout::HiddenVocab => {
                let part = B::float_matmul(B::float_transpose(hidden.clone()), dz_block);
                let updated = B::float_add(columns_of::<B>(&weight_grad, &block), part);
                let columns = [Slice::full(), Slice::from(block)];
                B::float_slice_assign(weight_grad, &columns, updated)
            }
        };
    }
    weight_grad
}

fn zeros_like<B: Backend>(tensor: &FloatTensor<B>) -> FloatTensor<B> {
    B::float_zeros(tensor.shape(), &tensor.device(), tensor.dtype().into())
}

/// `[∂/∂hidden [N, H], ∂/∂weight (its layout), ∂/∂bias [V]]` for the upstream gradient
/// `grad [N, K]`, each computed only when asked for.
pub(crate) fn backward<B: TokenLogpKernels>(
    saved: Saved<B>,
    grad: FloatTensor<B>,
    [want_hidden, want_weight, want_bias]: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let [rows, _] = dims2(&saved.hidden.shape());
    let layout = saved.head.layout;
    let view = head_view::<B>(&saved.weight, layout);
    let view_t = B::float_transpose(view.clone()); // [V, H], for dh = dz · headᵀ
    let mut hidden_grads = Vec::new();
    let mut weight_grad = want_weight.then(|| zeros_like::<B>(&saved.weight));
    let mut bias_grad = saved
        .bias
        .as_ref()
        .filter(|_| want_bias)
        .map(|b| zeros_like::<B>(b));
    for chunk in row_chunks(rows, saved.head.chunk_rows) {
        let hidden = rows_of::<B>(&saved.hidden, &chunk);
        let logits = chunk_logits::<B>(hidden.clone(), &view, saved.bias.as_ref());
        let stats = RowStats {
            max: rows_of::<B>(&saved.stats.max, &chunk),
            log_sum: rows_of::<B>(&saved.stats.log_sum, &chunk),
            entropy: saved
                .stats
                .entropy
                .as_ref()
                .map(|h| rows_of::<B>(h, &chunk)),
        };
        let dlogits = B::token_logps_backward(
            logits,
            targets_of::<B>(&saved.targets, &chunk),
            stats,
            rows_of::<B>(&grad, &chunk),
            saved.head.spec,
        );
        if want_hidden {
            hidden_grads.push(B::float_matmul(dlogits.clone(), view_t.clone()));
        }
        if let Some(sum) = bias_grad {
            let [_, vocab] = dims2(&dlogits.shape());
            let part = B::float_reshape(B::float_sum_dim(dlogits.clone(), 0), Shape::new([vocab]));
            bias_grad = Some(B::float_add(sum, part));
        }
        if let Some(sum) = weight_grad {
            weight_grad = Some(accumulate_weight_grad::<B>(sum, &dlogits, &hidden, layout));
        }
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
