//! A DPO training step with a live reference model against the same step with the reference's
//! log-probs precomputed once (`reference::PrecomputedReference`, TRL's
//! `precompute_ref_log_probs`): seconds per step and peak resident memory, each mode in its own
//! process so that each peak is its own.
//!
//! The model is the `packed_transformer` example's causal transformer, widened (`d_model` 256,
//! 4 layers, `d_ff` 1024: 3.2 M parameters) on its addition data; a step is a padded batch of
//! 32 pairs: the policy's forward and backward and an Adam update, plus, live, the frozen
//! reference's forward.
//!
//! ```sh
//! cargo run --release --example bench_reference              # both modes, then the table
//! cargo run --release --example bench_reference -- --mode stored --steps 20
//! ```

#[allow(dead_code)] // shared by the examples
#[path = "common/args.rs"]
mod args;
#[allow(dead_code)] // shared by the examples
#[path = "common/bench.rs"]
mod bench;
#[allow(dead_code)] // shared with the test
#[path = "common/rng.rs"]
mod rng;
#[allow(dead_code)] // shared with the test
#[path = "common/transformer.rs"]
mod transformer;

use std::error::Error;
use std::process::Command;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use burn_preference::data::PreferenceExample;
use burn_preference::prelude::*;
use burn_preference::reference::PrecomputedReference;
use transformer::{Size, Transformer, collator, make_data, sequence_logps};

const USAGE: &str = "bench_reference [--mode live|stored] [--steps N] [--device flex|ndarray|wgpu]";
const SIZE: Size = Size {
    d_model: 256,
    heads: 4,
    layers: 4,
    d_ff: 1024,
};
const PAIRS: usize = 32;
const EXAMPLES: usize = 512;

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE, &["mode", "steps", "device"])?;
    let steps = flags.value::<usize>("steps")?.unwrap_or(20);
    match flags.text("mode") {
        Some(mode @ ("live" | "stored")) => run(mode == "stored", steps, &flags.device()?),
        Some(other) => Err(format!("--mode {other}: live or stored\nusage: {USAGE}").into()),
        None => {
            println!("| reference | precompute pass | seconds per step | peak RSS |");
            println!("|---|---|---|---|");
            for mode in ["live", "stored"] {
                let mut child = Command::new(std::env::current_exe()?);
                child.args(["--mode", mode, "--steps", &steps.to_string()]);
                if let Some(device) = flags.text("device") {
                    child.args(["--device", device]);
                }
                let status = child.status()?;
                if !status.success() {
                    return Err(format!("the {mode} run failed: {status}").into());
                }
            }
            Ok(())
        }
    }
}

/// `steps` training steps (after one warm-up step) with the reference live or stored; prints
/// one table row.
fn run(stored: bool, steps: usize, device: &Device) -> Result<(), Box<dyn Error>> {
    let train = device.clone().autodiff();
    let data = make_data(EXAMPLES, 0, 7).train;
    let collator = collator()?;
    let gatherer = SequenceLogpsConfig::new().init()?;
    let mut policy = Transformer::new(SIZE, &train);
    let reference: Transformer = policy.valid();
    let batch_of = |step: usize| -> (Vec<u64>, Vec<PreferenceExample>) {
        let start = (step * PAIRS) % EXAMPLES;
        let ids: Vec<u64> = (start..start + PAIRS).map(|i| i as u64).collect();
        let examples = ids.iter().map(|&i| data[i as usize].clone()).collect();
        (ids, examples)
    };

    // The precompute pass, timed: one forward of the reference over the data set.
    let mut store = PrecomputedReference::new();
    let mut live_reference = Some(reference);
    let mut precompute = None;
    if stored {
        let started = Instant::now();
        let reference = live_reference.take().expect("the reference model");
        for step in 0..EXAMPLES / PAIRS {
            let (ids, examples) = batch_of(step);
            let batch = collator.pad(&examples)?;
            let out = sequence_logps(&reference, &gatherer, &batch, device)?;
            store.insert_output(&ids, &out, batch.layout())?;
        }
        precompute = Some(started.elapsed().as_secs_f64());
        // Dropped: training holds no reference model.
    }

    let loss = DpoConfig::new().init()?;
    let mut optimizer = AdamConfig::new().init();
    let mut times = Vec::with_capacity(steps);
    for step in 0..=steps {
        let started = Instant::now();
        let (ids, examples) = batch_of(step);
        let batch = collator.pad(&examples)?;
        let out = sequence_logps(&policy, &gatherer, &batch, &train)?;
        let paired = PairedBatch::from_output(out, batch.layout())?;
        let paired = match &live_reference {
            Some(reference) => paired
                .with_reference_output(sequence_logps(reference, &gatherer, &batch, device)?)?,
            None => paired.with_reference(store.get(&ids, &train)?)?,
        };
        let loss = loss.forward(paired)?.loss;
        let grads = GradientsParams::from_grads(loss.backward(), &policy);
        policy = optimizer.step(1e-4, policy, grads);
        if step > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let peak =
        bench::peak_rss_bytes().map_or("n/a".to_string(), |b| format!("{:.0} MB", b as f64 / 1e6));
    let precompute = precompute.map_or("—".to_string(), |s| format!("{s:.2} s"));
    let mode = if stored { "stored" } else { "live" };
    println!("| {mode} | {precompute} | {median:.3} | {peak} |");
    Ok(())
}
