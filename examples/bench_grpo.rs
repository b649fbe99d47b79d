//! Times one GRPO step's log-probs + loss from hidden states, forward and forward+backward, the
//! way `benches/peers/grpo_peers.py` times TRL 1.16's own path and Liger-Kernel's fused
//! linear GRPO loss: `N` completions of `T` tokens (completion lengths uniform in
//! `[T/2, T]`, right-padded), hidden states `[N, T, H]` at the completion positions (each
//! predicting its own token: TRL's `logits_to_keep` positions), an LM head `[V, H]` scaled so
//! that the logits are standard normal, normal advantages, `dapo` (TRL's default: β = 0, one
//! update per generation, so the ratio is 1), per-token entropies computed in the same pass
//! (TRL always computes them for its `entropy` metric). Prints one JSON line with medians of
//! `--reps` runs after a warm-up.
//!
//! ```sh
//! cargo run --release --example bench_grpo -- 16 512 32000 1024
//! cargo run --release --example bench_grpo -- 16 512 32000 1024 --peer /work/venv/bin/python
//! ```
//!
//! `--loss TYPE` picks another `loss_type`; `--beta B` adds the KL term (with random
//! reference log-probs); `--device` as the other benchmarks. `peak_rss_bytes` is the
//! process's peak resident memory (VmHWM), inputs included.

#[allow(dead_code)] // shared by the examples; this one reads `--device`, `--reps`, …
#[path = "common/args.rs"]
mod args;
#[allow(dead_code)] // the log-probs workload is bench_logps's
#[path = "common/bench.rs"]
mod bench;
#[allow(dead_code)] // the log-probs peers are bench_logps's
#[path = "common/peer.rs"]
mod peer;

use std::error::Error;

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_preference::prelude::*;

use bench::{median_seconds, peak_rss_bytes};

/// The peers of `benches/peers/grpo_peers.py`.
const PEERS: [&str; 3] = ["trl16", "liger", "matmul"];

/// One GRPO step's inputs.
struct Step {
    hidden: Tensor<3>,
    weight: Tensor<2>,
    labels: Tensor<2, Int>,
    advantages: Tensor<1>,
    reference: Option<Tensor<2>>,
    config: GrpoConfig,
}

impl Step {
    fn new([n, t, v, h]: [usize; 4], config: GrpoConfig, device: &Device) -> Self {
        let scale = 1.0 / (h as f64).sqrt();
        let tokens = Tensor::<2, Int>::random([n, t], Distribution::Uniform(0.0, v as f64), device);
        // Lengths uniform in [T/2, T]: position j counts when j < length.
        let lengths = Tensor::<2>::random([n, 1], Distribution::Uniform(0.0, 1.0), device)
            .mul_scalar((t - t / 2 + 1) as f64)
            .floor()
            .add_scalar((t / 2) as f64)
            .expand([n, t]);
        let positions = Tensor::<1, Int>::arange(0..t as i64, device)
            .float()
            .reshape([1, t])
            .expand([n, t]);
        let mask = positions.lower(lengths);
        let reference = (config.beta != 0.0)
            .then(|| Tensor::random([n, t], Distribution::Uniform(-12.0, -8.0), device));
        Self {
            hidden: Tensor::random([n, t, h], Distribution::Normal(0.0, 1.0), device),
            weight: Tensor::random([v, h], Distribution::Normal(0.0, scale), device),
            labels: tokens.mask_fill(mask.bool_not(), -100),
            advantages: Tensor::random([n], Distribution::Normal(0.0, 1.0), device),
            reference,
            config,
        }
    }

