//! Times sequence log-probs + DPO on random inputs, forward and forward+backward, the way
//! `shared/bench/torch_ref.py` times the PyTorch peer: random normal logits `[N, T, V]`,
//! uniform labels with about 10 % ignored (−100), chosen rows first then rejected rows, random
//! reference log-probs. Prints one JSON line with medians of `--reps` runs after a warm-up.
//!
//! ```sh
//! cargo run --release --example bench_logps -- 8 256 32000
//! cargo run --release --example bench_logps --features wgpu -- 8 256 32000 --device wgpu
//! ```
//!
//! `peak_rss_bytes` is the process's peak resident memory (VmHWM), inputs included.

#[allow(dead_code)] // shared by the examples; this one reads `--device` and `--reps`
#[path = "common/args.rs"]
mod args;
#[path = "common/bench.rs"]
mod bench;

use std::error::Error;
use std::time::Instant;

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
    let usage = "bench_logps N T V [--reps R] [--device flex|ndarray|wgpu]";
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
    let flags = args::Flags::parse_from(usage, &["reps", "device"], &argv[3..])?;
    let reps: usize = flags.value("reps")?.unwrap_or(5);
    let device = flags.device()?;
    let device_name = flags.text("device").unwrap_or("flex");
    device.seed(0);

    // Each phase generates its own inputs so that only one copy of the logits is ever alive.
    let forward_s = {
        let inputs = Workload::new([n, t, v], &device);
        median_seconds(reps, || inputs.forward().map(|_| ()))?
    };
    let forward_backward_s = {
        let tracked = Workload::new([n, t, v], &device.clone().autodiff());
        median_seconds(reps, || tracked.forward_backward())?
    };

    println!(
        r#"{{"shape":"{n}x{t}x{v}","device":"{device_name}","forward_s":{forward_s:.6},"forward_backward_s":{forward_backward_s:.6},"peak_rss_bytes":{}}}"#,
        peak_rss_bytes().map_or("null".to_string(), |b| b.to_string())
    );
    Ok(())
}
