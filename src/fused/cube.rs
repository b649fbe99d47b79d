//! CubeCL backends (wgpu, CUDA, and any other CubeCL runtime): the kernels of [`kernels`],
//! one source for every runtime, reading the logits in their own dtype (f32, and f16/bf16
//! where the adapter has them) and accumulating in `f32`.
//!
//! The kernels are the methods of [`CubeTokenLogpOps`], a backend extension of its own so that
//! burn's `Fusion` backend (on by default in a user's burn with wgpu) records them as lazy
//! custom operations in its stream instead of flushing it. [`TokenLogpKernels`] for the `Cube`
//! backend, fused or not, calls them.

mod kernels;

use burn::backend::{
    Backend, Cube, DType, TensorMetadata, backend_extension,
    cubecl::dtype_to_storage_type,
    ops::FloatTensorOps,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{FloatDType, Shape};
use burn_cubecl::{
    CubeBackend,
    cubecl::{self, prelude::*, server::CubeCountSelection},
    kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
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

/// Whether the kernels read this dtype on this device; anything else takes the composed path.
fn kernel_dtype(tensor: &CubeTensor) -> bool {
    match tensor.dtype {
        DType::F32 => true,
        DType::F16 | DType::BF16 => tensor
            .client
            .properties()
            .supports_type(dtype_to_storage_type(tensor.dtype)),
        _ => false,
    }
}

/// Whether `[N, V]` fits the kernels' `u32` row and column counts.
fn kernel_shape(n: usize, v: usize) -> bool {
    u32::try_from(n).is_ok() && u32::try_from(v).is_ok() && n > 0 && v > 0
}

fn empty_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

fn as_f32(tensor: CubeTensor) -> CubeTensor {
    let tensor = if tensor.dtype == DType::F32 {
        tensor
    } else {
        CubeBackend::float_cast(tensor, FloatDType::F32)
    };
    into_contiguous(tensor)
}

/// Cubes per row on the forward: enough `(row, split)` cubes to fill a large GPU, but never
/// a split shorter than `MIN_SPAN` columns.
fn splits_for(rows: usize, vocab: usize) -> usize {
    const TARGET_CUBES: usize = 1024;
    const MIN_SPAN: usize = 16 * kernels::CUBE_UNITS;
    let wanted = TARGET_CUBES.div_ceil(rows.max(1));
    wanted.min(vocab.div_ceil(MIN_SPAN)).max(1)
}

fn cube_count(client: &cubecl::client::Client, cubes: usize) -> CubeCount {
    CubeCountSelection::new(client, cubes as u32).cube_count()
}

/// Scalars of the transform: `(scale, softcap or 0, 1/temperature, has transform, has cap)`.
fn transform_args(spec: &Spec) -> (f32, f32, f32, bool, bool) {
    let t = spec.transform;
    (
        t.scale,
        t.softcap.unwrap_or(0.0),
        t.inv_temperature,
        !t.is_identity(),
        t.softcap.is_some(),
    )
}

fn forward(
    logits: CubeTensor,
    targets: CubeTensor,
    spec: Spec,
) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
    let [n, v] = dims2(&logits.shape());
    let logits = into_contiguous(logits);
    let targets = into_contiguous(targets);
    let client = logits.client.clone();
    let splits = splits_for(n, v);
    let span = v.div_ceil(splits);
    let extras = spec.extras;
    let (scale, cap, inv_t, transform, softcap) = transform_args(&spec);
    let dtypes = [
        dtype_to_storage_type(logits.dtype),
        dtype_to_storage_type(targets.dtype),
    ];
    let partials = empty_f32(&logits, Shape::new([n * splits * kernels::PARTIAL]));
    kernels::forward_partial::launch(
        &client,
        cube_count(&client, n * splits),
        CubeDim::new_1d(kernels::CUBE_UNITS as u32),
        logits.required_address_type(),
        logits.clone().into_tensor_arg(),
        targets.clone().into_tensor_arg(),
        partials.clone().into_tensor_arg(),
        n as u32,
        v as u32,
        splits as u32,
        span as u32,
        scale,
        cap,
        inv_t,
        transform,
        softcap,
        extras.top1,
        dtypes,
    );
    let out = empty_f32(&logits, Shape::new([n, extras.columns()]));
    let [max, log_sum, entropy] = [(); 3].map(|_| empty_f32(&logits, Shape::new([n])));
    let units = 64usize;
    kernels::forward_finish::launch(
        &client,
        cube_count(&client, n.div_ceil(units)),
        CubeDim::new_1d(units as u32),
        logits.required_address_type(),
        logits.clone().into_tensor_arg(),
        targets.into_tensor_arg(),
        partials.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        max.clone().into_tensor_arg(),
        log_sum.clone().into_tensor_arg(),
        entropy.clone().into_tensor_arg(),
        n as u32,
        v as u32,
        splits as u32,
        scale,
        cap,
        inv_t,
        transform,
        softcap,
        extras.entropy,
        extras.log_sum_sq,
        extras.mean,
        extras.top1,
        dtypes,
    );
    (out, max, log_sum, entropy)
}

/// Columns of one row per backward cube.
const BACKWARD_BLOCK: usize = 8 * kernels::CUBE_UNITS;

#[allow(clippy::too_many_arguments)]
fn backward(
    logits: CubeTensor,
    targets: CubeTensor,
    max: CubeTensor,
    log_sum: CubeTensor,
    entropy: CubeTensor,
    grad: CubeTensor,
    spec: Spec,
) -> CubeTensor {
    let [n, v] = dims2(&logits.shape());
    let logits = into_contiguous(logits);
    let targets = into_contiguous(targets);
    let [max, log_sum, entropy, grad] = [max, log_sum, entropy, grad].map(as_f32);
    let client = logits.client.clone();
    let blocks = v.div_ceil(BACKWARD_BLOCK);
    let (scale, cap, inv_t, transform, softcap) = transform_args(&spec);
    let entropy_column = spec.extras.column_of().entropy;
    let dtypes = [
        dtype_to_storage_type(logits.dtype),
        dtype_to_storage_type(targets.dtype),
    ];
    // The gradient overwrites the logits when nothing else holds them.
    let in_place = logits.can_mut() && logits.is_nonoverlapping();
    let (dz, dz_arg) = if in_place {
        count(Path::InPlaceBackward);
        (logits.clone(), logits.as_tensor_alias(0))
    } else {
        count(Path::CopyingBackward);
        let dz = empty_device_contiguous_dtype(
            client.clone(),
            logits.device.clone(),
            logits.shape(),
            logits.dtype,
        );
        (dz.clone(), dz.into_tensor_arg())
    };
    kernels::backward::launch(
        &client,
        cube_count(&client, n * blocks),
        CubeDim::new_1d(kernels::CUBE_UNITS as u32),
        logits.required_address_type(),
        logits.clone().into_tensor_arg(),
        targets.into_tensor_arg(),
        max.into_tensor_arg(),
        log_sum.into_tensor_arg(),
        entropy.into_tensor_arg(),
        grad.into_tensor_arg(),
        dz_arg,
        n as u32,
        v as u32,
        blocks as u32,
        spec.extras.columns() as u32,
        entropy_column.unwrap_or(0) as u32,
        scale,
        cap,
        inv_t,
        transform,
        softcap,
        entropy_column.is_some(),
        BACKWARD_BLOCK,
        dtypes,
    );
    dz
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
        forward(logits, targets, spec)
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
        backward(logits, targets, max, log_sum, entropy, grad, spec)
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
