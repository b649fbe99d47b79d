//! Preference-optimisation losses for [burn](https://burn.dev): every loss of TRL 1.16's
//! `DPOTrainer` (configured by the same keys as TRL's `DPOConfig`, with f-divergences, WPO,
//! LD-DPO and mixtures), ΨPO, conservative DPO (label smoothing, soft labels), IPO and RRHF,
//! with reference-free modes and the helpers every trainer needs.
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
//!
//! # Bad input, NaN and infinity
//!
//! One policy, everywhere in the crate:
//!
//! - **Malformed input is an error, never a panic.** Shapes, batch sizes, empty batches,
//!   tensors on different devices, hyper-parameters outside their range (or outside what `f32`
//!   can hold), masks that are not 0/1, NaN scores, soft labels outside `[0, 1]`, negative or
//!   non-finite lengths, probability vectors that are not distributions: each gives a typed
//!   [`PreferenceError`] whose message names the argument, what was expected and what came.
//!   A trainer can log it and skip the batch.
//! - **NaN and ±inf inside logits or log-probs propagate**, as in PyTorch: checking every
//!   logit would cost a pass over `[B, T, V]`. A NaN logit in a counted position makes that
//!   sequence's log-prob, and so its loss, NaN. Positions that are not counted (ignored labels,
//!   masked positions) never contribute, whatever their logits hold: their log-prob is 0 and
//!   their gradient exactly 0.
//! - **The opt-in guard** is [`PreferenceBatch::require_finite`]: it reads the `[B, K]`
//!   sequence log-probs back once and returns [`PreferenceError::NonFinite`] naming the first
//!   bad `[prompt, candidate]`, so the offending example can be found and skipped.
//! - **Infinite log-ratios give the mathematical limit**, not NaN: a chosen response the
//!   reference gives probability 0 (log-ratio `+inf`) has DPO loss 0 and zero gradient; one
//!   the policy gives probability 0 has loss `+inf`.
//! - Everything is evaluated in stable forms (max-shifted log-sum-exp, `softplus` as
//!   `max(x, 0) + log1p(e^{−|x|})`): finite logits up to `±1e30` and margins `β·h` up to
//!   `f32`'s range give finite values and gradients.
#![deny(missing_docs)]

mod check;
pub mod collate;
pub mod error;
mod fused;
pub mod logps;
pub mod loss;
pub mod metrics;
mod numerics;
pub mod packing;
mod ranking;
pub mod ratios;

pub use check::{set_value_checks, value_checks};
pub use collate::{
    Collated, Layout, PreferenceCollator, PreferenceCollatorConfig, PreferenceExample,
    RankedExample,
};
pub use error::{PreferenceError, Result};
#[doc(hidden)]
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub use fused::{CpuKernelIsa, cpu_kernel_isa};
pub use fused::{FusedPathCounters, fused_path_counters};
pub use logps::{
    HeadLayout, LmHead, LogpReduction, SequenceLogps, SequenceLogpsConfig, SequenceLogpsOutput,
    sequence_logps,
};
pub use loss::{
    BcoConfig, BcoLoss, BcoState, CpoConfig, CpoLoss, CpoLossType, KtoConfig, KtoLoss, KtoLossType,
    OrpoConfig, OrpoLoss, UnpairedBatch,
};
pub use loss::{
    DpoConfig, DpoLoss, DpoLossType, FDivergence, IpoConfig, PreferenceBatch, PreferenceLoss,
    PreferenceOutput, Psi, PsiPoConfig, PsiPoLoss, RankLoss, Reduction, RrhfConfig, RrhfLoss,
};
pub use metrics::{
    PreferenceMetrics, TokenKl, categorical_kl, implicit_rewards, preference_accuracy,
    ranking_accuracy, token_kl,
};
pub use packing::Segments;
pub use ratios::{
    PairwiseRatios, concatenated_log_ratios, log_ratios, pairwise_log_ratios, split_concatenated,
};
