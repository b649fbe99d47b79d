//! DPO, IPO and RRHF on a tiny causal language model, each trained from the same start.
//!
//! 1. Digit sequences: a 4-digit prompt counts in steps of k ∈ {1, 3} (mod 10) and an 8-digit
//!    response goes on counting. The rule is to keep the prompt's step. A tiny LM (token and
//!    position embeddings, one MLP block over the current and previous token, LM head; burn-nn
//!    layers) is fitted briefly on sequences whose responses keep or switch the step equally
//!    often: a base model that does not know the rule. Frozen, it is the reference; its
//!    log-probs of every training response are computed once and stored.
//! 2. Preference data: per prompt, the chosen response keeps the step, the rejected one
//!    switches it; 20 % of the training pairs are flipped (noise). RRHF sees K = 4 candidates:
//!    keep, keep with one wrong digit, switch, switch with one wrong digit, scored 0, −1, −2,
//!    −3 (the best two swapped on a noisy 20 %). Held-out pairs are clean.
//! 3. One copy of the reference model per loss is trained with Adam from the same start. Every
//!    10 steps it logs, on the held-out pairs, the implicit-reward accuracy (share of pairs with
//!    ρ(chosen) > ρ(rejected), TRL's `rewards/accuracies`), the policy's own preference
//!    accuracy (share with log π(chosen) > log π(rejected): does the model now prefer the
//!    rule?), and the per-token KL(π ‖ π_ref) on the held-out chosen responses.
//!
//! ```sh
//! cargo run --release --example dpo_vs_ipo_tiny_lm -- --out docs
//! cargo run --release --example dpo_vs_ipo_tiny_lm --features wgpu -- --device wgpu
//! ```
//!
//! Prints the curves every 50 steps and a table of the final values; with `--out DIR` writes
//! `DIR/dpo_vs_ipo_tiny_lm.png`.

#[allow(dead_code)] // shared by the examples
#[path = "common/args.rs"]
mod args;
#[path = "common/plot.rs"]
mod plot;
#[path = "common/rng.rs"]
mod rng;
#[allow(dead_code)] // shared by the examples
#[path = "common/tiny_lm.rs"]
mod tiny_lm;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_preference::logps::{SequenceLogps, SequenceLogpsOutput};
use burn_preference::metrics::token_kl;
use burn_preference::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use plot::{COLORS, Line, Panel};
use rng::SplitMix64;
use tiny_lm::{TinyLm, VOCAB};

const PROMPT_LEN: usize = 4;
const SEQ_LEN: usize = 12;
const TRAIN_PROMPTS: usize = 512;
const HELD_OUT_PROMPTS: usize = 128;
const BATCH: usize = 32;
const FLIP_RATE: f64 = 0.2;
const SFT_STEPS: usize = 150;
/// Held-out evaluation every this many steps.
const EVAL_EVERY: usize = 10;

/// Token rows `[N, T]` and the labels that score only their responses (−100 on the prompt).
struct Sequences {
    tokens: Vec<i64>,
    rows: usize,
}

impl Sequences {
    fn tokens(&self, device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(
            TensorData::new(self.tokens.clone(), [self.rows, SEQ_LEN]),
            device,
        )
    }

