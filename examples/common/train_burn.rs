//! DPO on the small causal transformer (examples/common/transformer.rs) through burn-train's
//! `Learner`: the model type burn-train trains, and the run — shared by the `train_burn`
//! example, its benchmark and the accumulation test.

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::Device;
use burn::train::logger::{FileMetricLogger, MetricLogger};
use burn::train::metric::LossMetric;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, LearningResult, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep,
};
use burn_preference::data::PreferenceExample;
use burn_preference::logps::SequenceLogps;
use burn_preference::prelude::*;
use burn_preference::train::{LossItem, MicroBatch, StepLoader, TrlMetric};

// The module's name in the example and in tests/training (which has its own `transformer`).
use super::transformer_example::{Transformer, collator, sequence_logps};

type Res<T> = Result<T, Box<dyn Error>>;

/// The policy and its frozen reference: what burn-train trains. Only the policy gets
/// gradients (the reference runs without autodiff), so the optimiser moves only the policy.
#[derive(Module, Debug)]
pub struct DpoModel {
    pub policy: Transformer,
    pub reference: Transformer,
}

impl DpoModel {
    /// The policy starts as the reference.
    pub fn new(reference: Transformer) -> Self {
        Self {
            policy: reference.clone(),
            reference,
        }
    }

    /// DPO (β = 0.1) on one micro-batch, dividing by its step's totals.
    pub fn loss(&self, micro: &MicroBatch) -> burn_preference::Result<LossOutput> {
        let device = self.policy.devices()[0].clone();
        let gatherer = SequenceLogpsConfig::new().init()?;
        let batch = &micro.batch;
        let policy = logps(&self.policy, &gatherer, micro, &device)?;
        let reference = logps(
            &self.reference.valid(),
            &gatherer,
            micro,
            &device.clone().inner(),
        )?
        .logps;
        let pairs = policy.logps.dims()[0] / 2;
        let reference = reference
            .autodiff_like(&device)
            .reshape([2, pairs])
            .transpose();
        let pairs = PairedBatch::from_output(policy, batch.layout())?
            .with_reference(reference)?
            .with_step(micro.step)?;
        DpoConfig::new().with_beta(0.1).init()?.forward(pairs)
    }
}

fn logps(
    model: &Transformer,
    gatherer: &SequenceLogps,
    micro: &MicroBatch,
    device: &Device,
) -> burn_preference::Result<burn_preference::logps::SequenceLogpsOutput> {
    sequence_logps(model, gatherer, &micro.batch, device).map_err(|e| {
        burn_preference::PreferenceError::InvalidValue {
            arg: "batch",
            expected: "a batch the model runs",
            found: e.to_string(),
        }
    })
}

/// Reference log-probs join the policy's device: autodiff when the policy's is.
trait AutodiffLike {
    fn autodiff_like(self, device: &Device) -> Self;
}

impl AutodiffLike for burn::tensor::Tensor<1> {
    fn autodiff_like(self, device: &Device) -> Self {
        if device.is_autodiff() {
            self.autodiff()
        } else {
            self
        }
    }
}

impl TrainStep for DpoModel {
    type Input = MicroBatch;
    type Output = LossItem;

    fn step(&self, micro: MicroBatch) -> TrainOutput<LossItem> {
        // burn-train's steps return no `Result`: a batch the loss refuses ends the run.
        LossItem::train(self, self.loss(&micro).expect("a valid DPO batch"))
    }
}

impl InferenceStep for DpoModel {
    type Input = MicroBatch;
    type Output = LossItem;

    fn step(&self, micro: MicroBatch) -> LossItem {
        LossItem::new(self.loss(&micro).expect("a valid DPO batch"))
    }
}

/// One burn-train run's settings.
#[derive(Debug, Clone)]
pub struct Run {
    /// Pairs per optimiser step.
    pub batch: usize,
    /// Optimiser steps (one epoch of `steps · batch` pairs).
    pub steps: usize,
    /// Micro-batches per step (`grads_accumulation`).
    pub accumulation: usize,
    /// Devices; more than one runs burn-train's `MultiDevice` strategy.
    pub devices: Vec<Device>,
    pub learning_rate: f64,
    pub seed: u64,
    /// Where burn-train writes its logs.
    pub directory: std::path::PathBuf,
    /// What burn-train's metric loggers receive.
    pub record: Record,
    /// Optimiser steps taken: burn-train steps the learning-rate schedule once per step.
    pub optimizer_steps: Arc<AtomicUsize>,
}

/// A constant learning rate that counts burn-train's optimiser steps.
#[derive(Clone)]
struct CountingLr {
    learning_rate: f64,
    steps: Arc<AtomicUsize>,
}

