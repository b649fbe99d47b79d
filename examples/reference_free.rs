//! Reference-free and unpaired preference training over the fused LM head: SimPO, CPO, ORPO or
//! KTO on a tiny causal LM, without ever building the `[B, T, V]` logits.
//!
//! The task: a 4-digit prompt counts in steps of k ∈ {1, 3} (mod 10); the chosen response keeps
//! counting with k, the rejected one switches to the other step. A tiny LM (token and position
//! embeddings, an MLP over the current and previous token, a bias-free LM head) is trained from
//! random weights; its log-probs come from `SequenceLogps::forward_linear` on the last hidden
//! states and the head's weight. SimPO, CPO and ORPO need no reference model at all; KTO takes
//! the batch as unpaired thumbs-up / thumbs-down examples, with the frozen start model as its
//! reference and the mismatched KL pairs built by `kl_pairs`.
//!
//! Printed: the held-out share of prompts whose chosen response the model now prefers (higher
//! token-mean log-prob), before and after, and the loss's TRL-named metrics.
//!
//! ```sh
//! cargo run --release --example reference_free                       # SimPO on flex
//! cargo run --release --example reference_free -- --loss orpo --steps 200
//! cargo run --release --example reference_free --features wgpu -- --device wgpu --loss kto
//! ```

#[allow(dead_code)] // shared by the examples
#[path = "common/args.rs"]
mod args;
#[allow(dead_code)] // shared by the examples
#[path = "common/rng.rs"]
mod rng;
#[allow(dead_code)] // shared by the examples
#[path = "common/tiny_lm.rs"]
mod tiny_lm;

use std::error::Error;
use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_preference::logps::{SequenceLogps, SequenceLogpsOutput};
use burn_preference::loss::kl_pairs;
use burn_preference::prelude::*;
use rng::SplitMix64;
use tiny_lm::{TinyLm, VOCAB};

const PROMPT_LEN: usize = 4;
const SEQ_LEN: usize = 8;
const BATCH: usize = 32;
const HELD_OUT: usize = 64;

const USAGE: &str = "reference_free [--loss simpo|cpo|orpo|kto] [--steps N] \
                     [--device flex|ndarray|wgpu]";

/// The log-probs of `labels` through the fused LM head: the last hidden states and the
/// head's weight, never the `[B, T, V]` logits.
fn logps(
    model: &TinyLm,
    gatherer: &SequenceLogps,
    tokens: Tensor<2, Int>,
    labels: Tensor<2, Int>,
) -> Result<SequenceLogpsOutput, Box<dyn Error>> {
    let hidden = model.hidden(tokens);
    Ok(gatherer.forward_linear(hidden, model.head_weight(), labels, None)?)
}

/// A prompt counting from `start` in steps of `step`, continued for the response with `reply`.
fn sequence(start: usize, step: usize, reply: usize) -> Vec<u32> {
    let prompt = (0..PROMPT_LEN).map(|i| (start + i * step) % VOCAB);
    let last = start + (PROMPT_LEN - 1) * step;
    let response = (1..=SEQ_LEN - PROMPT_LEN).map(|i| (last + i * reply) % VOCAB);
    prompt.chain(response).map(|t| t as u32).collect()
}

/// `count` random prompts as (chosen, rejected) token rows.
fn pairs(rng: &mut SplitMix64, count: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..count)
        .map(|_| {
            let (start, step) = (rng.below(VOCAB), [1, 3][rng.below(2)]);
            let other = 4 - step; // 1 ↔ 3
            (sequence(start, step, step), sequence(start, step, other))
        })
        .collect()
}

fn tokens(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), SEQ_LEN]), device)
}

/// Labels scoring the response only (−100 on the prompt).
fn response_labels(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = rows
        .iter()
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .map(|(i, &t)| if i < PROMPT_LEN { -100 } else { i64::from(t) })
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), SEQ_LEN]), device)
}

