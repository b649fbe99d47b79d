//! ORPO (Hong et al. 2024): an odds-ratio preference term on top of the chosen completion's
//! NLL, without a reference model, as TRL's `ORPOTrainer`.

use burn::tensor::Tensor;

use super::formulas::nll;
use super::{LossOutput, PreferenceLoss};
use crate::batch::{PairedBatch, pairs_of};
use crate::check;
use crate::error::{self, PreferenceError};
use crate::metrics::{Metric, trl};
use crate::numerics::{log_sigmoid, log1mexp};

trl_config! {
    /// Configuration of [`OrpoLoss`], with TRL's `ORPOConfig` key name and default.
    pub struct OrpoConfig {
    /// β (the paper's λ), the weight of the odds-ratio term, in `[1e-8, 1e8]`.
    /// Default: `0.1`.
        beta / with_beta: f64 = 0.1,
    /// Check the batch's values, reading them back to the host: every completion position was
    /// gathered, every sequence has a completion token, finite log-probs. `false` never reads
    /// a tensor back. Not a TRL key. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl OrpoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] for `β ∉ [1e-8, 1e8]`.
    pub fn init(&self) -> error::Result<OrpoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        Ok(OrpoLoss {
            beta: self.beta,
            value_checks: self.value_checks,
        })
    }
}

/// Log-probs closer to 0 than this are clamped to it before `log(1 − e^s)`: a sequence whose
/// every token has probability 1 in `f32` would otherwise make the odds infinite; here its
/// log-odds are about `+69` and its gradient finite.
pub const ORPO_MAX_LOGP: f64 = -1e-30;

/// ORPO on a pairwise [`PairedBatch`] built from the gatherer's output.
///
/// With `s` each sequence's **token-mean** log-prob over its completion tokens (formed here from
/// the per-token log-probs, so the gatherer's reduction does not matter),
///
/// ```text
/// log_odds = (s_c − s_r) − (log1mexp(s_c) − log1mexp(s_r)),   log1mexp(s) = log(1 − e^s)
/// losses_b = NLL(chosen prompt + completion tokens, token mean) − β·logσ(log_odds_b)
/// loss     = mean_b losses_b
/// ```
///
/// `log1mexp` switches at `s = −ln 2` between `log1p(−e^s)` and `log(−expm1(s))`, as TRL does,
/// so log-probs near 0 (a near-deterministic policy) stay finite, with finite gradients; `s` is
/// clamped at [`ORPO_MAX_LOGP`].
///
/// TRL's NLL counts the **prompt and completion** tokens of the chosen rows (every non-padding
/// token), while the log-odds use the completion tokens only. So gather once over the whole
/// sequences (labels = the input ids, padding set to −100), with `return_token_logps`, and give
/// the batch the completion labels (TRL's `concatenated_labels`: −100 on the prompt and
/// padding) with [`PairedBatch::with_completion_labels`] to pick the completion tokens out.
///
/// Metrics: TRL's `rewards/*` (`β·s`), `logps/*`, `nll_loss`, `log_odds_ratio`
/// (`mean logσ(log_odds)`) and `log_odds_chosen` (`mean log_odds`). TRL's `logits/*` (means of
/// raw logits) are not computed: the fused head never builds them.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::data::BatchLayout;
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let logits = Tensor::<3>::random([2, 5, 16], Distribution::Default, &device);
/// // Prompt [1, 2], then the completion; row 1 has one padding token at the end.
/// let input_ids = Tensor::<2, Int>::from_ints([[1, 2, 3, 4, 5], [1, 2, 7, 8, -100]], &device);
/// let completion = Tensor::<2, Int>::from_ints([[-100, -100, 3, 4, 5], [-100, -100, 7, 8, -100]], &device);
/// let gatherer = SequenceLogpsConfig::new().with_return_token_logps(true).init()?;
/// let policy = gatherer.forward(logits, input_ids, None)?;
/// let batch = PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs: 1 })?
///     .with_completion_labels(completion)?;
/// let out = OrpoConfig::new().init()?.forward(batch)?;
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] from the gatherer's output over `2B` rows (prompt and
///   completion tokens), with per-token log-probs and completion labels
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrpoLoss {
    beta: f64,
    value_checks: bool,
}

