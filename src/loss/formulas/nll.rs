//! The token-mean negative log-likelihood of chosen completions: the fine-tuning term of CPO,
//! SimPO-with-NLL and ORPO, and DPO's `sft` loss type — one implementation for all.
//!
//! TRL `loss_type`: `sft` (`DPOConfig`); the NLL term of `CPOTrainer` (`cpo_alpha`) and
//! `ORPOTrainer`.

use burn::tensor::{Bool, Tensor};

use crate::check;
use crate::error;
use crate::loss::TokenTerm;
use crate::metrics::Metric;

/// The NLL of the chosen tokens as a token mean over the whole batch, PyTorch's
/// `CrossEntropyLoss()` with `ignore_index` (what TRL's CPO and ORPO trainers add):
///
/// ```text
/// NLL = − Σ_{b,t} m_{b,t}·ℓ_{b,t} / max(Σ_{b,t} m_{b,t}, 1)
/// ```
///
/// A long completion weighs more than a short one (each token counts once), unlike a mean of
/// per-sequence means. Which tokens count is the caller's choice: CPO counts the completion
/// tokens (the positions the log-probs were gathered on, `valid`), ORPO the prompt and the
/// completion tokens (every non-padding position). A batch without any masked-in token gives
/// 0, never NaN.
///
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use burn_preference::loss::token_mean_nll;
///
/// let device = Device::default();
/// let token_logps = Tensor::<2>::from_floats([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]], &device);
/// let mask = Tensor::<2, Bool>::from_bool(
///     burn::tensor::TensorData::new(vec![true, true, false, true, false, false], [2, 3]),
///     &device,
/// );
/// let nll: f32 = token_mean_nll(token_logps, mask)?.into_scalar();
/// assert!((nll - 2.0).abs() < 1e-6); // (1 + 2 + 3) / 3 tokens
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - token_logps: `[B, T']` (e.g. [`SequenceLogpsOutput::token_logps`](crate::logps::SequenceLogpsOutput::token_logps) of the chosen rows)
/// - mask: `[B, T']`, the tokens that count
/// - output: `[1]`
///
/// # Errors
/// [`PreferenceError::Shape`](crate::PreferenceError::Shape) when the mask's shape differs from the log-probs',
/// [`PreferenceError::Empty`](crate::PreferenceError::Empty) for `B = 0`, [`PreferenceError::DeviceMismatch`](crate::PreferenceError::DeviceMismatch) when the two
/// live on different devices.
pub fn token_mean_nll(token_logps: Tensor<2>, mask: Tensor<2, Bool>) -> error::Result<Tensor<1>> {
    let (total, count) = token_nll_sum(token_logps, mask)?;
    Ok(total.div(count.clamp_min(1.0)))
}

/// The NLL summed over the masked-in tokens and their count `[1]` each: the parts of
/// [`token_mean_nll`] that add up across micro-batches. Errors as [`token_mean_nll`].
pub(crate) fn token_nll_sum(
    token_logps: Tensor<2>,
    mask: Tensor<2, Bool>,
) -> error::Result<(Tensor<1>, Tensor<1>)> {
    let dims = token_logps.dims();
    check::non_empty("token_logps", dims[0])?;
    check::same_device(&[
        ("token_logps", token_logps.device()),
        ("mask", mask.device()),
    ])?;
    check::shape(
        "mask",
        mask.dims(),
        dims.map(Some),
        "token_logps' shape [B, T']",
    )?;
    let count = mask.clone().float().sum();
    let total = token_logps.mask_fill(mask.bool_not(), 0.0).sum().neg();
    Ok((total, count))
}

/// The NLL term of a loss, weighted by `weight`, from the chosen rows' per-token log-probs and
/// the tokens that count; its metric `nll_loss` is the token mean (a sum and a count, so that
/// micro-batches merge exactly).
pub(crate) fn term(
    token_logps: Tensor<2>,
    mask: Tensor<2, Bool>,
    weight: f64,
) -> error::Result<(TokenTerm, Metric)> {
    let (sum, count) = token_nll_sum(token_logps, mask)?;
    let metric = Metric::new(sum.clone(), count.clone());
    Ok((TokenTerm { sum, count, weight }, metric))
}
