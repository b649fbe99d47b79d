//! ORPO (Hong et al. 2024): an odds-ratio preference term on top of the chosen completion's
//! NLL, without a reference model, as TRL's `ORPOTrainer`.

use burn::config::Config;
use burn::tensor::{Bool, Int, Tensor};

use super::cpo::{mean_of, pair_metrics, sequence_logps};
use super::nll::{pair_count, token_logps_of, token_mean_nll};
use crate::check;
use crate::error::{self, PreferenceError};
use crate::logps::SequenceLogpsOutput;
use crate::numerics::{log_sigmoid, log1mexp};

/// Configuration of [`OrpoLoss`], with TRL's `ORPOConfig` key name and default.
#[derive(Config, Debug)]
pub struct OrpoConfig {
    /// β (the paper's λ), the weight of the odds-ratio term, in `[1e-8, 1e8]`.
    /// Default: `0.1`.
    #[config(default = 0.1)]
    pub beta: f64,
}

impl OrpoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] for `β ∉ [1e-8, 1e8]`.
    pub fn init(&self) -> error::Result<OrpoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        Ok(OrpoLoss { beta: self.beta })
    }
}

/// Log-probs closer to 0 than this are clamped to it before `log(1 − e^s)`: a sequence whose
/// every token has probability 1 in `f32` would otherwise make the odds infinite; here its
/// log-odds are about `+69` and its gradient finite.
pub const ORPO_MAX_LOGP: f64 = -1e-30;

/// ORPO on a concatenated batch of `B` chosen then `B` rejected sequences.
///
/// With `s` each sequence's **token-mean** log-prob over its completion tokens (formed here from
/// the per-token log-probs, so the gatherer's reduction does not matter),
///
/// ```text
/// log_odds = (s_c − s_r) − (log1mexp(s_c) − log1mexp(s_r)),   log1mexp(s) = log(1 − e^s)
/// loss     = NLL(chosen prompt + completion tokens, token mean) − β·mean_b logσ(log_odds)
/// ```
///
/// `log1mexp` switches at `s = −ln 2` between `log1p(−e^s)` and `log(−expm1(s))`, as TRL does,
/// so log-probs near 0 (a near-deterministic policy) stay finite, with finite gradients; `s` is
/// clamped at [`ORPO_MAX_LOGP`].
///
/// TRL's NLL counts the **prompt and completion** tokens of the chosen rows (every non-padding
/// token), while the log-odds use the completion tokens only. So gather once over the whole
/// sequences (labels = the input ids, padding set to −100, e.g. with the attention mask as the
/// mask), with `token_logps`, and pass the completion labels (TRL's `concatenated_labels`:
/// −100 on the prompt and padding) to pick the completion tokens out of it.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::{OrpoConfig, SequenceLogpsConfig};
///
/// let device = Device::default();
/// let logits = Tensor::<3>::random([2, 5, 16], Distribution::Default, &device);
/// // Prompt [1, 2], then the completion; row 1 has one padding token at the end.
/// let input_ids = Tensor::<2, Int>::from_ints([[1, 2, 3, 4, 5], [1, 2, 7, 8, -100]], &device);
/// let completion = Tensor::<2, Int>::from_ints([[-100, -100, 3, 4, 5], [-100, -100, 7, 8, -100]], &device);
/// let gatherer = SequenceLogpsConfig::new().with_return_token_logps(true).init()?;
/// let policy = gatherer.forward(logits, input_ids)?;
/// let out = OrpoConfig::new().init()?.forward(policy, completion)?;
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - policy: a [`SequenceLogpsOutput`] of `2B` rows with `token_logps [2B, T']`, over the
///   prompt and completion tokens
/// - completion_labels: `[2B, T]` (Int), `T = T' + 1` when the gatherer shifted (the default),
///   `T = T'` without the shift; a label `< 0` marks a non-completion position
/// - output: `loss [1]`, `losses [B]`, `log_odds [B]`, rewards and log-probs `[B]`, `nll [1]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrpoLoss {
    beta: f64,
}

/// What [`OrpoLoss::forward`] returns.
#[derive(Debug, Clone)]
pub struct OrpoOutput {
    /// `nll − β·mean(logσ(log_odds))` `[1]`. Call `backward()` on it.
    pub loss: Tensor<1>,
    /// The odds-ratio term of each pair, `−β·logσ(log_odds)` `[B]`.
    pub losses: Tensor<1>,
    /// The NLL of the chosen prompt and completion tokens `[1]`, detached.
    pub nll: Tensor<1>,
    /// The log odds ratio of each pair `[B]`, detached.
    pub log_odds: Tensor<1>,
    /// `mean_b logσ(log_odds)` `[1]`, detached (TRL's `log_odds_ratio`).
    pub log_odds_ratio: Tensor<1>,
    /// `β·s` of the chosen `[B]`, detached.
    pub rewards_chosen: Tensor<1>,
    /// `β·s` of the rejected `[B]`, detached.
    pub rewards_rejected: Tensor<1>,
    /// Token-mean log-probs of the chosen completions `[B]`, detached.
    pub logps_chosen: Tensor<1>,
    /// Token-mean log-probs of the rejected completions `[B]`, detached.
    pub logps_rejected: Tensor<1>,
}

