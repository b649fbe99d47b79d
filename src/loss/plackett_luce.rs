//! Plackett–Luce DPO (Rafailov et al. 2023, "Direct Preference Optimization", appendix A.3):
//! DPO over a whole ranked list of K responses.

use super::{LossOutput, PreferenceLoss};
use crate::batch::PairedBatch;
use crate::check;
use crate::error;
use crate::metrics::trl;

/// The magnitude infinite rewards are held at (see `forward`).
const REWARD_LIMIT: f64 = 1e30;

trl_config! {
    /// Configuration of [`PlackettLuceLoss`]. No peer ships it; the key is DPO's.
    pub struct PlackettLuceConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.1`, DPO's.
        beta / with_beta: f64 = 0.1,
    /// Train without a reference model (`log π_ref = 0`). Default: `false`.
        reference_free / with_reference_free: bool = false,
    /// Check the values of the batch's scores and weights, reading them back to the host;
    /// `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl PlackettLuceConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) for
    /// `β ∉ [1e-8, 1e8]`.
    pub fn init(&self) -> error::Result<PlackettLuceLoss> {
        check::kl_coefficient("beta", self.beta)?;
        Ok(PlackettLuceLoss {
            beta: self.beta,
            reference_free: self.reference_free,
            value_checks: self.value_checks,
        })
    }
}

/// The listwise DPO loss: the negative log-likelihood of the ranking under a Plackett–Luce
/// model whose scores are the implicit rewards `r = β·ρ`, `ρ = log π − log π_ref`.
///
/// A Plackett–Luce ranking picks the best response, then the best of the rest, and so on;
/// each pick is a softmax over the responses still left:
///
/// ```text
/// L = −Σ_{k=1}^{K−1} log [ exp(r_τ(k)) / Σ_{j ≥ k} exp(r_τ(j)) ]      τ = the ranking, best first
/// ```
///
/// With `K = 2` this is DPO exactly: `−log σ(r_w − r_l)`. The ranking comes from the batch's
/// scores (or the column order, best first). Ties share a pick (Breslow's convention): each
/// response of a tied group is picked against the group and everything ranked below it, and
/// the last group picks nothing — so a prompt whose responses all tie contributes 0, as in the
/// pairwise losses. Unlike the mean over ordered pairs of DPO on a ranked list, each response
/// is compared with the whole rest of the list at once. `log Σ exp` is taken about its
/// maximum, so the loss is finite for `|r| ≤ 1e4`, and an infinite log-ratio (a response one of
/// the models gives probability 0) gives DPO's limit, not NaN. Metrics: rewards `β·ρ`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// // Three responses, best first, with log-ratios 2, 0, −2 (β = 1: rewards the same).
/// let batch = PairedBatch::new(Tensor::<2>::from_floats([[2.0, 0.0, -2.0]], &device))?
///     .with_reference(Tensor::from_floats([[0.0, 0.0, 0.0]], &device))?;
/// let out = PlackettLuceConfig::new().with_beta(1.0).init()?.forward(batch)?;
/// let lse = |xs: &[f32]| xs.iter().map(|x| x.exp()).sum::<f32>().ln();
/// let expected = -(2.0 - lse(&[2.0, 0.0, -2.0])) - (0.0 - lse(&[0.0, -2.0]));
/// assert!((out.loss.into_scalar::<f32>() - expected).abs() < 1e-5);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlackettLuceLoss {
    beta: f64,
    reference_free: bool,
    value_checks: bool,
}

impl PreferenceLoss for PlackettLuceLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        batch.refuse_soft_labels("Plackett-Luce")?;
        if self.value_checks {
            batch.check_values()?;
        }
        let ratios = batch.log_ratios("Plackett-Luce", self.reference_free)?;
        let ranking = batch.ranking();
        // An infinite log-ratio (a response one model gives probability 0) is held at ±1e30:
        // its pick then has DPO's limit (loss 0 or the others' pull, gradient 0) rather than
        // the NaN of inf − inf; every finite reward a language model produces is far inside.
        let rewards = ratios
            .clone()
            .mul_scalar(self.beta)
            .clamp(-REWARD_LIMIT, REWARD_LIMIT);
        let [prompts, candidates] = rewards.dims();
        // left[b, k, j]: j is still in the list when k is picked (j is not ranked above k).
        let above = ranking.beats.clone().swap_dims(1, 2);
        let excluded = above.equal_elem(1.0);
        let pool = rewards
            .clone()
            .reshape([prompts, 1, candidates])
            .expand([prompts, candidates, candidates]);
        // The maximum over the pool (k itself is always in it, so it is finite), detached:
        // log Σ exp is exact for any shift.
        let shift = pool
            .clone()
            .mask_fill(excluded.clone(), f32::NEG_INFINITY)
            .max_dim(2)
            .detach();
        let log_denominator = pool
            .sub(shift.clone())
            .mask_fill(excluded, f32::NEG_INFINITY)
            .exp()
            .sum_dim(2)
            .log()
            .add(shift)
            .reshape([prompts, candidates]);
        // A response picks only if it beats someone: the last (tied) group picks nothing.
        let picks = ranking
            .beats
            .clone()
            .sum_dim(2)
            .reshape([prompts, candidates])
            .greater_elem(0.0);
        let losses = log_denominator
            .sub(rewards)
            .mask_fill(picks.bool_not(), 0.0)
            .sum_dim(1)
            .reshape([prompts]);
        let metrics = trl::paired_batch(
            &batch,
            ratios.detach().mul_scalar(self.beta),
            batch.policy.clone(),
            &ranking,
        );
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}
