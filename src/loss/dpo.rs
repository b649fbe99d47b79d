//! DPO (Rafailov et al. 2023): ΨPO with logit Ψ.

use burn::config::Config;

use super::{Psi, PsiPoConfig, PsiPoLoss, Reduction};
use crate::error;

/// Direct Preference Optimization, with label smoothing (cDPO), soft labels and a
/// reference-free mode. [`init`](Self::init) returns the [`PsiPoLoss`] with [`Psi::Logit`]:
/// there is one implementation of the formula.
///
/// ```text
/// per pair: (1 − ε)·softplus(−βh) + ε·softplus(βh),   h = ρ_w − ρ_l
/// ```
///
/// Semantics follow TRL's `DPOConfig` (`beta`, `label_smoothing`, `reference_free`,
/// `loss_type = "sigmoid"`): the policy's sequence log-probs are sums over response tokens.
/// Soft labels `q` per pair go on the [`PreferenceBatch`](super::PreferenceBatch)
/// (`with_soft_labels`); `q = 1 − ε` is the same as smoothing.
#[derive(Config, Debug)]
pub struct DpoConfig {
    /// β, the KL coefficient: higher keeps the policy closer to the reference. Default: `0.1`.
    #[config(default = 0.1)]
    pub beta: f64,
    /// ε ∈ [0, 0.5): assumed rate of flipped preference labels (conservative DPO).
    /// Default: `0.0`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Train without a reference model (`log π_ref = 0`). Default: `false`.
    #[config(default = false)]
    pub reference_free: bool,
    /// Reduction over prompts. Default: [`Reduction::Mean`].
    #[config(default = "Reduction::Mean")]
    pub reduction: Reduction,
}

impl DpoConfig {
    /// The equivalent [`PsiPoConfig`].
    pub fn to_psipo(&self) -> PsiPoConfig {
        PsiPoConfig::new(Psi::Logit)
            .with_beta(self.beta)
            .with_label_smoothing(self.label_smoothing)
            .with_reference_free(self.reference_free)
            .with_reduction(self.reduction)
    }

    /// Validates the configuration and builds the loss.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for `β ≤ 0` or
    /// `ε ∉ [0, 0.5)`.
    pub fn init(&self) -> error::Result<PsiPoLoss> {
        self.to_psipo().init()
    }
}
