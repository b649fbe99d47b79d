//! Gatherer options and the differentiable objective shared by the log-prob tests.

use burn::tensor::{Device, Tensor};
use burn_preference::logps::{SequenceLogps, SequenceLogpsConfig, SequenceLogpsOutput};

use super::floats;

/// The logits transform and the causal shift of one case.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub temperature: f64,
    pub scale: f64,
    pub softcap: Option<f64>,
    pub shift: bool,
}

/// A gatherer with the options of `o`, per-token log-probs, every extra output when `extras`,
/// and chunks of 3 rows on the LM-head path.
pub fn gatherer(o: Options, extras: bool) -> SequenceLogps {
    SequenceLogpsConfig::new()
        .with_shift(o.shift)
        .with_temperature(o.temperature)
        .with_logit_scale(o.scale)
        .with_final_logit_softcapping(o.softcap)
        .with_return_token_logps(true)
        .with_return_entropy(extras)
        .with_return_log_sum_sq_probs(extras)
        .with_return_mean_logits(extras)
        .with_return_is_top1(extras)
        .with_chunk_rows(3)
        .init()
        .expect("valid config")
}

/// The objective whose gradient is compared: weighted log-probs plus, when it was requested,
/// weighted entropy, so that both differentiable outputs carry a gradient.
pub fn objective(out: &SequenceLogpsOutput, device: &Device) -> Tensor<1> {
    let [b] = out.logps.dims();
    let weights: Vec<f32> = (0..b).map(|i| 1.5 - i as f32 * 0.7).collect();
    let logps = (out.logps.clone() * floats(weights, [b], device)).sum();
    match &out.entropy {
        Some(h) => {
            let [_, t] = h.dims();
            let w: Vec<f32> = (0..b * t).map(|i| 0.3 + (i % 5) as f32 * 0.2).collect();
            logps + (h.clone() * floats(w, [b, t], device)).sum()
        }
        None => logps,
    }
}
