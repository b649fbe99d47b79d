//! RRHF on K scored candidates per prompt: ranking accuracy rising during training, and what
//! the length penalty α does when the scores favour long responses.
//!
//! Each of 64 prompts has K = 4 candidate responses of 3 to 12 random tokens, scored by a
//! synthetic reward `quality + 0.4·length`: longer is better, as with many reward models. The
//! policy is one table of next-token logits per position, shared by every prompt, so it cannot
//! memorise each ranking: accuracy rises and levels off. RRHF ranks the candidates by
//! `p_i = S_i / n_i^α` (summed log-prob over length^α) and fine-tunes on the best one.
//!
//! With α = 0 the rank term compares summed log-probs, which fall with every token: the long
//! candidates the reward prefers start out ranked last, and to rank them first the policy must
//! give them the highest *sequence* probability, i.e. learn to prefer long responses outright
//! (see "top-S length", the length of each prompt's most likely candidate). With α = 1 (the
//! paper's default) per-token means are compared: the ranking is learnt without moving the
//! sequence-level length preference as far. (At step 0 every candidate has the same per-token
//! log-prob, so with α = 1 no pair is strictly ordered and the accuracy reads 0.)
//!
//! ```sh
//! cargo run --release --example rrhf_ranking
//! cargo run --release --example rrhf_ranking --features wgpu -- --device wgpu
//! ```

#[allow(dead_code)] // shared by the examples; this one reads `--device`, `--steps`, `--seed`
#[path = "common/args.rs"]
mod args;

use std::error::Error;

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn_preference::data::BatchLayout;
use burn_preference::loss::RankLoss;
use burn_preference::prelude::*;

const PROMPTS: usize = 64;
const CANDIDATES: usize = 4;
const MAX_LEN: usize = 12;
const VOCAB: usize = 16;

#[derive(Module, Debug)]
struct TablePolicy {
    /// Next-token logits `[positions, vocabulary]`, shared by every prompt.
    logits: Param<Tensor<2>>,
}

/// The candidates: token ids `[P·K, T]` (−100 after the end), scores `[P, K]`, lengths.
struct Candidates {
    labels: Vec<i64>,
    scores: Vec<f32>,
    lengths: Vec<usize>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let usage = "rrhf_ranking [--steps N] [--seed S] [--device flex|ndarray|wgpu]";
    let flags = args::Flags::parse(usage, &["steps", "seed", "device"])?;
    let steps: usize = flags.value("steps")?.unwrap_or(300);
    let seed: u64 = flags.value("seed")?.unwrap_or(0);
    let device = flags.device()?.autodiff();
    device.seed(seed);
    let candidates = make_candidates(&device)?;

    println!("RRHF, {PROMPTS} prompts × {CANDIDATES} candidates, scores favour long responses");
    println!(
        "rank acc: share of candidate pairs that p = S/n^α orders as the scores do; mean length\n\
         of the candidate ranked first by p (top-p), by the summed log-prob S (top-S), and by\n\
         the score (best)\n"
    );
    println!(
        "{:<22} {:>6} {:>9} {:>9} {:>13} {:>13} {:>12}",
        "variant", "step", "loss", "rank acc", "top-p length", "top-S length", "best length"
    );
    for (alpha, rank_loss) in [
        (0.0, RankLoss::Hinge),
        (1.0, RankLoss::Hinge),
        (1.0, RankLoss::Logistic),
    ] {
        let config = RrhfConfig::new()
            .with_length_penalty(alpha)
            .with_rank_loss(rank_loss);
        train(&config, &candidates, steps, &device)?;
        println!();
    }
    Ok(())
}

