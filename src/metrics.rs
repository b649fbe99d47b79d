//! Metrics trainers log: implicit rewards, margins, preference and ranking
//! accuracy, and the KL divergence from the reference.
//!
//! Names follow TRL's logs: `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
//! `rewards/accuracies`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

use crate::check;
use crate::error::{PreferenceError, Result};
use crate::logps::{SequenceLogps, widen};
use crate::ranking::{self, Ranking};

/// The metrics returned with every loss; all detached.
#[derive(Debug, Clone)]
pub struct PreferenceMetrics {
    /// Implicit reward of every candidate `[B, K]`: `β·ρ` for ΨPO/DPO/IPO, `p_i` for RRHF.
    pub rewards: Tensor<2>,
    /// Reward of the preferred (best-scored) response `[B]` (`rewards/chosen`).
    pub rewards_chosen: Tensor<1>,
    /// Reward of the dispreferred (worst-scored) response `[B]` (`rewards/rejected`).
    pub rewards_rejected: Tensor<1>,
    /// `rewards_chosen − rewards_rejected` `[B]` (`rewards/margins`).
    pub margins: Tensor<1>,
    /// `mean(1[rewards_chosen > rewards_rejected])` `[1]`, strict as in TRL
    /// (`rewards/accuracies`).
    pub accuracy: Tensor<1>,
    /// Fraction of ordered pairs `r_i > r_j` whose rewards are ordered the same way `[1]`
    /// (equals `accuracy` for pairwise batches).
    pub ranking_accuracy: Tensor<1>,
    /// The policy's sequence log-prob of the preferred response, as the loss saw it (e.g. with
    /// LD-DPO's weighting) `[B]` (`logps/chosen`, batch mean).
    pub logps_chosen: Tensor<1>,
    /// The policy's sequence log-prob of the dispreferred response `[B]` (`logps/rejected`).
    pub logps_rejected: Tensor<1>,
    /// Mean over the chosen completions' tokens of the vocabulary-mean logit `[1]`
    /// (`logits/chosen`); only when the batch carries `mean_logits`.
    pub logits_chosen: Option<Tensor<1>>,
    /// The same over the rejected completions' tokens `[1]` (`logits/rejected`).
    pub logits_rejected: Option<Tensor<1>>,
    /// Mean per-token entropy of the policy over all completion tokens, chosen and rejected
    /// `[1]` (`entropy`); only when the batch carries `entropy`.
    pub entropy: Option<Tensor<1>>,
    /// Fraction of the chosen completions' tokens whose label is the policy's argmax `[1]`
    /// (`mean_token_accuracy`); only when the batch carries `is_top1`.
    pub mean_token_accuracy: Option<Tensor<1>>,
}

/// TRL's per-token metrics over concatenated `[2B, T']` rows (chosen first).
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenMetrics {
    pub(crate) logits_chosen: Option<Tensor<1>>,
    pub(crate) logits_rejected: Option<Tensor<1>>,
    pub(crate) entropy: Option<Tensor<1>>,
    pub(crate) mean_token_accuracy: Option<Tensor<1>>,
}

impl TokenMetrics {
    /// As TRL logs them: token means over the valid positions (0 when there are none).
    pub(crate) fn new(
        valid: &Tensor<2, Bool>,
        mean_logits: Option<&Tensor<2>>,
        entropy: Option<&Tensor<2>>,
        is_top1: Option<&Tensor<2, Bool>>,
    ) -> Self {
        let rows = valid.dims()[0] / 2;
        let valid = valid.clone().float();
        let chosen_valid = valid.clone().narrow(0, 0, rows);
        let rejected_valid = valid.clone().narrow(0, rows, rows);
        let token_mean = |values: Tensor<2>, mask: Tensor<2>| {
            let count = mask.clone().sum().clamp_min(1.0);
            values.detach().mul(mask).sum().div(count)
        };
        let logits = mean_logits.map(|m| {
            (
                token_mean(m.clone().narrow(0, 0, rows), chosen_valid.clone()),
                token_mean(m.clone().narrow(0, rows, rows), rejected_valid.clone()),
            )
        });
        let (logits_chosen, logits_rejected) = logits.unzip();
        Self {
            logits_chosen,
            logits_rejected,
            entropy: entropy.map(|e| token_mean(e.clone(), valid.clone())),
            mean_token_accuracy: is_top1
                .map(|t| token_mean(t.clone().narrow(0, 0, rows).float(), chosen_valid.clone())),
        }
    }
}

