//! CPO (Xu et al. 2024), SimPO (Meng et al. 2024) and AlphaPO (Gupta et al. 2025): pairwise
//! losses without a reference model, on the policy's own log-probs, as TRL's `CPOTrainer`.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::formulas::nll;
use super::formulas::{margin, squared};
use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::check;
use crate::error::{self, PreferenceError};
use crate::metrics::{Metric, trl};
use crate::numerics::expm1;

/// TRL's `CPOConfig.loss_type`; (de)serialises as TRL's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpoLossType {
    /// `"sigmoid"`: `−(1 − ε)·logσ(βx) − ε·logσ(−βx)` on summed log-probs (CPO's Eq. 3).
    Sigmoid,
    /// `"hinge"`: `relu(1 − βx)` on summed log-probs (SLiC); ignores label smoothing.
    Hinge,
    /// `"ipo"`: `(x − 1/(2β))²` on token-mean log-probs; ignores label smoothing.
    Ipo,
    /// `"simpo"`: the sigmoid form on `x − γ/β` with token-mean log-probs (SimPO).
    Simpo,
    /// `"alphapo"`: TRL's shorthand for `"simpo"` with `cpo_alpha = 0` (AlphaPO; set `alpha`
    /// for its reward shape). Resolved by [`CpoConfig::init`].
    Alphapo,
}

impl CpoLossType {
    /// TRL's string for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            CpoLossType::Sigmoid => "sigmoid",
            CpoLossType::Hinge => "hinge",
            CpoLossType::Ipo => "ipo",
            CpoLossType::Simpo => "simpo",
            CpoLossType::Alphapo => "alphapo",
        }
    }

    /// Whether the loss reads token-mean log-probs (`ipo`, `simpo`, `alphapo`) rather than
    /// sums (`sigmoid`, `hinge`), as TRL's `average_log_prob=loss_type in ["ipo", "simpo"]`.
    pub fn token_mean(self) -> bool {
        matches!(
            self,
            CpoLossType::Ipo | CpoLossType::Simpo | CpoLossType::Alphapo
        )
    }
}

impl fmt::Display for CpoLossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CpoLossType {
    type Err = PreferenceError;

    fn from_str(s: &str) -> error::Result<Self> {
        match s {
            "sigmoid" => Ok(CpoLossType::Sigmoid),
            "hinge" => Ok(CpoLossType::Hinge),
            "ipo" => Ok(CpoLossType::Ipo),
            "simpo" => Ok(CpoLossType::Simpo),
            "alphapo" => Ok(CpoLossType::Alphapo),
            other => Err(PreferenceError::InvalidValue {
                arg: "loss_type",
                expected: "one of \"sigmoid\", \"hinge\", \"ipo\", \"simpo\", \"alphapo\"",
                found: format!("{other:?}"),
            }),
        }
    }
}

trl_config! {
    /// Configuration of [`CpoLoss`], with TRL's `CPOConfig` key names and defaults, so a TRL
    /// config's JSON deserialises into it (unknown keys aside).
    ///
    /// SimPO is `loss_type = "simpo"` (set `cpo_alpha = 0` for the paper's loss without the NLL
    /// term); AlphaPO is `loss_type = "alphapo"` with a non-zero `alpha` (any loss type honours a
    /// non-zero `alpha`, as in TRL).
    pub struct CpoConfig {
    /// β, the temperature of the preference term, in `[1e-8, 1e8]`. Default: `0.1`.
        beta / with_beta: f64 = 0.1,
    /// ε ∈ [0, 0.5): assumed rate of flipped labels, for `sigmoid` and `simpo` (`hinge` and
    /// `ipo` ignore it, as TRL does). Default: `0.0`.
        label_smoothing / with_label_smoothing: f64 = 0.0,
    /// The loss type. Default: [`CpoLossType::Sigmoid`].
        loss_type / with_loss_type: CpoLossType = CpoLossType::Sigmoid,
    /// Weight of the NLL of the chosen completions, finite and `≥ 0`; `0` drops the term.
    /// Default: `1.0`.
        cpo_alpha / with_cpo_alpha: f64 = 1.0,
    /// SimPO's target reward margin γ (used by `simpo`/`alphapo` only), finite.
    /// Default: `0.5`.
        simpo_gamma / with_simpo_gamma: f64 = 0.5,
    /// AlphaPO's α, finite: with `α ≠ 0` the reward `(1 − p^{−α})/α` replaces `log p`.
    /// Default: `0.0`.
        alpha / with_alpha: f64 = 0.0,
    /// Check the batch's values, reading them back to the host: every sequence has a
    /// completion token, finite log-probs, AlphaPO rewards within [`ALPHAPO_MAX_SCALE`].
    /// `false` never reads a tensor back. Not a TRL key. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl CpoConfig {
    /// Validates the configuration and resolves `"alphapo"` as TRL's `__post_init__` does
    /// (`loss_type = "simpo"`, `cpo_alpha = 0`; `alpha` is kept as given).
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] for `β ∉ [1e-8, 1e8]`, `ε ∉ [0, 0.5)`, a negative or
    /// non-finite `cpo_alpha`, or a non-finite `simpo_gamma` or `alpha`.
    pub fn init(&self) -> error::Result<CpoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        check::param(
            "label_smoothing",
            self.label_smoothing,
            "in [0, 0.5)",
            |e| (0.0..0.5).contains(&e),
        )?;
        check::param("cpo_alpha", self.cpo_alpha, ">= 0 and finite", |a| a >= 0.0)?;
        check::param("simpo_gamma", self.simpo_gamma, "finite", |_| true)?;
        check::param("alpha", self.alpha, "finite", |_| true)?;
        let (loss_type, cpo_alpha) = match self.loss_type {
            CpoLossType::Alphapo => (CpoLossType::Simpo, 0.0),
            other => (other, self.cpo_alpha),
        };
        Ok(CpoLoss {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            loss_type,
            cpo_alpha,
            simpo_gamma: self.simpo_gamma,
            alpha: self.alpha,
            value_checks: self.value_checks,
        })
    }
}

