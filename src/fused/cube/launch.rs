//! The host side of the CubeCL kernels: buffers, cube counts, the kernels' scalar arguments,
//! the launches, and the row blocks an adapter without 64-bit addresses needs.

use burn::backend::{
    DType, TensorMetadata,
    cubecl::dtype_to_storage_type,
    ops::{FloatTensorOps, IntTensorOps},
};
use burn::tensor::{FloatDType, Shape, Slice};
use burn_cubecl::{
    CubeBackend,
    cubecl::{self, ir::AddressType, prelude::*, server::CubeCountSelection},
    kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};

use super::kernels;
use crate::fused::composed::dims2;
use crate::fused::{Path, Spec, count};

/// Whether the kernels read this dtype on this device; anything else takes the composed path.
pub(super) fn kernel_dtype(tensor: &CubeTensor) -> bool {
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
pub(super) fn kernel_shape(n: usize, v: usize) -> bool {
    u32::try_from(n).is_ok() && u32::try_from(v).is_ok() && n > 0 && v > 0
}

fn empty_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

pub(super) fn as_f32(tensor: CubeTensor) -> CubeTensor {
    let tensor = if tensor.dtype == DType::F32 {
        tensor
    } else {
        CubeBackend::float_cast(tensor, FloatDType::F32)
    };
    into_contiguous(tensor)
}

/// Cubes per row on the forward: enough `(row, split)` cubes to fill a large GPU, but never
/// a split shorter than `MIN_SPAN` columns.
pub(super) fn splits_for(rows: usize, vocab: usize) -> usize {
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
    // The gradient overwrites the logits when nothing else holds them. Sound because
    // `kernels::backward` is strictly elementwise (reads z[i], writes dz[i], row stats passed in).
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

/// Rows per launch: all `n`, unless `[N, V]` needs 64-bit addresses that the adapter lacks
/// (WGSL without `SHADER_INT64`); then blocks of rows that 32-bit addresses reach.
pub(super) fn rows_per_launch(logits: &CubeTensor, n: usize, v: usize) -> usize {
    let wide = logits.required_address_type() == AddressType::U64;
    if !wide
        || logits
            .client
            .properties()
            .supports_address(AddressType::U64)
    {
        n
    } else {
        (u32::MAX as usize / v).max(1)
    }
}

fn row_blocks(n: usize, rows: usize) -> impl Iterator<Item = [Slice; 1]> {
    (0..n)
        .step_by(rows.max(1))
        .map(move |start| [Slice::from(start..(start + rows).min(n))])
}

fn slice_rows(tensor: &CubeTensor, rows: &[Slice; 1]) -> CubeTensor {
    let mut slices = vec![rows[0]];
    slices.extend((1..tensor.shape().num_dims()).map(|_| Slice::full()));
    CubeBackend::float_slice(tensor.clone(), &slices)
}

/// [`forward`] over blocks of `rows` rows, concatenated.
pub(super) fn forward_in_blocks(
    logits: CubeTensor,
    targets: CubeTensor,
    spec: Spec,
    rows: usize,
) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
    let [n, _] = dims2(&logits.shape());
    if rows >= n {
        return forward(logits, targets, spec);
    }
    let mut parts: [Vec<CubeTensor>; 4] = Default::default();
    for block in row_blocks(n, rows) {
        let ids = CubeBackend::int_slice(targets.clone(), &block);
        let (a, b, c, d) = forward(slice_rows(&logits, &block), ids, spec);
        for (part, t) in parts.iter_mut().zip([a, b, c, d]) {
            part.push(t);
        }
    }
    let [a, b, c, d] = parts.map(|part| CubeBackend::float_cat(part, 0));
    (a, b, c, d)
}

/// [`backward`] over blocks of `rows` rows, concatenated (a copy, not in place).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_in_blocks(
    logits: CubeTensor,
    targets: CubeTensor,
    max: CubeTensor,
    log_sum: CubeTensor,
    entropy: CubeTensor,
    grad: CubeTensor,
    spec: Spec,
    rows: usize,
) -> CubeTensor {
    let [n, _] = dims2(&logits.shape());
    if rows >= n {
        return backward(logits, targets, max, log_sum, entropy, grad, spec);
    }
    let parts = row_blocks(n, rows)
        .map(|block| {
            backward(
                slice_rows(&logits, &block),
                CubeBackend::int_slice(targets.clone(), &block),
                slice_rows(&max, &block),
                slice_rows(&log_sum, &block),
                slice_rows(&entropy, &block),
                slice_rows(&grad, &block),
                spec,
            )
        })
        .collect();
    CubeBackend::float_cat(parts, 0)
}