    fn response_labels(&self, device: &Device) -> Tensor<2, Int> {
        let labels = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| {
                if i % SEQ_LEN < PROMPT_LEN {
                    -100
                } else {
                    token
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(labels, [self.rows, SEQ_LEN]), device)
    }

    /// The given rows, in order.
    fn rows_of(&self, rows: &[usize]) -> Sequences {
        let tokens = rows
            .iter()
            .flat_map(|&r| self.tokens[r * SEQ_LEN..(r + 1) * SEQ_LEN].iter().copied())
            .collect();
        Sequences {
            tokens,
            rows: rows.len(),
        }
    }
}

/// How a response continues the prompt: with the prompt's step or the other one, and how
/// many of its digits are then replaced by wrong ones.
#[derive(Clone, Copy)]
struct Response {
    keeps_step: bool,
    breaks: usize,
}

const FOLLOWS: Response = Response {
    keeps_step: true,
    breaks: 0,
};
const SWITCHES: Response = Response {
    keeps_step: false,
    breaks: 0,
};

/// A prompt `start, start + k, …` with step k ∈ {1, 3} (mod 10), and one sequence per
/// response kind. The rule: keep the prompt's step.
fn sample(rng: &mut SplitMix64, responses: &[Response]) -> Vec<Vec<i64>> {
    let start = rng.below(VOCAB) as i64;
    let step = [1, 3][rng.below(2)];
    responses
        .iter()
        .map(|response| {
            let response_step = if response.keeps_step { step } else { 4 - step };
            let mut seq: Vec<i64> = (0..PROMPT_LEN as i64)
                .map(|t| (start + step * t) % 10)
                .collect();
            while seq.len() < SEQ_LEN {
                seq.push((seq[seq.len() - 1] + response_step) % 10);
            }
            let clean = seq.clone();
            let mut broken = 0;
            while broken < response.breaks {
                let t = PROMPT_LEN + rng.below(SEQ_LEN - PROMPT_LEN);
                if seq[t] == clean[t] {
                    seq[t] = (clean[t] + 1 + rng.below(VOCAB - 1) as i64) % 10;
                    broken += 1;
                }
            }
            seq
        })
        .collect()
}

/// The data sets: pairs as concatenated rows (chosen block, then rejected block) and RRHF's
/// K = 4 candidates (row-major `[prompts, 4]`) with their scores.
struct Data {
    sft: Sequences,
    train_pairs: Sequences,
    held_out_pairs: Sequences,
    ranked: Sequences,
    ranked_scores: Vec<f32>,
}

fn make_data(seed: u64) -> Data {
    let mut rng = SplitMix64(seed);
    let flat = |rows: Vec<Vec<i64>>| Sequences {
        rows: rows.len(),
        tokens: rows.concat(),
    };
    let sft = flat(
        (0..1024)
            // The base model sees both continuations equally often: it does not know the rule.
            .map(|_| {
                let kind = if rng.unit() < 0.5 { FOLLOWS } else { SWITCHES };
                sample(&mut rng, &[kind]).remove(0)
            })
            .collect(),
    );
    let pairs = |n: usize, flip: f64, rng: &mut SplitMix64| {
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let mut pair = sample(rng, &[FOLLOWS, SWITCHES]);
            if rng.unit() < flip {
                pair.swap(0, 1);
            }
            chosen.push(pair[0].clone());
            rejected.push(pair[1].clone());
        }
        flat([chosen, rejected].concat())
    };
    let train_pairs = pairs(TRAIN_PROMPTS, FLIP_RATE, &mut rng);
    let held_out_pairs = pairs(HELD_OUT_PROMPTS, 0.0, &mut rng);
    let (mut ranked, mut ranked_scores) = (Vec::new(), Vec::new());
    for _ in 0..TRAIN_PROMPTS {
        let broken = |kind: Response| Response { breaks: 1, ..kind };
        ranked.extend(sample(
            &mut rng,
            &[FOLLOWS, broken(FOLLOWS), SWITCHES, broken(SWITCHES)],
        ));
        let mut scores = [0.0, -1.0, -2.0, -3.0];
        if rng.unit() < FLIP_RATE {
            scores.swap(0, 1);
        }
        ranked_scores.extend(scores);
    }
    Data {
        sft,
        train_pairs,
        held_out_pairs,
        ranked: flat(ranked),
        ranked_scores,
    }
}

