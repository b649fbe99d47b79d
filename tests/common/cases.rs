//! The bad-input matrix: each case is one call with malformed input, the error variant it must
//! return and the argument its message must name. Every `bad_input.rs` builds its module's
//! cases and checks them with [`check_cases`], then checks with [`assert_covers`] that the
//! variants its module's functions document are each produced by at least one case.

use burn::tensor::{Device, Tensor};
use burn_preference::PreferenceError;

use super::{devices, floats};

/// Every variant that bad input can produce: all but `Read`, which only a failing device read
/// gives.
pub const INPUT_VARIANTS: [&str; 8] = [
    "Shape",
    "BatchMismatch",
    "Empty",
    "OutOfRange",
    "InvalidValue",
    "MissingInput",
    "DeviceMismatch",
    "NonFinite",
];

/// The variant's name, for the table and the failure messages.
pub fn variant(err: &PreferenceError) -> &'static str {
    match err {
        PreferenceError::Shape { .. } => "Shape",
        PreferenceError::BatchMismatch { .. } => "BatchMismatch",
        PreferenceError::Empty { .. } => "Empty",
        PreferenceError::OutOfRange { .. } => "OutOfRange",
        PreferenceError::InvalidValue { .. } => "InvalidValue",
        PreferenceError::MissingInput { .. } => "MissingInput",
        PreferenceError::DeviceMismatch { .. } => "DeviceMismatch",
        PreferenceError::NonFinite { .. } => "NonFinite",
        PreferenceError::Read { .. } => "Read",
        _ => "another variant",
    }
}

/// One row of the matrix: what was called, what it returned, and the error it must be.
pub struct Case {
    pub name: &'static str,
    pub result: Result<(), PreferenceError>,
    pub variant: &'static str,
    pub arg: &'static str,
}

pub fn case<T>(
    name: &'static str,
    result: burn_preference::Result<T>,
    variant: &'static str,
    arg: &'static str,
) -> Case {
    Case {
        name,
        result: result.map(|_| ()),
        variant,
        arg,
    }
}

/// Checks every case (the variant, and the argument named in the message) after checking that
/// no two cases share a name; returns the variants that were checked.
pub fn check_cases(device_name: &str, cases: Vec<Case>) -> Vec<&'static str> {
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    if let Some(twin) = names.windows(2).find(|w| w[0] == w[1]) {
        panic!("[{device_name}] two cases are named {:?}", twin[0]);
    }
    let mut checked = Vec::new();
    for Case {
        name,
        result,
        variant: want,
        arg,
    } in cases
    {
        let err = match result {
            Ok(()) => panic!("[{device_name}] {name}: expected {want} naming `{arg}`, got Ok"),
            Err(err) => err,
        };
        assert_eq!(
            variant(&err),
            want,
            "[{device_name}] {name}: wrong variant: {err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("`{arg}`")),
            "[{device_name}] {name}: the message must name `{arg}`: {message}"
        );
        checked.push(want);
    }
    checked
}

/// Asserts that every variant of `documented` was produced by at least one checked case.
/// `DeviceMismatch` needs two backends: with one compiled in, it is not required.
pub fn assert_covers(module: &str, checked: &[&str], documented: &[&str]) {
    let two_devices = devices().len() >= 2;
    let missing: Vec<&&str> = documented
        .iter()
        .filter(|v| two_devices || **v != "DeviceMismatch")
        .filter(|v| !checked.contains(v))
        .collect();
    assert!(
        missing.is_empty(),
        "{module}: no bad-input case produces {missing:?}"
    );
}

/// Every ordered pair of two different compiled-in devices, named `a × b`.
pub fn device_pairs() -> Vec<(String, Device, Device)> {
    let all = devices();
    let mut pairs = Vec::new();
    for (name_a, a) in &all {
        for (name_b, b) in &all {
            if name_a != name_b {
                pairs.push((format!("{name_a} × {name_b}"), a.clone(), b.clone()));
            }
        }
    }
    pairs
}

pub fn f1(values: &[f32], device: &Device) -> Tensor<1> {
    floats(values.to_vec(), [values.len()], device)
}

pub fn f2(values: &[f32], dims: [usize; 2], device: &Device) -> Tensor<2> {
    floats(values.to_vec(), dims, device)
}

pub fn zeros3(dims: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::<3>::zeros(dims, device)
}

pub fn izeros(dims: [usize; 2], device: &Device) -> Tensor<2, burn::tensor::Int> {
    Tensor::<2, burn::tensor::Int>::zeros(dims, device)
}
