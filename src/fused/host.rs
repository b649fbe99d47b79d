//! Glue between the CPU backends' primitives and the slice kernels of [`super::kernel`].
//!
//! Only `f32` logits take the kernels; anything else (e.g. `f64`), a failed read of the small
//! `[N]` tensors, or a shape that does not match goes to the composed path.

use burn::backend::{
    Backend, DType, TensorData, TensorMetadata, read_sync,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::Shape;

use super::composed::{self, dims2};
use super::{Path, RowStats, Spec, TokenLogpKernels, count, kernel};

/// A CPU backend whose float primitive can lend its storage as an `f32` slice.
pub(crate) trait HostF32: Backend {
    /// Calls `f` with the row-major `f32` contents of `tensor` (zero-copy when contiguous,
    /// copied once otherwise); `None` when the tensor is not `f32`.
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> Option<R>;

    /// Calls `f` with the row-major `f32` contents of `tensor` to overwrite, when nothing else
    /// holds its buffer and it is contiguous; `None` (and `f` not called) otherwise.
    fn with_f32_mut<R>(
        _tensor: &mut FloatTensor<Self>,
        _f: impl FnOnce(&mut [f32]) -> R,
    ) -> Option<R> {
        None
    }
}

/// Every such backend runs the slice kernels.
impl<B: HostF32> TokenLogpKernels for B {
    fn token_logps_forward(
        logits: FloatTensor<B>,
        targets: IntTensor<B>,
        spec: Spec,
    ) -> (FloatTensor<B>, RowStats<B>) {
        forward::<B>(logits, targets, spec)
    }

    fn token_logps_backward(
        logits: FloatTensor<B>,
        targets: IntTensor<B>,
        stats: RowStats<B>,
        grad: FloatTensor<B>,
        spec: Spec,
    ) -> FloatTensor<B> {
        backward::<B>(logits, targets, stats, grad, spec)
    }
}

fn read_i64<B: Backend>(tensor: IntTensor<B>) -> Option<Vec<i64>> {
    let data = read_sync(B::int_into_data(tensor)).ok()?;
    Some(data.iter::<i64>().collect())
}

fn read_f32<B: Backend>(tensor: FloatTensor<B>) -> Option<Vec<f32>> {
    let data = read_sync(B::float_into_data(tensor)).ok()?;
    Some(data.iter::<f32>().collect())
}

/// A `Vec` as a backend primitive; Flex and NdArray adopt the buffer without copying.
fn primitive<B: Backend>(values: Vec<f32>, shape: Shape, device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, shape), device)
}

fn forward<B: HostF32>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    spec: Spec,
) -> (FloatTensor<B>, RowStats<B>) {
    let [n, v] = dims2(&logits.shape());
    let host = match logits.dtype() {
        DType::F32 => read_i64::<B>(targets.clone()).filter(|l| l.len() == n),
        _ => None,
    };
    let Some(host_targets) = host else {
        return composed::forward::<B>(logits, targets, spec);
    };
    let Some(out) = B::with_f32(&logits, |z| kernel::forward(z, v, &host_targets, &spec)) else {
        return composed::forward::<B>(logits, targets, spec);
    };
    count(Path::KernelForward);
    let device = logits.device();
    let k = spec.extras.columns();
    let entropy = spec.extras.column_of().entropy.map(|c| {
        let column: Vec<f32> = out.out.iter().skip(c).step_by(k).copied().collect();
        primitive::<B>(column, Shape::new([n]), &device)
    });
    (
        primitive::<B>(out.out, Shape::new([n, k]), &device),
        RowStats {
            max: primitive::<B>(out.max, Shape::new([n]), &device),
            log_sum: primitive::<B>(out.log_sum, Shape::new([n]), &device),
            entropy,
        },
    )
}

/// The host inputs of the backward: the log-prob gradient column and, when the entropy's
/// gradient is not all zero (it often is: an entropy computed for logging only), its column
/// and the entropy itself.
fn host_rows<B: Backend>(
    n: usize,
    targets: &IntTensor<B>,
    stats: &RowStats<B>,
    grad: &FloatTensor<B>,
    spec: &Spec,
) -> Option<kernel::Rows> {
    let k = spec.extras.columns();
    let targets = read_i64::<B>(targets.clone())?;
    let max = read_f32::<B>(stats.max.clone())?;
    let log_sum = read_f32::<B>(stats.log_sum.clone())?;
    let all = read_f32::<B>(grad.clone())?;
    if all.len() != n * k {
        return None;
    }
    let column = |c: usize| -> Vec<f32> { all.iter().skip(c).step_by(k).copied().collect() };
    let (grad_entropy, entropy) = match (spec.extras.column_of().entropy, &stats.entropy) {
        (Some(c), Some(h)) => {
            let g = column(c);
            if g.iter().all(|&x| x == 0.0) {
                (Vec::new(), Vec::new())
            } else {
                (g, read_f32::<B>(h.clone())?)
            }
        }
        _ => (Vec::new(), Vec::new()),
    };
    let rows = kernel::Rows {
        targets,
        max,
        log_sum,
        grad: column(0),
        grad_entropy,
        entropy,
    };
    rows.has_len(n).then_some(rows)
}

fn backward<B: HostF32>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    stats: RowStats<B>,
    grad: FloatTensor<B>,
    spec: Spec,
) -> FloatTensor<B> {
    let [n, v] = dims2(&logits.shape());
    let host = match logits.dtype() {
        DType::F32 => host_rows::<B>(n, &targets, &stats, &grad, &spec),
        _ => None,
    };
    let Some(rows) = host else {
        return composed::backward::<B>(logits, targets, stats, grad, spec);
    };
    let transform = spec.transform;
    // The logits are usually held by this operation alone by now (the model's output was
    // moved into it): then the gradient overwrites them, with no `[N, V]` allocation at all.
    let mut logits = logits;
    if B::with_f32_mut(&mut logits, |z| {
        kernel::backward_in_place(z, v, &rows, &transform)
    })
    .is_some()
    {
        count(Path::InPlaceBackward);
        return logits;
    }
    let Some(out) = B::with_f32(&logits, |z| kernel::backward(z, v, &rows, &transform)) else {
        return composed::backward::<B>(logits, targets, stats, grad, spec);
    };
    count(Path::CopyingBackward);
    primitive::<B>(out, Shape::new([n, v]), &logits.device())
}
