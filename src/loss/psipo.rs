//! ΨPO (Azar et al. 2023): the one implementation behind DPO and IPO.

use burn::config::Config;
use burn::tensor::Tensor;

use super::formulas::{margin, squared};
use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::check;
use crate::error;
use crate::metrics::trl;

/// The Ψ of ΨPO's objective `max_π E[Ψ(p*(y ≻ y'))] − β·KL(π ‖ π_ref)`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Psi {
    /// `Ψ(p) = log(p / (1 − p))`: DPO. Per pair `softplus(−βh)`; on deterministic preferences
    /// the optimal margin is infinite, so the policy drifts from the reference however large β.
    Logit,
    /// `Ψ(p) = p`: IPO. Per pair `(h − 1/(2β))²`; the margin is pulled to the finite target
    /// `1/(2β)` (β is IPO's τ), so a larger β keeps the policy closer to the reference.
    Identity,
}

/// Configuration of [`PsiPoLoss`]: the ΨPO paper's DPO (`Psi::Logit`, with conservative DPO's
/// label smoothing) and IPO (`Psi::Identity`, β is IPO's τ). For TRL's `DPOConfig` keys and
/// `loss_type`s (TRL's `ipo` on length-normalised log-probs among them) use
/// [`DpoConfig`](super::DpoConfig).
#[derive(Config, Debug)]
pub struct PsiPoConfig {
    /// Which Ψ.
    pub psi: Psi,
    /// The KL coefficient: DPO's β, IPO's τ, in `[1e-8, 1e8]`. Default: `0.1`.
    #[config(default = 0.1)]
    pub beta: f64,
    /// Label smoothing `ε ∈ [0, 0.5)`: the assumed rate of flipped labels (conservative DPO).
    /// A pair's label `q` becomes `q(1 − ε) + (1 − q)ε`. Default: `0.0`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Train without a reference model (`log π_ref = 0`); any reference in the batch is
    /// ignored. When `false` a batch without a reference is an error. Default: `false`.
    #[config(default = false)]
    pub reference_free: bool,
    /// Check the values of the batch's scores and soft labels, reading them back to the host
    /// (a GPU step then waits for its queued work); `false` never reads a tensor back.
    /// Default: `true`.
    #[config(default = true)]
    pub value_checks: bool,
}

impl PsiPoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for `β ∉ [1e-8, 1e8]`
    /// (outside it `β·h` or IPO's target `1/(2τ)` squared leave what `f32` holds) or
    /// `ε ∉ [0, 0.5)`.
    pub fn init(&self) -> error::Result<PsiPoLoss> {
        let beta_name = match self.psi {
            Psi::Logit => "beta",
            Psi::Identity => "tau",
        };
        check::kl_coefficient(beta_name, self.beta)?;
        check::param(
            "label_smoothing",
            self.label_smoothing,
            "in [0, 0.5)",
            |e| (0.0..0.5).contains(&e),
        )?;
        Ok(PsiPoLoss {
            psi: self.psi,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            reference_free: self.reference_free,
            value_checks: self.value_checks,
        })
    }
}

/// ΨPO with identity or logit Ψ, over pairs or ranked lists.
///
/// For each ordered pair `i ≻ j` of a prompt, with margin `h = ρ_i − ρ_j`, `ρ = log π − log π_ref`
/// and preference label `q` (1 unless soft labels or smoothing say otherwise):
///
/// ```text
/// Logit:    q·softplus(−βh) + (1 − q)·softplus(βh)       minimiser βh* = log(q / (1 − q))
/// Identity: (h − (2q − 1)/(2β))²                          minimiser h*  = (2q − 1)/(2β)
/// ```
///
/// A prompt's loss is the mean over its ordered pairs (ties form none; a prompt whose
/// candidates all tie contributes 0), so a pairwise batch is the ranked list with `K = 2`.
/// `softplus` is evaluated stably; results and gradients are finite for `|βh| ≤ 1e4`, and the
/// logit loss's gradient is bounded by β.
///
/// The IPO paper uses sequence *sums* of log-probs and TRL uses length-*averaged* log-probs;
/// this loss takes whichever `ρ` it is given: choose with
/// [`LogpReduction`](crate::logps::LogpReduction) (`Sum` or `Mean`) when gathering the log-probs.
///
/// Metrics: rewards are `β·ρ` (as in TRL).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let policy = Tensor::<2>::from_floats([[-12.0, -14.0]], &device);
/// let batch = PairedBatch::new(policy)?.with_reference(Tensor::from_floats([[-13.0, -13.5]], &device))?;
/// // IPO (τ = 0.5) on sums: the margin h = 1 − (−0.5) = 1.5 against the target 1/(2τ) = 1.
/// let out = PsiPoConfig::new(Psi::Identity).with_beta(0.5).init()?.forward(batch)?;
/// assert!((out.loss.into_scalar::<f32>() - 0.25).abs() < 1e-6);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiPoLoss {
    psi: Psi,
    beta: f64,
    label_smoothing: f64,
    reference_free: bool,
    value_checks: bool,
}

impl PsiPoLoss {
    /// Which Ψ this loss uses.
    pub fn psi(&self) -> Psi {
        self.psi
    }

    /// The KL coefficient (β or τ).
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The per-pair loss of margins `h`, with the preference label `q` broadcast over `h`.
    /// The formulas live in the zoo's families (`sigmoid` and `ipo`): one implementation each.
    fn pair_loss(&self, margins: Tensor<3>, labels: Option<Tensor<3>>) -> Tensor<3> {
        let eps = self.label_smoothing;
        match (self.psi, labels) {
            (Psi::Logit, None) => margin::sigmoid(margins.mul_scalar(self.beta), eps),
            (Psi::Logit, Some(q)) => {
                margin::sigmoid_soft(margins.mul_scalar(self.beta), smooth(q, eps))
            }
            (Psi::Identity, None) => squared::ipo(margins, (1.0 - 2.0 * eps) / (2.0 * self.beta)),
            (Psi::Identity, Some(q)) => {
                let target = smooth(q, eps)
                    .mul_scalar(2.0)
                    .sub_scalar(1.0)
                    .div_scalar(2.0 * self.beta);
                squared::ipo_soft(margins, target)
            }
        }
    }

    fn loss_name(&self) -> &'static str {
        match self.psi {
            Psi::Logit => "DPO",
            Psi::Identity => "IPO",
        }
    }
}

/// `q(1 − ε) + (1 − q)ε = q(1 − 2ε) + ε`.
fn smooth(q: Tensor<3>, eps: f64) -> Tensor<3> {
    if eps == 0.0 {
        q
    } else {
        q.mul_scalar(1.0 - 2.0 * eps).add_scalar(eps)
    }
}

impl PreferenceLoss for PsiPoLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        if self.value_checks {
            batch.check_values()?;
        }
        let ratios = batch.log_ratios(self.loss_name(), self.reference_free)?;
        let ranking = batch.ranking();
        let labels = batch.soft_labels.as_ref().map(|q| {
            let [prompts] = q.dims();
            q.clone().reshape([prompts, 1, 1])
        });
        let pair_losses = self.pair_loss(ranking.margins(ratios.clone()), labels);
        let losses = ranking.mean_over_pairs(pair_losses);
        let rewards = ratios.detach().mul_scalar(self.beta);
        let metrics = trl::paired_batch(&batch, rewards, batch.policy.clone(), &ranking);
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
