//! TRL's `DPOConfig.loss_type` values.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::PreferenceError;

/// One DPO-family loss, by TRL 1.16's `loss_type` string (`FromStr`, `Display` and serde use it).
///
/// Per pair, `ℓ = log π − log π_ref` (the sequence log-ratio), `s` the
/// [f-divergence score](crate::loss::FDivergence), `Δ = s(ℓc) − s(ℓr)`, `ε` = `label_smoothing`:
///
/// ```text
/// sigmoid       −log σ(βΔ)
/// hinge         relu(1 − βΔ)
/// ipo           (s(ℓc)/|yc| − s(ℓr)/|yr| − 1/(2β))²
/// exo_pair      σ(βΔ)(log σ(βΔ) − log(1−ε)) + σ(−βΔ)(log σ(−βΔ) − log ε)
/// nca_pair      −log σ(βℓc) − ½ log σ(−βℓc) − ½ log σ(−βℓr)
/// robust        [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)
/// bco_pair      −log σ(βℓc) − log σ(−βℓr)
/// sppo_hard     (ℓc − 1/(2β))² + (ℓr + 1/(2β))²
/// aot           d = sort(c − r) − sort(c₀ − r₀):  −(1−ε) log σ(βd) − ε log σ(−βd)
/// aot_unpaired  d = sort(ℓc) − sort(ℓr):          the same
/// apo_zero      1 − σ(βℓc) + σ(βℓr)
/// apo_down      σ(βℓc) + 1 − σ(β(ℓc − ℓr))
/// discopop      z = βΔ, m = σ(z/τ):  (1 − m)(−log σ(z)) + m·e^{−z}
/// sft           token-mean NLL of the chosen completions over the batch
/// sigmoid_norm  −log σ(β(s(ℓc)/|yc| − s(ℓr)/|yr|))
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// `"sigmoid"`: DPO (Rafailov et al. 2023). TRL 1.16 ignores `label_smoothing` here.
    Sigmoid,
    /// `"hinge"`: SLiC (Zhao et al. 2023).
    Hinge,
    /// `"ipo"`: IPO (Azar et al. 2023), on length-normalised scores as in TRL.
    Ipo,
    /// `"exo_pair"`: EXO (Ji et al. 2024); needs `label_smoothing > 0`.
    ExoPair,
    /// `"nca_pair"`: NCA (Chen et al. 2024).
    NcaPair,
    /// `"robust"`: robust DPO (Chowdhury et al. 2024); `label_smoothing ∈ [0, ½)`.
    Robust,
    /// `"bco_pair"`: BCO (Jung et al. 2024), paired form.
    BcoPair,
    /// `"sppo_hard"`: SPPO (Wu et al. 2024) with hard probabilities.
    SppoHard,
    /// `"aot"`: AOT (Melnyk et al. 2024), paired.
    Aot,
    /// `"aot_unpaired"`: AOT, unpaired.
    AotUnpaired,
    /// `"apo_zero"`: APO-zero (D'Oosterlinck et al. 2024).
    ApoZero,
    /// `"apo_down"`: APO-down (D'Oosterlinck et al. 2024).
    ApoDown,
    /// `"discopop"`: DiscoPOP (Lu et al. 2024), temperature `discopop_tau`.
    Discopop,
    /// `"sft"`: the NLL of the chosen completions (token mean over the batch).
    Sft,
    /// `"sigmoid_norm"`: DPO on length-normalised scores.
    SigmoidNorm,
}

impl DpoLossType {
    /// Every loss type, in TRL's order.
    pub const ALL: [DpoLossType; 15] = [
        DpoLossType::Sigmoid,
        DpoLossType::Hinge,
        DpoLossType::Ipo,
        DpoLossType::ExoPair,
        DpoLossType::NcaPair,
        DpoLossType::Robust,
        DpoLossType::BcoPair,
        DpoLossType::SppoHard,
        DpoLossType::Aot,
        DpoLossType::AotUnpaired,
        DpoLossType::ApoZero,
        DpoLossType::ApoDown,
        DpoLossType::Discopop,
        DpoLossType::Sft,
        DpoLossType::SigmoidNorm,
    ];

    /// TRL's string for this loss type.
    pub fn as_str(self) -> &'static str {
        match self {
            DpoLossType::Sigmoid => "sigmoid",
            DpoLossType::Hinge => "hinge",
            DpoLossType::Ipo => "ipo",
            DpoLossType::ExoPair => "exo_pair",
            DpoLossType::NcaPair => "nca_pair",
            DpoLossType::Robust => "robust",
            DpoLossType::BcoPair => "bco_pair",
            DpoLossType::SppoHard => "sppo_hard",
            DpoLossType::Aot => "aot",
            DpoLossType::AotUnpaired => "aot_unpaired",
            DpoLossType::ApoZero => "apo_zero",
            DpoLossType::ApoDown => "apo_down",
            DpoLossType::Discopop => "discopop",
            DpoLossType::Sft => "sft",
            DpoLossType::SigmoidNorm => "sigmoid_norm",
        }
    }

    /// Whether TRL 1.16 reads `label_smoothing` in this loss type (`robust`, `exo_pair`,
    /// `aot`, `aot_unpaired`).
    pub fn reads_label_smoothing(self) -> bool {
        matches!(
            self,
            DpoLossType::Robust
                | DpoLossType::ExoPair
                | DpoLossType::Aot
                | DpoLossType::AotUnpaired
        )
    }

    /// Whether the loss reads the f-divergence scores, i.e. accepts a `f_divergence_type`
    /// other than `reverse_kl` (TRL's list: the losses built on the chosen−rejected score
    /// difference, and `sft`, which reads none).
    pub fn supports_f_divergence(self) -> bool {
        // TRL's list is exactly the margin losses plus `sft`.
        self.is_margin_loss() || self == DpoLossType::Sft
    }

    /// Whether the per-pair loss is a function of the pair's margin alone, so that it extends
    /// to soft labels and ranked lists of `K > 2` candidates.
    pub fn is_margin_loss(self) -> bool {
        matches!(
            self,
            DpoLossType::Sigmoid
                | DpoLossType::SigmoidNorm
                | DpoLossType::Hinge
                | DpoLossType::Ipo
                | DpoLossType::ExoPair
                | DpoLossType::Robust
                | DpoLossType::Discopop
        )
    }
}

impl fmt::Display for DpoLossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DpoLossType {
    type Err = PreferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| PreferenceError::InvalidValue {
                arg: "loss_type",
                expected: "one of sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, \
                           sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, \
                           sigmoid_norm",
                found: s.to_string(),
            })
    }
}