/// Share of held-out prompts whose chosen response has the higher token-mean log-prob.
fn preference_accuracy(
    model: &TinyLm,
    gatherer: &SequenceLogps,
    held_out: &[(Vec<u32>, Vec<u32>)],
    device: &Device,
) -> Result<f64, Box<dyn Error>> {
    let rows: Vec<Vec<u32>> = held_out
        .iter()
        .map(|p| p.0.clone())
        .chain(held_out.iter().map(|p| p.1.clone()))
        .collect();
    let out = logps(
        model,
        gatherer,
        tokens(&rows, device),
        response_labels(&rows, device),
    )?;
    let means = out.logps.div(out.counts).try_into_vec_as::<f32>()?;
    let n = held_out.len();
    let wins = (0..n).filter(|&i| means[i] > means[n + i]).count();
    Ok(wins as f64 / n as f64)
}

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE, &["loss", "steps", "device"])?;
    let device = flags.device()?;
    let loss_name = flags.text("loss").unwrap_or("simpo").to_string();
    let steps: usize = flags.value("steps")?.unwrap_or(150);
    device.seed(3);
    let autodiff = device.clone().autodiff();
    let gatherer = SequenceLogpsConfig::new()
        .with_return_token_logps(true)
        .init()?;
    let mut rng = SplitMix64(5);
    let held_out = pairs(&mut rng, HELD_OUT);

    let start = TinyLm::new(SEQ_LEN, false, &autodiff);
    let reference = start.clone(); // frozen: KTO's reference model
    let mut model = start;
    let mut optimizer = AdamConfig::new().init();
    let before = preference_accuracy(&model, &gatherer, &held_out, &autodiff)?;
    let began = Instant::now();
    let mut last_metrics = Metrics::new();
    for _ in 0..steps {
        let batch = pairs(&mut rng, BATCH);
        // Chosen rows, then rejected rows: one pass, as TRL concatenates them.
        let rows: Vec<Vec<u32>> = batch
            .iter()
            .map(|p| p.0.clone())
            .chain(batch.iter().map(|p| p.1.clone()))
            .collect();
        let ids = tokens(&rows, &autodiff);
        let pairs_layout = BatchLayout::ChosenFirst { pairs: BATCH };
        let out = match loss_name.as_str() {
            "simpo" | "cpo" => {
                let config = if loss_name == "simpo" {
                    CpoConfig::new()
                        .with_loss_type(CpoLossType::Simpo)
                        .with_beta(2.0)
                        .with_cpo_alpha(0.0)
                } else {
                    CpoConfig::new()
                };
                // The gatherer returns the token log-probs too: CPO's NLL term reads them.
                let policy = logps(&model, &gatherer, ids, response_labels(&rows, &autodiff))?;
                config
                    .init()?
                    .forward(PairedBatch::from_output(policy, pairs_layout)?)?
            }
            "orpo" => {
                // Log-probs over prompt and response (the NLL counts both); the response
                // labels pick out the completion tokens for the odds ratio.
                let policy = logps(&model, &gatherer, ids.clone(), ids)?;
                let completion = response_labels(&rows, &autodiff);
                let batch = PairedBatch::from_output(policy, pairs_layout)?
                    .with_completion_labels(completion)?;
                OrpoConfig::new().init()?.forward(batch)?
            }
            "kto" => {
                // The same rows as unpaired examples: chosen desirable, rejected undesirable.
                let labels = response_labels(&rows, &autodiff);
                let policy = logps(&model, &gatherer, ids.clone(), labels.clone())?;
                let reference_logps = logps(&reference, &gatherer, ids, labels)?.logps.detach();
                let prompts: Vec<Vec<u32>> =
                    rows.iter().map(|r| r[..PROMPT_LEN].to_vec()).collect();
                let completions: Vec<Vec<u32>> =
                    rows.iter().map(|r| r[PROMPT_LEN..].to_vec()).collect();
                let kl_rows: Vec<Vec<u32>> = kl_pairs(&prompts, &completions)?
                    .into_iter()
                    .map(|pair| pair.input_ids)
                    .collect();
                let kl_ids = tokens(&kl_rows, &autodiff);
                let kl_labels = response_labels(&kl_rows, &autodiff);
                let policy_kl = logps(&model, &gatherer, kl_ids.clone(), kl_labels.clone())?.logps;
                let reference_kl = logps(&reference, &gatherer, kl_ids, kl_labels)?.logps;
                let desirable: Vec<i64> = (0..2 * BATCH).map(|i| i64::from(i < BATCH)).collect();
                let desirable =
                    Tensor::from_data(TensorData::new(desirable, [2 * BATCH]), &autodiff);
                let unpaired = UnpairedBatch::from_output(policy, desirable)?
                    .with_reference(reference_logps)?
                    .with_kl(policy_kl, reference_kl)?;
                KtoConfig::new().init()?.forward(unpaired)?
            }
            other => return Err(format!("unknown --loss {other}\nusage: {USAGE}").into()),
        };
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optimizer.step(3e-3, model, grads);
        // Kept on the device: read back once, after training.
        last_metrics = out.metrics;
    }
    let after = preference_accuracy(&model, &gatherer, &held_out, &autodiff)?;
    println!(
        "{loss_name} on {device:?}: {steps} steps in {:.1} s over the fused LM head",
        began.elapsed().as_secs_f64()
    );
    println!("held-out preference accuracy: {before:.3} before, {after:.3} after");
    println!("last batch:");
    for (name, value) in last_metrics.log()? {
        println!("  {name:<20} {value:>10.4}");
    }
    Ok(())
}
