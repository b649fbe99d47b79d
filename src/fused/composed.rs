//! The fused op written with ordinary backend ops: the fallback for backends without a
//! hand-written kernel (CubeCL/wgpu) and for non-`f32` logits on the CPU backends.
//!
//! Builds `[N, V]` temporaries (`z − m`, its `exp`), unlike the CPU kernels.

use burn::backend::{
    Backend, TensorMetadata, get_or_init_device_settings,
    tensor::{BoolTensor, FloatTensor, IndexingUpdateOp, IntTensor},
};
use burn::tensor::Shape;

use super::RowStats;

/// `[N, V]` of the logits' shape (`[0, 0]` for a shape that is not rank 2; never produced by
/// this crate's callers).
pub(crate) fn dims2(shape: &Shape) -> [usize; 2] {
    match shape.num_dims() {
        2 => [shape[0], shape[1]],
        _ => [0, 0],
    }
}

/// `(labels with invalid entries set to 0, valid mask)`, both `[N, 1]`.
fn safe_labels<B: Backend>(labels: IntTensor<B>, vocab: usize) -> (IntTensor<B>, BoolTensor<B>) {
    let n = labels.shape().num_elements();
    let bool_dtype = get_or_init_device_settings::<B>(&labels.device()).bool_dtype;
    let non_negative = B::int_greater_equal_elem(labels.clone(), 0i64.into(), bool_dtype);
    let below_vocab = B::int_lower_elem(labels.clone(), (vocab as i64).into(), bool_dtype);
    let valid = B::bool_and(non_negative, below_vocab);
    let safe = B::int_mask_fill(labels, B::bool_not(valid.clone()), 0i64.into());
    (
        B::int_reshape(safe, Shape::new([n, 1])),
        B::bool_reshape(valid, Shape::new([n, 1])),
    )
}

/// Max-shifted log-sum-exp and gather. Stats are computed on every row (invalid ones too), so
/// the backward never sees `inf · 0`.
pub(crate) fn forward<B: Backend>(
    logits: FloatTensor<B>,
    labels: IntTensor<B>,
) -> (FloatTensor<B>, RowStats<B>) {
    let [n, v] = dims2(&logits.shape());
    let max = B::float_max_dim(logits.clone(), 1); // [N, 1]
    let shifted = B::float_exp(B::float_sub(logits.clone(), max.clone()));
    let log_sum = B::float_log(B::float_sum_dim(shifted, 1)); // [N, 1]
    let (safe, valid) = safe_labels::<B>(labels, v);
    let picked = B::float_gather(1, logits, safe); // [N, 1]
    let logp = B::float_sub(B::float_sub(picked, max.clone()), log_sum.clone());
    let logp = B::float_mask_fill(logp, B::bool_not(valid), 0.0f32.into());
    let flat = |t| B::float_reshape(t, Shape::new([n]));
    (
        flat(logp),
        RowStats {
            max: flat(max),
            log_sum: flat(log_sum),
        },
    )
}

/// `−g · e^{z − m − log s}`, then `g` scatter-added at the labels (0 on invalid rows).
pub(crate) fn backward<B: Backend>(
    logits: FloatTensor<B>,
    labels: IntTensor<B>,
    stats: RowStats<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let [n, v] = dims2(&logits.shape());
    let column = |t| B::float_reshape(t, Shape::new([n, 1]));
    let (safe, valid) = safe_labels::<B>(labels, v);
    let g = B::float_mask_fill(column(grad), B::bool_not(valid), 0.0f32.into());
    let shifted = B::float_sub(logits, column(stats.max));
    let softmax = B::float_exp(B::float_sub(shifted, column(stats.log_sum)));
    let d = B::float_mul(softmax, B::float_neg(g.clone()));
    B::float_scatter(1, d, safe, g, IndexingUpdateOp::Add)
}
