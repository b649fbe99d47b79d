//! Times sequence log-probs + DPO on random inputs, forward and forward+backward, the way
//! `benches/peers/torch_peers.py` times the PyTorch peer: random normal logits `[N, T, V]`,
//! uniform labels with about 10 % ignored (−100), chosen rows first then rejected rows, random
//! reference log-probs. Prints one JSON line with medians of `--reps` runs after a warm-up.
//!
//! With `--hidden H` the log-probs come from hidden states `[N, T, H]` and an LM head
//! `[V, H]` instead: `--head fused` (default) takes `SequenceLogps::forward_linear`, which
//! never holds the logits, `--head unfused` materialises them with one matmul first.
//!
//! ```sh
//! cargo run --release --example bench_logps -- 8 256 32000
//! cargo run --release --example bench_logps --features wgpu -- 8 256 32000 --device wgpu
//! cargo run --release --example bench_logps -- 4 512 128256 --hidden 2048 --head unfused --reps 1
//! ```
//!
//! `peak_rss_bytes` is the process's peak resident memory (VmHWM), inputs included; run one
//! configuration per process to compare it.

#[allow(dead_code)] // shared by the examples; this one reads `--device`, `--reps`, …
#[path = "common/args.rs"]
mod args;
#[path = "common/bench.rs"]
mod bench;

use std::error::Error;
use std::time::Instant;

use burn::tensor::Device;

use bench::Workload;

fn median_seconds(
    reps: usize,
    mut run: impl FnMut() -> Result<(), Box<dyn Error>>,
) -> Result<f64, Box<dyn Error>> {
    run()?; // warm-up: allocations, kernel compilation
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn main() -> Result<(), Box<dyn Error>> {
    let usage = "bench_logps N T V [--reps R] [--device flex|ndarray|wgpu] [--hidden H [--head fused|unfused]]";
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let dims: Vec<usize> = argv
        .iter()
        .take(3)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("usage: {usage}"))?;
    let [n, t, v] = <[usize; 3]>::try_from(dims).map_err(|_| format!("usage: {usage}"))?;
    if n % 2 != 0 {
        return Err("N must be even: chosen rows first, then rejected rows".into());
    }
    let flags = args::Flags::parse_from(usage, &["reps", "device", "hidden", "head"], &argv[3..])?;
    let reps: usize = flags.value("reps")?.unwrap_or(5);
    let hidden: Option<usize> = flags.value("hidden")?;
    let head = flags.text("head").unwrap_or("fused");
    let fused = match head {
        "fused" => true,
        "unfused" => false,
        other => return Err(format!("--head must be fused or unfused, got {other}").into()),
    };
    let workload = |device: &Device| match hidden {
        Some(width) => Workload::linear([n, t, v], width, fused, device),
        None => Workload::new([n, t, v], device),
    };
    let device = flags.device()?;
    let device_name = flags.text("device").unwrap_or("flex");
    device.seed(0);

    // Each phase generates its own inputs so that only one copy of the logits is ever alive.
    let forward_s = {
        let inputs = workload(&device);
        median_seconds(reps, || inputs.forward().map(|_| ()))?
    };
    let forward_backward_s = {
        let tracked = workload(&device.clone().autodiff());
        median_seconds(reps, || tracked.forward_backward())?
    };

    let head = hidden.map_or(String::new(), |h| {
        format!(r#""hidden":{h},"head":"{head}","#)
    });
    println!(
        r#"{{"shape":"{n}x{t}x{v}","device":"{device_name}",{head}"forward_s":{forward_s:.6},"forward_backward_s":{forward_backward_s:.6},"peak_rss_bytes":{}}}"#,
        peak_rss_bytes().map_or("null".to_string(), |b| b.to_string())
    );
    Ok(())
}