/// The largest `β·|r|` and `β·p^{−α}` (the AlphaPO reward and its derivative's factor) that
/// [`CpoLoss`] accepts with `value_checks`: beyond it the `f32` preference term or its gradient can
/// overflow, so the input is refused instead of returning `inf`/NaN.
pub const ALPHAPO_MAX_SCALE: f64 = 1e30;

/// CPO / SimPO / AlphaPO on a pairwise [`PairedBatch`].
///
/// With `s` each sequence's log-prob (the **sum** of its completion-token log-probs for
/// `sigmoid`/`hinge`, the **token mean** `sum / length` for `ipo`/`simpo`; the batch holds sums
/// and lengths, as [`PairedBatch::from_output`] builds it from a gatherer with the default
/// [`LogpReduction::Sum`](crate::logps::LogpReduction::Sum)),
///
/// ```text
/// r = s                                   (α = 0)
/// r = (1 − p^{−α})/α = −expm1(−α·s)/α      (α ≠ 0, AlphaPO; p = e^s)
/// x = r_chosen − r_rejected
/// sigmoid: (1 − ε)·softplus(−βx) + ε·softplus(βx)
/// simpo:   the same with x − γ/β
/// hinge:   relu(1 − βx)
/// ipo:     (x − 1/(2β))²
/// losses_b = per-pair loss + cpo_alpha·NLL(chosen completion tokens, token mean)
/// loss = mean_b losses_b
/// ```
///
/// Rewards (metrics) are `β·r`, detached. The NLL is [`token_mean_nll`](super::token_mean_nll) over the chosen rows'
/// valid tokens (it needs the batch's per-token log-probs: a gatherer with
/// `return_token_logps`), 0 when `cpo_alpha = 0`. Metrics: TRL's `rewards/*`, `logps/*` and
/// `nll_loss`; TRL's `logits/chosen|rejected` (means of raw logits) are not computed: the fused
/// LM head never builds those logits.
///
/// The AlphaPO reward is computed with an `expm1` that is accurate near `s = 0`; for
/// `α > 0` and very negative `s`, `p^{−α}` overflows: with `value_checks`, a sequence whose
/// `β·p^{−α}` or `β·|r|` exceeds [`ALPHAPO_MAX_SCALE`] is [`PreferenceError::NonFinite`]
/// rather than an infinite loss (at `β = 0.1`, `α = 0.5` allows `s` down to about −140,
/// `α = 0.01` to about −6700).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::data::BatchLayout;
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// // One pair: row 0 chosen, row 1 rejected; -100 marks the prompt.
/// let logits = Tensor::<3>::random([2, 5, 16], Distribution::Default, &device);
/// let labels = Tensor::<2, Int>::from_ints([[-100, -100, 3, 4, 5], [-100, -100, 7, 8, -100]], &device);
/// let gatherer = SequenceLogpsConfig::new().with_return_token_logps(true).init()?;
/// let policy = gatherer.forward(logits, labels, None)?;
/// let batch = PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs: 1 })?;
/// let simpo = CpoConfig::new().with_loss_type(CpoLossType::Simpo).with_beta(2.0).init()?;
/// let out = simpo.forward(batch)?;
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] `[B, 2]` with lengths, and per-token log-probs for the NLL
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpoLoss {
    beta: f64,
    label_smoothing: f64,
    loss_type: CpoLossType,
    cpo_alpha: f64,
    simpo_gamma: f64,
    alpha: f64,
    value_checks: bool,
}

impl CpoLoss {
    /// The loss type after resolution (`alphapo` has become `simpo`).
    pub fn loss_type(&self) -> CpoLossType {
        self.loss_type
    }

    /// The NLL weight after resolution (`alphapo` sets it to 0).
    pub fn cpo_alpha(&self) -> f64 {
        self.cpo_alpha
    }
}

impl PreferenceLoss for CpoLoss {
    type Batch = PairedBatch;

