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
//!    keep, keep with one wrong digit, switch, switch with one wrong digit, graded 3, 2, 1, 0
//!    (the best two swapped on a noisy 20 %). Held-out pairs are clean.
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
#[allow(dead_code)] // shared by the tiny-LM examples and their test
#[path = "common/digits.rs"]
mod digits;
#[allow(dead_code)] // shared by the tiny-LM examples and their test
#[path = "common/methods.rs"]
mod methods;
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

use digits::{Point, Setup, Task};
use indicatif::{ProgressBar, ProgressStyle};
use methods::{Method, Schedule};
use plot::{COLORS, Line, Panel};

const BATCH: usize = 32;
/// Held-out evaluation every this many steps.
const EVAL_EVERY: usize = 10;

fn main() -> Result<(), Box<dyn Error>> {
    let usage =
        "dpo_vs_ipo_tiny_lm [--steps N] [--seed S] [--out DIR] [--device flex|ndarray|wgpu]";
    let flags = args::Flags::parse(usage, &["steps", "seed", "out", "device"])?;
    let steps: usize = flags.value("steps")?.unwrap_or(400);
    let seed: u64 = flags.value("seed")?.unwrap_or(0);
    let device = flags.device()?.autodiff();
    device.seed(seed);
    let started = Instant::now();

    let setup = Setup::EXAMPLE;
    let task = Task::new(seed, setup, &device)?;
    let start = task.evaluator.evaluate(0, &task.reference, &device)?;
    println!(
        "reference after {} SFT steps: prefers the held-out chosen response in {:.3} of pairs",
        setup.sft_steps, start.policy_accuracy
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
        let schedule = Schedule {
            steps,
            batch: BATCH,
            learning_rate: 1e-3,
            eval_every: EVAL_EVERY,
        };
        let run = methods::train(method, &task, schedule, None, &device, || bar.inc(1))?;
        results.push((method, run.history));
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
        "\nheld-out: {} clean pairs; {steps} steps per loss, batches of {BATCH} prompts, {:.1} s in all",
        setup.held_out_prompts,
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
