//! Preference and policy losses, one contract: every loss implements [`PreferenceLoss`], reads
//! one batch type ([`PairedBatch`](crate::batch::PairedBatch),
//! [`UnpairedBatch`](crate::batch::UnpairedBatch) or
//! [`CompletionBatch`](crate::batch::CompletionBatch)) and returns one [`LossOutput`]: the loss, each
//! example's share of it, and its [`Metrics`] under TRL's names.
//!
//! | loss | batch | per example | reference | pick it when |
//! |---|---|---|---|---|
//! | [DPO family](DpoConfig) | paired / ranked | any TRL 1.16 `DPOConfig.loss_type`, weighted, with f-divergences, WPO, LD-DPO | yes or free | TRL's `DPOConfig`, key for key: the default |
//! | [DPOP](DpopConfig) | paired / ranked | DPO with `λ·max(0, −ρ_w)` inside the sigmoid | yes | pairs that differ in a few tokens: keeps the chosen likelihood from falling |
//! | [β-DPO](BetaDpoConfig) | paired | DPO at a per-batch β from the reward gaps, outlier pairs filtered | yes or free | noisy data or mixed-quality pairs, β hard to tune |
//! | [R-DPO](RdpoConfig) | paired / ranked | DPO with `α·(|y_w| − |y_l|)` inside the sigmoid | yes or free | data that prefers longer answers |
//! | [ODPO](OdpoConfig) | paired / ranked | DPO with an offset `Δ = α·log(s_w − s_l)` inside the sigmoid | yes or free | scored pairs: a clear win should move the policy further |
//! | [Plackett–Luce](PlackettLuceConfig) | ranked | the ranking's Plackett–Luce likelihood; `K = 2` is DPO | yes or free | full rankings of K responses |
//! | [LiPO-λ](LipoConfig) | ranked, graded | pairwise logistic weighted by ΔNDCG | yes or free | graded lists (rewards, ratings) |
//! | [SimPER](SimperConfig) | paired / ranked | `−exp(ℓ̄_w) + exp(ℓ̄_l)`, inverse perplexities | none | no reference and no hyperparameter to tune |
//! | [ΨPO](PsiPoConfig) | paired / ranked | DPO's `softplus(−βh)` or IPO's `(h − 1/(2τ))²`, by [`Psi`] | yes or free | the paper's forms: Ψ chosen at run time, IPO on sequence sums, conservative DPO's label smoothing |
//! | [RRHF](RrhfConfig) | ranked | `max(0, p_j − p_i)` + fine-tune term | none | K scored candidates |
//! | [CPO, SimPO, AlphaPO](CpoConfig) | paired | sigmoid / hinge / IPO / SimPO margin + NLL | none | no reference model: half the memory and compute |
//! | [ORPO](OrpoConfig) | paired | odds-ratio term + NLL | none | SFT and preference in one loss |
//! | [KTO](KtoConfig) | unpaired | prospect-theoretic value against the KL reference point | yes | thumbs-up / thumbs-down data |
//! | [BCO](BcoConfig) | unpaired | logistic classifier of the reward, shifted by a running δ | yes | unpaired data, a binary classifier of rewards |
//! | [GRPO family](GrpoConfig) | completions | clipped (or gated, or weighted) policy gradient per token, any TRL 1.16 `GRPOConfig.loss_type` | optional (k3 KL) | K sampled completions scored by a reward |
//! | [RLOO](RlooConfig) | completions | clipped policy gradient on whole-sequence ratios | in the reward | the same, with leave-one-out advantages |
//!
//! **Two doors to DPO and IPO, on purpose.** Use [`DpoConfig`] for anything TRL's `DPOConfig`
//! expresses (its `loss_type = "ipo"` is TRL's IPO on length-normalised log-probs); use
//! [`PsiPoConfig`] for the ΨPO paper's forms — Ψ chosen at run time, IPO on sequence sums as
//! the paper writes it, and conservative DPO's label smoothing, which TRL 1.16's `sigmoid`
//! ignores.
//!
//! Each TRL `loss_type` lives in one formula file under `formulas/`, found by its TRL name:
//! margin losses of `βΔ` (`sigmoid`, `hinge`, `robust`, `exo_pair`, `discopop`,
//! `sigmoid_norm`), squared-target losses (`ipo`, `sppo_hard`), anchored per-response losses
//! (`nca_pair`, `bco_pair`, `apo_zero`, `apo_down`), batch-sorted AOT (`aot`,
//! `aot_unpaired`), the NLL term (`sft`) and the f-divergence scores. The losses compose them.
//!
//! # Adding a loss
//! 1. Its formula: a function in `formulas/` (or a new file there), written from the paper.
//! 2. Its config and loss in one file of this folder: `XxxConfig` (documented defaults,
//!    TRL's key names where TRL has the loss, a `value_checks` switch) with a validating
//!    `init()`, and `XxxLoss` implementing [`PreferenceLoss`] for the batch type its data
//!    has; its metrics under TRL's names; a row in the table above.
//! 3. A fixture: TRL's own numbers from `tests/fixtures/trl_oracle.py` (or, where no peer
//!    ships the loss, an `f64` reference written from the paper in the test), checked on every
//!    device in `tests/loss/`.

