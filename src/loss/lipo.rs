//! LiPO-λ (Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank"):
//! pairwise logistic losses over a graded list, weighted by LambdaRank's ΔNDCG.

use burn::tensor::Tensor;

use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::batch::ranking::{Ranking, ranks};
use crate::check;
use crate::error::{self, PreferenceError};
use crate::metrics::trl;
use crate::numerics::softplus;

/// The largest grade LiPO-λ takes: its gain `2^ψ − 1` then stays far inside `f32`.
pub const LIPO_MAX_GRADE: f64 = 64.0;

trl_config! {
    /// Configuration of [`LipoLoss`]. No peer ships LiPO; the key is DPO's.
    pub struct LipoConfig {
    /// β, in `[1e-8, 1e8]`: the implicit rewards are `β·ρ`. Default: `0.1`, DPO's.
        beta / with_beta: f64 = 0.1,
    /// Train without a reference model (`log π_ref = 0`). Default: `false`.
        reference_free / with_reference_free: bool = false,
    /// Check the values of the batch's grades and weights, reading them back to the host;
    /// `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl LipoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]`.
    pub fn init(&self) -> error::Result<LipoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        Ok(LipoLoss {
            beta: self.beta,
            reference_free: self.reference_free,
            value_checks: self.value_checks,
        })
    }
}

/// LiPO-λ: every ordered pair of a graded list, each weighted by how much swapping the two
/// would change the list's NDCG under the policy's current ranking.
///
/// With grades `ψ` (the batch's scores: a reward model's, or labels such as 0–4), implicit
/// rewards `s = β·ρ` and `τ(i)` the rank of response `i` when the list is sorted by `s`
/// (1 = highest; ties by position):
///
/// ```text
/// L = Σ_{ψ_i > ψ_j} Δ_ij · log(1 + e^{−(s_i − s_j)})
/// Δ_ij = |G_i − G_j| · |1/D(τ(i)) − 1/D(τ(j))|      G = 2^ψ − 1,  D(τ) = log₂(1 + τ)
/// ```
///
/// `Δ` is detached (LambdaRank's weights). A pair the policy already ranks far apart at the
/// bottom of the list weighs little; a pair whose swap would move the top weighs most. Grades
/// enter through `2^ψ`, so they are expected on a small scale (`ψ ≤ 64`, checked with
/// `value_checks`; rescale raw reward-model scores). With `K = 2`, `Δ = |G_1 − G_2|·(1 −
/// 1/log₂3)` and the loss is that multiple of DPO's. Metrics: rewards `β·ρ`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let batch = PairedBatch::new(Tensor::<2>::from_floats([[-10.0, -12.0]], &device))?
///     .with_reference(Tensor::from_floats([[-11.0, -11.0]], &device))?
///     .with_scores(Tensor::from_floats([[1.0, 0.0]], &device))?;
/// let out = LipoConfig::new().with_beta(1.0).init()?.forward(batch)?;
/// // K = 2: Δ = (2¹ − 2⁰)·(1 − 1/log₂3) times DPO's −log σ(2).
/// let delta = 1.0 - 1.0 / 3f32.log2();
/// let dpo = (1.0 + (-2.0f32).exp()).ln();
/// assert!((out.loss.into_scalar::<f32>() - delta * dpo).abs() < 1e-6);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates with scores `[B, K]`
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LipoLoss {
    beta: f64,
    reference_free: bool,
    value_checks: bool,
}

impl LipoLoss {
    fn check_grades(&self, grades: &Tensor<2>) -> error::Result<()> {
        let values = check::read_floats("scores", grades.clone())?;
        check::all_finite("scores", &values, &grades.dims())?;
        if let Some(bad) = values.iter().find(|g| f64::from(**g) > LIPO_MAX_GRADE) {
            return Err(PreferenceError::InvalidValue {
                arg: "scores",
                expected: "LiPO grades <= 64 (the gain is 2^grade - 1): rescale them",
                found: bad.to_string(),
            });
        }
        Ok(())
    }
}

impl PreferenceLoss for LipoLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.refuse_soft_labels("LiPO")?;
        let grades = batch.scores.clone().ok_or(PreferenceError::MissingInput {
            loss: "LiPO",
            arg: "scores",
            why: "LiPO weighs each pair by the gains 2^grade - 1 of its responses: add the \
                  grades with `with_scores`",
        })?;
        if self.value_checks {
            batch.check_values()?;
            self.check_grades(&grades)?;
        }
        let ratios = batch.log_ratios("LiPO", self.reference_free)?;
        let ranking = batch.ranking();
        let rewards = ratios.clone().mul_scalar(self.beta);
        let gains = grades
            .mul_scalar(std::f64::consts::LN_2)
            .exp()
            .sub_scalar(1.0);
        let discounts = ranks(rewards.clone().detach())
            .add_scalar(1.0)
            .log()
            .div_scalar(std::f64::consts::LN_2)
            .recip();
        let lambda = Ranking::differences(gains)
            .abs()
            .mul(Ranking::differences(discounts).abs());
        let per_pair = softplus(ranking.margins(rewards).neg()).mul(lambda);
        let losses = ranking.sum_over_pairs(per_pair);
        let metrics = trl::paired_batch(
            &batch,
            ratios.detach().mul_scalar(self.beta),
            batch.policy.clone(),
            &ranking,
        );
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
