//! Training with burn-train's `Learner` (the `train` feature): a data loader whose
//! micro-batches carry their optimiser step's totals, so that burn-train's gradient
//! accumulation and multi-device strategies sum the gradients of the step as one batch would
//! have them; and the output and metric that show a loss's value and its TRL metrics in
//! burn-train's metric system (its CLI renderer, the `tui` feature's dashboard, its loggers).
//!
//! A burn user implements `TrainStep` and `InferenceStep` for their model, as for any burn-train
//! run. With this module the input is a [`MicroBatch`] and the output a [`LossItem`]:
//!
//! ```
//! use std::sync::Arc;
//!
//! use burn::data::dataset::InMemDataset;
//! use burn::module::Module;
//! use burn::nn::{Embedding, EmbeddingConfig};
//! use burn::optim::AdamConfig;
//! use burn::tensor::Device;
//! use burn::train::metric::LossMetric;
//! use burn::train::{InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep};
//! use burn_preference::data::PreferenceExample;
//! use burn_preference::prelude::*;
//! use burn_preference::train::{LossItem, MicroBatch, StepLoader, TrlMetric};
//!
//! /// A toy policy: next-token logits from the current token alone.
//! #[derive(Module, Debug)]
//! struct Policy {
//!     logits: Embedding,
//! }
//!
//! impl Policy {
//!     fn dpo(&self, micro: MicroBatch) -> burn_preference::Result<LossOutput> {
//!         let device = self.devices()[0].clone();
//!         let batch = &micro.batch;
//!         let logits = self.logits.forward(batch.input_ids(&device));
//!         let gatherer = SequenceLogpsConfig::new().init()?;
//!         let policy = gatherer.forward(logits, batch.labels(&device), None)?;
//!         let pairs = PairedBatch::from_output(policy, batch.layout())?
//!             // Reference-free here; a real run adds `with_reference_output(…)`.
//!             .with_step(micro.step)?; // divide by the whole step's totals
//!         PsiPoConfig::new(Psi::Logit).with_reference_free(true).init()?.forward(pairs)
//!     }
//! }
//!
//! impl TrainStep for Policy {
//!     type Input = MicroBatch;
//!     type Output = LossItem;
//!     fn step(&self, micro: MicroBatch) -> TrainOutput<LossItem> {
//!         // burn-train's steps return no `Result`: a bad batch stops the run here.
//!         LossItem::train(self, self.dpo(micro).expect("a valid batch"))
//!     }
//! }
//!
//! impl InferenceStep for Policy {
//!     type Input = MicroBatch;
//!     type Output = LossItem;
//!     fn step(&self, micro: MicroBatch) -> LossItem {
//!         LossItem::new(self.dpo(micro).expect("a valid batch")) // no `Result` here either
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::default().autodiff(); // burn-train trains on an autodiff device
//! let example = PreferenceExample { prompt: vec![1, 2], chosen: vec![3, 4], rejected: vec![5] };
//! let dataset = Arc::new(InMemDataset::new(vec![example; 64]));
//! let collator = PreferenceCollatorConfig::new().init()?;
//! // Steps of 16 pairs, each as 4 micro-batches of 4: `grads_accumulation(4)` below.
//! let loader = StepLoader::new(dataset.clone(), 16, move |e| collator.pad(e))?
//!     .with_micro_batches(4)?
//!     .with_shuffle(7);
//! let valid = StepLoader::new(dataset, 64, move |e| collator.pad(e))?;
//! let policy = Policy { logits: EmbeddingConfig::new(8, 8).init(&device) };
//! let directory = std::env::temp_dir().join("burn-preference-doc");
//! let result = SupervisedTraining::new(directory, Arc::new(loader), Arc::new(valid))
//!     .metrics((
//!         LossMetric::new(),
//!         TrlMetric::new("rewards/accuracies"),
//!         TrlMetric::new("rewards/margins"),
//!     ))
//!     .grads_accumulation(4)
//!     .num_epochs(2)
//!     .launch(Learner::new(policy, AdamConfig::new().init(), 1e-3));
//! assert!(result.error.is_none());
//! # Ok(())
//! # }
//! ```
//!
//! Gradient accumulation is exact when the loader's micro-batches per step equal
//! `grads_accumulation`'s: burn-train sums the gradients of that many consecutive micro-batches,
//! and each micro-batch's loss is its share of the step's (see
//! [`StepTotals`](crate::batch::StepTotals)). On `n` devices (burn-train's `MultiDevice`
//! strategy) give the loader [`with_devices(n)`](StepLoader::with_devices) too: every device's
//! micro-batch is then its share of one step of the whole run, and the gradients burn-train adds
//! over the devices are the step's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::{Dataset, DatasetError};
use burn::module::Module;
use burn::tensor::{Device, ExecutionError, Tensor};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{ItemLazy, TrainOutput};

