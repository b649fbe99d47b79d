//! The reference model at scale: its log-probs computed once over a dataset and fed back by
//! example ([`PrecomputedReference`], TRL's `precompute_ref_log_probs`), so that a training
//! step runs the policy only; and TR-DPO's reference update `π_ref ← α·π + (1 − α)·π_ref`
//! every τ steps over any burn module ([`ReferenceSyncConfig`], TRL's `sync_ref_model`).
//!
//! The two do not mix: precomputed log-probs belong to one fixed reference model.

mod precomputed;
mod sync;

pub use precomputed::PrecomputedReference;
pub use sync::{ReferenceSync, ReferenceSyncConfig, mix_reference};
