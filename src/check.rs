//! Input validation shared by every public function.

use burn::tensor::{Bool, Int, Tensor};

use crate::error::{PreferenceError, Result};

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

/// Reads a float tensor to the host as `f32`.
pub(crate) fn read_floats<const D: usize>(
    arg: &'static str,
    tensor: Tensor<D>,
) -> Result<Vec<f32>> {
    tensor
        .try_into_vec_as::<f32>()
        .map_err(|e| PreferenceError::Read {
            arg,
            reason: e.to_string(),
        })
}

/// Reads an int tensor to the host as `i64`.
pub(crate) fn read_ints<const D: usize>(
    arg: &'static str,
    tensor: Tensor<D, Int>,
) -> Result<Vec<i64>> {
    tensor
        .try_into_vec_as::<i64>()
        .map_err(|e| PreferenceError::Read {
            arg,
            reason: e.to_string(),
        })
}

/// Reads a one-element bool tensor (the result of `any()`).
pub(crate) fn read_flag(arg: &'static str, flag: Tensor<1, Bool>) -> Result<bool> {
    flag.try_into_scalar::<bool>()
        .map_err(|e| PreferenceError::Read {
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