mod bco;
mod beta_dpo;
mod cpo;
mod dpo;
mod dpop;
pub(crate) mod formulas;
mod grpo;
mod kto;
mod lipo;
mod odpo;
mod orpo;
mod plackett_luce;
mod psipo;
mod rdpo;
mod rloo;
mod rrhf;
mod simper;

pub use bco::{BcoConfig, BcoLoss, BcoState, BcoStateRecord};
pub use beta_dpo::{
    BETA_DPO_MIN_BETA, BetaDpoConfig, BetaDpoLoss, BetaDpoState, BetaDpoStateRecord,
};
pub use cpo::{ALPHAPO_MAX_SCALE, CpoConfig, CpoLoss, CpoLossType};
pub use dpo::{DpoConfig, DpoLoss, DpoLossType};
pub use dpop::{DpopConfig, DpopLoss};
pub use formulas::divergence::FDivergence;
pub use formulas::nll::token_mean_nll;
pub use grpo::{GrpoConfig, GrpoLoss, GrpoLossType, ImportanceSamplingLevel};
pub use kto::{KlSequence, KtoConfig, KtoLoss, KtoLossType, kl_pairs, kto_reference_point};
pub use lipo::{LIPO_MAX_GRADE, LipoConfig, LipoLoss};
pub use odpo::{OdpoConfig, OdpoLoss, odpo_offsets};
pub use orpo::{ORPO_MAX_LOGP, OrpoConfig, OrpoLoss};
pub use plackett_luce::{PlackettLuceConfig, PlackettLuceLoss};
pub use psipo::{Psi, PsiPoConfig, PsiPoLoss};
pub use rdpo::{RdpoConfig, RdpoLoss};
pub use rloo::{RlooConfig, RlooLoss};
pub use rrhf::{RankLoss, RrhfConfig, RrhfLoss};
pub use simper::{SimperConfig, SimperLoss};

use burn::tensor::Tensor;

use crate::batch::Reduction;
use crate::error::Result;
use crate::metrics::Metrics;

/// A preference-optimisation loss: one batch in, one [`LossOutput`] out.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// // Sequence log-probs of two pairs [chosen, rejected] under the policy and the reference.
/// let policy = Tensor::<2>::from_floats([[-12.0, -14.0], [-30.5, -29.0]], &device);
/// let reference = Tensor::<2>::from_floats([[-13.0, -13.5], [-30.0, -29.5]], &device);
/// let batch = PairedBatch::new(policy)?.with_reference(reference)?;
/// let out = DpoConfig::new().init()?.forward(batch)?;
/// let loss: f32 = out.loss.into_scalar();
/// assert!(loss > 0.0);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
pub trait PreferenceLoss {
    /// The batch the loss reads: [`PairedBatch`](crate::batch::PairedBatch),
    /// [`UnpairedBatch`](crate::batch::UnpairedBatch) or
    /// [`CompletionBatch`](crate::batch::CompletionBatch).
    type Batch;

