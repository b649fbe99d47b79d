//! CPO (Xu et al. 2024), SimPO (Meng et al. 2024) and AlphaPO (Gupta et al. 2025): pairwise
//! losses without a reference model, on the policy's own log-probs, as TRL's `CPOTrainer`.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::nll::{pair_count, token_logps_of, token_mean_nll};
use super::{margin, squared};
use crate::check;
use crate::error::{self, PreferenceError};
use crate::logps::SequenceLogpsOutput;
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

/// Configuration of [`CpoLoss`], with TRL's `CPOConfig` key names and defaults, so a TRL
/// config's JSON deserialises into it (unknown keys aside).
///
/// SimPO is `loss_type = "simpo"` (set `cpo_alpha = 0` for the paper's loss without the NLL
/// term); AlphaPO is `loss_type = "alphapo"` with a non-zero `alpha` (any loss type honours a
/// non-zero `alpha`, as in TRL).
#[derive(Config, Debug)]
pub struct CpoConfig {
    /// β, the temperature of the preference term, in `[1e-8, 1e8]`. Default: `0.1`.
    #[config(default = 0.1)]
    pub beta: f64,
    /// ε ∈ [0, 0.5): assumed rate of flipped labels, for `sigmoid` and `simpo` (`hinge` and
    /// `ipo` ignore it, as TRL does). Default: `0.0`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// The loss type. Default: [`CpoLossType::Sigmoid`].
    #[config(default = "CpoLossType::Sigmoid")]
    pub loss_type: CpoLossType,
    /// Weight of the NLL of the chosen completions, finite and `≥ 0`; `0` drops the term.
    /// Default: `1.0`.
    #[config(default = 1.0)]
    pub cpo_alpha: f64,
    /// SimPO's target reward margin γ (used by `simpo`/`alphapo` only), finite.
    /// Default: `0.5`.
    #[config(default = 0.5)]
    pub simpo_gamma: f64,
    /// AlphaPO's α, finite: with `α ≠ 0` the reward `(1 − p^{−α})/α` replaces `log p`.
    /// Default: `0.0`.
    #[config(default = 0.0)]
    pub alpha: f64,
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
        })
    }
}

/// The largest `β·|r|` and `β·p^{−α}` (the AlphaPO reward and its derivative's factor) that
/// [`CpoLoss::forward`] accepts: beyond it the `f32` preference term or its gradient can
/// overflow, so the input is refused instead of returning `inf`/NaN.
pub const ALPHAPO_MAX_SCALE: f64 = 1e30;

/// CPO / SimPO / AlphaPO on a concatenated batch of `B` chosen then `B` rejected sequences.
///
/// With `s` each sequence's log-prob (the **sum** of its completion-token log-probs for
/// `sigmoid`/`hinge`, the **token mean** for `ipo`/`simpo`; the loss forms both itself from the
/// gatherer's per-token log-probs, so the gatherer's reduction does not matter),
///
/// ```text
/// r = s                                   (α = 0)
/// r = (1 − p^{−α})/α = −expm1(−α·s)/α      (α ≠ 0, AlphaPO; p = e^s)
/// x = r_chosen − r_rejected
/// sigmoid: (1 − ε)·softplus(−βx) + ε·softplus(βx)
/// simpo:   the same with x − γ/β
/// hinge:   relu(1 − βx)
/// ipo:     (x − 1/(2β))²
/// loss = mean_b(per-pair loss) + cpo_alpha·NLL(chosen completion tokens, token mean)
/// ```
///
/// Rewards (metrics) are `β·r`, detached. The NLL is [`token_mean_nll`] over the chosen rows'
/// valid tokens, 0 when `cpo_alpha = 0`.
///
/// The AlphaPO reward is computed with an `expm1` that is accurate near `s = 0`; for
/// `α > 0` and very negative `s`, `p^{−α}` overflows: when `β·p^{−α}` or `β·|r|` of a sequence
/// exceeds [`ALPHAPO_MAX_SCALE`] the forward returns [`PreferenceError::NonFinite`] rather
/// than an infinite loss (at `β = 0.1`, `α = 0.5` allows `s` down to about −140, `α = 0.01` to
/// about −6700).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::{CpoConfig, CpoLossType, SequenceLogpsConfig};
///
/// let device = Device::default();
/// // One pair: row 0 chosen, row 1 rejected; -100 marks the prompt.
/// let logits = Tensor::<3>::random([2, 5, 16], Distribution::Default, &device);
/// let labels = Tensor::<2, Int>::from_ints([[-100, -100, 3, 4, 5], [-100, -100, 7, 8, -100]], &device);
/// let gatherer = SequenceLogpsConfig::new().with_return_token_logps(true).init()?;
/// let policy = gatherer.forward(logits, labels)?;
/// let simpo = CpoConfig::new().with_loss_type(CpoLossType::Simpo).with_beta(2.0).init()?;
/// let out = simpo.forward(policy)?;
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - policy: a [`SequenceLogpsOutput`] of `2B` rows (chosen `0..B`, rejected `B..2B`) with
///   `token_logps`
/// - output: `loss [1]`, `losses [B]`, rewards and log-probs `[B]`, `nll [1]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpoLoss {
    beta: f64,
    label_smoothing: f64,
    loss_type: CpoLossType,
    cpo_alpha: f64,
    simpo_gamma: f64,
    alpha: f64,
}