    /// # Errors
    /// - [`PreferenceError::Shape`] for a ranked batch (CPO reads pairs, chosen first).
    /// - [`PreferenceError::MissingInput`] without lengths (`ipo`, `simpo`), or without
    ///   per-token log-probs when `cpo_alpha > 0`.
    /// - [`PreferenceError::InvalidValue`] for log-probs not gathered as sums.
    /// - With `value_checks`: [`PreferenceError::Empty`] for a sequence without completion
    ///   tokens, [`PreferenceError::NonFinite`] for a NaN/infinite sequence log-prob or an
    ///   AlphaPO reward beyond [`ALPHAPO_MAX_SCALE`].
    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.require_pairs("CPO")?;
        batch.require_sums("CPO")?;
        let token_mean = self.loss_type.token_mean();
        let logps = if token_mean {
            let why = "ipo and simpo use token-mean log-probs: build the batch with \
                       `PairedBatch::from_output` or add `with_lengths`";
            batch.policy.clone().div(batch.lengths("CPO", why)?)
        } else {
            batch.policy.clone()
        };
        if self.value_checks {
            batch.check_values()?;
            check_sequences(&batch, &logps)?;
        }
        let rewards = if self.alpha == 0.0 {
            logps.clone()
        } else {
            if self.value_checks {
                let values = check::read_floats("policy logps", rows(&logps))?;
                check_alphapo(&values, self.alpha, self.beta)?;
            }
            expm1(logps.clone().mul_scalar(-self.alpha))
                .neg()
                .div_scalar(self.alpha)
        };
        let [pairs, _] = rewards.dims();
        let chosen = rewards.clone().narrow(1, 0, 1).reshape([pairs]);
        let rejected = rewards.clone().narrow(1, 1, 1).reshape([pairs]);
        let x = chosen.sub(rejected);
        let beta = self.beta;
        let eps = self.label_smoothing;
        // The same per-pair functions as the DPO family's (one implementation per formula).
        let losses = match self.loss_type {
            CpoLossType::Sigmoid => margin::sigmoid(x.mul_scalar(beta), eps),
            CpoLossType::Simpo | CpoLossType::Alphapo => {
                margin::sigmoid(x.mul_scalar(beta).sub_scalar(self.simpo_gamma), eps)
            }
            CpoLossType::Hinge => margin::hinge(x.mul_scalar(beta)),
            CpoLossType::Ipo => squared::ipo(x, 1.0 / (2.0 * beta)),
        };
        let (term, nll) = if self.cpo_alpha == 0.0 {
            // TRL logs an NLL of 0 when the term is off.
            let zero = Tensor::<1>::zeros([1], &losses.device());
            (None, Metric::mean(zero))
        } else {
            let why = "the NLL term reads the chosen completions' tokens: build the batch with \
                       `PairedBatch::from_output` from a gatherer with `return_token_logps`, or \
                       set `cpo_alpha = 0`";
            let side = batch.policy_tokens("CPO", why)?;
            let token = side.token_logps("CPO", why)?;
            let (term, nll) = nll::term(
                token.narrow(0, 0, pairs),
                side.valid.clone().narrow(0, 0, pairs),
                self.cpo_alpha,
            )?;
            (Some(term), nll)
        };
        let rewards = rewards.detach().mul_scalar(beta);
        let ranking = batch.ranking();
        let metrics = trl::paired(rewards, logps, &ranking).with("nll_loss", nll);
        Ok(LossOutput::new(losses, term, batch.reduction(), metrics))
    }
}

/// `[B, 2]` → the gatherer's row order `[2B]`, chosen rows first (error indices are rows).
fn rows(pairs: &Tensor<2>) -> Tensor<1> {
    let [b, k] = pairs.dims();
    pairs.clone().transpose().reshape([b * k])
}

/// Every sequence has a completion token and a finite log-prob (one read each).
fn check_sequences(batch: &PairedBatch, logps: &Tensor<2>) -> error::Result<()> {
    if let Some(lengths) = &batch.lengths {
        let counted = check::read_floats("policy.counts", rows(lengths))?;
        if let Some(row) = counted.iter().position(|&n| n < 1.0) {
            return Err(PreferenceError::Empty {
                arg: "policy",
                detail: format!("sequence {row} has no completion token"),
            });
        }
    }
    let values = check::read_floats("policy logps", rows(logps))?;
    check::all_finite("policy logps", &values, &[values.len()])
}

/// Refuses AlphaPO rewards (or their derivative's factor `p^{−α}`) whose `β`-scaled size an
/// `f32` loss could not hold, evaluated in `f64`.
fn check_alphapo(logps: &[f32], alpha: f64, beta: f64) -> error::Result<()> {
    for (i, &s) in logps.iter().enumerate() {
        let a = -alpha * f64::from(s);
        let reward = -a.exp_m1() / alpha;
        if !(beta * a.exp() <= ALPHAPO_MAX_SCALE && beta * reward.abs() <= ALPHAPO_MAX_SCALE) {
            return Err(PreferenceError::NonFinite {
                arg: "AlphaPO reward (1 - p^(-alpha))/alpha of the policy logps",
                index: vec![i],
                found: format!("{reward:e} at logp {s} (beta-scaled beyond 1e30)"),
            });
        }
    }
    Ok(())
}
