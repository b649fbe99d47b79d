//! Preference-optimisation losses for [burn](https://burn.dev): every loss of TRL 1.16's
//! `DPOTrainer` (configured by the same keys as TRL's `DPOConfig`, with f-divergences, WPO,
//! LD-DPO and mixtures), ΨPO, conservative DPO (label smoothing, soft labels), IPO, RRHF,
//! CPO/SimPO/AlphaPO, ORPO, KTO and BCO; the losses users ask peers for (DPOP, β-DPO, R-DPO,
//! ODPO, listwise Plackett–Luce and LiPO-λ, SimPER); per-example weights for every loss;
//! reference-free modes; the group-relative policy losses over sampled completions (every
//! TRL 1.16 `GRPOTrainer` `loss_type`, and RLOO) with their advantages from rewards; and the
//! helpers every trainer needs.
//!
//! The modules follow the data: [`data`] collates token ids into padded or packed batches,
//! [`logps`] turns logits (or hidden states and the LM head) into sequence log-probs, [`batch`]
//! holds them as a paired/ranked, unpaired or completion batch ([`advantages`] turns the
//! rewards of sampled completions into their advantages), [`loss`] turns a batch into a loss with
//! one contract ([`loss::PreferenceLoss`]), and [`metrics`] carries what TRL logs, on the
//! device until one read. Every function takes device-generic burn tensors: the same code runs
//! on CPU (flex, ndarray) and GPU (wgpu, CUDA), chosen by the
//! [`Device`](burn::tensor::Device) the tensors live on. The main path is in the [`prelude`]:
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use burn_preference::data::PreferenceExample;
//! use burn_preference::prelude::*;
//!
//! let device = Device::default();
//! // Token ids → a padded batch: chosen rows first, then rejected, prompts labelled −100.
//! let examples = vec![
//!     PreferenceExample { prompt: vec![1, 2], chosen: vec![5, 9, 2], rejected: vec![3, 3] },
//!     PreferenceExample { prompt: vec![7], chosen: vec![7, 1], rejected: vec![4, 4, 4] },
//! ];
//! let collated = PreferenceCollatorConfig::new().init()?.pad(&examples)?;
//! let [rows, time] = collated.dims();
//! // The policy's and the frozen reference's logits over those rows (a model's, in training).
//! let logits = |seed| Tensor::<3>::random([rows, time, 32], Distribution::Normal(0.0, seed), &device);
//! let gatherer = SequenceLogpsConfig::new().init()?;
//! let policy = gatherer.forward(logits(1.0), collated.labels(&device), None)?;
//! let reference = gatherer.forward(logits(0.5), collated.labels(&device), None)?;
//! let batch = PairedBatch::from_output(policy, collated.layout())?.with_reference_output(reference)?;
//! let out = DpoConfig::new().with_beta(0.1).init()?.forward(batch)?;
//! // out.loss.backward() in training; the metrics stay on the device until one read.
//! for (name, value) in out.metrics.log()? {
//!     println!("{name}: {value:.4}");
//! }
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
//! - **The opt-in guard** is [`PairedBatch::require_finite`](batch::PairedBatch::require_finite)
//!   (and `UnpairedBatch`'s): it reads the sequence log-probs back once and returns
//!   [`PreferenceError::NonFinite`] naming the first bad `[prompt, candidate]`, so the
//!   offending example can be found and skipped.
//! - **Checks that read values back** (labels in the vocabulary, 0/1 masks, soft labels in
//!   `[0, 1]`, scores without NaN, lengths `≥ 0`) cost a device-to-host read, which on a GPU
//!   waits for the queued work. Each config has a `value_checks` switch (on by default): with it
//!   off, that config's gatherer or loss never reads a tensor back, and bad values go through
//!   as documented. Shapes, devices and hyper-parameters are checked either way, from metadata.
//! - **Infinite log-ratios give the mathematical limit**, not NaN: a chosen response the
//!   reference gives probability 0 (log-ratio `+inf`) has DPO loss 0 and zero gradient; one
//!   the policy gives probability 0 has loss `+inf`.
//! - Everything is evaluated in stable forms (max-shifted log-sum-exp, `softplus` as
//!   `max(x, 0) + log1p(e^{−|x|})`): finite logits up to `±1e30` and margins `β·h` up to
//!   `f32`'s range give finite values and gradients.
#![deny(missing_docs)]

// First: the macro is visible in the modules declared after it.
#[macro_use]
mod config;

pub mod advantages;
pub mod batch;
mod check;
pub mod data;
pub mod error;
mod fused;
pub mod logps;
pub mod loss;
pub mod metrics;
mod numerics;
pub mod prelude;
pub mod reference;
#[cfg(feature = "train")]
pub mod train;

pub use error::{PreferenceError, Result};

/// Probes for tests that must observe which path ran; not a stable API.
#[doc(hidden)]
pub mod diagnostics {
    pub use crate::check::host_reads;
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    pub use crate::fused::{CpuKernelIsa, cpu_kernel_isa};
    pub use crate::fused::{FusedPathCounters, fused_path_counters};
}
