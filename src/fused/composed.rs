//! The fused op written with ordinary backend ops: the fallback for logits a device's kernels do
//! not read (`f64`; `f16`/`bf16` on a backend without half storage, or bf16 on a GPU adapter
//! without it).
//!
//! Builds `[N, V]` temporaries (the transformed logits, `z' − m`, its `exp`, and more for the
//! extras), unlike the CPU kernels. Half-precision logits are first cast to an `f32` `[N, V]`
//! copy; the output and row stats are `f32` and the gradient is cast back to the logits' dtype,
//! the same contract as the kernels.

use burn::backend::{
    Backend, DType, TensorMetadata, get_or_init_device_settings,
    tensor::{BoolTensor, FloatTensor, IndexingUpdateOp, IntTensor},
};
use burn::tensor::{FloatDType, Shape, Slice};

use super::{Path, RowStats, Spec, Transform, count};

/// `[N, V]` of the logits' shape (`[0, 0]` for a shape that is not rank 2; never produced by
/// this crate's callers).
pub(crate) fn dims2(shape: &Shape) -> [usize; 2] {
    match shape.num_dims() {
        2 => [shape[0], shape[1]],
        _ => [0, 0],
    }
}

/// `(targets with invalid entries set to 0, valid mask)`, both `[N, 1]`.
fn safe_targets<B: Backend>(targets: IntTensor<B>, vocab: usize) -> (IntTensor<B>, BoolTensor<B>) {
    let n = targets.shape().num_elements();
    let bool_dtype = get_or_init_device_settings::<B>(&targets.device()).bool_dtype;
    let non_negative = B::int_greater_equal_elem(targets.clone(), 0i64.into(), bool_dtype);
    let below_vocab = B::int_lower_elem(targets.clone(), (vocab as i64).into(), bool_dtype);
    let valid = B::bool_and(non_negative, below_vocab);
    let safe = B::int_mask_fill(targets, B::bool_not(valid.clone()), 0i64.into());
    (
        B::int_reshape(safe, Shape::new([n, 1])),
        B::bool_reshape(valid, Shape::new([n, 1])),
    )
}

/// `(z', tanh(scale·z / softcap))`: the transformed logits, and the `tanh` the backward's chain
/// factor needs (`None` without a softcap).
fn transform<B: Backend>(
    logits: FloatTensor<B>,
    t: &Transform,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    if t.is_identity() {
        return (logits, None);
    }
    let scaled = B::float_mul_scalar(logits, t.scale.into());
    let (capped, tanh) = match t.softcap {
        Some(cap) => {
            let tanh = B::float_tanh(B::float_div_scalar(scaled, cap.into()));
            (B::float_mul_scalar(tanh.clone(), cap.into()), Some(tanh))
        }
        None => (scaled, None),
    };
    (B::float_mul_scalar(capped, t.inv_temperature.into()), tanh)
}

/// Half-precision logits as `f32` (the reductions run in `f32`); others as they are.
fn widen<B: Backend>(logits: FloatTensor<B>) -> FloatTensor<B> {
    match logits.dtype() {
        DType::F16 | DType::BF16 => B::float_cast(logits, FloatDType::F32),
        _ => logits,
    }
}

/// `[N, 1]` rows of `[N, V]` that are invalid, as an `[N, V]` mask.
fn rows_mask<B: Backend>(invalid: BoolTensor<B>, dims: [usize; 2]) -> BoolTensor<B> {
    B::bool_expand(invalid, Shape::new(dims))
}

/// Below this, `e^x` is 0 in `f32`; clamping `x` there keeps `0 · x` at 0 where `x = −∞`.
const LOG_FLOOR: f32 = -200.0;

