//! f-divergence scores (f-DPO, Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct
//! Preference Optimization with Diverse Divergence Constraints"): with the regulariser
//! `D_f(π ‖ π_ref)` in place of the reverse KL, DPO's implicit reward `log(π/π_ref) = u` becomes
//! `f'(e^u)`, and the losses that compare the chosen and rejected rewards compare these scores.

use core::fmt;
use core::str::FromStr;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::PreferenceError;
use crate::numerics::softplus;

/// The f-divergence of the KL regulariser (TRL's `f_divergence_type`), by TRL's strings.
///
/// ```text
/// reverse_kl        s(u) = u                                  (DPO)
/// forward_kl        s(u) = 1 − e^{−u}
/// js_divergence     s(u) = ln 2 + log σ(u)
/// alpha_divergence  s(u) = (e^{(a−1)u} − 1)/(a − 1),  a = f_alpha_divergence_coef; a = 1 is u
/// ```
///
/// Exponents are capped at 80 (as TRL caps the α-divergence's in f32), so scores stay finite at
/// `|u| = 1e4`, where TRL's `forward_kl` gives `−∞`; the gradient is 0 beyond the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    /// `"reverse_kl"`: `s(u) = u`, standard DPO (the default).
    #[default]
    ReverseKl,
    /// `"forward_kl"`: `s(u) = 1 − e^{−u}` (mass-covering).
    ForwardKl,
    /// `"js_divergence"`: `s(u) = ln 2 + log σ(u)` (Jensen–Shannon).
    JsDivergence,
    /// `"alpha_divergence"`: `s(u) = (e^{(a−1)u} − 1)/(a − 1)`, `a = f_alpha_divergence_coef`.
    AlphaDivergence,
}

impl FDivergence {
    /// Every variant, in TRL's order.
    pub const ALL: [FDivergence; 4] = [
        FDivergence::ReverseKl,
        FDivergence::ForwardKl,
        FDivergence::JsDivergence,
        FDivergence::AlphaDivergence,
    ];

    /// TRL's string for this divergence.
    pub fn as_str(self) -> &'static str {
        match self {
            FDivergence::ReverseKl => "reverse_kl",
            FDivergence::ForwardKl => "forward_kl",
            FDivergence::JsDivergence => "js_divergence",
            FDivergence::AlphaDivergence => "alpha_divergence",
        }
    }

    /// The score `s(u)` of log-ratios `u`; `alpha` is `f_alpha_divergence_coef`.
    pub(crate) fn score<const D: usize>(self, u: Tensor<D>, alpha: f64) -> Tensor<D> {
        match self {
            FDivergence::ReverseKl => u,
            FDivergence::ForwardKl => u.neg().clamp_max(EXP_CAP).exp().neg().add_scalar(1.0),
            FDivergence::JsDivergence => {
                softplus(u.neg()).neg().add_scalar(core::f64::consts::LN_2)
            }
            FDivergence::AlphaDivergence => {
                // TRL's limit case: f'(t) → log t, the reverse KL.
                if (alpha - 1.0).abs() < 1e-6 {
                    return u;
                }
                u.mul_scalar(alpha - 1.0)
                    .clamp_max(EXP_CAP)
                    .exp()
                    .sub_scalar(1.0)
                    .div_scalar(alpha - 1.0)
            }
        }
    }
}

/// TRL's f32 cap on the α-divergence's exponent; `e^80 ≈ 5.5e34` is finite in f32.
const EXP_CAP: f64 = 80.0;

impl fmt::Display for FDivergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FDivergence {
    type Err = PreferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| PreferenceError::InvalidValue {
                arg: "f_divergence_type",
                expected: "one of reverse_kl, forward_kl, js_divergence, alpha_divergence",
                found: s.to_string(),
            })
    }
}