impl PreferenceMetrics {
    pub(crate) fn from_rewards(rewards: Tensor<2>, logps: Tensor<2>, ranking: &Ranking) -> Self {
        let rewards = rewards.detach();
        let logps = logps.detach();
        let rewards_chosen = ranking.at_best(rewards.clone());
        let rewards_rejected = ranking.at_worst(rewards.clone());
        let margins = rewards_chosen.clone().sub(rewards_rejected.clone());
        let accuracy = preference_accuracy(rewards_chosen.clone(), rewards_rejected.clone());
        let agreed = Ranking::differences(rewards.clone())
            .greater_elem(0.0)
            .float();
        let ranking_accuracy = ranking
            .sum_over_pairs(agreed)
            .sum()
            .div(ranking.pairs.clone().sum().clamp_min(1.0));
        Self {
            rewards,
            rewards_chosen,
            rewards_rejected,
            margins,
            accuracy,
            ranking_accuracy,
            logps_chosen: ranking.at_best(logps.clone()),
            logps_rejected: ranking.at_worst(logps),
            logits_chosen: None,
            logits_rejected: None,
            entropy: None,
            mean_token_accuracy: None,
        }
    }

    pub(crate) fn with_token_metrics(mut self, tokens: TokenMetrics) -> Self {
        self.logits_chosen = tokens.logits_chosen;
        self.logits_rejected = tokens.logits_rejected;
        self.entropy = tokens.entropy;
        self.mean_token_accuracy = tokens.mean_token_accuracy;
        self
    }

    /// The batch metrics under the names TRL's `DPOTrainer` logs, ready for a logger: `entropy`,
    /// `logits/chosen`, `logits/rejected`, `mean_token_accuracy` (when present),
    /// `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
    /// `logps/chosen`, `logps/rejected` (batch means). Reads the values back to the host.
    ///
    /// # Errors
    /// [`PreferenceError::Read`] when reading a tensor back from
    /// the device fails.
    pub fn log(&self) -> Result<Vec<(&'static str, f64)>> {
        let mean = |arg: &'static str, t: &Tensor<1>| -> Result<f64> {
            let values = check::read_floats(arg, t.clone())?;
            let sum: f64 = values.iter().map(|v| f64::from(*v)).sum();
            Ok(sum / values.len().max(1) as f64)
        };
        let mut out = Vec::with_capacity(10);
        let optional = [
            ("entropy", &self.entropy),
            ("logits/chosen", &self.logits_chosen),
            ("logits/rejected", &self.logits_rejected),
            ("mean_token_accuracy", &self.mean_token_accuracy),
        ];
        for (name, tensor) in optional {
            if let Some(t) = tensor {
                out.push((name, mean(name, t)?));
            }
        }
        let always = [
            ("rewards/chosen", &self.rewards_chosen),
            ("rewards/rejected", &self.rewards_rejected),
            ("rewards/accuracies", &self.accuracy),
            ("rewards/margins", &self.margins),
            ("logps/chosen", &self.logps_chosen),
            ("logps/rejected", &self.logps_rejected),
        ];
        for (name, tensor) in always {
            out.push((name, mean(name, tensor)?));
        }
        Ok(out)
    }
}

/// Implicit rewards `β·ρ`, detached.
pub fn implicit_rewards<const D: usize>(log_ratios: Tensor<D>, beta: f64) -> Tensor<D> {
    log_ratios.detach().mul_scalar(beta)
}

/// `mean(1[chosen > rejected])` `[1]`: the strict preference accuracy of TRL.
pub fn preference_accuracy(rewards_chosen: Tensor<1>, rewards_rejected: Tensor<1>) -> Tensor<1> {
    rewards_chosen.greater(rewards_rejected).float().mean()
}

/// Fraction of the pairs with `scores_i ≠ scores_j` that `values` order the same way `[1]`
/// (0 when every score ties).
///
/// # Errors
/// [`PreferenceError::Shape`] when the shapes differ or
/// `K < 2`, [`PreferenceError::Empty`] for `B = 0`,
/// [`PreferenceError::InvalidValue`] for NaN scores.
///
/// # Shapes
/// - values, scores: `[B, K]`
pub fn ranking_accuracy(values: Tensor<2>, scores: Tensor<2>) -> Result<Tensor<1>> {
    check::same_device(&[("values", values.device()), ("scores", scores.device())])?;
    let [batch, candidates] = values.dims();
    let scores = ranking::read_scores("values", values.dims(), scores)?;
    let ranking = Ranking::new(&scores, batch, candidates, &values.device());
    Ok(PreferenceMetrics::from_rewards(values.clone(), values, &ranking).ranking_accuracy)
}

/// Exact token-level `KL(π ‖ π_ref)` of a batch.
#[derive(Debug, Clone)]
pub struct TokenKl {
    /// Mean per-token KL of each sequence over its valid tokens `[B]` (0 without any).
    pub per_sequence: Tensor<1>,
    /// Mean per-token KL over all valid tokens of the batch `[1]`.
    pub mean: Tensor<1>,
}

