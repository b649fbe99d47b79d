//! Shared test harness: the list of devices every test runs on, and small tensor helpers.
//!
//! Tests are written once over `devices()`; the device is a parameter, not a copy. Helpers
//! that several test files need live in the submodules: deterministic inputs ([`inputs`]),
//! `f64` references ([`reference`]), ranked batches for the listwise losses ([`ranked`]), the
//! fused op's path counters ([`paths`]), the gatherer options shared by the log-prob tests
//! ([`gatherer`]) and gatherer outputs for the loss tests ([`gathered`]), the TRL fixtures
//! ([`trl_fixture`]) and the bad-input matrix ([`cases`]).
#![allow(dead_code)]

pub mod cases;
pub mod gathered;
pub mod gatherer;
pub mod inputs;
pub mod paths;
pub mod ranked;
pub mod reference;
pub mod trl_fixture;

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Every backend compiled in: flex and ndarray on CPU, wgpu (a real GPU or the lavapipe CPU
/// Vulkan driver). A wgpu build without an adapter fails here rather than skipping.
// burn 0.22 marks NdArray deprecated in favour of Flex; we still support it. The pushes are
// behind features, so they cannot be a `vec![]` literal.
#[allow(deprecated, clippy::vec_init_then_push)]
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut devices = Vec::new();
    #[cfg(feature = "flex")]
    devices.push(("flex", Device::flex()));
    #[cfg(feature = "ndarray")]
    devices.push(("ndarray", Device::ndarray()));
    #[cfg(feature = "wgpu")]
    devices.push(("wgpu", Device::wgpu(Default::default())));
    // The same CubeCL kernels on CUDA, wherever this machine has a CUDA device.
    #[cfg(feature = "cuda")]
    devices.extend(
        Device::enumerate(burn::tensor::DeviceType::Cuda)
            .into_iter()
            .take(1)
            .map(|device| ("cuda", device)),
    );
    assert!(!devices.is_empty(), "enable at least one backend feature");
    devices
}

/// The devices with autodiff enabled.
pub fn autodiff_devices() -> Vec<(&'static str, Device)> {
    devices()
        .into_iter()
        .map(|(name, device)| (name, device.autodiff()))
        .collect()
}

/// The autodiff devices on the host's own CPU backends (flex, ndarray), or every autodiff
/// device when neither is compiled in: where a randomized property runs its many cases. A
/// forward and backward on wgpu costs ~0.1 s on CI's lavapipe, so the tests that run there too
/// check fixed, rich batches instead.
pub fn cpu_autodiff_devices() -> Vec<(&'static str, Device)> {
    let all = autodiff_devices();
    let cpu: Vec<_> = all
        .iter()
        .filter(|(name, _)| matches!(*name, "flex" | "ndarray"))
        .cloned()
        .collect();
    if cpu.is_empty() { all } else { cpu }
}

pub fn floats<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

pub fn ints<const D: usize>(
    values: Vec<i64>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

pub fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.try_into_vec_as::<f32>().expect("f32 data")
}

/// `|a − b| ≤ rel·max(|a|, |b|) + abs`, elementwise, with a message naming the device.
pub fn assert_close(
    device: &str,
    what: &str,
    actual: &[f32],
    expected: &[f64],
    rel: f64,
    abs: f64,
) {
    assert_eq!(actual.len(), expected.len(), "[{device}] {what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let a = f64::from(*a);
        let tol = rel * a.abs().max(e.abs()) + abs;
        assert!(
            (a - e).abs() <= tol && a.is_finite() == e.is_finite(),
            "[{device}] {what}[{i}]: got {a}, expected {e} (tolerance {tol})"
        );
    }
}

/// Asserts that `$result` is an `Err` whose variant matches `$pattern` (with an optional
/// `if` guard), and returns the error for further checks. The assertion message shows the
/// error's own text, so a wrong variant is easy to read.
#[macro_export]
macro_rules! assert_error {
    ($result:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {{
        match $result {
            Ok(_) => panic!("expected an error matching `{}`, got Ok", stringify!($pattern)),
            Err(err) => {
                assert!(
                    matches!(&err, $pattern $(if $guard)?),
                    "expected `{}`, got {err:?}: {err}",
                    stringify!($pattern)
                );
                err
            }
        }
    }};
}

/// The number of randomized cases of a fuzz property: `FUZZ_CASES` (the whole campaign,
/// default 2000) split evenly over `properties` properties, at least 1 each.
pub fn fuzz_cases(properties: u32) -> u32 {
    let total = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(2000);
    (total / properties.max(1)).max(1)
}

/// `[B, 2]` pairs, chosen in column 0, from the chosen and rejected columns `[B]`.
pub fn pair_columns(chosen: Tensor<1>, rejected: Tensor<1>) -> Tensor<2> {
    Tensor::stack(vec![chosen, rejected], 1)
}

/// A logged metric by name (`None` when it was not logged).
pub fn logged(metrics: &[(&'static str, f64)], name: &str) -> Option<f64> {
    metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
