//! The per-pair and per-response formulas the losses compose, one family per file, each
//! function named by its TRL `loss_type` (`grep -rn <loss_type> src/loss/formulas`).

pub(crate) mod anchored;
pub(crate) mod aot;
pub(crate) mod divergence;
pub(crate) mod margin;
pub(crate) mod nll;
pub(crate) mod policy;
pub(crate) mod squared;