use crate::batch::StepTotals;
use crate::check;
use crate::data::Collated;
use crate::error::Result;
use crate::loss::LossOutput;
use crate::metrics::Metrics;

/// One micro-batch of an optimiser step: its collated examples (on the host) and the totals of
/// the whole step, for [`PairedBatch::with_step`](crate::batch::PairedBatch::with_step) /
/// [`UnpairedBatch::with_step`](crate::batch::UnpairedBatch::with_step). What a
/// [`StepLoader`] yields; the model's `TrainStep` moves it to its own device.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// The micro-batch's examples, collated.
    pub batch: Collated,
    /// The totals of the optimiser step it belongs to (every micro-batch on every device).
    pub step: StepTotals,
}

type Collate<I> = Arc<dyn Fn(&[I]) -> Result<Collated> + Send + Sync>;

/// A burn [`DataLoader`] of [`MicroBatch`]es: it takes `step_size` examples per optimiser step
/// (the last step of an epoch takes what is left), splits each step into near-equal shares —
/// one per device, then `micro_batches` per device — collates every share, and gives each the
/// step's [`StepTotals`]. Counting the totals needs every share of the step collated, so a
/// device's loader collates the other devices' shares too (host work, no device read).
///
/// The order is the dataset's, or a new shuffle every epoch ([`with_shuffle`](Self::with_shuffle))
/// that is the same on every device: the devices' loaders agree on every step.
pub struct StepLoader<I> {
    dataset: Arc<dyn Dataset<I>>,
    collate: Collate<I>,
    step_size: usize,
    micro_batches: usize,
    devices: usize,
    /// Which device's share this loader yields (`0..devices`).
    shard: usize,
    seed: Option<u64>,
    /// Epochs started: the shuffle of the next one.
    epochs: AtomicU64,
}

impl<I> StepLoader<I> {
    /// A loader over `dataset` taking `step_size` examples per optimiser step, one micro-batch
    /// per step, collated by `collate` (e.g. `move |e| collator.pad(e)`).
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) when `step_size` is 0.
    pub fn new(
        dataset: Arc<dyn Dataset<I>>,
        step_size: usize,
        collate: impl Fn(&[I]) -> Result<Collated> + Send + Sync + 'static,
    ) -> Result<Self> {
        check::param("step_size", step_size as f64, ">= 1", |s| s >= 1.0)?;
        Ok(Self {
            dataset,
            collate: Arc::new(collate),
            step_size,
            micro_batches: 1,
            devices: 1,
            shard: 0,
            seed: None,
            epochs: AtomicU64::new(0),
        })
    }

    /// Splits every step, on every device, into `micro_batches` micro-batches: the
    /// `grads_accumulation` of burn-train's `SupervisedTraining`, which must be the same.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) when it is 0.
    pub fn with_micro_batches(mut self, micro_batches: usize) -> Result<Self> {
        check::param("micro_batches", micro_batches as f64, ">= 1", |m| m >= 1.0)?;
        self.micro_batches = micro_batches;
        Ok(self)
    }

    /// Shares every step among `devices` devices: the number of devices of burn-train's
    /// `MultiDevice` strategy. burn-train splits a loader into one per device with
    /// `split_dataloader`, which asks for `devices` contiguous ranges of the items; this loader
    /// reads the `d`-th range as "device `d`'s share of every step". Any other range (or with
    /// one device) slices the dataset, as burn's own loaders do.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) when it is 0.
    pub fn with_devices(mut self, devices: usize) -> Result<Self> {
        check::param("devices", devices as f64, ">= 1", |d| d >= 1.0)?;
        self.devices = devices;
        Ok(self)
    }

    /// A new order every epoch, drawn from `seed` and the epoch's number.
    pub fn with_shuffle(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn with_dataset(&self, dataset: Arc<dyn Dataset<I>>, devices: usize, shard: usize) -> Self {
        Self {
            dataset,
            collate: self.collate.clone(),
            step_size: self.step_size,
            micro_batches: self.micro_batches,
            devices,
            shard,
            seed: self.seed,
            epochs: AtomicU64::new(self.epochs.load(Ordering::Relaxed)),
        }
    }

    /// The dataset's order in `epoch`.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if let Some(seed) = self.seed {
            // Fisher–Yates with SplitMix64: the same order on every device's loader.
            let mut state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = || {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            };
            for i in (1..order.len()).rev() {
                order.swap(i, (next() % (i as u64 + 1)) as usize);
            }
        }
        order
    }

    /// This loader's micro-batches of a step of `len` examples, as ranges of the step, in
    /// order; `all` the ranges of every device (this one's among them).
    fn shares(&self, len: usize) -> (Vec<std::ops::Range<usize>>, Vec<std::ops::Range<usize>>) {
        let mut all = Vec::with_capacity(self.devices * self.micro_batches);
        let mut own = Vec::with_capacity(self.micro_batches);
        for (d, device) in split(0..len, self.devices).into_iter().enumerate() {
            for micro in split(device, self.micro_batches) {
                if micro.is_empty() {
                    continue;
                }
                if d == self.shard {
                    own.push(micro.clone());
                }
                all.push(micro);
            }
        }
        (own, all)
    }
}

