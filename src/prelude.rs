//! The main path in one import: collate → gather log-probs → batch → loss → metrics.
//!
//! ```
//! use burn_preference::prelude::*;
//! ```

pub use crate::batch::{PairedBatch, UnpairedBatch};
pub use crate::data::{BatchLayout, PreferenceCollatorConfig};
pub use crate::error::{PreferenceError, Result};
pub use crate::logps::{LmHead, LogpReduction, SequenceLogpsConfig};
pub use crate::loss::{
    BcoConfig, BcoState, CpoConfig, CpoLossType, DpoConfig, DpoLossType, KtoConfig, LossOutput,
    OrpoConfig, PreferenceLoss, Psi, PsiPoConfig, RrhfConfig,
};
pub use crate::metrics::Metrics;
