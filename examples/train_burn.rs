//! DPO on the small causal transformer of `packed_transformer` (the digit-sum task) through
//! burn-train's `Learner`: the model implements `TrainStep`/`InferenceStep`, the loader is
//! `burn_preference::train::StepLoader` (micro-batches that carry their step's totals), and
//! the loss and TRL metrics go through burn-train's metric system (its CLI renderer here).
//!
//! 1. SFT: the model is fitted briefly on the chosen completions (a hand-written loop), then
//!    frozen as the reference.
//! 2. DPO through burn-train: one epoch of `--steps` optimiser steps of `--batch` pairs, each
//!    step as `--accumulation` micro-batches (burn-train's `grads_accumulation`) on
//!    `--devices` devices (burn-train's `MultiDevice` strategy: `2` runs two flex devices).
//!
//! ```sh
//! cargo run --release --example train_burn --features train
//! cargo run --release --example train_burn --features train -- --accumulation 4
//! cargo run --release --example train_burn --features train -- --devices 2
//! cargo run --release --example train_burn --features train -- --bench 20
//! ```
//!
//! Prints the training loss of the first and last steps and the held-out loss and reward
//! accuracy burn-train's metrics reached. `--bench N` instead times N optimiser steps through
//! burn-train against the same steps in a hand-written loop (`docs/performance.md`).

#[allow(dead_code)] // shared by the examples
#[path = "common/args.rs"]
mod args;
#[allow(dead_code)] // shared with the test
#[path = "common/rng.rs"]
mod rng;
#[allow(dead_code)] // shared with the test
#[path = "common/train_burn.rs"]
mod train_burn;
#[allow(dead_code)] // shared with the test
#[path = "common/transformer.rs"]
mod transformer_example;

use std::error::Error;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use burn::train::metric::store::Split;
use burn_preference::train::StepLoader;
use train_burn::{DpoModel, Run, fit, iterations, step_losses, values};
use transformer_example::{Setup, Size, Transformer, collator, make_data, sft};

const TRAIN_PAIRS: usize = 4096;
const HELD_OUT_PAIRS: usize = 256;

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(
        "train_burn [--steps N] [--batch PAIRS] [--accumulation K] [--devices 1|2] \
         [--sft-steps N] [--seed S] [--bench N]",
        &[
            "steps",
            "batch",
            "accumulation",
            "devices",
            "sft-steps",
            "seed",
            "bench",
        ],
    )?;
    let setup = Setup {
        size: Size::EXAMPLE,
        sft_steps: flags.value("sft-steps")?.unwrap_or(100),
        sft_learning_rate: 3e-3,
        steps: flags.value("steps")?.unwrap_or(60),
        learning_rate: 5e-4,
        batch: flags.value("batch")?.unwrap_or(32),
        eval_every: usize::MAX,
        seed: flags.value("seed")?.unwrap_or(0),
    };
    let accumulation: usize = flags.value("accumulation")?.unwrap_or(1);
    let devices: usize = flags.value("devices")?.unwrap_or(1);
    let device = Device::flex().autodiff();
    let data = make_data(TRAIN_PAIRS, HELD_OUT_PAIRS, setup.seed);

    let started = Instant::now();
    let (reference, _) = sft(&data, &setup, 32, &device, || {})?;
    println!(
        "SFT reference: {} steps in {:.1} s",
        setup.sft_steps,
        started.elapsed().as_secs_f64()
    );
    if let Some(steps) = flags.value::<usize>("bench")? {
        return bench(&reference, &data.train, &setup, accumulation, steps);
    }

    let run = Run {
        batch: setup.batch,
        steps: setup.steps,
        accumulation,
        // Two flex devices: burn's dispatch gives each its own worker thread and model copy.
        devices: vec![Device::flex(); devices.max(1)],
        learning_rate: setup.learning_rate,
        seed: setup.seed,
        directory: std::env::temp_dir().join("burn-preference-train_burn"),
        record: Default::default(),
        optimizer_steps: Default::default(),
    };
    let started = Instant::now();
    let result = fit(&reference, &data.train, &data.held_out, &run)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(error) = result.error {
        return Err(format!("burn-train stopped: {error}").into());
    }
    let iterations = iterations(&run.record, Split::Train, "Loss").len();
    let losses = step_losses(&run.record, run.accumulation * run.devices.len());
    let last = |name: &str| {
        values(&run.record, Split::Valid, name)
            .last()
            .map(|e| e.current())
    };
    println!(
        "DPO through burn-train: {} steps of {} pairs, {} micro-batch(es) per step on {} \
         device(s): {} iterations, {} optimiser steps, {:.1} s",
        run.steps,
        run.batch,
        run.accumulation,
        run.devices.len(),
        iterations,
        run.optimizer_steps
            .load(std::sync::atomic::Ordering::SeqCst),
        seconds
    );
    println!(
        "training loss: step 1 {:.4}, step {} {:.4}",
        losses[0],
        losses.len(),
        losses[losses.len() - 1]
    );
    println!(
        "held-out after training: loss {:.4}, rewards/accuracies {:.3}, rewards/margins {:.3}",
        last("Loss").unwrap_or(f64::NAN),
        last("rewards_accuracies").unwrap_or(f64::NAN),
        last("rewards_margins").unwrap_or(f64::NAN),
    );
    Ok(())
}

