//! DPO and the losses added in 0.3 — DPOP, β-DPO, R-DPO, ODPO, Plackett–Luce, LiPO-λ, SimPER —
//! each training the tiny causal LM of `dpo_vs_ipo_tiny_lm` from the same reference.
//!
//! The task, reference and held-out evaluation are that example's (`common/digits.rs`): a
//! 4-digit prompt counts in steps of 1 or 3 (mod 10) and the response should keep the step; the
//! reference prefers the rule-following response in only a minority of held-out pairs. The
//! pairwise losses (DPO, DPOP, β-DPO, R-DPO, SimPER) train on pairs keep ≻ switch with 20 %
//! flipped; the listwise ones (ODPO, Plackett–Luce, LiPO-λ) on K = 4 candidates per prompt —
//! keep, keep with one wrong digit, switch, switch with one wrong digit — graded 3, 2, 1, 0
//! (the best two swapped on a noisy 20 %), the lists RRHF trains on there. ODPO takes its
//! offsets `α·log(s_i − s_j)` from the grades, LiPO-λ its gains `2^grade − 1`. β-DPO trains
//! through `forward_train`, carrying its `BetaDpoState`. Every loss: 400 steps of Adam at
//! 1e-3, 32 prompts a batch, the same batches, β = 0.1 wherever the loss has one (the other
//! settings at their defaults).
//!
//! Every 10 steps, on 128 clean held-out pairs: the implicit-reward accuracy (share of pairs
//! with ρ(chosen) > ρ(rejected)), the policy's own preference accuracy (log π(chosen) >
//! log π(rejected)), the per-token KL(π ‖ π_ref) on the chosen responses and their mean
//! per-token log-ratio (below 0: their likelihood fell). Every step's loss and gradients are
//! checked for NaN and ±inf. `--flip-rate P` sets the share of flipped training pairs (and of
//! swapped lists), 0.2 by default.
//!
//! ```sh
//! cargo run --release --example compare_losses -- --out docs
//! cargo run --release --example compare_losses --features wgpu -- --device wgpu
//! ```
//!
//! Prints the curves every 100 steps and a table of the final values; with `--out DIR` writes
//! `DIR/compare_losses.png`.

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
use methods::{Method, Run, Schedule};
use plot::{COLORS, Line, Panel};

const METHODS: [Method; 8] = [
    Method::Dpo,
    Method::Dpop,
    Method::BetaDpo,
    Method::Rdpo,
    Method::Odpo,
    Method::PlackettLuce,
    Method::Lipo,
    Method::Simper,
];
const BATCH: usize = 32;
const LEARNING_RATE: f64 = 1e-3;
/// Held-out evaluation every this many steps.
const EVAL_EVERY: usize = 10;
/// The policy accuracy whose first logged step the table reports.
const LEARNT: f64 = 0.95;

