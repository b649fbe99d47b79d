//! RRHF (Yuan et al. 2023): rank K scored responses, plus a fine-tune term.

use burn::config::Config;

use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::check;
use crate::error;
use crate::metrics::trl;
use crate::numerics::softplus;

/// The rank term of RRHF.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum RankLoss {
    /// The paper's hinge: `Σ_{r_i < r_j} max(0, p_i − p_j)` (a sum over pairs).
    Hinge,
    /// Pairwise logistic variant: `Σ_{r_i < r_j} softplus(p_i − p_j)` divided by the number of
    /// pairs.
    Logistic,
}

/// Configuration of [`RrhfLoss`]; [`init`](Self::init) validates it.
#[derive(Config, Debug)]
pub struct RrhfConfig {
    /// Length penalty α ≥ 0: candidate scores are `p_i = S_i / n_i^α`. Default: `1.0`.
    #[config(default = 1.0)]
    pub length_penalty: f64,
    /// The rank term. Default: [`RankLoss::Hinge`], as in the paper.
    #[config(default = "RankLoss::Hinge")]
    pub rank_loss: RankLoss,
    /// Weight of the rank term, ≥ 0. Default: `1.0`.
    #[config(default = 1.0)]
    pub rank_weight: f64,
    /// Weight of the fine-tune term, ≥ 0. Default: `1.0`.
    #[config(default = 1.0)]
    pub ft_weight: f64,
    /// Check the values of the batch's scores and lengths, reading them back to the host;
    /// `false` never reads a tensor back. Default: `true`.
    #[config(default = true)]
    pub value_checks: bool,
}

impl RrhfConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for a negative weight or a length penalty outside
    /// `[0, 1e6]`.
    pub fn init(&self) -> error::Result<RrhfLoss> {
        let non_negative = |v: f64| v >= 0.0;
        check::param("length_penalty", self.length_penalty, "in [0, 1e6]", |a| {
            (0.0..=check::MAX_LENGTH_EXPONENT).contains(&a)
        })?;
        check::param("rank_weight", self.rank_weight, ">= 0", non_negative)?;
        check::param("ft_weight", self.ft_weight, ">= 0", non_negative)?;
        Ok(RrhfLoss {
            length_penalty: self.length_penalty,
            rank_loss: self.rank_loss,
            rank_weight: self.rank_weight,
            ft_weight: self.ft_weight,
            value_checks: self.value_checks,
        })
    }
}

/// Rank Responses to align language models with Human Feedback.
///
/// The batch holds, per prompt, the *summed* log-probs `S_i` of `K` candidates
/// ([`LogpReduction::Sum`](crate::logps::LogpReduction::Sum)), their valid-token counts `n_i`
/// (`with_lengths`) and their scores `r_i` (higher is better). No reference model is used: a
/// reference or soft labels on the batch are ignored.
///
/// ```text
/// p_i    = S_i / n_i^α
/// L_rank = Σ_{r_i < r_j} max(0, p_i − p_j)                 (Hinge, the paper)
///        | Σ_{r_i < r_j} softplus(p_i − p_j) / #pairs       (Logistic)
/// L_ft   = −S_best / n_best                                  (best score, lowest index on ties)
/// L      = w_rank·L_rank + w_ft·L_ft
/// ```
///
/// Pairs with equal scores are skipped. Metrics: rewards are the candidate scores `p_i`.
///
/// # Shapes
/// - input: a [`PairedBatch`] `[B, K]` with lengths `[B, K]`
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RrhfLoss {
    length_penalty: f64,
    rank_loss: RankLoss,
    rank_weight: f64,
    ft_weight: f64,
    value_checks: bool,
}

impl PreferenceLoss for RrhfLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        let lengths = batch.lengths(
            "RRHF",
            "the length penalty and fine-tune term need each candidate's token count",
        )?;
        batch.require_sums("RRHF")?;
        if self.value_checks {
            batch.check_values()?;
        }
        let ranking = batch.ranking();
        let sums = batch.policy.clone();
        let lengths = lengths.clamp_min(1.0);
        let scores = sums
            .clone()
            .div(lengths.clone().powf_scalar(self.length_penalty));

        // differences()[i][j] = p_i − p_j for i ≻ j; a violation is the loser j scoring higher.
        let violations = ranking.margins(scores.clone()).neg();
        let rank = match self.rank_loss {
            RankLoss::Hinge => ranking.sum_over_pairs(violations.clamp_min(0.0)),
            RankLoss::Logistic => ranking.mean_over_pairs(softplus(violations)),
        };
        let fine_tune = ranking
            .at_best(sums.clone())
            .div(ranking.at_best(lengths))
            .neg();
        let losses = rank
            .mul_scalar(self.rank_weight)
            .add(fine_tune.mul_scalar(self.ft_weight));
        let metrics = trl::paired_batch(&batch, scores.detach(), sums, &ranking);
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