/// Fits the reference briefly (mean token NLL) on sequences that keep or switch the step
/// equally often, so it starts without a preference for the rule.
fn fit_reference(data: &Data, steps: usize, device: &Device) -> Result<TinyLm, Box<dyn Error>> {
    let mut model = TinyLm::new(SEQ_LEN, true, device);
    let mut optimizer = AdamConfig::new().init();
    let gatherer = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Mean)
        .init()?;
    let mut rng = SplitMix64(7);
    for _ in 0..steps {
        let rows: Vec<usize> = (0..64).map(|_| rng.below(data.sft.rows)).collect();
        let batch = data.sft.rows_of(&rows);
        let tokens = batch.tokens(device);
        let nll = gatherer
            .forward(model.forward(tokens.clone()), tokens, None)?
            .logps
            .mean()
            .neg();
        let grads = GradientsParams::from_grads(nll.backward(), &model);
        model = optimizer.step(3e-3, model, grads);
    }
    Ok(model)
}

/// Sequence log-probs `[N]` of the response tokens (summed, as in the DPO and IPO papers),
/// with their token counts.
fn response_logps(
    model: &TinyLm,
    gatherer: &SequenceLogps,
    rows: &Sequences,
    device: &Device,
) -> Result<SequenceLogpsOutput, Box<dyn Error>> {
    Ok(gatherer.forward(
        model.forward(rows.tokens(device)),
        rows.response_labels(device),
        None,
    )?)
}

/// One logged point on the held-out pairs.
#[derive(Clone, Copy)]
struct Point {
    step: usize,
    /// Share of pairs with ρ(chosen) > ρ(rejected).
    reward_accuracy: f64,
    /// Share of pairs with log π(chosen) > log π(rejected).
    policy_accuracy: f64,
    /// Mean per-token KL(π ‖ π_ref) on the chosen responses.
    kl: f64,
}

struct Evaluator {
    gatherer: SequenceLogps,
    held_out: Sequences,
    reference_logps: Tensor<1>,
    reference_logits: Tensor<3>,
}

impl Evaluator {
    fn evaluate(
        &self,
        step: usize,
        model: &TinyLm,
        device: &Device,
    ) -> Result<Point, Box<dyn Error>> {
        let pairs = HELD_OUT_PROMPTS;
        let policy = response_logps(model, &self.gatherer, &self.held_out, device)?
            .logps
            .detach();
        let accuracy = |values: Tensor<1>| {
            let chosen = values.clone().narrow(0, 0, pairs);
            let rejected = values.narrow(0, pairs, pairs);
            f64::from(chosen.greater(rejected).float().mean().into_scalar::<f32>())
        };
        let policy_accuracy = accuracy(policy.clone());
        let reward_accuracy = accuracy(policy - self.reference_logps.clone());
        // KL on the held-out chosen responses, where a trained policy should stay close.
        let chosen_rows = self.held_out.rows_of(&(0..pairs).collect::<Vec<_>>());
        let kl = token_kl(
            &self.gatherer,
            model.forward(chosen_rows.tokens(device)).detach(),
            self.reference_logits.clone(),
            chosen_rows.response_labels(device),
            None,
        )?;
        Ok(Point {
            step,
            reward_accuracy,
            policy_accuracy,
            kl: f64::from(kl.mean.into_scalar::<f32>()),
        })
    }
}