/// What [`CpoLoss::forward`] returns.
#[derive(Debug, Clone)]
pub struct CpoOutput {
    /// `mean(losses) + cpo_alpha·nll` `[1]`. Call `backward()` on it.
    pub loss: Tensor<1>,
    /// The preference term of each pair `[B]`.
    pub losses: Tensor<1>,
    /// The NLL of the chosen completion tokens `[1]` (0 when `cpo_alpha = 0`).
    pub nll: Tensor<1>,
    /// `β·r` of the chosen sequences `[B]`, detached.
    pub rewards_chosen: Tensor<1>,
    /// `β·r` of the rejected sequences `[B]`, detached.
    pub rewards_rejected: Tensor<1>,
    /// The sequence log-probs the loss used (sums or token means) of the chosen `[B]`,
    /// detached.
    pub logps_chosen: Tensor<1>,
    /// The same for the rejected `[B]`.
    pub logps_rejected: Tensor<1>,
}

impl CpoOutput {
    /// The metrics under TRL's names: `rewards/chosen`, `rewards/rejected`,
    /// `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`, `nll_loss`
    /// (batch means). TRL's `logits/chosen|rejected` (the mean of the raw `[B, T, V]` logits)
    /// are not among them: the fused LM head never builds those logits.
    ///
    /// # Errors
    /// [`PreferenceError::Read`] when a tensor cannot be read back from the device.
    pub fn metrics(&self) -> error::Result<Vec<(&'static str, f64)>> {
        let pairs = pair_metrics(
            &self.rewards_chosen,
            &self.rewards_rejected,
            &self.logps_chosen,
            &self.logps_rejected,
        )?;
        let nll = mean_of(check::read_floats("nll", self.nll.clone())?);
        Ok([pairs, vec![("nll_loss", nll)]].concat())
    }
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

