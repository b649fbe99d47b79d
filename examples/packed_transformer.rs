//! A small causal transformer (burn-nn's attention, layer norm and linear layers) trained end
//! to end on arithmetic preferences, once with padded and once with packed batches.
//!
//! 1. Data: prompts `a+b=` with 1- to 3-digit operands, one token per digit; the chosen
//!    completion is the sum and an end token, the rejected one a plausible wrong sum (forgotten
//!    carry, a digit off by one, two digits swapped). Sequences are 6 to 13 tokens long.
//! 2. SFT: the model is fitted briefly on the chosen completions (token-mean NLL), then frozen
//!    as the reference.
//! 3. One policy per loss from the reference (DPO, IPO, reference-free DPO), each trained twice
//!    on the same batches: padded (`PreferenceCollator::pad`, causal + padding mask, the
//!    `[R, T, V]` logits into `SequenceLogps::forward`) and packed
//!    (`PreferenceCollator::pack`, block-diagonal causal mask, the fused LM head in
//!    `SequenceLogps::forward_linear_packed`). Both give chosen-first `[2B]` log-probs for
//!    `PairedBatch::from_output(out, batch.layout())`, so the two runs follow the same losses.
//!
//! ```sh
//! cargo run --release --example packed_transformer -- --out docs
//! cargo run --release --example packed_transformer --features wgpu -- --device wgpu --steps 20
//! ```
//!
//! Prints a table per loss and layout: final training loss, held-out loss, reward accuracy and
//! margin, the policy's held-out accuracy, tokens per second, the padding share and the peak
//! resident memory; with `--out DIR` writes `DIR/packed_transformer.png`.

#[allow(dead_code)] // shared by the examples
#[path = "common/args.rs"]
mod args;
#[path = "common/plot.rs"]
mod plot;
#[allow(dead_code)] // shared with the test
#[path = "common/rng.rs"]
mod rng;
#[allow(dead_code)] // shared with the test
#[path = "common/transformer.rs"]
mod transformer;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use plot::{COLORS, Line, Panel};
use transformer::{Layout, METHODS, Run, Setup, Size, make_data, sft, train};

const TRAIN_PAIRS: usize = 4096;
const HELD_OUT_PAIRS: usize = 256;

/// Peak resident memory of this process, from `/proc/self/status`.
mod memory {
    /// `VmHWM` (the resident-set high-water mark) or `VmRSS`, in MiB.
    pub fn status_mib(field: &str) -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// Resets `VmHWM` to the current resident set (Linux ≥ 4.0), so the next reading is the
    /// peak of what runs in between; `false` where that is not possible.
    pub fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let usage = "packed_transformer [--steps N] [--sft-steps N] [--row-len T] [--seed S] \
                 [--out DIR] [--device flex|ndarray|wgpu]";
    let flags = args::Flags::parse(
        usage,
        &["steps", "sft-steps", "row-len", "seed", "out", "device"],
    )?;
    let setup = Setup {
        size: Size::EXAMPLE,
        sft_steps: flags.value("sft-steps")?.unwrap_or(200),
        sft_learning_rate: 3e-3,
        steps: flags.value("steps")?.unwrap_or(100),
        learning_rate: 5e-4,
        batch: 32,
        eval_every: 10,
        seed: flags.value("seed")?.unwrap_or(0),
    };
    let row_len: usize = flags.value("row-len")?.unwrap_or(32);
    let device = flags.device()?.autodiff();
    let started = Instant::now();

