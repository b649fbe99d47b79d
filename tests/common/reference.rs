//! `f64` reference helpers.

/// `f32` values widened to `f64` (exactly), for [`assert_close`](super::assert_close)'s
/// expected values.
pub fn as_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| f64::from(x)).collect()
}
