//! The benchmark workload shared by `examples/bench_logps.rs` and `benches/logps.rs`: sequence
//! log-probs + DPO on inputs shaped like `shared/bench/torch_ref.py`'s.

use std::error::Error;

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_preference::{DpoConfig, PreferenceBatch, PreferenceLoss, SequenceLogpsConfig};

/// Random normal logits `[N, T, V]`, uniform labels with about 10 % ignored (−100), and random
/// reference log-probs `[N]`; rows `0..N/2` are chosen, `N/2..N` rejected.
pub struct Workload {
    pub logits: Tensor<3>,
    pub labels: Tensor<2, Int>,
    pub reference: Tensor<1>,
}

impl Workload {
    pub fn new([n, t, v]: [usize; 3], device: &Device) -> Self {
        let tokens = Tensor::<2, Int>::random([n, t], Distribution::Uniform(0.0, v as f64), device);
        let ignored =
            Tensor::<2>::random([n, t], Distribution::Uniform(0.0, 1.0), device).lower_elem(0.1);
        Self {
            logits: Tensor::random([n, t, v], Distribution::Normal(0.0, 1.0), device),
            labels: tokens.mask_fill(ignored, -100),
            reference: Tensor::random([n], Distribution::Normal(0.0, 1.0), device),
        }
    }

    /// The DPO loss through the crate's public path; waits for the result.
    pub fn forward(&self) -> Result<f32, Box<dyn Error>> {
        Ok(dpo_loss(self.logits.clone(), self)?.into_scalar::<f32>())
    }

    /// Forward and backward; waits for the gradient of the logits. Needs an autodiff device.
    pub fn forward_backward(&self) -> Result<(), Box<dyn Error>> {
        let logits = self.logits.clone().require_grad();
        let grads = dpo_loss(logits.clone(), self)?.backward();
        let grad = logits.grad(&grads).ok_or("no gradient for the logits")?;
        grad.slice([0..1, 0..1, 0..1]).into_scalar::<f32>();
        Ok(())
    }
}

fn dpo_loss(logits: Tensor<3>, inputs: &Workload) -> Result<Tensor<1>, Box<dyn Error>> {
    let logps = SequenceLogpsConfig::new()
        .init()?
        .forward(logits, inputs.labels.clone())?
        .logps;
    let batch = PreferenceBatch::concatenated(logps)?
        .with_concatenated_reference(inputs.reference.clone())?;
    Ok(DpoConfig::new().init()?.forward(batch)?.loss)
}
