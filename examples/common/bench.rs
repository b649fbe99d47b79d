//! The benchmark workload shared by `examples/bench_logps.rs` and `benches/logps.rs`: sequence
//! log-probs + DPO on inputs shaped like `benches/peers/torch_peers.py`'s.

use std::error::Error;
use std::time::Instant;

use burn::tensor::{Device, Distribution, FloatDType, Int, Tensor};
use burn_preference::prelude::*;

/// The median of `reps` timed runs after one warm-up run (allocations, kernel compilation).
pub fn median_seconds(
    reps: usize,
    mut run: impl FnMut() -> Result<(), Box<dyn Error>>,
) -> Result<f64, Box<dyn Error>> {
    run()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The process's peak resident memory so far (Linux `VmHWM`), inputs included.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Where the log-probs come from.
#[allow(clippy::large_enum_variant)] // one per workload, built once
pub enum Head {
    /// Random normal logits `[N, T, V]`.
    Logits(Tensor<3>),
    /// Random normal hidden states `[N, T, H]` and an LM-head weight `[V, H]` scaled so that
    /// the logits are standard normal too; `fused` takes `forward_linear`, otherwise the
    /// logits are materialised with one matmul.
    Linear {
        hidden: Tensor<3>,
        weight: Tensor<2>,
        fused: bool,
    },
}

/// Uniform labels with about 10 % ignored (−100) and random reference log-probs `[N/2, 2]`
/// (`[pairs, chosen | rejected]`); rows `0..N/2` are chosen, `N/2..N` rejected.
pub struct Workload {
    pub head: Head,
    pub labels: Tensor<2, Int>,
    pub reference: Tensor<2>,
    /// `SequenceLogpsConfig::chunk_rows` for the LM head (`None`: its default).
    pub chunk_rows: Option<usize>,
}

impl Workload {
    /// The workload on random logits.
    pub fn new(dims: [usize; 3], device: &Device) -> Self {
        let logits = Tensor::random(dims, Distribution::Normal(0.0, 1.0), device);
        Self::with_head(dims, Head::Logits(logits), device)
    }

    /// The workload on an LM head of width `width`.
    pub fn linear([n, t, v]: [usize; 3], width: usize, fused: bool, device: &Device) -> Self {
        let scale = 1.0 / (width as f64).sqrt();
        let head = Head::Linear {
            hidden: Tensor::random([n, t, width], Distribution::Normal(0.0, 1.0), device),
            weight: Tensor::random([v, width], Distribution::Normal(0.0, scale), device),
            fused,
        };
        Self::with_head([n, t, v], head, device)
    }

    /// The same workload with its logits (or hidden states and weight) cast to `dtype`, e.g.
    /// `f16` to time the half-precision path.
    pub fn with_dtype(self, dtype: FloatDType) -> Self {
        let head = match self.head {
            Head::Logits(logits) => Head::Logits(logits.cast(dtype)),
            Head::Linear {
                hidden,
                weight,
                fused,
            } => Head::Linear {
                hidden: hidden.cast(dtype),
                weight: weight.cast(dtype),
                fused,
            },
        };
        Self { head, ..self }
    }

    fn with_head([n, t, v]: [usize; 3], head: Head, device: &Device) -> Self {
        let tokens = Tensor::<2, Int>::random([n, t], Distribution::Uniform(0.0, v as f64), device);
        let ignored =
            Tensor::<2>::random([n, t], Distribution::Uniform(0.0, 1.0), device).lower_elem(0.1);
        Self {
            head,
            labels: tokens.mask_fill(ignored, -100),
            reference: Tensor::random([n / 2, 2], Distribution::Normal(0.0, 1.0), device),
            chunk_rows: None,
        }
    }

    /// The DPO loss through the crate's public path; waits for the result.
    pub fn forward(&self) -> Result<f32, Box<dyn Error>> {
        let (loss, _) = self.dpo_loss(false)?;
        Ok(loss.into_scalar::<f32>())
    }

    /// Forward and backward; waits for the gradients of the inputs (the logits, or the hidden
    /// states and the weight). Needs an autodiff device.
    pub fn forward_backward(&self) -> Result<(), Box<dyn Error>> {
        let (loss, inputs) = self.dpo_loss(true)?;
        let grads = loss.backward();
        for input in inputs {
            let grad = input.grad(&grads).ok_or("no gradient for an input")?;
            grad.slice([0..1, 0..1, 0..1]).into_scalar::<f32>();
        }
        Ok(())
    }

    /// The loss, and with `track` the inputs that require a gradient (as `[., ., .]`).
    fn dpo_loss(&self, track: bool) -> Result<(Tensor<1>, Vec<Tensor<3>>), Box<dyn Error>> {
        let tracked = |x: Tensor<3>| if track { x.require_grad() } else { x };
        let config = SequenceLogpsConfig::new();
        let config = match self.chunk_rows {
            Some(rows) => config.with_chunk_rows(rows),
            None => config,
        };
        let gatherer = config.init()?;
        let labels = self.labels.clone();
        let (out, inputs) = match &self.head {
            Head::Logits(logits) => {
                let logits = tracked(logits.clone());
                (
                    gatherer.forward(logits.clone(), labels, None)?,
                    vec![logits],
                )
            }
            Head::Linear {
                hidden,
                weight,
                fused,
            } => {
                let hidden = tracked(hidden.clone());
                let weight = tracked(weight.clone().unsqueeze::<3>());
                let head = weight.clone().squeeze_dim::<2>(0);
                let out = if *fused {
                    gatherer.forward_linear(hidden.clone(), head, labels, None)?
                } else {
                    let logits = hidden.clone().matmul(head.transpose().unsqueeze_dim(0));
                    gatherer.forward(logits, labels, None)?
                };
                (out, vec![hidden, weight])
            }
        };
        // The n rows are n/2 pairs, chosen first, as trainers concatenate them.
        let pairs = self.labels.dims()[0] / 2;
        let batch = PairedBatch::from_output(out, BatchLayout::ChosenFirst { pairs })?
            .with_reference(self.reference.clone())?;
        let loss = DpoConfig::new().init()?.forward(batch)?.loss;
        Ok((loss, if track { inputs } else { Vec::new() }))
    }
}
