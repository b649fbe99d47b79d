//! Fused LM head + token log-probs: `ℓ_n` of the logits `z = h Wᵀ` without ever storing the
//! `[N, V]` logits, chunk by chunk of rows, with the backward recomputing each chunk (the
//! approach of Liger-Kernel's fused linear losses).
//!
//! ```text
//! forward, per chunk c:   z_c = h_c Wᵀ  [C, V]  →  ℓ_c, row stats (token_logps_forward)
//! backward, per chunk c:  z_c again  →  dz_c = g_c (1[v = y] − softmax z_c)  [C, V]
//!                         dh_c = dz_c W  [C, H],   dW += dz_cᵀ h_c  [V, H]
//! ```
//!
//! At most one `[C, V]` logits chunk and its gradient are alive at a time; the backward costs
//! one extra `h Wᵀ` product for never holding `[N, V]`. Generic over backend ops, so every
//! backend with [`TokenLogpKernels`] runs it, on its own kernels for the `[C, V]` part.

use std::ops::Range;

use burn::backend::{
    Backend, TensorMetadata,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::Slice;

use super::composed::dims2;
use super::{RowStats, TokenLogpKernels};

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

fn labels_of<B: Backend>(labels: &IntTensor<B>, rows: &Range<usize>) -> IntTensor<B> {
    B::int_slice(labels.clone(), &[Slice::from(rows.clone())])
}

/// `(ℓ [N], row stats [N])` of `z = hidden Wᵀ` at `labels`; `hidden [N, H]`, `weight [V, H]`.
pub(crate) fn forward<B: TokenLogpKernels>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    labels: IntTensor<B>,
    chunk_rows: usize,
) -> (FloatTensor<B>, RowStats<B>) {
    let [rows, _] = dims2(&hidden.shape());
    let weight_t = B::float_transpose(weight);
    let (mut logp, mut max, mut log_sum) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in row_chunks(rows, chunk_rows) {
        let logits = B::float_matmul(rows_of::<B>(&hidden, &chunk), weight_t.clone());
        let (lp, stats) = B::token_logps_forward(logits, labels_of::<B>(&labels, &chunk));
        logp.push(lp);
        max.push(stats.max);
        log_sum.push(stats.log_sum);
    }
    (
        B::float_cat(logp, 0),
        RowStats {
            max: B::float_cat(max, 0),
            log_sum: B::float_cat(log_sum, 0),
        },
    )
}

/// What the backward needs besides the upstream gradient.
#[derive(Debug, Clone)]
pub(crate) struct Saved<B: Backend> {
    pub(crate) hidden: FloatTensor<B>,
    pub(crate) weight: FloatTensor<B>,
    pub(crate) labels: IntTensor<B>,
    pub(crate) max: FloatTensor<B>,
    pub(crate) log_sum: FloatTensor<B>,
    pub(crate) chunk_rows: usize,
}

/// Rows of the weight gradient updated per product: `[WEIGHT_BLOCK, H]` is the largest
/// weight-shaped temporary (64 MiB at `H = 2048`), not a second `[V, H]`.
const WEIGHT_BLOCK: usize = 8192;

/// `dW[block] += dz_cᵀ[block] h_c` for every vocabulary block. Slicing a block out of `dW`
/// and writing it back keeps `dW` uniquely owned in between, so CPU backends update it in
/// place.
fn accumulate_weight_grad<B: Backend>(
    weight_grad: FloatTensor<B>,
    dlogits: &FloatTensor<B>,
    hidden: &FloatTensor<B>,
) -> FloatTensor<B> {
    let [_, vocab] = dims2(&dlogits.shape());
    let mut weight_grad = weight_grad;
    for block in row_chunks(vocab, WEIGHT_BLOCK) {
        let columns = [Slice::full(), Slice::from(block.clone())];
        let dz_block = B::float_slice(dlogits.clone(), &columns);
        let part = B::float_matmul(B::float_transpose(dz_block), hidden.clone());
        let updated = B::float_add(rows_of::<B>(&weight_grad, &block), part);
        let rows = [Slice::from(block), Slice::full()];
        weight_grad = B::float_slice_assign(weight_grad, &rows, updated);
    }
    weight_grad
}

/// `(∂/∂hidden [N, H], ∂/∂weight [V, H])` for the upstream gradient `grad [N]`, each computed
/// only when asked for.
pub(crate) fn backward<B: TokenLogpKernels>(
    saved: Saved<B>,
    grad: FloatTensor<B>,
    [want_hidden, want_weight]: [bool; 2],
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let [rows, _] = dims2(&saved.hidden.shape());
    let weight_t = B::float_transpose(saved.weight.clone());
    let mut hidden_grads = Vec::new();
    let mut weight_grad = want_weight.then(|| {
        let weight = &saved.weight;
        B::float_zeros(weight.shape(), &weight.device(), weight.dtype().into())
    });
    for chunk in row_chunks(rows, saved.chunk_rows) {
        let hidden = rows_of::<B>(&saved.hidden, &chunk);
        let logits = B::float_matmul(hidden.clone(), weight_t.clone());
        let stats = RowStats {
            max: rows_of::<B>(&saved.max, &chunk),
            log_sum: rows_of::<B>(&saved.log_sum, &chunk),
        };
        let dlogits = B::token_logps_backward(
            logits,
            labels_of::<B>(&saved.labels, &chunk),
            stats,
            rows_of::<B>(&grad, &chunk),
        );
        if want_hidden {
            hidden_grads.push(B::float_matmul(dlogits.clone(), saved.weight.clone()));
        }
        if let Some(sum) = weight_grad {
            weight_grad = Some(accumulate_weight_grad::<B>(sum, &dlogits, &hidden));
        }
    }
    let hidden_grad = want_hidden.then(|| B::float_cat(hidden_grads, 0));
    (hidden_grad, weight_grad)
}