/// Max-shifted log-sum-exp, gather and the requested extras, `[N, K]`. Stats are computed on
/// every row (invalid ones too, then masked), so the backward never sees `inf · 0` on a valid
/// row.
pub(crate) fn forward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    spec: Spec,
) -> (FloatTensor<B>, RowStats<B>) {
    count(Path::ComposedForward);
    let [n, v] = dims2(&logits.shape());
    let device = logits.device();
    let settings = get_or_init_device_settings::<B>(&device);
    let (z, _) = transform::<B>(widen::<B>(logits), &spec.transform);
    let float_dtype = z.dtype().into();
    let max = B::float_max_dim(z.clone(), 1); // [N, 1]
    let shifted = B::float_sub(z.clone(), max.clone());
    let exps = B::float_exp(shifted.clone());
    let sum = B::float_sum_dim(exps.clone(), 1); // [N, 1]
    let log_sum = B::float_log(sum.clone());
    let (safe, valid) = safe_targets::<B>(targets, v);
    let invalid = B::bool_not(valid);
    let picked = B::float_gather(1, z.clone(), safe.clone()); // [N, 1]
    let logp = B::float_sub(B::float_sub(picked.clone(), max.clone()), log_sum.clone());
    let mut columns = vec![logp];
    let extras = spec.extras;
    let mut entropy = None;
    if extras.entropy {
        // H = log s − Σ e^{z'−m} (z' − m) / s
        let floor = B::float_clamp_min(shifted, LOG_FLOOR.into());
        let weighted = B::float_sum_dim(B::float_mul(exps.clone(), floor), 1);
        let h = B::float_sub(log_sum.clone(), B::float_div(weighted, sum.clone()));
        let h = B::float_mask_fill(h, invalid.clone(), 0.0f32.into());
        entropy = Some(B::float_reshape(h.clone(), Shape::new([n])));
        columns.push(h);
    }
    if extras.log_sum_sq {
        let squares = B::float_sum_dim(B::float_mul(exps.clone(), exps), 1);
        let two_log_sum = B::float_mul_scalar(log_sum.clone(), 2.0f32.into());
        columns.push(B::float_sub(B::float_log(squares), two_log_sum));
    }
    if extras.mean {
        columns.push(B::float_div_scalar(
            B::float_sum_dim(z.clone(), 1),
            (v as f32).into(),
        ));
    }
    if extras.top1 {
        // The label is the first argmax: z'_y ≥ max, and every earlier z' is below z'_y.
        let columns_index = B::int_expand(
            B::int_reshape(
                B::int_arange(0..v as i64, &device, settings.int_dtype),
                Shape::new([1, v]),
            ),
            Shape::new([n, v]),
        );
        let label = B::int_expand(safe, Shape::new([n, v]));
        let at_or_after = B::int_greater_equal(columns_index, label, settings.bool_dtype);
        let before = B::float_max_dim(
            B::float_mask_fill(z, at_or_after, f32::NEG_INFINITY.into()),
            1,
        );
        let top = B::bool_and(
            B::float_greater_equal(picked.clone(), max.clone(), settings.bool_dtype),
            B::float_greater(picked, before, settings.bool_dtype),
        );
        columns.push(B::bool_into_float(top, float_dtype));
    }
    let out = if columns.len() == 1 {
        columns.remove(0)
    } else {
        B::float_cat(columns, 1)
    };
    let k = spec.extras.columns();
    let out = B::float_mask_fill(out, rows_mask::<B>(invalid.clone(), [n, k]), 0.0f32.into());
    let zero_invalid = |t| B::float_mask_fill(t, invalid.clone(), 0.0f32.into());
    let flat = |t| B::float_reshape(t, Shape::new([n]));
    (
        out,
        RowStats {
            max: flat(zero_invalid(max)),
            log_sum: flat(zero_invalid(log_sum)),
            entropy,
        },
    )
}

/// `dz' = −g p − g_H p (log p + H)`, `g` scatter-added at the labels, times the transform's
/// derivative; invalid rows set to exactly 0 (their logits may be NaN or all −∞, and
/// `NaN · 0` is NaN).
pub(crate) fn backward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    stats: RowStats<B>,
    grad: FloatTensor<B>,
    spec: Spec,
) -> FloatTensor<B> {
    count(Path::ComposedBackward);
    let [n, v] = dims2(&logits.shape());
    let logits_dtype = logits.dtype();
    let k = spec.extras.columns();
    let column = |t| B::float_reshape(t, Shape::new([n, 1]));
    let grad_column =
        |c: usize| B::float_slice(grad.clone(), &[Slice::full(), Slice::from(c..c + 1)]);
    let grad_logp = if k == 1 {
        column(grad.clone())
    } else {
        grad_column(0)
    };
    // Rows with a negative target are invalid; `y ≥ V` is a valid row whose target column
    // lies outside these logits: no one-hot term.
    let bool_dtype = get_or_init_device_settings::<B>(&targets.device()).bool_dtype;
    let invalid = B::bool_reshape(
        B::int_lower_elem(targets.clone(), 0i64.into(), bool_dtype),
        Shape::new([n, 1]),
    );
    let (safe, in_vocab) = safe_targets::<B>(targets, v);
    let g = B::float_mask_fill(grad_logp, invalid.clone(), 0.0f32.into());
    let g_target = B::float_mask_fill(g.clone(), B::bool_not(in_vocab), 0.0f32.into());
    let (z, tanh) = transform::<B>(widen::<B>(logits), &spec.transform);
    let log_p = B::float_sub(B::float_sub(z, column(stats.max)), column(stats.log_sum));
    let p = B::float_exp(log_p.clone());
    let mut d = B::float_mul(p.clone(), B::float_neg(g.clone()));
    if let (Some(c), Some(h)) = (spec.extras.column_of().entropy, stats.entropy) {
        let g_h = grad_column(c);
        let floor = B::float_clamp_min(log_p, LOG_FLOOR.into());
        let term = B::float_mul(p, B::float_add(floor, column(h)));
        d = B::float_sub(d, B::float_mul(term, g_h));
    }
    let mut d = B::float_scatter(1, d, safe, g_target, IndexingUpdateOp::Add);
    let t = spec.transform;
    if !t.is_identity() {
        d = B::float_mul_scalar(d, (t.scale * t.inv_temperature).into());
        if let Some(tanh) = tanh {
            let one_minus = B::float_add_scalar(
                B::float_neg(B::float_mul(tanh.clone(), tanh)),
                1.0f32.into(),
            );
            d = B::float_mul(d, one_minus);
        }
    }
    let d = B::float_mask_fill(d, rows_mask::<B>(invalid, [n, v]), 0.0f32.into());
    if d.dtype() == logits_dtype {
        d
    } else {
        B::float_cast(d, logits_dtype.into())
    }
}