#[derive(Clone, Copy)]
enum Method {
    Dpo,
    Ipo,
    Rrhf,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Dpo => "DPO (β = 0.1)",
            Method::Ipo => "IPO (τ = 0.1)",
            Method::Rrhf => "RRHF (K = 4, α = 1)",
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn train(
    method: Method,
    reference: &TinyLm,
    data: &Data,
    train_reference_logps: &Tensor<1>,
    evaluator: &Evaluator,
    steps: usize,
    bar: &ProgressBar,
    device: &Device,
) -> Result<Vec<Point>, Box<dyn Error>> {
    let mut model = reference.clone();
    let mut optimizer = AdamConfig::new().init();
    let gatherer = &evaluator.gatherer;
    let mut rng = SplitMix64(11);
    let mut history = Vec::new();
    // IPO on summed log-probs as the paper writes it: ΨPO with identity Ψ, β is IPO's τ.
    let loss: Box<dyn PreferenceLoss<Batch = PairedBatch>> = match method {
        Method::Dpo => Box::new(DpoConfig::new().with_beta(0.1).init()?),
        Method::Ipo => Box::new(PsiPoConfig::new(Psi::Identity).with_beta(0.1).init()?),
        Method::Rrhf => Box::new(RrhfConfig::new().init()?),
    };
    let pairs = TRAIN_PROMPTS;
    for step in 0..=steps {
        if step % EVAL_EVERY == 0 || step == steps {
            history.push(evaluator.evaluate(step, &model, device)?);
        }
        if step == steps {
            break;
        }
        let prompts: Vec<usize> = (0..BATCH).map(|_| rng.below(pairs)).collect();
        let batch = match method {
            Method::Dpo | Method::Ipo => {
                // Chosen rows of the batch, then their rejected rows: one forward pass.
                let rows: Vec<usize> = prompts
                    .iter()
                    .copied()
                    .chain(prompts.iter().map(|p| p + pairs))
                    .collect();
                let policy =
                    response_logps(&model, gatherer, &data.train_pairs.rows_of(&rows), device)?;
                let ids = rows.iter().map(|&r| r as i64).collect::<Vec<_>>();
                let reference = train_reference_logps.clone().select(
                    0,
                    Tensor::from_data(TensorData::new(ids, [2 * BATCH]), device),
                );
                // Chosen rows first: [2B] → [B, 2] as the layout says; the stored reference
                // log-probs [2B] are laid out the same way, chosen in column 0.
                PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs: BATCH })?
                    .with_reference(reference.reshape([2, BATCH]).transpose())?
            }
            Method::Rrhf => {
                let rows: Vec<usize> = prompts
                    .iter()
                    .flat_map(|p| (0..4).map(move |k| p * 4 + k))
                    .collect();
                let candidates = data.ranked.rows_of(&rows);
                let out = response_logps(&model, gatherer, &candidates, device)?;
                let scores: Vec<f32> = rows.iter().map(|&r| data.ranked_scores[r]).collect();
                // Prompt-major rows → [B, 4] with each candidate's token count; ranked by
                // the scores.
                let layout = BatchLayout::PromptMajor {
                    prompts: BATCH,
                    candidates: 4,
                };
                PairedBatch::from_output(out, layout)?.with_scores(Tensor::from_data(
                    TensorData::new(scores, [BATCH, 4]),
                    device,
                ))?
            }
        };
        let grads = GradientsParams::from_grads(loss.forward(batch)?.loss.backward(), &model);
        model = optimizer.step(1e-3, model, grads);
        bar.inc(1);
    }
    Ok(history)
}

