//! The supervised fine-tuning term: the token-mean negative log-likelihood of the preferred
//! completions over the whole batch.
//!
//! TRL `loss_type`: `sft` (also the NLL term of CPO, ORPO and RRHF-style mixtures).

use burn::tensor::{Bool, Tensor};

/// `sft`: `−Σ_{b,t valid} ℓ_{b,t} / Σ_{b,t} valid` over the chosen completions, one scalar
/// `[1]` for the batch (every token weighs the same, so long completions weigh more than short
/// ones, as in TRL and Liger-Kernel). 0 when no token is valid.
///
/// # Shapes
/// - token_logps, valid: `[B, T']`, 0 / false at invalid positions
/// - output: `[1]`
pub(crate) fn sft(token_logps: Tensor<2>, valid: Tensor<2, Bool>) -> Tensor<1> {
    let count = valid.clone().float().sum().clamp_min(1.0);
    token_logps
        .mask_fill(valid.bool_not(), 0.0)
        .sum()
        .neg()
        .div(count)
}