/// `range` in `parts` contiguous parts whose lengths differ by at most one, longest first.
fn split(range: std::ops::Range<usize>, parts: usize) -> Vec<std::ops::Range<usize>> {
    let (len, mut start) = (range.len(), range.start);
    (0..parts)
        .map(|p| {
            let size = len / parts + usize::from(p < len % parts);
            start += size;
            start - size..start
        })
        .collect()
}

impl<I: Clone + Send + Sync + 'static> DataLoader<MicroBatch> for StepLoader<I> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<MicroBatch> + 'a> {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
        Box::new(StepIterator {
            loader: self,
            order: self.order(epoch),
            next_step: 0,
            ready: VecDeque::new(),
            processed: 0,
            total: self.num_items(),
        })
    }

    /// This device's examples in an epoch.
    fn num_items(&self) -> usize {
        let len = self.dataset.len();
        (0..len)
            .step_by(self.step_size)
            .map(|start| {
                let (own, _) = self.shares(self.step_size.min(len - start));
                own.iter().map(|r| r.len()).sum::<usize>()
            })
            .sum()
    }

    fn to_device(&self, _device: &Device) -> Arc<dyn DataLoader<MicroBatch>> {
        // Micro-batches stay on the host: the model's step moves them to its device.
        Arc::new(self.with_dataset(self.dataset.clone(), self.devices, self.shard))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<MicroBatch>> {
        let len = self.num_items();
        let per_device = len / self.devices.max(1);
        // The ranges burn-train's `split_dataloader` asks for: [d·len/n, (d+1)·len/n), the last
        // one to the end.
        let device = (self.devices > 1 && self.shard == 0 && per_device > 0)
            .then(|| start / per_device)
            .filter(|&d| {
                d < self.devices
                    && start == d * per_device
                    && end
                        == if d + 1 == self.devices {
                            len
                        } else {
                            start + per_device
                        }
            });
        Arc::new(match device {
            Some(d) => self.with_dataset(self.dataset.clone(), self.devices, d),
            None => self.with_dataset(
                Arc::new(burn::data::dataset::transform::PartialDataset::new(
                    self.dataset.clone(),
                    start,
                    end,
                )),
                1,
                0,
            ),
        })
    }
}

struct StepIterator<'a, I> {
    loader: &'a StepLoader<I>,
    order: Vec<usize>,
    next_step: usize,
    /// This device's micro-batches of the current step and their sizes.
    ready: VecDeque<(MicroBatch, usize)>,
    processed: usize,
    total: usize,
}

impl<I: Clone + Send + Sync> StepIterator<'_, I> {
    /// Collates the next step's micro-batches into `ready`.
    fn next_step(&mut self) -> std::result::Result<(), DatasetError> {
        let loader = self.loader;
        let start = self.next_step * loader.step_size;
        let end = (start + loader.step_size).min(self.order.len());
        self.next_step += 1;
        let examples = loader.dataset.get_many(self.order[start..end].to_vec())?;
        let (own, all) = loader.shares(examples.len());
        let collate = |r: &std::ops::Range<usize>| {
            (loader.collate)(&examples[r.clone()]).map_err(DatasetError::new)
        };
        let mut step = StepTotals::default();
        let mut mine = Vec::with_capacity(own.len());
        for range in &all {
            let batch = collate(range)?;
            step = step + StepTotals::of(&[&batch]);
            if own.contains(range) {
                mine.push((batch, range.len()));
            }
        }
        self.ready.extend(
            mine.into_iter()
                .map(|(batch, n)| (MicroBatch { batch, step }, n)),
        );
        Ok(())
    }
}

impl<I: Clone + Send + Sync> Iterator for StepIterator<'_, I> {
    type Item = std::result::Result<MicroBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() {
            if self.next_step * self.loader.step_size >= self.order.len() {
                return None;
            }
            if let Err(err) = self.next_step() {
                return Some(Err(err));
            }
        }
        let (micro, examples) = self.ready.pop_front()?;
        self.processed += examples;
        Some(Ok(micro))
    }
}

