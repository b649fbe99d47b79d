//! Policy/reference log-ratios `ρ(y) = log π(y|x) − log π_ref(y|x)`.
//!
//! The reference is always a constant: it is detached, so no gradient reaches it whether it
//! comes from a frozen model's forward pass or from log-probs precomputed once and stored.
//! Reference-free training is `log π_ref = 0`, passed here as `None`.

use burn::tensor::Tensor;

use crate::check;
use crate::error::{PreferenceError, Result};

/// `ρ = policy − reference.detach()`; `reference = None` is reference-free (`ρ = policy`).
///
/// # Errors
/// [`PreferenceError::Shape`] when the two shapes differ; [`PreferenceError::Empty`] for an
/// empty batch.
///
/// # Shapes
/// - policy, reference: any shape `[B, ...]`, equal
/// - output: the same shape
pub fn log_ratios<const D: usize>(
    policy: Tensor<D>,
    reference: Option<Tensor<D>>,
) -> Result<Tensor<D>> {
    check::non_empty("policy", policy.dims()[0])?;
    match reference {
        None => Ok(policy),
        Some(reference) => {
            check::same_device(&[
                ("policy", policy.device()),
                ("reference", reference.device()),
            ])?;
            let want = policy.dims().map(Some);
            check::shape("reference", reference.dims(), want, "the policy's shape")?;
            Ok(policy.sub(reference.detach()))
        }
    }
}

/// Log-ratios of the chosen and rejected responses of `B` preference pairs.
#[derive(Debug, Clone)]
pub struct PairwiseRatios {
    /// `ρ(y_w)` `[B]`.
    pub chosen: Tensor<1>,
    /// `ρ(y_l)` `[B]`.
    pub rejected: Tensor<1>,
}

impl PairwiseRatios {
    /// The preference margin `h = ρ(y_w) − ρ(y_l)` `[B]`.
    pub fn margin(&self) -> Tensor<1> {
        self.chosen.clone().sub(self.rejected.clone())
    }
}

/// Log-ratios of chosen and rejected responses given as separate tensors.
///
/// `reference` is `Some((chosen, rejected))` or `None` for reference-free training.
///
/// # Errors
/// [`PreferenceError::BatchMismatch`] or [`PreferenceError::Shape`] when the four tensors
/// disagree; [`PreferenceError::Empty`] for `B = 0`.
///
/// # Shapes
/// - every input: `[B]`
pub fn pairwise_log_ratios(
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    reference: Option<(Tensor<1>, Tensor<1>)>,
) -> Result<PairwiseRatios> {
    let [batch] = policy_chosen.dims();
    check::same_device(&[
        ("policy_chosen", policy_chosen.device()),
        ("policy_rejected", policy_rejected.device()),
    ])?;
    check::batch(
        "policy_rejected",
        policy_rejected.dims()[0],
        "policy_chosen",
        batch,
    )?;
    let (ref_chosen, ref_rejected) = reference.unzip();
    if let Some(r) = &ref_chosen {
        check::batch("reference_chosen", r.dims()[0], "policy_chosen", batch)?;
    }
    if let Some(r) = &ref_rejected {
        check::batch("reference_rejected", r.dims()[0], "policy_chosen", batch)?;
    }
    Ok(PairwiseRatios {
        chosen: log_ratios(policy_chosen, ref_chosen)?,
        rejected: log_ratios(policy_rejected, ref_rejected)?,
    })
}

/// Log-ratios from one concatenated batch `[2B]` with the chosen rows first, as trainers run
/// chosen and rejected through the model in one forward pass.
///
/// # Errors
/// [`PreferenceError::Shape`] when the length is odd or the reference's length differs;
/// [`PreferenceError::Empty`] for an empty batch.
///
/// # Shapes
/// - policy, reference: `[2B]` (rows `0..B` chosen, `B..2B` rejected)
/// - output: `chosen [B]`, `rejected [B]`
pub fn concatenated_log_ratios(
    policy: Tensor<1>,
    reference: Option<Tensor<1>>,
) -> Result<PairwiseRatios> {
    let (policy_chosen, policy_rejected) = split_concatenated("policy", policy)?;
    let reference = reference
        .map(|r| split_concatenated("reference", r))
        .transpose()?;
    pairwise_log_ratios(policy_chosen, policy_rejected, reference)
}

/// Splits a concatenated `[2B, ...]` batch into its chosen (first) and rejected halves.
///
/// # Errors
/// [`PreferenceError::Shape`] when the leading size is odd; [`PreferenceError::Empty`] when 0.
pub fn split_concatenated<const D: usize>(
    arg: &'static str,
    tensor: Tensor<D>,
) -> Result<(Tensor<D>, Tensor<D>)> {
    let rows = tensor.dims()[0];
    check::non_empty(arg, rows)?;
    if !rows.is_multiple_of(2) {
        return Err(PreferenceError::Shape {
            arg,
            expected: "an even number of rows [2B, ...] (chosen first, then rejected)".to_string(),
            actual: tensor.dims().to_vec(),
        });
    }
    let half = rows / 2;
    Ok((
        tensor.clone().narrow(0, 0, half),
        tensor.narrow(0, half, half),
    ))
}