/// Exact per-token `KL(π ‖ π_ref) = Σ_v π_v (log π_v − log π_ref,v)` from policy and reference
/// logits, averaged over valid tokens with the masking rules of `gatherer` (shift,
/// `ignore_index`, optional mask). Differentiable in the policy; the reference is detached.
///
/// Unlike the log-prob gatherer this builds `[B, T, V]` log-softmax temporaries: it is meant
/// for logging on evaluation batches.
///
/// # Errors
/// As [`SequenceLogps::forward_masked`], and
/// [`PreferenceError::Shape`] when the two logits
/// tensors differ in shape.
///
/// # Shapes
/// - policy_logits, reference_logits: `[B, T, V]`
/// - labels, mask: `[B, T]`
pub fn token_kl(
    gatherer: &SequenceLogps,
    policy_logits: Tensor<3>,
    reference_logits: Tensor<3>,
    labels: Tensor<2, Int>,
    mask: Option<Tensor<2, Int>>,
) -> Result<TokenKl> {
    let mut devices = vec![
        ("policy_logits", policy_logits.device()),
        ("reference_logits", reference_logits.device()),
        ("labels", labels.device()),
    ];
    devices.extend(mask.as_ref().map(|m| ("mask", m.device())));
    check::same_device(&devices)?;
    let dims = policy_logits.dims();
    check::shape(
        "reference_logits",
        reference_logits.dims(),
        dims.map(Some),
        "the policy logits' shape",
    )?;
    let aligned = gatherer.align(policy_logits, labels, mask)?;
    let log_policy = log_softmax(widen(aligned.logits), 2);
    let log_reference = log_softmax(widen(gatherer.shift_logits(reference_logits.detach())), 2);
    let per_token = log_policy
        .clone()
        .exp()
        .mul(log_policy.sub(log_reference))
        .sum_dim(2)
        .squeeze_dim::<2>(2)
        .mask_fill(aligned.valid.clone().bool_not(), 0.0);
    let counts = aligned.valid.float().sum_dim(1).squeeze_dim::<1>(1);
    let per_sequence = per_token
        .clone()
        .sum_dim(1)
        .squeeze_dim::<1>(1)
        .div(counts.clone().clamp_min(1.0));
    let mean = per_token.sum().div(counts.sum().clamp_min(1.0));
    Ok(TokenKl { per_sequence, mean })
}

/// Exact `KL(p ‖ q) = Σ_c p_c (log p_c − log q_c)` of two categorical distributions given as
/// probability vectors (toy problems, e.g. a policy `softmax(θ)` over a few actions) `[1]`.
/// Terms with `p_c = 0` contribute 0; `q_c = 0` where `p_c > 0` gives `+∞`, as it should.
///
/// Both vectors are read back once to check that they are distributions (entries in `[0, 1]`,
/// summing to 1 within `1e-4`): a KL of anything else can be negative or NaN.
///
/// # Errors
/// [`PreferenceError::Shape`] when the lengths differ,
/// [`PreferenceError::Empty`] when 0,
/// [`PreferenceError::DeviceMismatch`] when `p` and `q`
/// live on different devices, and
/// [`PreferenceError::InvalidValue`] when either is not a
/// probability vector (NaN, outside `[0, 1]`, or not summing to 1).
///
/// # Shapes
/// - p, q: `[C]`
pub fn categorical_kl(p: Tensor<1>, q: Tensor<1>) -> Result<Tensor<1>> {
    let [classes] = p.dims();
    check::non_empty("p", classes)?;
    check::same_device(&[("p", p.device()), ("q", q.device())])?;
    check::shape("q", q.dims(), [Some(classes)], "[C]")?;
    check_distribution("p", p.clone())?;
    check_distribution("q", q.clone())?;
    let absent = p.clone().equal_elem(0.0);
    let terms = p.clone().mul(p.log().sub(q.log())).mask_fill(absent, 0.0);
    Ok(terms.sum())
}

/// Entries in `[0, 1]` (no NaN) that sum to 1 within `1e-4`.
fn check_distribution(arg: &'static str, probs: Tensor<1>) -> Result<()> {
    let values = check::read_floats(arg, probs)?;
    if let Some(bad) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(PreferenceError::InvalidValue {
            arg,
            expected: "probabilities in [0, 1]",
            found: bad.to_string(),
        });
    }
    let total: f64 = values.iter().map(|&v| f64::from(v)).sum();
    if (total - 1.0).abs() > 1e-4 {
        return Err(PreferenceError::InvalidValue {
            arg,
            expected: "a probability vector summing to 1",
            found: format!("a sum of {total}"),
        });
    }
    Ok(())
}
