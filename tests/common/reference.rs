//! `f64` references shared by the tests: one copy of each scalar function.

/// `log(1 + eˣ)`, stable for large `|x|`.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `1 / (1 + e⁻ˣ)`, without overflow for large `|x|`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

/// `log σ(x) = −softplus(−x)`.
pub fn log_sigmoid(x: f64) -> f64 {
    -softplus(-x)
}

/// `log(1 − eˢ)` for `s < 0`, accurate on both sides of `−ln 2`.
pub fn log1mexp(s: f64) -> f64 {
    if s < -std::f64::consts::LN_2 {
        (-s.exp()).ln_1p()
    } else {
        (-s.exp_m1()).ln()
    }
}

/// f32 values widened to f64.
pub fn as_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| f64::from(x)).collect()
}

/// The mean of `values`.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}