fn main() -> Result<(), Box<dyn Error>> {
    let usage =
        "dpo_vs_ipo_tiny_lm [--steps N] [--seed S] [--out DIR] [--device flex|ndarray|wgpu]";
    let flags = args::Flags::parse(usage, &["steps", "seed", "out", "device"])?;
    let steps: usize = flags.value("steps")?.unwrap_or(400);
    let seed: u64 = flags.value("seed")?.unwrap_or(0);
    let device = flags.device()?.autodiff();
    device.seed(seed);
    let started = Instant::now();

    let data = make_data(seed);
    let reference = fit_reference(&data, SFT_STEPS, &device)?;
    let gatherer = SequenceLogpsConfig::new().init()?;
    // Precomputed once: the reference never changes.
    let train_reference_logps = response_logps(&reference, &gatherer, &data.train_pairs, &device)?
        .logps
        .detach();
    let held_out_chosen = data
        .held_out_pairs
        .rows_of(&(0..HELD_OUT_PROMPTS).collect::<Vec<_>>());
    let evaluator = Evaluator {
        reference_logps: response_logps(&reference, &gatherer, &data.held_out_pairs, &device)?
            .logps
            .detach(),
        reference_logits: reference.forward(held_out_chosen.tokens(&device)).detach(),
        held_out: data
            .held_out_pairs
            .rows_of(&(0..2 * HELD_OUT_PROMPTS).collect::<Vec<_>>()),
        gatherer,
    };
    let start = evaluator.evaluate(0, &reference, &device)?;
    println!(
        "reference after {SFT_STEPS} SFT steps: prefers the held-out chosen response in {:.3} of pairs",
        start.policy_accuracy
    );

    let methods = [Method::Dpo, Method::Ipo, Method::Rrhf];
    let bar = ProgressBar::new((steps * methods.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<20} [{bar:40}] {pos}/{len} {elapsed}")?
            .progress_chars("=> "),
    );
    let mut results = Vec::new();
    for method in methods {
        bar.set_message(method.name());
        let history = train(
            method,
            &reference,
            &data,
            &train_reference_logps,
            &evaluator,
            steps,
            &bar,
            &device,
        )?;
        results.push((method, history));
    }
    bar.finish_and_clear();

    // The curves behind the plot, every 50 steps: reward accuracy / policy accuracy / KL.
    print!("\n| step |");
    for (method, _) in &results {
        print!(" {} |", method.name());
    }
    println!("\n|---|{}", "---|".repeat(results.len()));
    for row in (0..results[0].1.len()).step_by(50 / EVAL_EVERY) {
        print!("| {} |", results[0].1[row].step);
        for (_, history) in &results {
            let p = history[row];
            print!(
                " {:.3} / {:.3} / {:.4} |",
                p.reward_accuracy, p.policy_accuracy, p.kl
            );
        }
        println!();
    }

    println!("\n| loss | reward accuracy | policy accuracy | per-token KL(π‖π_ref) |");
    println!("|---|---|---|---|");
    for (method, history) in &results {
        let last = history[history.len() - 1];
        println!(
            "| {} | {:.3} | {:.3} | {:.4} |",
            method.name(),
            last.reward_accuracy,
            last.policy_accuracy,
            last.kl
        );
    }
    println!(
        "\nheld-out: {HELD_OUT_PROMPTS} clean pairs; {steps} steps per loss, batches of {BATCH} prompts, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );

    if let Some(dir) = flags.text("out") {
        let lines = |pick: fn(&Point) -> f64, what: &str, thick: bool| -> Vec<Line> {
            results
                .iter()
                .enumerate()
                .map(|(i, (method, history))| Line {
                    label: format!("{} {what}", method.name()),
                    color: COLORS[i],
                    thick,
                    points: history.iter().map(|p| (p.step as f64, pick(p))).collect(),
                })
                .collect()
        };
        let max_kl = results
            .iter()
            .flat_map(|(_, h)| h.iter().map(|p| p.kl))
            .fold(0.0, f64::max);
        let panels = [
            Panel {
                title: "held-out preference accuracy".into(),
                x_label: "step".into(),
                y_label: "accuracy".into(),
                y_range: (0.0, 1.0),
                lines: [
                    lines(|p| p.reward_accuracy, "reward", true),
                    lines(|p| p.policy_accuracy, "policy", false),
                ]
                .concat(),
            },
            Panel {
                title: "per-token KL(π ‖ π_ref)".into(),
                x_label: "step".into(),
                y_label: "nats per token".into(),
                y_range: (0.0, max_kl * 1.1 + 1e-6),
                lines: lines(|p| p.kl, "", true),
            },
        ];
        std::fs::create_dir_all(dir)?;
        let path = PathBuf::from(dir).join("dpo_vs_ipo_tiny_lm.png");
        plot::draw_panels(&path, &panels, (1000, 400))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