    /// The loss, and with `track` the hidden states and the head (which need gradients).
    fn loss(&self, track: bool) -> Result<(Tensor<1>, Vec<Tensor<3>>), Box<dyn Error>> {
        let tracked = |x: Tensor<3>| if track { x.require_grad() } else { x };
        let hidden = tracked(self.hidden.clone());
        let weight = tracked(self.weight.clone().unsqueeze::<3>());
        let out = SequenceLogpsConfig::new()
            .with_shift(false)
            .with_return_token_logps(true)
            .with_return_entropy(true)
            .init()?
            .forward_linear(
                hidden.clone(),
                weight.clone().squeeze_dim::<2>(0),
                self.labels.clone(),
                None,
            )?;
        let [_, t] = self.labels.dims();
        let mut batch = CompletionBatch::from_output(out, t, self.advantages.clone())?;
        if let Some(reference) = &self.reference {
            batch = batch.with_reference(reference.clone())?;
        }
        let loss = self.config.init()?.forward(batch)?.loss;
        Ok((
            loss,
            if track {
                vec![hidden, weight]
            } else {
                Vec::new()
            },
        ))
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let usage = "bench_grpo N T V H [--reps R] [--loss TYPE] [--beta B] [--device flex|ndarray|wgpu|cuda] [--peer PYTHON]";
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let dims: Vec<usize> = argv
        .iter()
        .take(4)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("usage: {usage}"))?;
    let [n, t, v, h] = <[usize; 4]>::try_from(dims).map_err(|_| format!("usage: {usage}"))?;
    let flags = args::Flags::parse_from(
        usage,
        &["reps", "loss", "beta", "device", "peer"],
        &argv[4..],
    )?;
    let reps: usize = flags.value("reps")?.unwrap_or(5);
    let loss_name = flags.text("loss").unwrap_or("dapo").to_string();
    let loss_type: GrpoLossType = loss_name.parse()?;
    let beta: f64 = flags.value("beta")?.unwrap_or(0.0);
    let config = GrpoConfig::new()
        .with_loss_type(loss_type)
        .with_beta(beta)
        .with_max_completion_length(t)
        // A benchmark of the step, not of the input checks.
        .with_value_checks(false);
    let device = flags.device()?;
    let device_name = flags.text("device").unwrap_or("flex");
    device.seed(0);

    let forward_s = {
        let step = Step::new([n, t, v, h], config.clone(), &device);
        median_seconds(reps, || {
            step.loss(false)?.0.into_scalar::<f32>();
            Ok(())
        })?
    };
    let forward_backward_s = {
        let step = Step::new([n, t, v, h], config.clone(), &device.clone().autodiff());
        median_seconds(reps, || {
            let (loss, inputs) = step.loss(true)?;
            let grads = loss.backward();
            for input in inputs {
                let grad = input.grad(&grads).ok_or("no gradient for an input")?;
                grad.slice([0..1, 0..1, 0..1]).into_scalar::<f32>();
            }
            Ok(())
        })?
    };
    let peak = peak_rss_bytes();
    println!(
        r#"{{"shape":"{n}x{t}x{v}","hidden":{h},"loss_type":"{loss_name}","beta":{beta},"device":"{device_name}","forward_s":{forward_s:.6},"forward_backward_s":{forward_backward_s:.6},"peak_rss_bytes":{}}}"#,
        peak.map_or("null".to_string(), |b| b.to_string())
    );

    if let Some(python) = flags.text("peer") {
        let mut peer_args: Vec<String> = [n, t, v, h].iter().map(|d| d.to_string()).collect();
        peer_args.extend(
            [
                "--reps",
                &reps.to_string(),
                "--loss",
                &loss_name,
                "--beta",
                &beta.to_string(),
            ]
            .map(String::from),
        );
        let peers = peer::run_script(python, "grpo_peers.py", &PEERS, &peer_args);
        let ours = peer::Timing {
            forward_s,
            forward_backward_s,
            peak_rss_bytes: peak,
        };
        let title = format!(
            "\nGRPO ({loss_name}, β {beta}) {n}x{t}, V {v}, H {h}: medians of {reps} runs after a warm-up"
        );
        peer::print_table(&title, &format!("ours ({device_name})"), &ours, &peers, "");
    }
    Ok(())
}
