//! The PyTorch peers of `benches/peers/*.py`, run as subprocesses on the shape and
//! options we just timed, and a table of ours against each: forward and forward+backward
//! seconds, the ratio peer / ours (above 1: ours is faster) and the peak resident memory.
//!
//! Each peer implementation runs in its own process (`--only NAME`), so that its peak memory
//! is its own; ours is timed first, in the calling process, then the peers, one after the
//! other, on the same machine.

use std::path::PathBuf;
use std::process::Command;

/// Medians of one implementation, and its process's peak resident memory.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub forward_s: f64,
    pub forward_backward_s: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// One peer implementation's result, or why there is none (e.g. `torch.compile` without a
/// C++ toolchain, or a Python without torch).
pub struct PeerRun {
    pub name: &'static str,
    pub result: Result<Timing, String>,
    /// Torch's intra-op threads, as the peer reports them.
    pub threads: Option<u64>,
}

/// The peers of the logits path, and of the LM-head path (`--hidden`).
const LOGITS_PEERS: [&str; 3] = ["trl16", "xent", "compiled"];
const LINEAR_PEERS: [&str; 2] = ["trl_chunked", "matmul_xent"];

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches/peers")
        .join(name)
}

/// Runs every peer of the path (`hidden`: the LM-head path) on `[n, t, v]` with `reps`
/// repetitions, one process each, with the interpreter `python`.
pub fn run_peers(
    python: &str,
    [n, t, v]: [usize; 3],
    hidden: Option<usize>,
    reps: usize,
) -> Vec<PeerRun> {
    let names: &[&'static str] = match hidden {
        Some(_) => &LINEAR_PEERS,
        None => &LOGITS_PEERS,
    };
    let mut args: Vec<String> = [n, t, v].iter().map(|d| d.to_string()).collect();
    args.extend(["--reps".to_string(), reps.to_string()]);
    if let Some(h) = hidden {
        args.extend(["--hidden".to_string(), h.to_string()]);
    }
    run_script(python, "torch_peers.py", names, &args)
}

/// Runs each of `names` with `benches/peers/<script> <args> --only <name>`, one process
/// each, with the interpreter `python`.
pub fn run_script(
    python: &str,
    script_name: &str,
    names: &[&'static str],
    args: &[String],
) -> Vec<PeerRun> {
    names
        .iter()
        .map(|&name| {
            let (result, threads) = match run_one(python, script_name, args, name) {
                Ok((timing, threads)) => (Ok(timing), threads),
                Err(why) => (Err(why), None),
            };
            PeerRun {
                name,
                result,
                threads,
            }
        })
        .collect()
}

fn run_one(
    python: &str,
    script_name: &str,
    args: &[String],
    name: &str,
) -> Result<(Timing, Option<u64>), String> {
    let mut command = Command::new(python);
    command
        .arg(script(script_name))
        .args(args)
        .args(["--only", name]);
    let output = command
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "{}: {}",
            output.status,
            last.unwrap_or("no message")
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("no JSON line on its output")?;
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("unreadable JSON ({e}): {line}"))?;
    let entry = &json["all"][name];
    let seconds = |key: &str| {
        entry[key]
            .as_f64()
            .ok_or_else(|| format!("no `all.{name}.{key}` in {line}"))
    };
    // `ru_maxrss` is in KiB on Linux; the script prints it divided by 1e6.
    let peak_rss_bytes = json["peak_rss_gb"]
        .as_f64()
        .map(|gb| (gb * 1e6 * 1024.0) as u64);
    let timing = Timing {
        forward_s: seconds("forward_s")?,
        forward_backward_s: seconds("forward_backward_s")?,
        peak_rss_bytes,
    };
    Ok((timing, json["threads"].as_u64()))
}

fn gigabytes(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".to_string(), |b| format!("{:.3} GB", b as f64 / 1e9))
}

/// The table: ours (`label`) first, then each peer with its ratios to ours. `rss_note`
/// qualifies our peak memory when it is not one configuration's alone.
pub fn print_table(title: &str, label: &str, ours: &Timing, peers: &[PeerRun], rss_note: &str) {
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let threads = peers.iter().find_map(|p| p.threads);
    println!("{title}");
    if cfg!(debug_assertions) {
        println!("(a debug build of ours: its timings mean little; build with --release)");
    }
    println!(
        "ratio = peer / ours (> 1: ours faster); ours on {cores} cores, torch {} threads; \
         peak RSS per process{rss_note}",
        threads.map_or("?".to_string(), |t| t.to_string()),
    );
    println!(
        "{:<22} {:>11} {:>8} {:>11} {:>8} {:>10}",
        "impl", "forward_s", "ratio", "fwd+bwd_s", "ratio", "peak_rss"
    );
    println!(
        "{:<22} {:>11.6} {:>8} {:>11.6} {:>8} {:>10}",
        label,
        ours.forward_s,
        "",
        ours.forward_backward_s,
        "",
        gigabytes(ours.peak_rss_bytes)
    );
    for peer in peers {
        let name = format!("torch {}", peer.name);
        match &peer.result {
            Ok(p) => println!(
                "{:<22} {:>11.6} {:>7.2}x {:>11.6} {:>7.2}x {:>10}",
                name,
                p.forward_s,
                p.forward_s / ours.forward_s,
                p.forward_backward_s,
                p.forward_backward_s / ours.forward_backward_s,
                gigabytes(p.peak_rss_bytes)
            ),
            Err(why) => println!("{name:<22} did not run: {why}"),
        }
    }
}
