//! IPO (Azar et al. 2023): ΨPO with identity Ψ.

use burn::config::Config;

use super::{Psi, PsiPoConfig, PsiPoLoss, Reduction};
use crate::error;

/// Identity Preference Optimisation. [`init`](Self::init) returns the [`PsiPoLoss`] with
/// [`Psi::Identity`]: there is one implementation of the formula.
///
/// ```text
/// per pair: (h − 1/(2τ))²,   h = ρ_w − ρ_l;   with a soft label q the target is (2q − 1)/(2τ)
/// ```
///
/// Unlike DPO, IPO's optimal margin is finite, so it does not drive the policy to a
/// deterministic one on deterministic preferences. A *higher* τ means a smaller target margin
/// and a stronger pull towards the reference.
///
/// **Sums or means.** The IPO paper defines `ρ` with sequence *sums* of token log-probs; TRL's
/// `loss_type = "ipo"` uses length-*averaged* log-probs. The loss uses whatever it is given:
/// gather with [`LogpReduction::Sum`](crate::LogpReduction::Sum) (the paper, and this crate's
/// default) or [`LogpReduction::Mean`](crate::LogpReduction::Mean) (TRL). With means the same
/// τ asks for a per-token margin, so τ values do not transfer between the two.
#[derive(Config, Debug)]
pub struct IpoConfig {
    /// τ, the KL coefficient: the target margin is `1/(2τ)`. Default: `0.1`.
    #[config(default = 0.1)]
    pub tau: f64,
    /// Train without a reference model (`log π_ref = 0`). Default: `false`.
    #[config(default = false)]
    pub reference_free: bool,
    /// Reduction over prompts. Default: [`Reduction::Mean`].
    #[config(default = "Reduction::Mean")]
    pub reduction: Reduction,
}

impl IpoConfig {
    /// The equivalent [`PsiPoConfig`].
    pub fn to_psipo(&self) -> PsiPoConfig {
        PsiPoConfig::new(Psi::Identity)
            .with_beta(self.tau)
            .with_reference_free(self.reference_free)
            .with_reduction(self.reduction)
    }

    /// Validates the configuration and builds the loss.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for `τ ≤ 0`.
    pub fn init(&self) -> error::Result<PsiPoLoss> {
        self.to_psipo().init()
    }
}
