//! Glue between the CPU backends' primitives and the slice kernels of [`super`].
//!
//! `f32`, `f16` and `bf16` logits take the kernels where the backend lends their storage
//! ([`HostSlices`]); anything else (e.g. `f64`, or half logits on a backend without half
//! storage), a failed read of the small `[N]` tensors, or a shape that does not match goes to
//! the composed path.
//!
//! The contract for every logits dtype: the output `[N, K]` and the [`RowStats`] are `f32`,
//! the backward's `dz [N, V]` has the logits' dtype.

use burn::backend::{
    Backend, DType, TensorData, TensorMetadata, read_sync,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Element, Shape, bf16, f16};

use super::element::Elem;
use super::isa::cpu_kernel_isa;
use super::rows::Rows;
use super::threads;
use crate::fused::composed::{self, dims2};
use crate::fused::{Path, RowStats, Spec, TokenLogpKernels, count};

/// A CPU backend whose float primitive can lend its storage as a slice, per element type.
/// The half-precision methods default to `None` (no such storage: the composed path).
pub(crate) trait HostSlices: Backend {
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

    /// [`with_f32`](Self::with_f32) for `f16` storage.
    fn with_f16<R>(_tensor: &FloatTensor<Self>, _f: impl FnOnce(&[f16]) -> R) -> Option<R> {
        None
    }

    /// [`with_f32_mut`](Self::with_f32_mut) for `f16` storage.
    fn with_f16_mut<R>(
        _tensor: &mut FloatTensor<Self>,
        _f: impl FnOnce(&mut [f16]) -> R,
    ) -> Option<R> {
        None
    }

    /// [`with_f32`](Self::with_f32) for `bf16` storage.
    fn with_bf16<R>(_tensor: &FloatTensor<Self>, _f: impl FnOnce(&[bf16]) -> R) -> Option<R> {
        None
    }

    /// [`with_f32_mut`](Self::with_f32_mut) for `bf16` storage.
    fn with_bf16_mut<R>(
        _tensor: &mut FloatTensor<Self>,
        _f: impl FnOnce(&mut [bf16]) -> R,
    ) -> Option<R> {
        None
    }
}

/// A logits element type the kernels read, and how to borrow it from a [`HostSlices`] backend:
/// the one place that maps an element type to the backend's method for it.
trait HostElem: Elem + Element {
    fn lend<B: HostSlices, R>(tensor: &FloatTensor<B>, f: impl FnOnce(&[Self]) -> R) -> Option<R>;
    fn lend_mut<B: HostSlices, R>(
        tensor: &mut FloatTensor<B>,
        f: impl FnOnce(&mut [Self]) -> R,
    ) -> Option<R>;
}

macro_rules! host_elem {
    ($elem:ty, $with:ident, $with_mut:ident) => {
        impl HostElem for $elem {
            fn lend<B: HostSlices, R>(
                tensor: &FloatTensor<B>,
                f: impl FnOnce(&[Self]) -> R,
            ) -> Option<R> {
                B::$with(tensor, f)
            }

            fn lend_mut<B: HostSlices, R>(
                tensor: &mut FloatTensor<B>,
                f: impl FnOnce(&mut [Self]) -> R,
            ) -> Option<R> {
                B::$with_mut(tensor, f)
            }
        }
    };
}
host_elem!(f32, with_f32, with_f32_mut);
host_elem!(f16, with_f16, with_f16_mut);
host_elem!(bf16, with_bf16, with_bf16_mut);

/// Every such backend runs the slice kernels.
impl<B: HostSlices> TokenLogpKernels for B {
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

/// A `Vec` as a backend primitive of its element type; Flex and NdArray adopt the buffer
/// without copying.
fn primitive<B: Backend, E: Element>(
    values: Vec<E>,
    shape: Shape,
    device: &B::Device,
) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, shape), device)
}

/// The logits' element type when the kernels read it.
#[derive(Clone, Copy)]
enum Kind {
    F32,
    F16,
    BF16,
}

fn kind(dtype: DType) -> Option<Kind> {
    match dtype {
        DType::F32 => Some(Kind::F32),
        DType::F16 => Some(Kind::F16),
        DType::BF16 => Some(Kind::BF16),
        _ => None,
    }
}