impl<I: Clone + Send + Sync> DataLoaderIterator<MicroBatch> for StepIterator<'_, I> {
    fn progress(&self) -> Progress {
        Progress::new(self.processed, self.total, Some("items".to_string()))
    }
}

/// What a preference model's `TrainStep` and `InferenceStep` return to burn-train: the
/// micro-batch's loss, its examples' losses and its TRL metrics, detached. burn-train's
/// [`LossMetric`](burn::train::metric::LossMetric) shows the mean of the examples' losses
/// (weighted by their number over an epoch: the epoch's mean per example, whatever the
/// micro-batching); a [`TrlMetric`] shows one TRL metric. The metrics are read back on
/// burn-train's metric thread, all in one read per micro-batch.
#[derive(Debug, Clone)]
pub struct LossItem {
    /// The loss that was optimised `[1]`: with step totals, the micro-batch's share of its
    /// step's loss.
    pub loss: Tensor<1>,
    /// Each example's loss `[B]`.
    pub losses: Tensor<1>,
    /// The TRL metrics, on the device.
    pub metrics: Metrics,
    /// The metrics' values and counts once read (`sync`).
    read: Vec<(&'static str, f64, f64)>,
}

impl LossItem {
    /// A loss's output, detached: what an `InferenceStep` returns.
    pub fn new(out: LossOutput) -> Self {
        Self {
            loss: out.loss.detach(),
            losses: out.losses.detach(),
            metrics: out.metrics,
            read: Vec::new(),
        }
    }

    /// The backward pass of `out.loss`, the gradients of `model`'s parameters and the output:
    /// what a `TrainStep` returns.
    pub fn train<M: Module>(model: &M, out: LossOutput) -> TrainOutput<Self> {
        let grads = out.loss.backward();
        TrainOutput::new(model, grads, Self::new(out))
    }
}

impl ItemLazy for LossItem {
    fn sync(self) -> std::result::Result<Self, ExecutionError> {
        let read = self
            .metrics
            .read()
            .map_err(|e| ExecutionError::with_context(e.to_string()))?;
        Ok(Self {
            // Off the autodiff device: the metric thread holds no part of the graph.
            loss: self.loss.without_autodiff(),
            losses: self.losses.without_autodiff(),
            metrics: self.metrics,
            read,
        })
    }
}

impl Adaptor<LossInput> for LossItem {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.losses.clone())
    }
}

/// The TRL metrics of a micro-batch, read: what a [`TrlMetric`] takes.
#[derive(Debug, Clone)]
pub struct TrlMetricInput {
    read: Vec<(&'static str, f64, f64)>,
}

impl Adaptor<TrlMetricInput> for LossItem {
    fn adapt(&self) -> TrlMetricInput {
        TrlMetricInput {
            read: self.read.clone(),
        }
    }
}

/// One TRL metric of the loss (`rewards/accuracies`, `rewards/margins`, `logps/chosen`, …; the
/// names of [`Metrics`]) as a burn-train numeric metric: each micro-batch's value, and over an
/// epoch the mean of every value the metric counted (`Σ sum / Σ count`). burn-train also writes
/// a metric's name as a log file's name, so `/` shows as `_` (`rewards_accuracies`). A metric
/// the loss does not report, or that a micro-batch did not count, shows no value for it.
#[derive(Clone)]
pub struct TrlMetric {
    key: &'static str,
    name: MetricName,
    state: NumericMetricState,
}

impl TrlMetric {
    /// The metric logged under `key`.
    pub fn new(key: &'static str) -> Self {
        Self {
            key,
            name: Arc::new(key.replace('/', "_")),
            state: NumericMetricState::default(),
        }
    }
}

impl Metric for TrlMetric {
    type Input = TrlMetricInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            // The reward accuracies and margins, the metrics one watches, grow as it learns.
            higher_is_better: true,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &TrlMetricInput,
        _metadata: &MetricMetadata,
    ) -> std::result::Result<SerializedEntry, burn::tensor::TensorReadError> {
        match item.read.iter().find(|(name, _, _)| *name == self.key) {
            Some(&(_, value, count)) => self.state.update(value, count as usize),
            None => self.state.update(f64::NAN, 0),
        }
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(4)))
    }

    fn compute(&mut self) -> std::result::Result<SerializedEntry, burn::tensor::TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(4)))
    }

    fn clear(&mut self) {
        self.state.reset();
    }
}

impl Numeric for TrlMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}
