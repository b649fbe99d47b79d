//! Preference-optimisation losses for [burn](https://burn.dev).
//!
//! The layout follows the data: [`logps`] turns logits into sequence log-probs, [`ratios`]
//! turns those into policy/reference log-ratios.
#![deny(missing_docs)]

mod check;
pub mod error;
pub mod logps;
mod numerics;
pub mod ratios;

pub use error::{PreferenceError, Result};
pub use logps::{LogpReduction, SequenceLogps, SequenceLogpsConfig, SequenceLogpsOutput, sequence_logps};
pub use ratios::{PairwiseRatios, concatenated_log_ratios, log_ratios, pairwise_log_ratios, split_concatenated};
