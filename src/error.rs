//! The crate's one error type.
//!
//! Every fallible function returns [`Result`]: a malformed batch should not abort a training
//! run, so bad input is reported instead of panicking (burn-nn's losses `assert!`; we do not).

/// Errors returned by log-prob helpers, losses and metrics.
///
/// Each message names the argument, what was expected and what came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PreferenceError {
    /// A tensor has the wrong shape.
    #[error("`{arg}` has shape {actual:?}, expected {expected}")]
    Shape {
        /// The argument's name.
        arg: &'static str,
        /// The expected shape, in words (e.g. `[B, T] = [2, 7]`).
        expected: String,
        /// The shape that came.
        actual: Vec<usize>,
    },

    /// Two arguments disagree on the batch size.
    #[error("batch size mismatch: `{arg}` has {actual} rows, `{reference_arg}` has {expected}")]
    BatchMismatch {
        /// The argument whose batch size is off.
        arg: &'static str,
        /// The argument that fixes the batch size.
        reference_arg: &'static str,
        /// The batch size of `reference_arg`.
        expected: usize,
        /// The batch size of `arg`.
        actual: usize,
    },

    /// A batch without rows, or a sequence too short for the requested operation.
    #[error("`{arg}` is empty: {detail}")]
    Empty {
        /// The argument's name.
        arg: &'static str,
        /// What was needed.
        detail: String,
    },

    /// A scalar hyper-parameter outside its valid range.
    #[error("`{name}` must be {expected}, got {actual}")]
    OutOfRange {
        /// The parameter's name.
        name: &'static str,
        /// The valid range, in words (e.g. `> 0`, `in [0, 0.5)`).
        expected: &'static str,
        /// The value that came.
        actual: f64,
    },

    /// A tensor holds a value it must not (a mask that is not 0/1, NaN scores, labels outside
    /// `[0, 1]`).
    #[error("`{arg}` must contain only {expected}, found {found}")]
    InvalidValue {
        /// The argument's name.
        arg: &'static str,
        /// The values allowed, in words.
        expected: &'static str,
        /// The first offending value, formatted.
        found: String,
    },

    /// An input the chosen loss needs was not provided.
    #[error("{loss} needs `{arg}`: {why}")]
    MissingInput {
        /// The loss that needs it.
        loss: &'static str,
        /// The missing argument.
        arg: &'static str,
        /// Why it is needed.
        why: &'static str,
    },

    /// Two tensors of one call live on different devices (e.g. flex and wgpu). A device with
    /// and without autodiff counts as the same device.
    #[error("`{arg}` is on {device}, but `{reference_arg}` is on {reference_device}")]
    DeviceMismatch {
        /// The argument on the other device.
        arg: &'static str,
        /// Its device, formatted.
        device: String,
        /// The argument that fixes the device.
        reference_arg: &'static str,
        /// That argument's device, formatted.
        reference_device: String,
    },

    /// A NaN or infinite value where the computation needs finite numbers (the opt-in
    /// finiteness check of the loss inputs, or a hyper-parameter-like tensor such as lengths).
    #[error("`{arg}` must be finite, found {found} at index {index:?}")]
    NonFinite {
        /// The argument's name.
        arg: &'static str,
        /// The position of the first offending value (row-major multi-index).
        index: Vec<usize>,
        /// The value, formatted (`NaN`, `inf`, `-inf`).
        found: String,
    },

    /// Reading a tensor back to the host (for validation) failed on the device.
    #[error("reading `{arg}` back from the device failed: {reason}")]
    Read {
        /// The argument being read.
        arg: &'static str,
        /// The device's error message.
        reason: String,
    },
}

/// Shorthand for `Result<T, PreferenceError>`. The error type is a defaulted parameter so that
/// `use burn_preference::prelude::*;` leaves two-argument `Result<T, E>` (e.g. `main`'s
/// `Result<(), Box<dyn Error>>`) working in the importing file.
pub type Result<T, E = PreferenceError> = core::result::Result<T, E>;
