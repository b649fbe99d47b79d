//! The kernels on the plain `CubeBackend` (what a build without `fusion` dispatches to; with
//! `fusion` the integration tests reach them through the lazy custom operations), against an
//! `f64` reference written here.

use super::launch::{backward_in_blocks, forward_in_blocks, kernel_dtype, splits_for};
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
