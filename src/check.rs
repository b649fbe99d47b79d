//! Input validation shared by every public function.

use std::cell::Cell;

use burn::tensor::{Bool, Device, Int, Tensor};

use crate::error::{PreferenceError, Result};

thread_local! {
    /// Device-to-host reads made by this crate on the calling thread.
    static HOST_READS: Cell<u64> = const { Cell::new(0) };
}

/// How many tensors this crate has read back to the host on the calling thread: every read
/// outside the CPU kernels goes through this module's `read_*` functions, which count here. A
/// probe for tests that must observe that a call never waits on the device; not a stable API.
pub fn host_reads() -> u64 {
    HOST_READS.with(Cell::get)
}

fn counted<T>(read: impl FnOnce() -> T) -> T {
    HOST_READS.with(|n| n.set(n.get() + 1));
    read()
}

/// Checks that `tensor` has the `expected` size in every dimension given as `Some`.
pub(crate) fn shape<const D: usize>(
    arg: &'static str,
    dims: [usize; D],
    expected: [Option<usize>; D],
    layout: &str,
) -> Result<()> {
    let fits = dims
        .iter()
        .zip(expected.iter())
        .all(|(actual, want)| want.is_none_or(|w| w == *actual));
    if fits {
        return Ok(());
    }
    let sizes: Vec<String> = expected
        .iter()
        .map(|e| e.map_or_else(|| "_".to_string(), |v| v.to_string()))
        .collect();
    Err(PreferenceError::Shape {
        arg,
        expected: format!("{layout} = [{}]", sizes.join(", ")),
        actual: dims.to_vec(),
    })
}

/// Checks that `actual` rows match the batch size fixed by `reference_arg`.
pub(crate) fn batch(
    arg: &'static str,
    actual: usize,
    reference_arg: &'static str,
    expected: usize,
) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(PreferenceError::BatchMismatch {
            arg,
            reference_arg,
            expected,
            actual,
        })
    }
}

/// Rejects an empty batch (`rows == 0`).
pub(crate) fn non_empty(arg: &'static str, rows: usize) -> Result<()> {
    if rows == 0 {
        Err(PreferenceError::Empty {
            arg,
            detail: "the batch has no rows".to_string(),
        })
    } else {
        Ok(())
    }
}

/// Checks a finite hyper-parameter against a predicate; NaN always fails.
pub(crate) fn param(
    name: &'static str,
    value: f64,
    expected: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<()> {
    if value.is_finite() && ok(value) {
        Ok(())
    } else {
        Err(PreferenceError::OutOfRange {
            name,
            expected,
            actual: value,
        })
    }
}

/// The range every KL coefficient (DPO's β, IPO's τ) must lie in: inside it `β·h`, `β·ρ` and
/// IPO's squared target `(1/(2τ))²` stay far from `f32`'s overflow for any finite margin a
/// language model produces, and outside it no preference loss is meaningful.
pub(crate) const KL_COEF_RANGE: (f64, f64) = (1e-8, 1e8);

/// Checks a KL coefficient against [`KL_COEF_RANGE`].
pub(crate) fn kl_coefficient(name: &'static str, value: f64) -> Result<()> {
    let (lo, hi) = KL_COEF_RANGE;
    param(name, value, "in [1e-8, 1e8]", |b| (lo..=hi).contains(&b))
}

/// The largest length exponent (`LengthPower(α)`, RRHF's length penalty): `n^α` for counts
/// `n ≥ 1` is then computed without panicking in burn's `powf_scalar` (which fails for
/// exponents near `i64::MAX`), and values beyond it only overflow `n^α` to `inf` anyway.
pub(crate) const MAX_LENGTH_EXPONENT: f64 = 1e6;

/// Reads a float tensor to the host as `f32`.
pub(crate) fn read_floats<const D: usize>(
    arg: &'static str,
    tensor: Tensor<D>,
) -> Result<Vec<f32>> {
    counted(|| tensor.try_into_vec_as::<f32>()).map_err(|e| PreferenceError::Read {
        arg,
        reason: e.to_string(),
    })
}

/// Reads an int tensor to the host as `i64`.
pub(crate) fn read_ints<const D: usize>(
    arg: &'static str,
    tensor: Tensor<D, Int>,
) -> Result<Vec<i64>> {
    counted(|| tensor.try_into_vec_as::<i64>()).map_err(|e| PreferenceError::Read {
        arg,
        reason: e.to_string(),
    })
}

/// Reads a one-element bool tensor (the result of `any()`).
pub(crate) fn read_flag(arg: &'static str, flag: Tensor<1, Bool>) -> Result<bool> {
    counted(|| flag.try_into_scalar::<bool>()).map_err(|e| PreferenceError::Read {
        arg,
        reason: e.to_string(),
    })
}

/// Rejects NaN entries of a float tensor; the values are read once and returned for reuse.
pub(crate) fn finite_values<const D: usize>(
    arg: &'static str,
    tensor: Tensor<D>,
) -> Result<Vec<f32>> {
    let values = read_floats(arg, tensor)?;
    if let Some(bad) = values.iter().find(|v| v.is_nan()) {
        return Err(PreferenceError::InvalidValue {
            arg,
            expected: "numbers (no NaN)",
            found: bad.to_string(),
        });
    }
    Ok(values)
}

/// Rejects example weights that are negative, not finite, or — unless the batch is part of a
/// larger step (`in_step`), whose total divides instead — all 0 (the weighted mean would
/// divide by 0); one read.
pub(crate) fn weights(arg: &'static str, weights: Tensor<1>, in_step: bool) -> Result<()> {
    let values = read_floats(arg, weights)?;
    all_finite(arg, &values, &[values.len()])?;
    if let Some(bad) = values.iter().find(|w| **w < 0.0) {
        return Err(PreferenceError::InvalidValue {
            arg,
            expected: "weights >= 0",
            found: bad.to_string(),
        });
    }
    if !in_step && values.iter().all(|w| *w == 0.0) {
        return Err(PreferenceError::InvalidValue {
            arg,
            expected: "at least one weight > 0",
            found: "all weights 0".to_string(),
        });
    }
    Ok(())
}

/// Checks that every tensor of one call lives on the device of the first, `args[0]`. A device
/// with and without autodiff is the same device (burn's `Device` equality ignores autodiff).
pub(crate) fn same_device(args: &[(&'static str, Device)]) -> Result<()> {
    let Some((reference_arg, reference)) = args.first() else {
        return Ok(());
    };
    for (arg, device) in &args[1..] {
        if device != reference {
            return Err(PreferenceError::DeviceMismatch {
                arg,
                device: format!("{device:?}"),
                reference_arg,
                reference_device: format!("{reference:?}"),
            });
        }
    }
    Ok(())
}

/// Rejects NaN and ±inf in `values` (the row-major contents of a tensor of shape `dims`),
/// naming the first offending position.
pub(crate) fn all_finite(arg: &'static str, values: &[f32], dims: &[usize]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(flat) => Err(PreferenceError::NonFinite {
            arg,
            index: unravel(flat, dims),
            found: values[flat].to_string(),
        }),
    }
}

/// The multi-index of the row-major position `flat` in a tensor of shape `dims`.
pub(crate) fn unravel(flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut rest = flat;
    let mut index = vec![0; dims.len()];
    for (slot, &size) in index.iter_mut().zip(dims).rev() {
        let size = size.max(1);
        *slot = rest % size;
        rest /= size;
    }
    index
}
