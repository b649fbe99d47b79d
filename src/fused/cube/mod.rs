//! CubeCL backends (wgpu, CUDA, and any other CubeCL runtime): the kernels of [`kernels`],
//! one source for every runtime, reading the logits in their own dtype (f32, and f16/bf16
//! where the adapter has them) and accumulating in `f32`.
//!
//! The kernels are the methods of [`CubeTokenLogpOps`], a backend extension of its own so that
//! burn's `Fusion` backend (on by default in a user's burn with wgpu) records them as lazy
//! custom operations in its stream instead of flushing it. [`TokenLogpKernels`] for the `Cube`
//! backend, fused or not, calls them.
//!
//! The files:
//!
//! - this one: the backend extension ([`CubeTokenLogpOps`]) and its implementations, which
//!   check that the kernels read the logits' dtype and shape (the composed path otherwise);
//! - [`launch`]: the host side, launching the kernels (cubes per row, row blocks for adapters
//!   without 64-bit addresses, the in-place backward);
//! - [`kernels`]: the `#[cube]` kernels themselves.

mod kernels;
mod launch;
#[cfg(all(test, feature = "wgpu"))]
mod tests;

use burn::backend::{
    Backend, Cube, DType, TensorMetadata, backend_extension,
    ops::FloatTensorOps,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{FloatDType, Shape};
use burn_cubecl::{CubeBackend, tensor::CubeTensor};

use self::launch::{
    as_f32, backward_in_blocks, forward_in_blocks, kernel_dtype, kernel_shape, rows_per_launch,
};
use super::composed::{self, dims2};
use super::{Path, RowStats, Spec, TokenLogpKernels, count};

/// The fused op's forward and backward as device kernels; see [`TokenLogpKernels`] for the
/// contract. The forward returns `(out [N, K], max [N], log_sum [N], entropy [N])`, all `f32`
/// (entropy zeros unless requested); the backward takes the entropy tensor either way.
#[backend_extension(
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(feature = "fusion"),
)]
pub(crate) trait CubeTokenLogpOps: Backend {
    #[fusion(meta = forward_meta)]
    fn cube_token_logps_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        spec: Spec,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    #[fusion(dtype = logits, shape = logits)]
    #[allow(clippy::too_many_arguments)]
    fn cube_token_logps_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        max: FloatTensor<Self>,
        log_sum: FloatTensor<Self>,
        entropy: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self>;
}

#[cfg(feature = "fusion")]
fn forward_meta(
    logits: &burn::backend::fusion::custom::TensorSpec,
    _targets: &burn::backend::fusion::custom::TensorSpec,
    spec: &Spec,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    use burn::backend::fusion::custom::TensorSpec;
    let [n, _] = dims2(&logits.shape);
    let row = || TensorSpec::new(Shape::new([n]), DType::F32);
    (
        TensorSpec::new(Shape::new([n, spec.extras.columns()]), DType::F32),
        row(),
        row(),
        row(),
    )
}

impl CubeTokenLogpOps for CubeBackend {
    fn cube_token_logps_forward(
        logits: CubeTensor,
        targets: CubeTensor,
        spec: Spec,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        let [n, v] = dims2(&logits.shape());
        if !(kernel_dtype(&logits) && kernel_shape(n, v)) {
            let (out, stats) = composed::forward::<Self>(logits, targets, spec);
            let entropy = stats.entropy.unwrap_or_else(|| {
                Self::float_zeros(Shape::new([n]), &stats.max.device, FloatDType::F32)
            });
            return (
                as_f32(out),
                as_f32(stats.max),
                as_f32(stats.log_sum),
                as_f32(entropy),
            );
        }
        count(Path::CubeForward);
        let rows = rows_per_launch(&logits, n, v);
        forward_in_blocks(logits, targets, spec, rows)
    }

    fn cube_token_logps_backward(
        logits: CubeTensor,
        targets: CubeTensor,
        max: CubeTensor,
        log_sum: CubeTensor,
        entropy: CubeTensor,
        grad: CubeTensor,
        spec: Spec,
    ) -> CubeTensor {
        let [n, v] = dims2(&logits.shape());
        if !(kernel_dtype(&logits) && kernel_shape(n, v)) {
            let stats = RowStats {
                max,
                log_sum,
                entropy: spec.extras.entropy.then_some(entropy),
            };
            return composed::backward::<Self>(logits, targets, stats, grad, spec);
        }
        let rows = rows_per_launch(&logits, n, v);
        backward_in_blocks(logits, targets, max, log_sum, entropy, grad, spec, rows)
    }
}

/// The `Cube` backend (fused or not) runs the kernels.
impl TokenLogpKernels for Cube {
    fn token_logps_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        spec: Spec,
    ) -> (FloatTensor<Self>, RowStats<Self>) {
        let (out, max, log_sum, entropy) =
            <Self as CubeTokenLogpOps>::cube_token_logps_forward(logits, targets, spec);
        (
            out,
            RowStats {
                max,
                log_sum,
                entropy: spec.extras.entropy.then_some(entropy),
            },
        )
    }

    fn token_logps_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        stats: RowStats<Self>,
        grad: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        let entropy = stats.entropy.unwrap_or_else(|| stats.max.clone());
        <Self as CubeTokenLogpOps>::cube_token_logps_backward(
            logits,
            targets,
            stats.max,
            stats.log_sum,
            entropy,
            grad,
            spec,
        )
    }
}

super::plain_token_logp_ops!(Cube);
