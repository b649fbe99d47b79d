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
    ops::{FloatTensorOps, IntTensorOps},
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{FloatDType, Shape, Slice};
use burn_cubecl::{
    CubeBackend,
    cubecl::{self, ir::AddressType, prelude::*, server::CubeCountSelection},
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

/// Rows per launch: all `n`, unless `[N, V]` needs 64-bit addresses that the adapter lacks
/// (WGSL without `SHADER_INT64`); then blocks of rows that 32-bit addresses reach.
fn rows_per_launch(logits: &CubeTensor, n: usize, v: usize) -> usize {
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
fn forward_in_blocks(
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
fn backward_in_blocks(
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

/// The kernels on the plain `CubeBackend` (what a build without `fusion` dispatches to; with
/// `fusion` the integration tests reach them through the lazy custom operations), against an
/// `f64` reference written here.
#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use burn::backend::{TensorData, ops::IntTensorOps, read_sync};
    use burn_cubecl::CubeDevice;

    use crate::fused::{Extras, Transform, fused_path_counters};

    fn device() -> CubeDevice {
        CubeDevice::Wgpu(Default::default())
    }

    fn floats(values: &[f32], shape: [usize; 2], dtype: DType) -> CubeTensor {
        let t = CubeBackend::float_from_data(TensorData::new(values.to_vec(), shape), &device());
        match dtype {
            DType::F16 => CubeBackend::float_cast(t, FloatDType::F16),
            _ => t,
        }
    }

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn read(tensor: CubeTensor) -> TestResult<Vec<f64>> {
        let data = read_sync(CubeBackend::float_into_data(tensor))?;
        Ok(data.iter::<f32>().map(f64::from).collect())
    }

    /// Logits as the device holds them (rounded to f16 when asked), read back as f64.
    fn held(values: &[f32], dtype: DType) -> TestResult<Vec<f64>> {
        read(floats(values, [1, values.len()], dtype))
    }

    fn noise(len: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    struct Reference {
        out: Vec<f64>,
        dz: Vec<f64>,
    }

    /// Per row: the transformed logits in f64, log-softmax, the extras, and the gradient for
    /// the upstream `grad [N, K]`.
    fn reference(z: &[f64], v: usize, targets: &[i64], spec: &Spec, grad: &[f64]) -> Reference {
        let t = spec.transform;
        let k = spec.extras.columns();
        let cols = spec.extras.column_of();
        let (mut out, mut dz) = (vec![0.0; targets.len() * k], vec![0.0; z.len()]);
        for (n, &y) in targets.iter().enumerate() {
            if y < 0 || y as usize >= v {
                continue;
            }
            let y = y as usize;
            let row = &z[n * v..(n + 1) * v];
            let x: Vec<f64> = row
                .iter()
                .map(|&z| {
                    let s = z * f64::from(t.scale);
                    let c = t
                        .softcap
                        .map_or(s, |c| f64::from(c) * (s / f64::from(c)).tanh());
                    c * f64::from(t.inv_temperature)
                })
                .collect();
            let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + x.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let logp: Vec<f64> = x.iter().map(|x| x - lse).collect();
            let h = -logp.iter().map(|l| l.exp() * l).sum::<f64>();
            let o = &mut out[n * k..(n + 1) * k];
            o[0] = logp[y];
            if let Some(c) = cols.entropy {
                o[c] = h;
            }
            if let Some(c) = cols.log_sum_sq {
                o[c] = logp.iter().map(|l| (2.0 * l).exp()).sum::<f64>().ln();
            }
            if let Some(c) = cols.mean {
                o[c] = x.iter().sum::<f64>() / v as f64;
            }
            if let Some(c) = cols.top1 {
                let first = x.iter().position(|&a| a == m);
                o[c] = f64::from(u8::from(first == Some(y)));
            }
            let g = grad[n * k];
            let g_h = cols.entropy.map_or(0.0, |c| grad[n * k + c]);
            for (j, d) in dz[n * v..(n + 1) * v].iter_mut().enumerate() {
                let p = logp[j].exp();
                let mut dx = g * (f64::from(u8::from(j == y)) - p) - g_h * p * (logp[j] + h);
                let s = row[j] * f64::from(t.scale);
                if let Some(c) = t.softcap {
                    dx *= 1.0 - (s / f64::from(c)).tanh().powi(2);
                }
                *d = dx * f64::from(t.scale * t.inv_temperature);
            }
        }
        Reference { out, dz }
    }

    fn close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let tol = rel * g.abs().max(w.abs()) + abs;
            assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w} (tol {tol})");
        }
    }

    /// Runs forward and backward on the kernels and checks both against [`reference`]; the
    /// logits are held by the caller when `keep`, so the backward must not overwrite them.
    #[allow(clippy::too_many_arguments)]
    fn check(
        what: &str,
        [n, v]: [usize; 2],
        logits: &[f32],
        targets: &[i64],
        spec: Spec,
        dtype: DType,
        keep: bool,
        tol: (f64, f64),
    ) -> TestResult {
        let k = spec.extras.columns();
        let grad: Vec<f32> = noise(n * k, 1.0, 99);
        let z = held(logits, dtype)?;
        let grad64: Vec<f64> = grad.iter().map(|&g| f64::from(g)).collect();
        let want = reference(&z, v, targets, &spec, &grad64);
        let before = fused_path_counters();
        let ids = CubeBackend::int_from_data(TensorData::new(targets.to_vec(), [n]), &device());
        let x = floats(logits, [n, v], dtype);
        let (out, max, log_sum, entropy) =
            CubeBackend::cube_token_logps_forward(x.clone(), ids.clone(), spec);
        close(
            &format!("{what}: out"),
            &read(out)?,
            &want.out,
            tol.0,
            tol.1,
        );
        let g = floats(&grad, [n, k], DType::F32);
        let kept = keep.then(|| x.clone());
        let dz = CubeBackend::cube_token_logps_backward(x, ids, max, log_sum, entropy, g, spec);
        assert_eq!(dz.dtype, dtype, "{what}: dz has the logits' dtype");
        close(&format!("{what}: dz"), &read(dz)?, &want.dz, tol.0, tol.1);
        if let Some(kept) = kept {
            close(&format!("{what}: kept logits"), &read(kept)?, &z, 0.0, 0.0);
        }
        let after = fused_path_counters();
        assert_eq!(
            after.cube_forward - before.cube_forward,
            1,
            "{what}: kernel ran"
        );
        assert_eq!(
            after.composed_forward, before.composed_forward,
            "{what}: no fallback"
        );
        let (in_place, copied) = (
            after.in_place_backward - before.in_place_backward,
            after.copying_backward - before.copying_backward,
        );
        assert_eq!(
            (in_place, copied),
            if keep { (0, 1) } else { (1, 0) },
            "{what}"
        );
        Ok(())
    }

    /// Rows in blocks (what an adapter without 64-bit addresses gets past 2^32 elements),
    /// forced here with blocks of 2 rows.
    fn check_blocks(spec: Spec) -> TestResult {
        let (n, v) = (5, 301);
        let logits = noise(n * v, 3.0, 8);
        let targets = [3, -1, 300, 0, 150];
        let k = spec.extras.columns();
        let grad = noise(n * k, 1.0, 9);
        let grad64: Vec<f64> = grad.iter().map(|&g| f64::from(g)).collect();
        let want = reference(&held(&logits, DType::F32)?, v, &targets, &spec, &grad64);
        let ids = CubeBackend::int_from_data(TensorData::new(targets.to_vec(), [n]), &device());
        let x = floats(&logits, [n, v], DType::F32);
        let (out, max, log_sum, entropy) = forward_in_blocks(x.clone(), ids.clone(), spec, 2);
        close("blocks: out", &read(out)?, &want.out, 1e-5, 1e-7);
        let g = floats(&grad, [n, k], DType::F32);
        let dz = backward_in_blocks(x, ids, max, log_sum, entropy, g, spec, 2);
        close("blocks: dz", &read(dz)?, &want.dz, 1e-5, 1e-7);
        Ok(())
    }

    const ALL: Extras = Extras {
        entropy: true,
        log_sum_sq: true,
        mean: true,
        top1: true,
    };

    // One test: the path counters are process wide.
    #[test]
    fn kernels_match_an_f64_reference() -> TestResult {
        let plain = Spec {
            transform: Transform::IDENTITY,
            extras: Extras::default(),
        };
        let full = Spec {
            transform: Transform {
                scale: 0.7,
                softcap: Some(5.0),
                inv_temperature: 1.25,
            },
            extras: ALL,
        };
        // V not a multiple of any vector width; two invalid rows (every negative target is
        // one; the backward reads a target ≥ V as a row whose target is in another block of
        // the vocabulary, which the LM head's tiles test in tests/fused.rs).
        let (n, v) = (4, 1001);
        let logits = noise(n * v, 4.0, 1);
        let targets = [5, -1, 1000, -100];
        for keep in [false, true] {
            check(
                "plain",
                [n, v],
                &logits,
                &targets,
                plain,
                DType::F32,
                keep,
                (1e-5, 1e-7),
            )?;
            check(
                "extras",
                [n, v],
                &logits,
                &targets,
                full,
                DType::F32,
                keep,
                (1e-5, 1e-7),
            )?;
        }
        // Few rows, long rows: each row split over several cubes, then combined.
        let (n, v) = (2, 40_000);
        assert!(splits_for(n, v) > 1, "the split path is taken");
        let logits = noise(n * v, 3.0, 2);
        let entropy = Spec {
            extras: ALL,
            ..plain
        };
        check(
            "split",
            [n, v],
            &logits,
            &[0, 39_999],
            entropy,
            DType::F32,
            false,
            (1e-5, 1e-8),
        )?;
        // ±1e4 logits: the max and log-sum are kept apart in the gradient. (Not the mean: an
        // f32 sum of ±1e4 that cancels to ~0 carries ~1e-4 absolute error by itself.)
        let extreme = Spec {
            extras: Extras { mean: false, ..ALL },
            ..plain
        };
        let (n, v) = (2, 300);
        let logits: Vec<f32> = noise(n * v, 1.0, 3)
            .iter()
            .enumerate()
            .map(|(i, e)| if i % 2 == 0 { 1e4 + e } else { -1e4 + e })
            .collect();
        check(
            "extreme",
            [n, v],
            &logits,
            &[2, 7],
            extreme,
            DType::F32,
            false,
            (1e-5, 1e-7),
        )?;
        check_blocks(full)?;
        // Every row ignored: zeros everywhere, even over NaN logits.
        let logits = vec![f32::NAN; 3 * 50];
        check(
            "ignored",
            [3, 50],
            &logits,
            &[-1, -1, -7],
            full,
            DType::F32,
            false,
            (0.0, 0.0),
        )?;
        // f16 read as it is, accumulated in f32: against f64 on the same half values. The
        // gradient is written in f16 (one half ulp is 2^-11 relative).
        if kernel_dtype(&floats(&[0.0], [1, 1], DType::F16)) {
            let (n, v) = (3, 777);
            let logits = noise(n * v, 4.0, 4);
            for keep in [false, true] {
                check(
                    "f16",
                    [n, v],
                    &logits,
                    &[0, 776, 400],
                    full,
                    DType::F16,
                    keep,
                    (1e-3, 1e-4),
                )?;
            }
        }
        Ok(())
    }
}
