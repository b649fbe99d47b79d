//! The main path in one import: collate → gather log-probs → batch → loss → metrics.
//!
//! ```
//! use burn_preference::prelude::*;
//! ```

pub use crate::advantages::{GrpoAdvantagesConfig, RlooAdvantagesConfig};
pub use crate::batch::{CompletionBatch, PairedBatch, StepTotals, UnpairedBatch};
pub use crate::data::{BatchLayout, PreferenceCollatorConfig};
pub use crate::error::{PreferenceError, Result};
pub use crate::logps::{LmHead, LogpReduction, SequenceLogpsConfig};
pub use crate::loss::{
    BcoConfig, BcoState, BetaDpoConfig, BetaDpoState, CpoConfig, CpoLossType, DpoConfig,
    DpoLossType, DpopConfig, GrpoConfig, GrpoLossType, KtoConfig, LipoConfig, LossOutput,
    OdpoConfig, OrpoConfig, PlackettLuceConfig, PreferenceLoss, Psi, PsiPoConfig, RdpoConfig,
    RlooConfig, RrhfConfig, SimperConfig,
};
pub use crate::metrics::Metrics;
