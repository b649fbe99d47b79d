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
//! `--chunk-rows C` sets `SequenceLogpsConfig::chunk_rows` for the LM head (default 256).
//!
//! `--dtype f16|bf16` casts the inputs (logits, or hidden states and head) to half precision
//! before timing (default `f32`).
//!
//! `peak_rss_bytes` is the process's peak resident memory (VmHWM), inputs included; run one
//! configuration per process to compare it.
//!
//! `--peer PYTHON` (off by default) then runs `benches/peers/torch_peers.py` with that
//! interpreter on the same shape, `--hidden` and `--reps`, one process per PyTorch
//! implementation, and prints a table after the JSON line: ours and each peer, forward and
//! forward+backward seconds, the ratio peer / ours and each process's peak memory.
//!
//! ```sh
//! cargo run --release --example bench_logps -- 2 64 1000 --peer /work/venv/bin/python
//! ```

#[allow(dead_code)] // shared by the examples; this one reads `--device`, `--reps`, …
#[path = "common/args.rs"]
mod args;
#[path = "common/bench.rs"]
mod bench;
#[path = "common/peer.rs"]
mod peer;

use std::error::Error;

use burn::tensor::{Device, FloatDType};

use bench::{Workload, median_seconds, peak_rss_bytes};

fn main() -> Result<(), Box<dyn Error>> {
    let usage = "bench_logps N T V [--reps R] [--device flex|ndarray|wgpu|cuda] [--hidden H [--head fused|unfused] [--chunk-rows C]] [--dtype f32|f16|bf16] [--peer PYTHON]";
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
    let allowed = [
        "reps",
        "device",
        "hidden",
        "head",
        "chunk-rows",
        "dtype",
        "peer",
    ];
    let flags = args::Flags::parse_from(usage, &allowed, &argv[3..])?;
    let reps: usize = flags.value("reps")?.unwrap_or(5);
    if reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let hidden: Option<usize> = flags.value("hidden")?;
    let chunk_rows: Option<usize> = flags.value("chunk-rows")?;
    let head = flags.text("head").unwrap_or("fused");
    let fused = match head {
        "fused" => true,
        "unfused" => false,
        other => return Err(format!("--head must be fused or unfused, got {other}").into()),
    };
    let dtype_name = flags.text("dtype").unwrap_or("f32");
    let dtype = match dtype_name {
        "f32" => FloatDType::F32,
        "f16" => FloatDType::F16,
        "bf16" => FloatDType::BF16,
        other => return Err(format!("--dtype must be f32, f16 or bf16, got {other}").into()),
    };
    let workload = |device: &Device| {
        let workload = match hidden {
            Some(width) => Workload::linear([n, t, v], width, fused, device),
            None => Workload::new([n, t, v], device),
        };
        Workload {
            chunk_rows,
            ..workload.with_dtype(dtype)
        }
    };
    let device = flags.device()?;
    let device_name = flags.text("device").unwrap_or("flex");
    if !device.supports_dtype(burn::tensor::DType::from(dtype)) {
        return Err(format!("{device_name} does not store {dtype_name}").into());
    }
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

    let peak = peak_rss_bytes();
    let head_json = hidden.map_or(String::new(), |h| {
        format!(r#""hidden":{h},"head":"{head}","#)
    });
    // The CPU kernels' instruction set (the flex and ndarray devices), for comparing runs.
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    let cpu_isa = format!("{:?}", burn_preference::diagnostics::cpu_kernel_isa()).to_lowercase();
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    let cpu_isa = "none";
    println!(
        r#"{{"shape":"{n}x{t}x{v}","device":"{device_name}","dtype":"{dtype_name}","cpu_isa":"{cpu_isa}",{head_json}"forward_s":{forward_s:.6},"forward_backward_s":{forward_backward_s:.6},"peak_rss_bytes":{}}}"#,
        peak.map_or("null".to_string(), |b| b.to_string())
    );

    if let Some(python) = flags.text("peer") {
        // After our timing, so that the peers' processes never overlap it.
        let peers = peer::run_peers(python, [n, t, v], hidden, reps);
        let ours = peer::Timing {
            forward_s,
            forward_backward_s,
            peak_rss_bytes: peak,
        };
        let what = hidden.map_or(String::new(), |h| format!(", hidden {h}, head {head}"));
        let peers_dtype = if dtype_name == "f32" {
            String::new()
        } else {
            format!(" (ours in {dtype_name}, the peers in f32)")
        };
        let title =
            format!("\n{n}x{t}x{v}{what}: medians of {reps} runs after a warm-up{peers_dtype}");
        peer::print_table(&title, &format!("ours ({device_name})"), &ours, &peers, "");
    }
    Ok(())
}
