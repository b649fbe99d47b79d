//! Preference losses: the DPO family of TRL's `DPOTrainer` ([`DpoConfig`], every TRL 1.16
//! `loss_type`), ΨPO and its named forms DPO and IPO, and RRHF.
//!
//! Every loss implements [`PreferenceLoss`]: it takes a [`PreferenceBatch`] of `B` prompts with
//! `K ≥ 2` candidate responses each and returns a [`PreferenceOutput`] with the reduced loss, the
//! per-prompt losses and the metrics of [`PreferenceMetrics`].
//!
//! | loss | per ordered pair `i ≻ j`, `h = ρ_i − ρ_j` | reference | pick it when |
//! |---|---|---|---|
//! | [DPO family](DpoConfig) | any [`DpoLossType`], weighted, with [`FDivergence`], WPO, LD-DPO | yes or free | TRL's `DPOConfig`, key for key |
//! | [cDPO](PsiPoConfig) | `(1 − ε)·softplus(−βh) + ε·softplus(βh)` | yes or free | labels flipped at a rate ε |
//! | [IPO](IpoConfig) | `(h − 1/(2τ))²` | yes or free | deterministic or near-deterministic preferences: the margin has a finite target, so it does not drift without limit as DPO does (it can still fit noise in small data) |
//! | [ΨPO](PsiPoConfig) | DPO's or IPO's, by [`Psi`] | yes or free | choosing Ψ at run time |
//! | [RRHF](RrhfConfig) | `max(0, p_j − p_i)` + fine-tune term | none | K scored candidates |
//!
//! Each TRL `loss_type` lives in one family file, found by its TRL name: margin losses of `βΔ`
//! (`sigmoid`, `hinge`, `robust`, `exo_pair`, `discopop`, `sigmoid_norm`), squared-target losses
//! (`ipo`, `sppo_hard`), anchored per-response losses (`nca_pair`, `bco_pair`, `apo_zero`,
//! `apo_down`), batch-sorted AOT (`aot`, `aot_unpaired`) and the NLL term (`sft`). ΨPO's logit
//! and identity forms call the same `sigmoid` and `ipo` functions.

mod anchored;
mod aot;
pub(crate) mod batch;
mod bco;
mod concatenated;
mod cpo;
mod divergence;
mod dpo;
mod ipo;
mod kto;
mod layout;
mod loss_type;
mod margin;
mod nll;
mod orpo;
mod psipo;
mod rrhf;
mod squared;
mod zoo;

pub use batch::PreferenceBatch;
pub use bco::{BcoConfig, BcoLoss, BcoOutput, BcoState};
pub use cpo::{ALPHAPO_MAX_SCALE, CpoConfig, CpoLoss, CpoLossType, CpoOutput};
pub use divergence::FDivergence;
pub use dpo::DpoConfig;
pub use ipo::IpoConfig;
pub use kto::{KlSequence, KtoConfig, KtoLoss, KtoLossType, KtoOutput, UnpairedBatch, kl_pairs};
pub use loss_type::DpoLossType;
pub use nll::token_mean_nll;
pub use orpo::{ORPO_MAX_LOGP, OrpoConfig, OrpoLoss, OrpoOutput};
pub use psipo::{Psi, PsiPoConfig, PsiPoLoss};
pub use rrhf::{RankLoss, RrhfConfig, RrhfLoss};
pub use zoo::DpoLoss;

use burn::config::Config;
use burn::tensor::Tensor;

use crate::error;
use crate::metrics::{PreferenceMetrics, TokenMetrics};

/// TRL's token-level metrics of the batch's policy tensors, when it carries them.
pub(crate) fn token_metrics(batch: &PreferenceBatch) -> TokenMetrics {
    match batch.tokens.policy.as_deref() {
        None => TokenMetrics::default(),
        Some(side) => TokenMetrics::new(
            &side.valid,
            side.mean_logits.as_ref(),
            side.entropy.as_ref(),
            side.is_top1.as_ref(),
        ),
    }
}

/// A preference-optimisation loss.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::{DpoConfig, PreferenceBatch, PreferenceLoss};
///
/// let device = Device::default();
/// let f = |v: [f32; 2]| Tensor::<1>::from_floats(v, &device);
/// // Sequence log-probs of two preference pairs under the policy and the frozen reference.
/// let batch = PreferenceBatch::pairwise(f([-12.0, -30.5]), f([-14.0, -29.0]))?
///     .with_pairwise_reference(f([-13.0, -30.0]), f([-13.5, -29.5]))?;
/// let out = DpoConfig::new().init()?.forward(batch)?;
/// let loss: f32 = out.loss.into_scalar();
/// assert!(loss > 0.0);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
pub trait PreferenceLoss {
    /// Computes the loss and its metrics for one batch.
    ///
    /// # Errors
    /// A [`PreferenceError`](crate::PreferenceError) when the batch lacks an input the loss needs
    /// (e.g. a reference for a loss that is not reference-free, lengths for RRHF).
    fn forward(&self, batch: PreferenceBatch) -> error::Result<PreferenceOutput>;
}

/// What every loss returns.
#[derive(Debug, Clone)]
pub struct PreferenceOutput {
    /// The loss reduced over prompts: `[1]` for [`Reduction::Mean`] and [`Reduction::Sum`],
    /// `[B]` for [`Reduction::None`]. Call `backward()` on it.
    pub loss: Tensor<1>,
    /// The loss of each prompt `[B]` (a prompt's ordered pairs are averaged).
    pub losses: Tensor<1>,
    /// Detached metrics.
    pub metrics: PreferenceMetrics,
}

/// How per-prompt losses are reduced over the batch.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The mean over prompts (the default everywhere).
    Mean,
    /// The sum over prompts.
    Sum,
    /// No reduction: the per-prompt losses `[B]`.
    None,
}

impl Reduction {
    pub(crate) fn apply(self, losses: Tensor<1>) -> Tensor<1> {
        match self {
            Reduction::Mean => losses.mean(),
            Reduction::Sum => losses.sum(),
            Reduction::None => losses,
        }
    }
}