/// `steps` optimiser steps through burn-train against the same steps in a hand-written loop
/// (the same model, loader, loss and Adam), median seconds per step of each.
fn bench(
    reference: &Transformer,
    train: &[burn_preference::data::PreferenceExample],
    setup: &Setup,
    accumulation: usize,
    steps: usize,
) -> Result<(), Box<dyn Error>> {
    use burn::data::dataloader::DataLoader;
    use burn::train::TrainStep;

    let record: train_burn::Record = Default::default();
    // burn-train: the step times from its iteration timestamps are not exposed, so time whole
    // runs of 1 and 1 + steps steps and take the difference per step, several times.
    let run = |n: usize| -> Result<f64, Box<dyn Error>> {
        let run = Run {
            batch: setup.batch,
            steps: n,
            accumulation,
            devices: vec![Device::flex()],
            learning_rate: setup.learning_rate,
            seed: setup.seed,
            directory: std::env::temp_dir().join("burn-preference-bench_train"),
            record: record.clone(),
            optimizer_steps: Default::default(),
        };
        let started = Instant::now();
        let result = fit(reference, train, &train[..setup.batch], &run)?;
        if let Some(error) = result.error {
            return Err(format!("burn-train stopped: {error}").into());
        }
        Ok(started.elapsed().as_secs_f64())
    };
    // The same steps by hand: the loader, the model's step, the accumulator and Adam.
    let by_hand = || -> Result<f64, Box<dyn Error>> {
        let device = Device::flex().autodiff();
        let collate = collator()?;
        let data = std::sync::Arc::new(burn::data::dataset::InMemDataset::new(
            train[..steps * setup.batch].to_vec(),
        ));
        let loader = StepLoader::new(data, setup.batch, move |e| collate.pad(e))?
            .with_micro_batches(accumulation)?
            .with_shuffle(setup.seed);
        let mut model = DpoModel::new(reference.clone().fork(&device));
        let mut optimizer = AdamConfig::new().init();
        let mut accumulator = burn::optim::GradientsAccumulator::new();
        let started = Instant::now();
        let mut micro_batches = 0;
        for micro in loader.iter() {
            let out = TrainStep::step(&model, micro?);
            accumulator.accumulate(&model, out.grads);
            micro_batches += 1;
            if micro_batches % accumulation == 0 {
                let grads: GradientsParams = accumulator.grads();
                model = optimizer.step(setup.learning_rate, model, grads);
            }
            // What burn-train's metrics read: the metrics and the loss, once per micro-batch.
            let read = burn::train::ItemLazy::sync(out.item)?;
            let _ = read.losses.into_data();
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let mut learner = Vec::new();
    let mut hand = Vec::new();
    for _ in 0..3 {
        let one = run(1)?;
        let many = run(1 + steps)?;
        learner.push((many - one) / steps as f64);
        hand.push(by_hand()? / steps as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (learner, hand) = (median(&mut learner), median(&mut hand));
    println!(
        "{steps} steps of {} pairs, {accumulation} micro-batch(es) per step, flex, 3 runs each: \
         burn-train {:.4} s/step, hand-written {:.4} s/step, overhead {:+.1} %",
        setup.batch,
        learner,
        hand,
        100.0 * (learner / hand - 1.0)
    );
    Ok(())
}