fn train(
    config: &RrhfConfig,
    candidates: &Candidates,
    steps: usize,
    device: &Device,
) -> Result<(), Box<dyn Error>> {
    let loss = config.init()?;
    let name = format!("α = {}, {:?}", config.length_penalty, config.rank_loss);
    // Every variant starts from the same uniform policy.
    let mut policy = TablePolicy {
        logits: Param::from_tensor(Tensor::zeros([MAX_LEN, VOCAB], device)),
    };
    let mut optimizer = AdamConfig::new().init();
    let gatherer = SequenceLogpsConfig::new()
        .with_shift(false)
        .with_reduction(LogpReduction::Sum)
        .init()?;
    let labels = Tensor::<2, Int>::from_data(
        TensorData::new(candidates.labels.clone(), [PROMPTS * CANDIDATES, MAX_LEN]),
        device,
    );
    let scores = Tensor::<2>::from_data(
        TensorData::new(candidates.scores.clone(), [PROMPTS, CANDIDATES]),
        device,
    );

    for step in 0..=steps {
        let logits = policy.logits.val().unsqueeze_dim::<3>(0).expand([
            PROMPTS * CANDIDATES,
            MAX_LEN,
            VOCAB,
        ]);
        let gathered = gatherer.forward(logits, labels.clone(), None)?;
        let gathered_sums = gathered.logps.clone().detach();
        // Prompt-major rows → [P, K] summed log-probs with their token counts (RRHF's n_i),
        // ranked by the scores.
        let layout = BatchLayout::PromptMajor {
            prompts: PROMPTS,
            candidates: CANDIDATES,
        };
        let batch = PairedBatch::from_output(gathered, layout)?.with_scores(scores.clone())?;
        let out = loss.forward(batch)?;
        if step % (steps / 6).max(1) == 0 {
            // RRHF's p_i = S_i / n_i^α from the same sums and counts (lengths clamped at 1,
            // as the loss does), for the top-p column.
            let sums = gathered_sums.clone().try_into_vec_as::<f32>()?;
            let p: Vec<f32> = sums
                .iter()
                .zip(&candidates.lengths)
                .map(|(s, &n)| s / (n.max(1) as f32).powf(config.length_penalty as f32))
                .collect();
            let metrics = out.metrics.log()?;
            let metric = |name: &str| metrics.iter().find(|(n, _)| *n == name).map(|m| m.1);
            println!(
                "{name:<22} {step:>6} {:>9.4} {:>9.3} {:>13.2} {:>13.2} {:>12.2}",
                out.loss.clone().into_scalar::<f32>(),
                metric("rewards/ranking_accuracy").unwrap_or(f64::NAN),
                mean_length_of_top(&p, &candidates.lengths),
                mean_length_of_top(&sums, &candidates.lengths),
                mean_length_of_top(&candidates.scores, &candidates.lengths),
            );
        }
        if step < steps {
            let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
            policy = optimizer.step(0.05, policy, grads);
        }
    }
    Ok(())
}

/// Random candidates of 3..=12 tokens, scored `quality + 0.4·length`.
fn make_candidates(device: &Device) -> Result<Candidates, Box<dyn Error>> {
    let n = PROMPTS * CANDIDATES;
    let draw = |shape: [usize; 1], distribution| {
        Tensor::<1>::random(shape, distribution, device).try_into_vec_as::<f32>()
    };
    let uniform = draw([n * (MAX_LEN + 1)], Distribution::Uniform(0.0, 1.0))?;
    let quality = draw([n], Distribution::Normal(0.0, 1.0))?;
    let mut labels = vec![-100i64; n * MAX_LEN];
    let mut lengths = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for row in 0..n {
        let length = 3 + (uniform[row * (MAX_LEN + 1)] * 10.0) as usize % 10;
        for t in 0..length {
            let token = uniform[row * (MAX_LEN + 1) + 1 + t] * VOCAB as f32;
            labels[row * MAX_LEN + t] = (token as i64).min(VOCAB as i64 - 1);
        }
        lengths.push(length);
        scores.push(quality[row] + 0.4 * length as f32);
    }
    Ok(Candidates {
        labels,
        scores,
        lengths,
    })
}

/// Mean length, over prompts, of the candidate with the highest `values`.
fn mean_length_of_top(values: &[f32], lengths: &[usize]) -> f64 {
    let total: usize = (0..PROMPTS)
        .map(|p| {
            let row = &values[p * CANDIDATES..(p + 1) * CANDIDATES];
            let top = (0..CANDIDATES).fold(0, |best, i| if row[i] > row[best] { i } else { best });
            lengths[p * CANDIDATES + top]
        })
        .sum();
    total as f64 / PROMPTS as f64
}