fn forward<B: HostSlices>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    spec: Spec,
) -> (FloatTensor<B>, RowStats<B>) {
    let [n, v] = dims2(&logits.shape());
    let kind = kind(logits.dtype());
    let host = kind.and_then(|_| read_i64::<B>(targets.clone()).filter(|l| l.len() == n));
    let (Some(kind), Some(host_targets)) = (kind, host) else {
        return composed::forward::<B>(logits, targets, spec);
    };
    let isa = cpu_kernel_isa();
    let out = match kind {
        Kind::F32 => f32::lend::<B, _>(&logits, |z| {
            threads::forward(isa, z, v, &host_targets, &spec)
        }),
        Kind::F16 => f16::lend::<B, _>(&logits, |z| {
            threads::forward(isa, z, v, &host_targets, &spec)
        }),
        Kind::BF16 => bf16::lend::<B, _>(&logits, |z| {
            threads::forward(isa, z, v, &host_targets, &spec)
        }),
    };
    let Some(out) = out else {
        return composed::forward::<B>(logits, targets, spec);
    };
    count(Path::KernelForward);
    let device = logits.device();
    let k = spec.extras.columns();
    let entropy = spec.extras.column_of().entropy.map(|c| {
        let column: Vec<f32> = out.out.iter().skip(c).step_by(k).copied().collect();
        primitive::<B, f32>(column, Shape::new([n]), &device)
    });
    (
        primitive::<B, f32>(out.out, Shape::new([n, k]), &device),
        RowStats {
            max: primitive::<B, f32>(out.max, Shape::new([n]), &device),
            log_sum: primitive::<B, f32>(out.log_sum, Shape::new([n]), &device),
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
) -> Option<Rows> {
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
    let rows = Rows {
        targets,
        max,
        log_sum,
        grad: column(0),
        grad_entropy,
        entropy,
    };
    rows.has_len(n).then_some(rows)
}

fn backward<B: HostSlices>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    stats: RowStats<B>,
    grad: FloatTensor<B>,
    spec: Spec,
) -> FloatTensor<B> {
    let [n, v] = dims2(&logits.shape());
    let kind = kind(logits.dtype());
    let host = kind.and_then(|_| host_rows::<B>(n, &targets, &stats, &grad, &spec));
    let (Some(kind), Some(rows)) = (kind, host) else {
        return composed::backward::<B>(logits, targets, stats, grad, spec);
    };
    let done = match kind {
        Kind::F32 => backward_as::<B, f32>(logits, n, v, &rows, &spec),
        Kind::F16 => backward_as::<B, f16>(logits, n, v, &rows, &spec),
        Kind::BF16 => backward_as::<B, bf16>(logits, n, v, &rows, &spec),
    };
    done.unwrap_or_else(|logits| composed::backward::<B>(logits, targets, stats, grad, spec))
}

/// The kernels' backward on logits of element type `E`: `dz` of that type, written over the
/// logits or into a new buffer; `Err(logits)` when the backend lends neither.
fn backward_as<B: HostSlices, E: HostElem>(
    logits: FloatTensor<B>,
    n: usize,
    v: usize,
    rows: &Rows,
    spec: &Spec,
) -> Result<FloatTensor<B>, FloatTensor<B>> {
    let transform = spec.transform;
    // The logits are usually held by this operation alone by now (the model's output was
    // moved into it): then the gradient overwrites them, with no `[N, V]` allocation at all.
    let mut logits = logits;
    if E::lend_mut::<B, _>(&mut logits, |z| {
        threads::backward_in_place(cpu_kernel_isa(), z, v, rows, &transform)
    })
    .is_some()
    {
        count(Path::InPlaceBackward);
        return Ok(logits);
    }
    let Some(out) = E::lend::<B, _>(&logits, |z| {
        threads::backward(cpu_kernel_isa(), z, v, rows, &transform)
    }) else {
        return Err(logits);
    };
    count(Path::CopyingBackward);
    Ok(primitive::<B, E>(out, Shape::new([n, v]), &logits.device()))
}