    let data = make_data(TRAIN_PAIRS, HELD_OUT_PAIRS, setup.seed);
    let layouts = [Layout::Padded, Layout::Packed { row_len }];
    let bar = ProgressBar::new((setup.sft_steps + setup.steps * METHODS.len() * 2) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<32} [{bar:40}] {pos}/{len} {elapsed}")?
            .progress_chars("=> "),
    );
    bar.set_message("SFT (reference)");
    let (reference, sft_losses) = sft(&data, &setup, row_len, &device, || bar.inc(1))?;

    let peak_resettable = memory::reset_peak();
    let mut runs: Vec<(Run, Option<f64>)> = Vec::new();
    for method in METHODS {
        for layout in layouts {
            bar.set_message(format!("{} {}", method.name(), layout.name()));
            memory::reset_peak();
            let run = train(method, layout, &reference, &data, &setup, &device, || {
                bar.inc(1)
            })?;
            runs.push((run, memory::status_mib("VmHWM")));
        }
    }
    bar.finish_and_clear();

    println!(
        "reference: {} SFT steps, completion NLL per token {:.3} → {:.3}",
        setup.sft_steps,
        sft_losses.first().copied().unwrap_or(f32::NAN),
        sft_losses.last().copied().unwrap_or(f32::NAN),
    );
    if let Some((run, _)) = runs.first() {
        println!(
            "the reference prefers the correct answer (log π_ref(chosen) > log π_ref(rejected)) in {:.3} of the held-out pairs",
            run.held_out[0].policy_accuracy
        );
    }
    println!(
        "\n| loss | layout | final train loss | held-out loss | reward acc. | reward margin | policy acc. | tokens/s | padding | peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (run, peak) in &runs {
        let last = run.held_out[run.held_out.len() - 1];
        println!(
            "| {} | {} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} % | {} |",
            run.method.name(),
            run.layout.name(),
            run.train_losses.last().copied().unwrap_or(f32::NAN),
            last.loss,
            last.reward_accuracy,
            last.margin,
            last.policy_accuracy,
            run.real_tokens as f64 / run.seconds,
            100.0 * (1.0 - run.real_tokens as f64 / run.all_tokens as f64),
            peak.map_or("n/a".to_string(), |p| format!("{p:.0}")),
        );
    }
    // The padded and packed runs of a loss see the same batches: how far apart they end up.
    println!();
    for pair in runs.chunks(2) {
        let [(padded, _), (packed, _)] = pair else {
            continue;
        };
        let gap = padded
            .train_losses
            .iter()
            .zip(&packed.train_losses)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1e-6))
            .fold(0.0f32, f32::max);
        println!(
            "{}: largest relative gap between the padded and packed training losses over {} steps: {gap:.1e}; packed ran {:.2}× the padded tokens/s",
            padded.method.name(),
            padded.train_losses.len(),
            (packed.real_tokens as f64 / packed.seconds)
                / (padded.real_tokens as f64 / padded.seconds),
        );
    }
    println!(
        "\nheld-out: {HELD_OUT_PAIRS} pairs whose sums are not in the {TRAIN_PAIRS} training pairs; \
         {} steps per run, batches of {} pairs, packed rows of {row_len} tokens; \
         model d = {}, {} heads, {} layers; {:.1} s in all",
        setup.steps,
        setup.batch,
        setup.size.d_model,
        setup.size.heads,
        setup.size.layers,
        started.elapsed().as_secs_f64()
    );
    println!(
        "tokens/s: real (unpadded) tokens of the training batches / wall time of the training steps \
         (reference and policy passes, backward, Adam). Peak RSS: VmHWM of /proc/self/status{}, host memory only.",
        if peak_resettable {
            ", reset before each run through /proc/self/clear_refs, so each is that run's peak"
        } else {
            " (could not be reset: each value is the process's peak so far)"
        }
    );

    if let Some(dir) = flags.text("out") {
        let lines = |pick: fn(&transformer::Point) -> f64| -> Vec<Line> {
            runs.iter()
                .enumerate()
                .map(|(i, (run, _))| Line {
                    label: format!("{} {}", run.method.name(), run.layout.name()),
                    color: COLORS[i / 2],
                    // Padded thick, packed thin on top of it.
                    thick: run.layout == Layout::Padded,
                    points: run
                        .held_out
                        .iter()
                        .map(|p| (p.step as f64, pick(p)))
                        .collect(),
                })
                .collect()
        };
        let margins = runs
            .iter()
            .flat_map(|(run, _)| run.held_out.iter().map(|p| f64::from(p.margin)))
            .fold((0.0f64, 0.0f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
        let sft_max = sft_losses.iter().copied().fold(0.0f32, f32::max);
        let panels = [
            Panel {
                title: "SFT of the reference".into(),
                x_label: "step".into(),
                y_label: "completion NLL per token".into(),
                y_range: (0.0, f64::from(sft_max) * 1.05 + 1e-6),
                lines: vec![Line {
                    label: "packed".into(),
                    color: COLORS[3],
                    thick: true,
                    points: sft_losses
                        .iter()
                        .enumerate()
                        .map(|(i, &l)| (i as f64, f64::from(l)))
                        .collect(),
                }],
            },
            Panel {
                title: "held-out policy accuracy".into(),
                x_label: "step".into(),
                y_label: "log π(chosen) > log π(rejected)".into(),
                y_range: (0.5, 1.0),
                lines: lines(|p| f64::from(p.policy_accuracy)),
            },
            Panel {
                title: "held-out reward margin".into(),
                x_label: "step".into(),
                y_label: "mean margin".into(),
                y_range: (margins.0 * 1.1 - 1e-6, margins.1 * 1.1 + 1e-6),
                lines: lines(|p| f64::from(p.margin)),
            },
        ];
        std::fs::create_dir_all(dir)?;
        let path = PathBuf::from(dir).join("packed_transformer.png");
        plot::draw_panels(&path, &panels, (1500, 450))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
