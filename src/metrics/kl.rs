//! Exact KL divergences to the reference, for logging on evaluation batches: per token from
//! logits, and between two categorical distributions.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::check;
use crate::error::{PreferenceError, Result};
use crate::logps::{SequenceLogps, widen};

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
/// As [`SequenceLogps::forward`], and
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
