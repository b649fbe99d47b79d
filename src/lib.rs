//! Preference-optimisation losses for [burn](https://burn.dev): ΨPO, DPO (with label
//! smoothing, soft labels and a reference-free mode), IPO and RRHF, with the helpers every
//! trainer needs.
//!
//! The modules follow the data: [`logps`] turns logits into sequence log-probs, [`ratios`]
//! turns those into policy/reference log-ratios, [`loss`] turns a [`PreferenceBatch`] into a
//! loss, and [`metrics`] reports rewards, accuracies and the KL to the reference. Every
//! function takes device-generic burn tensors: the same code runs on CPU (flex, ndarray) and
//! GPU (wgpu), chosen by the [`Device`](burn::tensor::Device) the tensors live on.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor, TensorData};
//! use burn_preference::{
//!     DpoConfig, LogpReduction, PreferenceBatch, PreferenceLoss, SequenceLogpsConfig,
//! };
//!
//! let device = Device::default();
//! // Two pairs, concatenated as a trainer runs them: chosen rows 0..2, rejected rows 2..4.
//! let logits = Tensor::<3>::random([4, 6, 32], burn::tensor::Distribution::Default, &device);
//! let labels = Tensor::<2, Int>::from_data(
//!     TensorData::new(vec![-100i64, -100, 5, 9, 2, 1,  -100, 3, 3, 8, -100, -100,
//!                          -100, -100, 7, 7, 1, 0,  -100, 3, 4, 4, 4, -100], [4, 6]),
//!     &device,
//! );
//! let gatherer = SequenceLogpsConfig::new().with_reduction(LogpReduction::Sum).init()?;
//! let policy = gatherer.forward(logits, labels)?.logps;
//! let batch = PreferenceBatch::concatenated(policy)?;
//! let out = DpoConfig::new().with_reference_free(true).init()?.forward(batch)?;
//! println!("loss {}", out.loss.into_scalar::<f32>());
//! # Ok::<(), burn_preference::PreferenceError>(())
//! ```
#![deny(missing_docs)]

mod check;
pub mod error;
mod fused;
pub mod logps;
pub mod loss;
pub mod metrics;
mod numerics;
mod ranking;
pub mod ratios;

pub use error::{PreferenceError, Result};
pub use logps::{
    LogpReduction, SequenceLogps, SequenceLogpsConfig, SequenceLogpsOutput, sequence_logps,
};
pub use loss::{
    BcoConfig, BcoLoss, BcoState, CpoConfig, CpoLoss, CpoLossType, KtoConfig, KtoLoss, KtoLossType,
    OrpoConfig, OrpoLoss, UnpairedBatch,
};
pub use loss::{
    DpoConfig, IpoConfig, PreferenceBatch, PreferenceLoss, PreferenceOutput, Psi, PsiPoConfig,
    PsiPoLoss, RankLoss, Reduction, RrhfConfig, RrhfLoss,
};
pub use metrics::{
    PreferenceMetrics, TokenKl, categorical_kl, implicit_rewards, preference_accuracy,
    ranking_accuracy, token_kl,
};
pub use ratios::{
    PairwiseRatios, concatenated_log_ratios, log_ratios, pairwise_log_ratios, split_concatenated,
};