impl OrpoOutput {
    /// The metrics under TRL's names: `rewards/chosen`, `rewards/rejected`,
    /// `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`, `nll_loss`,
    /// `log_odds_ratio` (`mean logσ(log_odds)`) and `log_odds_chosen` (`mean log_odds`). TRL's
    /// `logits/*` (means of raw logits) are not computed: the fused head never builds them.
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
        let odds = check::read_floats("log_odds", self.log_odds.clone())?;
        let ratio = mean_of(check::read_floats(
            "log_odds_ratio",
            self.log_odds_ratio.clone(),
        )?);
        Ok([
            pairs,
            vec![
                ("nll_loss", nll),
                ("log_odds_ratio", ratio),
                ("log_odds_chosen", mean_of(odds)),
            ],
        ]
        .concat())
    }
}

impl OrpoLoss {
    /// Computes the loss of a concatenated batch.
    ///
    /// # Errors
    /// - [`PreferenceError::MissingInput`] when `policy` has no `token_logps`.
    /// - [`PreferenceError::Shape`] for an odd number of rows, or `completion_labels` not
    ///   `[2B, T' + 1]` / `[2B, T']`.
    /// - [`PreferenceError::DeviceMismatch`] when the labels live on another device.
    /// - [`PreferenceError::Empty`] for no rows, or a sequence without completion tokens.
    /// - [`PreferenceError::InvalidValue`] when a completion position was not gathered (not
    ///   valid in `policy`).
    /// - [`PreferenceError::NonFinite`] for a NaN/infinite token-mean log-prob.
    pub fn forward(
        &self,
        policy: SequenceLogpsOutput,
        completion_labels: Tensor<2, Int>,
    ) -> error::Result<OrpoOutput> {
        let token = token_logps_of("ORPO", "policy.token_logps", &policy)?;
        check::same_device(&[
            ("policy", token.device()),
            ("completion_labels", completion_labels.device()),
        ])?;
        let [rows, positions] = token.dims();
        let pairs = pair_count("policy", rows)?;
        let completion = completion_positions(completion_labels, rows, positions)?;
        let stray = completion
            .clone()
            .bool_and(policy.valid.clone().bool_not())
            .any();
        if check::read_flag("completion_labels", stray)? {
            return Err(PreferenceError::InvalidValue {
                arg: "completion_labels",
                expected: "completion positions the policy's log-probs were gathered on",
                found: "a completion token that `policy.valid` leaves out".to_string(),
            });
        }
        let counts = completion.clone().float().sum_dim(1).squeeze_dim::<1>(1);
        let sums = token
            .clone()
            .mask_fill(completion.bool_not(), 0.0)
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        let logps = sequence_logps(sums, counts, true)?;
        let chosen = logps.clone().narrow(0, 0, pairs);
        let rejected = logps.clone().narrow(0, pairs, pairs);
        let odds = |s: Tensor<1>| log1mexp(s.clamp_max(ORPO_MAX_LOGP));
        let log_odds = chosen
            .clone()
            .sub(rejected.clone())
            .sub(odds(chosen).sub(odds(rejected)));
        let ratios = log_sigmoid(log_odds.clone());
        let log_odds_ratio = ratios.clone().detach().mean();
        let losses = ratios.mul_scalar(-self.beta);
        let nll = token_mean_nll(token.narrow(0, 0, pairs), policy.valid.narrow(0, 0, pairs))?;
        let loss = nll.clone().add(losses.clone().mean());
        let rewards = logps.clone().detach().mul_scalar(self.beta);
        let logps = logps.detach();
        Ok(OrpoOutput {
            loss,
            losses,
            nll: nll.detach(),
            log_odds: log_odds.detach(),
            log_odds_ratio,
            rewards_chosen: rewards.clone().narrow(0, 0, pairs),
            rewards_rejected: rewards.narrow(0, pairs, pairs),
            logps_chosen: logps.clone().narrow(0, 0, pairs),
            logps_rejected: logps.narrow(0, pairs, pairs),
        })
    }
}

/// The completion positions `[rows, positions]` of labels `[rows, T]`, shifted by one when
/// `T = positions + 1` (the gatherer's causal shift).
fn completion_positions(
    labels: Tensor<2, Int>,
    rows: usize,
    positions: usize,
) -> error::Result<Tensor<2, Bool>> {
    let [label_rows, time] = labels.dims();
    check::batch("completion_labels", label_rows, "policy.token_logps", rows)?;
    let aligned = if time == positions + 1 {
        labels.narrow(1, 1, positions)
    } else if time == positions {
        labels
    } else {
        return Err(PreferenceError::Shape {
            arg: "completion_labels",
            expected: format!(
                "[2B, T' + 1] = [{rows}, {}] (or [{rows}, {positions}] unshifted)",
                positions + 1
            ),
            actual: vec![label_rows, time],
        });
    };
    Ok(aligned.greater_equal_elem(0))
}