    /// Computes the loss and its metrics for one batch.
    ///
    /// # Errors
    /// A [`PreferenceError`](crate::PreferenceError) when the batch lacks an input the loss
    /// needs (a reference, lengths, per-token log-probs), has the wrong shape for it, or, with
    /// the config's `value_checks` on, holds values the loss refuses.
    fn forward(&self, batch: Self::Batch) -> Result<LossOutput>;
}

/// What every loss returns.
///
/// `loss = mean(losses)` for every loss: `losses` is each example's share (a prompt's, for
/// paired and ranked batches; an example's, for unpaired ones), with a batch-level term such
/// as the NLL of CPO, ORPO or `sft` added to every example, as TRL broadcasts it. A batch with
/// weights ([`PairedBatch::with_weights`](crate::batch::PairedBatch::with_weights),
/// [`UnpairedBatch::with_weights`](crate::batch::UnpairedBatch::with_weights)) makes it the
/// weighted mean `Σ w·losses / Σ w`; β-DPO's data filter is such a weight (0 or 1). Sum or
/// weigh them otherwise from `losses` if your trainer needs to.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The loss `[1]`, the (weighted) mean of `losses`. Call `backward()` on it.
    pub loss: Tensor<1>,
    /// Each example's loss `[B]` (or `[N]`), differentiable.
    pub losses: Tensor<1>,
    /// The metrics, detached, on the device: nothing is read back until
    /// [`Metrics::log`].
    pub metrics: Metrics,
}

impl LossOutput {
    /// The output of a batch's per-example losses `examples [N]` and its token-mean term, if
    /// any: `losses = examples + weight·(the term's mean over this batch)`, and `loss` their
    /// (weighted) mean — or, for a micro-batch of a larger step, the step's share
    /// `Σ w·examples / step.examples + weight·Σ term / step.tokens`.
    pub(crate) fn new(
        examples: Tensor<1>,
        term: Option<TokenTerm>,
        reduction: Reduction,
        metrics: Metrics,
    ) -> Self {
        let [rows] = examples.dims();
        let losses = match &term {
            None => examples.clone(),
            Some(term) => {
                let mean = term.sum.clone().div(term.count.clone().clamp_min(1.0));
                examples
                    .clone()
                    .add(mean.mul_scalar(term.weight).expand([rows]))
            }
        };
        // Σ w·values, a zero weight dropping its value even when it is inf or NaN (0·inf).
        let weighted_sum = |values: Tensor<1>| match &reduction.weights {
            None => values.sum(),
            Some(weights) => {
                let dropped = weights.clone().equal_elem(0.0);
                values.mask_fill(dropped, 0.0).mul(weights.clone()).sum()
            }
        };
        let loss = match (reduction.step, term) {
            (None, _) => {
                let total = match &reduction.weights {
                    None => Tensor::full([1], rows as f64, &losses.device()),
                    Some(weights) => weights.clone().sum(),
                };
                weighted_sum(losses.clone()).div(total)
            }
            (Some(step), term) => {
                let share = weighted_sum(examples).div_scalar(step.examples);
                match term {
                    None => share,
                    Some(term) => {
                        share.add(term.sum.mul_scalar(term.weight / step.tokens.max(1.0)))
                    }
                }
            }
        };
        Self {
            loss,
            losses,
            metrics,
        }
    }
}

/// A token-mean term of the whole batch (the NLL of CPO, ORPO and `sft`): its sum and token
/// count over this batch `[1]` each, and its weight in the loss.
pub(crate) struct TokenTerm {
    pub(crate) sum: Tensor<1>,
    pub(crate) count: Tensor<1>,
    pub(crate) weight: f64,
}
