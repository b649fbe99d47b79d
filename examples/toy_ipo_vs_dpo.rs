//! Why IPO exists: the IPO paper's toy (Azar et al. 2023, Fig. 1).
//!
//! Three actions with a total order a ≻ b ≻ c, seen as the pairs D1 = {(a,b), (b,c), (a,c)}.
//! Every preference is deterministic, so DPO's optimal margin is infinite: π(a) → 1 whatever β.
//! IPO pulls each margin to the finite target 1/(2τ) and stops at
//! `θ_a − θ_b = θ_b − θ_c = 1/(3τ)`: a larger τ keeps the policy closer to the
//! uniform reference.
//!
//! ```sh
//! cargo run --release --example toy_ipo_vs_dpo                      # both losses, τ ∈ {0.1, 0.5, 1}
//! cargo run --release --example toy_ipo_vs_dpo -- --out docs        # … and docs/toy_ipo_vs_dpo.png
//! cargo run --release --example toy_ipo_vs_dpo -- --loss ipo --tau 0.5 --sampling uniform --seed 1
//! cargo run --release --example toy_ipo_vs_dpo --features wgpu -- --device wgpu --steps 2000
//! ```
//!
//! Each batch of 9 holds every pair of D1 three times (`--sampling balanced`, the default), so
//! every step follows the gradient of the equally weighted objective and the final IPO
//! probabilities land on the closed form. `--sampling uniform` draws the 9 pairs independently
//! instead: the same objective in expectation, but Adam at learning rate 0.01 then jitters
//! around the optimum by up to about ±0.015 in probability.
//!
//! Each step is a handful of tiny tensor operations, so a GPU backend is bound by kernel
//! launches: on wgpu with Mesa's lavapipe CPU driver one 18 000-step run takes about 5 minutes
//! (the CPU backends take about 4 s); shorten it with `--steps`.
//!
//! Prints one JSON line per run, `{"loss":"ipo","tau":0.5,"steps":18000,"probs":[..]}`; with
//! `--out DIR` also writes `DIR/toy_ipo_vs_dpo.png`, one panel per τ.

#[path = "common/args.rs"]
mod args;
#[path = "common/plot.rs"]
mod plot;
#[allow(dead_code)]
#[path = "common/rng.rs"]
mod rng;
#[path = "common/toy.rs"]
mod toy;

use std::error::Error;
use std::path::PathBuf;

use plot::{COLORS, Line, Panel};
use toy::{ToyLoss, ToySetup};

const USAGE: &str = "toy_ipo_vs_dpo [--loss ipo|dpo] [--tau X] [--steps N] [--seed S] [--out DIR] \
                     [--sampling balanced|uniform] [--device flex|ndarray|wgpu]";

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(
        USAGE,
        &["loss", "tau", "steps", "seed", "out", "sampling", "device"],
    )?;
    let device = flags.device()?.autodiff();
    let losses = match flags.text("loss") {
        None => vec![ToyLoss::Ipo, ToyLoss::Dpo],
        Some("ipo") => vec![ToyLoss::Ipo],
        Some("dpo") => vec![ToyLoss::Dpo],
        Some(other) => {
            return Err(format!("--loss {other}: expected ipo or dpo\nusage: {USAGE}").into());
        }
    };
    let balanced = match flags.text("sampling") {
        None | Some("balanced") => true,
        Some("uniform") => false,
        Some(other) => {
            return Err(format!("--sampling {other}: expected balanced or uniform").into());
        }
    };
    let taus = match flags.value::<f64>("tau")? {
        Some(tau) => vec![tau],
        None => vec![0.1, 0.5, 1.0],
    };

    let mut panels = Vec::new();
    for &tau in &taus {
        let mut lines = Vec::new();
        for &loss in &losses {
            let mut setup = ToySetup::paper(loss, tau);
            setup.steps = flags.value("steps")?.unwrap_or(setup.steps);
            setup.seed = flags.value("seed")?.unwrap_or(setup.seed);
            setup.balanced = balanced;
            let run = toy::train(&setup, &device)?;
            let probs = run.probs.map(|p| format!("{p:.6}")).join(",");
            println!(
                r#"{{"loss":"{}","tau":{tau},"steps":{},"probs":[{probs}]}}"#,
                loss.name(),
                setup.steps
            );
            if loss == ToyLoss::Ipo {
                let optimum = toy::ipo_optimum(tau).map(|p| format!("{p:.6}")).join(",");
                eprintln!("IPO closed form for τ = {tau}: [{optimum}]");
            }
            for (action, name) in ["a", "b", "c"].iter().enumerate() {
                lines.push(Line {
                    label: format!("{} π({name})", loss.name().to_uppercase()),
                    color: COLORS[action],
                    thick: loss == ToyLoss::Ipo,
                    points: run
                        .history
                        .iter()
                        .map(|(step, p)| (*step as f64, p[action]))
                        .collect(),
                });
            }
        }
        panels.push(Panel {
            title: format!("τ = {tau}"),
            x_label: "step".into(),
            y_label: "action probability".into(),
            y_range: (0.0, 1.0),
            lines,
        });
    }

    if let Some(dir) = flags.text("out") {
        std::fs::create_dir_all(dir)?;
        let path = PathBuf::from(dir).join("toy_ipo_vs_dpo.png");
        plot::draw_panels(&path, &panels, (420 * panels.len() as u32, 380))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