    /// Computes the loss of a concatenated batch.
    ///
    /// # Errors
    /// - [`PreferenceError::MissingInput`] when `policy` has no `token_logps`.
    /// - [`PreferenceError::Shape`] for an odd number of rows.
    /// - [`PreferenceError::Empty`] for no rows, or a sequence without completion tokens.
    /// - [`PreferenceError::NonFinite`] for a NaN/infinite sequence log-prob, or an AlphaPO
    ///   reward beyond [`ALPHAPO_MAX_SCALE`].
    pub fn forward(&self, policy: SequenceLogpsOutput) -> error::Result<CpoOutput> {
        let (logps, pairs) = completion_logps("CPO", &policy, self.loss_type.token_mean())?;
        let rewards = if self.alpha == 0.0 {
            logps.clone()
        } else {
            let values = check::read_floats("policy logps", logps.clone())?;
            check_alphapo(&values, self.alpha, self.beta)?;
            expm1(logps.clone().mul_scalar(-self.alpha))
                .neg()
                .div_scalar(self.alpha)
        };
        let chosen = rewards.clone().narrow(0, 0, pairs);
        let rejected = rewards.clone().narrow(0, pairs, pairs);
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
        let device = losses.device();
        let nll = if self.cpo_alpha == 0.0 {
            Tensor::<1>::zeros([1], &device)
        } else {
            let token = token_logps_of("CPO", "policy.token_logps", &policy)?;
            token_mean_nll(
                token.narrow(0, 0, pairs),
                policy.valid.clone().narrow(0, 0, pairs),
            )?
        };
        let loss = losses
            .clone()
            .mean()
            .add(nll.clone().mul_scalar(self.cpo_alpha));
        let rewards = rewards.detach().mul_scalar(beta);
        let logps = logps.detach();
        Ok(CpoOutput {
            loss,
            losses,
            nll: nll.detach(),
            rewards_chosen: rewards.clone().narrow(0, 0, pairs),
            rewards_rejected: rewards.narrow(0, pairs, pairs),
            logps_chosen: logps.clone().narrow(0, 0, pairs),
            logps_rejected: logps.narrow(0, pairs, pairs),
        })
    }
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

/// The per-sequence completion log-probs of a `[2B]` concatenated gather, the sum or the token
/// mean over its valid tokens, and `B`. Every sequence needs a completion token and a finite
/// log-prob.
pub(crate) fn completion_logps(
    loss: &'static str,
    policy: &SequenceLogpsOutput,
    token_mean: bool,
) -> error::Result<(Tensor<1>, usize)> {
    let token = token_logps_of(loss, "policy.token_logps", policy)?;
    let [rows, _] = token.dims();
    let pairs = pair_count("policy", rows)?;
    check::batch(
        "policy.counts",
        policy.counts.dims()[0],
        "policy.token_logps",
        rows,
    )?;
    let sums = token.sum_dim(1).squeeze_dim::<1>(1);
    sequence_logps(sums, policy.counts.clone(), token_mean).map(|logps| (logps, pairs))
}

/// `sums` or `sums / counts`, refusing sequences without tokens and non-finite values.
pub(crate) fn sequence_logps(
    sums: Tensor<1>,
    counts: Tensor<1>,
    token_mean: bool,
) -> error::Result<Tensor<1>> {
    let counted = check::read_floats("policy.counts", counts.clone())?;
    if let Some(row) = counted.iter().position(|&n| n < 1.0) {
        return Err(PreferenceError::Empty {
            arg: "policy",
            detail: format!("sequence {row} has no completion token"),
        });
    }
    let logps = if token_mean { sums.div(counts) } else { sums };
    let values = check::read_floats("policy logps", logps.clone())?;
    check::all_finite("policy logps", &values, &[values.len()])?;
    Ok(logps)
}

/// `rewards/*` and `logps/*` of a paired batch, as TRL logs them (batch means, strict `>`).
pub(crate) fn pair_metrics(
    rewards_chosen: &Tensor<1>,
    rewards_rejected: &Tensor<1>,
    logps_chosen: &Tensor<1>,
    logps_rejected: &Tensor<1>,
) -> error::Result<Vec<(&'static str, f64)>> {
    let rc = check::read_floats("rewards_chosen", rewards_chosen.clone())?;
    let rr = check::read_floats("rewards_rejected", rewards_rejected.clone())?;
    let lc = check::read_floats("logps_chosen", logps_chosen.clone())?;
    let lr = check::read_floats("logps_rejected", logps_rejected.clone())?;
    let wins: Vec<f32> = rc
        .iter()
        .zip(&rr)
        .map(|(c, r)| if c > r { 1.0 } else { 0.0 })
        .collect();
    let margins: Vec<f32> = rc.iter().zip(&rr).map(|(c, r)| c - r).collect();
    Ok(vec![
        ("rewards/chosen", mean_of(rc)),
        ("rewards/rejected", mean_of(rr)),
        ("rewards/accuracies", mean_of(wins)),
        ("rewards/margins", mean_of(margins)),
        ("logps/chosen", mean_of(lc)),
        ("logps/rejected", mean_of(lr)),
    ])
}

/// The `f64` mean of `f32` values (0 for none).
pub(crate) fn mean_of(values: Vec<f32>) -> f64 {
    let n = values.len().max(1) as f64;
    values.iter().map(|&v| f64::from(v)).sum::<f64>() / n
}