impl PreferenceLoss for OrpoLoss {
    type Batch = PairedBatch;

    /// # Errors
    /// - [`PreferenceError::Shape`] for a ranked batch.
    /// - [`PreferenceError::MissingInput`] without per-token log-probs or completion labels.
    /// - With `value_checks`: [`PreferenceError::InvalidValue`] when a completion position was
    ///   not gathered (not valid in the policy's output), [`PreferenceError::Empty`] for a
    ///   sequence without completion tokens, [`PreferenceError::NonFinite`] for a
    ///   NaN/infinite token-mean log-prob.
    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.require_pairs("ORPO")?;
        let why = "ORPO reads the per-token log-probs of the whole sequences: build the batch \
                   with `PairedBatch::from_output` from a gatherer with `return_token_logps`";
        let side = batch.policy_tokens("ORPO", why)?;
        let token = side.token_logps("ORPO", why)?;
        let completion = side
            .completion
            .clone()
            .ok_or(PreferenceError::MissingInput {
                loss: "ORPO",
                arg: "completion_labels",
                why: "the log-odds use the completion tokens only: add TRL's concatenated labels \
                  with `PairedBatch::with_completion_labels`",
            })?;
        let pairs = batch.prompts();
        if self.value_checks {
            let stray = completion
                .clone()
                .bool_and(side.valid.clone().bool_not())
                .any();
            if check::read_flag("completion_labels", stray)? {
                return Err(PreferenceError::InvalidValue {
                    arg: "completion_labels",
                    expected: "completion positions the policy's log-probs were gathered on",
                    found: "a completion token that `policy.valid` leaves out".to_string(),
                });
            }
        }
        let counts = completion.clone().float().sum_dim(1).squeeze_dim::<1>(1);
        let sums = token
            .clone()
            .mask_fill(completion.bool_not(), 0.0)
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        if self.value_checks {
            check_sequences(&counts, &sums)?;
        }
        let logps = pairs_of("policy", sums.div(counts))?;
        let chosen = logps.clone().narrow(1, 0, 1).reshape([pairs]);
        let rejected = logps.clone().narrow(1, 1, 1).reshape([pairs]);
        let odds = |s: Tensor<1>| log1mexp(s.clamp_max(ORPO_MAX_LOGP));
        let log_odds = chosen
            .clone()
            .sub(rejected.clone())
            .sub(odds(chosen).sub(odds(rejected)));
        let ratios = log_sigmoid(log_odds.clone());
        let (term, nll) = nll::term(
            token.narrow(0, 0, pairs),
            side.valid.clone().narrow(0, 0, pairs),
            1.0,
        )?;
        let losses = ratios.clone().mul_scalar(-self.beta);
        let rewards = logps.clone().detach().mul_scalar(self.beta);
        let metrics = trl::paired(rewards, logps, &batch.ranking())
            .with("nll_loss", nll)
            .with("log_odds_ratio", Metric::mean(ratios))
            .with("log_odds_chosen", Metric::mean(log_odds));
        Ok(LossOutput::new(
            losses,
            Some(term),
            batch.reduction(),
            metrics,
        ))
    }
}

/// Every sequence has a completion token and a finite token-mean log-prob (one read each),
/// indexed by the gatherer's rows.
fn check_sequences(counts: &Tensor<1>, sums: &Tensor<1>) -> error::Result<()> {
    let counted = check::read_floats("policy.counts", counts.clone())?;
    if let Some(row) = counted.iter().position(|&n| n < 1.0) {
        return Err(PreferenceError::Empty {
            arg: "policy",
            detail: format!("sequence {row} has no completion token"),
        });
    }
    let values = check::read_floats("policy logps", sums.clone().div(counts.clone()))?;
    check::all_finite("policy logps", &values, &[values.len()])
}