impl LrScheduler for CountingLr {
    fn step(&mut self) -> f64 {
        self.steps.fetch_add(1, Ordering::SeqCst);
        self.learning_rate
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new()
    }

    fn load_record(&mut self, _record: LrSchedulerRecord) {}
}

/// Every training and validation metric value burn-train logged, by metric name, in order:
/// what its loggers (files, the renderer) show, read back by the example and the test.
pub type Record = Arc<Mutex<Vec<(Split, String, NumericEntry)>>>;

/// A burn-train metric logger that keeps the values in a [`Record`].
struct Recorder {
    record: Record,
    /// Metric names by id (burn-train's updates carry ids).
    names: HashMap<MetricId, String>,
}

impl MetricLogger for Recorder {
    fn log(&mut self, update: MetricsUpdate, _epoch: usize, split: &Split) {
        let mut record = self.record.lock().unwrap();
        for numeric in update.entries_numeric {
            if let Some(entry) = numeric.numeric_entry {
                let name = self.names.get(&numeric.entry.metric_id).cloned();
                record.push((split.clone(), name.unwrap_or_default(), entry));
            }
        }
    }

    fn read_numeric(
        &mut self,
        _name: &str,
        _epoch: usize,
        _split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        Ok(Vec::new())
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }

    fn log_epoch_summary(&mut self, _summary: EpochSummary) {}
}

/// The values of metric `name` in `split`, in order: one per iteration (micro-batch), its
/// value and its examples, then the epoch's.
pub fn values(record: &Record, split: Split, name: &str) -> Vec<NumericEntry> {
    record
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, n, _)| *s == split && n == name)
        .map(|(_, _, e)| e.clone())
        .collect()
}

/// Trains `reference`'s copy with DPO through burn-train on the first `steps · batch` pairs of
/// `train`, validating on `held_out`; returns burn-train's result.
pub fn fit(
    reference: &Transformer,
    train: &[PreferenceExample],
    held_out: &[PreferenceExample],
    run: &Run,
) -> Res<LearningResult<DpoModel>> {
    let collate = collator()?;
    let pairs = (run.steps * run.batch).min(train.len());
    let train = Arc::new(InMemDataset::new(train[..pairs].to_vec()));
    let loader = StepLoader::new(train, run.batch, move |e| collate.pad(e))?
        .with_micro_batches(run.accumulation)?
        .with_devices(run.devices.len())?
        .with_shuffle(run.seed);
    let valid = Arc::new(InMemDataset::new(held_out.to_vec()));
    let valid = StepLoader::new(valid, held_out.len(), move |e| collate.pad(e))?;
    let mut training = SupervisedTraining::new(&run.directory, Arc::new(loader), Arc::new(valid))
        .metrics((
            LossMetric::new(),
            TrlMetric::new("rewards/accuracies"),
            TrlMetric::new("rewards/margins"),
        ))
        // burn-train's own file logger (its default, which a second logger would replace).
        .with_metric_logger(FileMetricLogger::new(&run.directory))
        .with_metric_logger(Recorder {
            record: run.record.clone(),
            names: HashMap::new(),
        })
        .with_application_logger(None)
        .num_epochs(1);
    if run.accumulation > 1 {
        training = training.grads_accumulation(run.accumulation);
    }
    if run.devices.len() > 1 {
        training = training.with_training_strategy(
            ExecutionStrategy::multi(run.devices.clone(), MultiDeviceOptim::OptimMainDevice).into(),
        );
    }
    let model = DpoModel::new(reference.clone());
    let schedule = CountingLr {
        learning_rate: run.learning_rate,
        steps: run.optimizer_steps.clone(),
    };
    let learner = Learner::new(model, AdamConfig::new().init(), schedule);
    Ok(training.launch(learner))
}

/// Metric `name`'s value and count at every iteration of `split` (the epoch's value left out).
pub fn iterations(record: &Record, split: Split, name: &str) -> Vec<(f64, usize)> {
    values(record, split, name)
        .into_iter()
        .filter_map(|e| match e {
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => Some((aggregated_value, count)),
            _ => None,
        })
        .collect()
}

/// The loss of every optimiser step of `accumulation` micro-batches: the example-weighted mean
/// of its micro-batches' losses (burn-train's loss metric shows each micro-batch's mean).
pub fn step_losses(record: &Record, accumulation: usize) -> Vec<f64> {
    iterations(record, Split::Train, "Loss")
        .chunks(accumulation)
        .map(|micro| {
            let (sum, count) = micro.iter().fold((0.0, 0.0), |(sum, count), (v, n)| {
                (sum + v * *n as f64, count + *n as f64)
            });
            sum / count
        })
        .collect()
}