fn main() -> Result<(), Box<dyn Error>> {
    let usage = "compare_losses [--steps N] [--seed S] [--flip-rate P] [--out DIR] \
                 [--device flex|ndarray|wgpu]";
    let flags = args::Flags::parse(usage, &["steps", "seed", "flip-rate", "out", "device"])?;
    let steps: usize = flags.value("steps")?.unwrap_or(400);
    let seed: u64 = flags.value("seed")?.unwrap_or(0);
    let mut setup = Setup::EXAMPLE;
    if let Some(flip_rate) = flags.value("flip-rate")? {
        setup.flip_rate = flip_rate;
    }
    let device = flags.device()?.autodiff();
    device.seed(seed);
    let started = Instant::now();

    let task = Task::new(seed, setup, &device)?;
    let start = task.evaluator.evaluate(0, &task.reference, &device)?;
    println!(
        "reference after {} SFT steps: prefers the held-out chosen response in {:.3} of pairs",
        setup.sft_steps, start.policy_accuracy
    );

    let bar = ProgressBar::new((steps * METHODS.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<32} [{bar:40}] {pos}/{len} {elapsed}")?
            .progress_chars("=> "),
    );
    let schedule = Schedule {
        steps,
        batch: BATCH,
        learning_rate: LEARNING_RATE,
        eval_every: EVAL_EVERY,
    };
    let mut results: Vec<(Method, Run)> = Vec::new();
    for method in METHODS {
        bar.set_message(method.name());
        let run = methods::train(method, &task, schedule, None, &device, || bar.inc(1))?;
        results.push((method, run));
    }
    bar.finish_and_clear();

    // The curves behind the plot, every 100 steps: reward accuracy / policy accuracy / KL.
    print!("\n| step |");
    for (method, _) in &results {
        print!(" {} |", method.name());
    }
    println!("\n|---|{}", "---|".repeat(results.len()));
    let points = results[0].1.history.len();
    let mut rows: Vec<usize> = (0..points).step_by(100 / EVAL_EVERY).collect();
    if rows.last() != Some(&(points - 1)) {
        rows.push(points - 1);
    }
    for row in rows {
        print!("| {} |", results[0].1.history[row].step);
        for (_, run) in &results {
            let p = run.history[row];
            print!(
                " {:.3} / {:.3} / {:.4} |",
                p.reward_accuracy, p.policy_accuracy, p.kl
            );
        }
        println!();
    }

    println!(
        "\n| loss | reward accuracy | policy accuracy | per-token KL(π‖π_ref) | chosen log-ratio per token | policy accuracy ≥ {LEARNT} from step | wall time | NaN or inf |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (method, run) in &results {
        let last = run.history[run.history.len() - 1];
        let learnt = run
            .history
            .iter()
            .find(|p| p.policy_accuracy >= LEARNT)
            .map_or("never".to_string(), |p| p.step.to_string());
        let nonfinite = match run.nonfinite_steps {
            0 => "none".to_string(),
            n => format!("{n} steps"),
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.4} | {:+.3} | {learnt} | {:.1} s | {nonfinite} |",
            method.name(),
            last.reward_accuracy,
            last.policy_accuracy,
            last.kl,
            last.chosen_logratio,
            run.seconds,
        );
    }
    println!(
        "\nheld-out: {} clean pairs; training data {:.0} % flipped; {steps} steps per loss, batches of {BATCH} prompts, Adam at {LEARNING_RATE}, {:.1} s in all",
        setup.held_out_prompts,
        setup.flip_rate * 100.0,
        started.elapsed().as_secs_f64()
    );

    if let Some(dir) = flags.text("out") {
        let lines = |pick: fn(&Point) -> f64, legend: bool| -> Vec<Line> {
            results
                .iter()
                .enumerate()
                .map(|(i, (method, run))| Line {
                    label: if legend {
                        method.name().to_string()
                    } else {
                        String::new()
                    },
                    color: COLORS[i % COLORS.len()],
                    thick: true,
                    points: run
                        .history
                        .iter()
                        .map(|p| (p.step as f64, pick(p)))
                        .collect(),
                })
                .collect()
        };
        let max_kl = results
            .iter()
            .flat_map(|(_, run)| run.history.iter().map(|p| p.kl))
            .filter(|kl| kl.is_finite())
            .fold(0.0, f64::max);
        let accuracy = |title: &str, pick: fn(&Point) -> f64, legend: bool| Panel {
            title: title.into(),
            x_label: "step".into(),
            y_label: "accuracy".into(),
            y_range: (0.0, 1.02),
            lines: lines(pick, legend),
        };
        // One legend, on the panel where the curves leave its corner free.
        let panels = [
            accuracy("held-out reward accuracy", |p| p.reward_accuracy, false),
            accuracy("held-out policy accuracy", |p| p.policy_accuracy, true),
            Panel {
                title: "per-token KL(π ‖ π_ref)".into(),
                x_label: "step".into(),
                y_label: "nats per token".into(),
                y_range: (0.0, max_kl * 1.1 + 1e-6),
                lines: lines(|p| p.kl, false),
            },
        ];
        std::fs::create_dir_all(dir)?;
        let path = PathBuf::from(dir).join("compare_losses.png");
        plot::draw_panels(&path, &panels, (1500, 450))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
