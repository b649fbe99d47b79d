//! What trainers log: every loss returns its [`Metrics`] under TRL's names (`rewards/chosen`,
//! `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`, …), each a
//! detached sum and count on the device, so that the metrics of several micro-batches or
//! devices add up exactly ([`Metrics::merge`]) before one read ([`Metrics::log`]).
//!
//! [`token_kl`] and [`categorical_kl`] are exact KL divergences for evaluation batches.

mod kl;
pub(crate) mod trl;

pub use kl::{TokenKl, categorical_kl, token_kl};

use burn::tensor::{Bool, Tensor};

use crate::check;
use crate::error::Result;

/// One metric: a detached `sum` and `count` (`[1]` each, on the device); its value is
/// `sum / count`. Summing the sums and the counts of two batches gives the metric of the two
/// together, exactly.
#[derive(Debug, Clone)]
pub struct Metric {
    /// The sum of the values `[1]`.
    pub sum: Tensor<1>,
    /// How many values were summed `[1]` (an exact integer stored as a float).
    pub count: Tensor<1>,
}

impl Metric {
    /// A metric from a sum and a count `[1]` each (detached here).
    pub fn new(sum: Tensor<1>, count: Tensor<1>) -> Self {
        Self {
            sum: sum.detach(),
            count: count.detach(),
        }
    }

    /// The mean of `values [N]` (`N ≥ 1`).
    pub(crate) fn mean<const D: usize>(values: Tensor<D>) -> Self {
        let n = values.dims().iter().product::<usize>();
        let device = values.device();
        Self::new(values.detach().sum(), Tensor::full([1], n as f64, &device))
    }

    /// The mean of `values` where `mask` holds (NaN-free: masked-out entries never enter).
    pub(crate) fn masked_mean<const D: usize>(values: Tensor<D>, mask: Tensor<D, Bool>) -> Self {
        let count = mask.clone().float().sum();
        Self::new(values.detach().mask_fill(mask.bool_not(), 0.0).sum(), count)
    }

    /// `sum / count` `[1]`, on the device (NaN when nothing was counted).
    pub fn value(&self) -> Tensor<1> {
        self.sum.clone().div(self.count.clone())
    }

    /// This metric and `other` together: the sums and the counts added (on this metric's
    /// device). How the metrics of micro-batches and devices combine exactly.
    pub fn merge(self, other: Metric) -> Self {
        let device = self.sum.device();
        Self {
            sum: self.sum.add(other.sum.to_device(&device)),
            count: self.count.add(other.count.to_device(&device)),
        }
    }
}

/// The metrics of a loss, by name, in the order TRL logs them.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let loss = DpoConfig::new().init()?;
/// let batch = |policy: [[f32; 2]; 1]| -> burn_preference::Result<PairedBatch> {
///     PairedBatch::new(Tensor::from_floats(policy, &device))?
///         .with_reference(Tensor::from_floats([[-10.0, -10.0]], &device))
/// };
/// // Two micro-batches of one pair each: their metrics add up to the step's, read once.
/// let first = loss.forward(batch([[-9.0, -11.0]])?)?.metrics;
/// let second = loss.forward(batch([[-12.0, -10.0]])?)?.metrics;
/// let logged = first.merge(second).log()?;
/// let accuracy = logged.iter().find(|(name, _)| *name == "rewards/accuracies").map(|m| m.1);
/// assert_eq!(accuracy, Some(0.5));
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    entries: Vec<(&'static str, Metric)>,
    /// Metrics logged as the difference of two others' values (KTO's `rewards/margins`), when
    /// both were counted.
    differences: Vec<(&'static str, &'static str, &'static str)>,
}

impl Metrics {
    /// No metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// These metrics and `metric` under `name` (added to an existing one of that name).
    pub fn with(mut self, name: &'static str, metric: Metric) -> Self {
        match self.entries.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                let (_, old) = self.entries.remove(i);
                self.entries.insert(i, (name, old.merge(metric)));
            }
            None => self.entries.push((name, metric)),
        }
        self
    }

    /// These metrics and one logged as `minuend − subtrahend` (their values), when both count.
    pub(crate) fn with_difference(
        mut self,
        name: &'static str,
        minuend: &'static str,
        subtrahend: &'static str,
    ) -> Self {
        if !self.differences.iter().any(|(n, _, _)| *n == name) {
            self.differences.push((name, minuend, subtrahend));
        }
        self
    }

    /// The metric called `name`.
    pub fn get(&self, name: &str) -> Option<&Metric> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
    }

    /// The names of the metrics, in order (the differences last).
    pub fn names(&self) -> Vec<&'static str> {
        self.entries
            .iter()
            .map(|(n, _)| *n)
            .chain(self.differences.iter().map(|(n, _, _)| *n))
            .collect()
    }

    /// The metrics of two batches together (micro-batches of one step, or the shards of
    /// several devices): sums and counts added by name, on this one's device. A metric only
    /// one side has is kept as it is.
    pub fn merge(self, other: Metrics) -> Metrics {
        let mut merged = self;
        for (name, metric) in other.entries {
            merged = merged.with(name, metric);
        }
        for (name, minuend, subtrahend) in other.differences {
            merged = merged.with_difference(name, minuend, subtrahend);
        }
        merged
    }

    /// The values `sum / count` under their names, for a logger, read back to the host in one
    /// read; a metric that counted nothing (e.g. `rewards/rejected` of a batch without
    /// undesirable examples) is left out.
    ///
    /// # Errors
    /// [`PreferenceError::Read`](crate::PreferenceError::Read) when the device read fails.
    pub fn log(&self) -> Result<Vec<(&'static str, f64)>> {
        Ok(self.read()?.into_iter().map(|(n, v, _)| (n, v)).collect())
    }

    /// What [`log`](Self::log) logs, with how many values each metric counted (a difference
    /// counts as the fewer of its two sides), in the same one read.
    pub(crate) fn read(&self) -> Result<Vec<(&'static str, f64, f64)>> {
        if self.entries.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.entries[0].1.sum.device();
        let parts = self
            .entries
            .iter()
            .flat_map(|(_, m)| [m.sum.clone(), m.count.clone()])
            .map(|t| t.to_device(&device))
            .collect();
        let values = check::read_floats("metrics", Tensor::cat(parts, 0))?;
        let mut logged: Vec<(&'static str, f64, f64)> = self
            .entries
            .iter()
            .zip(values.chunks(2))
            .filter(|(_, pair)| pair[1] > 0.0)
            .map(|((name, _), pair)| {
                let count = f64::from(pair[1]);
                (*name, f64::from(pair[0]) / count, count)
            })
            .collect();
        for (name, minuend, subtrahend) in &self.differences {
            let value = |n: &str| logged.iter().find(|(m, _, _)| *m == n).map(|e| (e.1, e.2));
            if let (Some((a, m)), Some((b, n))) = (value(minuend), value(subtrahend)) {
                logged.push((name, a - b, m.min(n)));
            }
        }
        Ok(logged)
    }
}
