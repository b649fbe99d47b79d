//! Sequence log-probs + DPO, forward and forward+backward, on the CPU backends.
//!
//! `cargo bench` runs a small shape; `BENCH_SHAPES=paper cargo bench` adds 8×256×32000 and
//! 4×512×128256 (the latter needs about 3 GiB). The LM-head path (`forward_linear`, hidden
//! states `[N, T, H]` and a weight `[V, H]`) is timed against materialising the logits on a
//! small shape. The side-by-side comparison with PyTorch is `examples/bench_logps.rs` (see
//! docs/performance.md).
//!
//! With `BURN_PREFERENCE_PEER=/path/to/python` (a Python with torch and trl), after divan's
//! own report the same shapes are timed once more here (medians of 5 runs after a warm-up,
//! as the peer times itself) and `benches/peers/torch_peers.py` runs on each of them: a table
//! of ours against each PyTorch peer, with the ratios peer / ours. Unset, one line says so.

#[allow(dead_code)]
#[path = "../examples/common/bench.rs"]
mod bench;
#[path = "../examples/common/peer.rs"]
mod peer;

use bench::{Workload, median_seconds, peak_rss_bytes};
use burn::tensor::Device;

fn main() {
    divan::main();
    peer_comparison();
}

/// Repetitions of our timing and the peer's, as divan's `sample_count`.
const PEER_REPS: usize = 5;

/// Ours and the PyTorch peers on the same shapes, in this run (see the crate docs above).
fn peer_comparison() {
    // `cargo test --benches` runs each bench once with `--test`; `--list` only lists them.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let Ok(python) = std::env::var("BURN_PREFERENCE_PEER") else {
        println!(
            "BURN_PREFERENCE_PEER unset: no PyTorch comparison (set it to a Python with torch and trl)"
        );
        return;
    };
    let note =
        " (ours: this whole bench process, every case so far; bench_logps --peer has it per shape)";
    for shape in shapes() {
        compare(&python, shape, None, |d| Workload::new(shape, d), note);
    }
    for case in linear_cases().into_iter().filter(|c| c.fused) {
        let workload = |d: &Device| Workload::linear(case.shape, case.width, true, d);
        compare(&python, case.shape, Some(case.width), workload, note);
    }
}

/// Our medians on flex: forward on `workload`, forward+backward on the same workload built on
/// the autodiff device (each phase with its own inputs, as `bench_logps`).
fn time_ours(
    workload: &impl Fn(&Device) -> Workload,
) -> Result<peer::Timing, Box<dyn std::error::Error>> {
    let device = Device::flex();
    let forward_s = {
        let plain = workload(&device);
        median_seconds(PEER_REPS, || plain.forward().map(|_| ()))?
    };
    let forward_backward_s = {
        let tracked = workload(&device.autodiff());
        median_seconds(PEER_REPS, || tracked.forward_backward())?
    };
    Ok(peer::Timing {
        forward_s,
        forward_backward_s,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Times ours, then the peers on the same shape, and prints the table.
fn compare(
    python: &str,
    [n, t, v]: [usize; 3],
    hidden: Option<usize>,
    workload: impl Fn(&Device) -> Workload,
    rss_note: &str,
) {
    let what = hidden.map_or(String::new(), |h| format!(", hidden {h}, fused head"));
    let title = format!("\n{n}x{t}x{v}{what}: medians of {PEER_REPS} runs after a warm-up");
    match time_ours(&workload) {
        Ok(ours) => {
            let peers = peer::run_peers(python, [n, t, v], hidden, PEER_REPS);
            peer::print_table(&title, "ours (flex)", &ours, &peers, rss_note);
        }
        Err(e) => println!("{title}\nours failed: {e}"),
    }
}

fn shapes() -> Vec<[usize; 3]> {
    let mut shapes = vec![[4, 64, 4096]];
    if std::env::var("BENCH_SHAPES").is_ok_and(|v| v == "paper") {
        shapes.extend([[8, 256, 32000], [4, 512, 128256]]);
    }
    shapes
}

#[allow(deprecated)] // burn 0.22 marks NdArray deprecated in favour of Flex.
fn devices() -> Vec<(&'static str, Device)> {
    let devices = [("flex", Device::flex())].into_iter();
    #[cfg(feature = "ndarray")]
    let devices = devices.chain([("ndarray", Device::ndarray())]);
    devices.collect()
}

fn cases() -> Vec<Case> {
    shapes()
        .into_iter()
        .flat_map(|shape| {
            devices().into_iter().map(move |(name, device)| Case {
                shape,
                name,
                device,
            })
        })
        .collect()
}

struct Case {
    shape: [usize; 3],
    name: &'static str,
    device: Device,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [n, t, v] = self.shape;
        write!(f, "{}/{n}x{t}x{v}", self.name)
    }
}

#[divan::bench(args = cases(), sample_count = 5, sample_size = 1)]
fn forward(bencher: divan::Bencher, case: &Case) {
    let inputs = Workload::new(case.shape, &case.device);
    bencher.bench_local(|| inputs.forward().expect("forward"));
}

#[divan::bench(args = cases(), sample_count = 5, sample_size = 1)]
fn forward_backward(bencher: divan::Bencher, case: &Case) {
    let inputs = Workload::new(case.shape, &case.device.clone().autodiff());
    bencher.bench_local(|| inputs.forward_backward().expect("forward and backward"));
}

/// `(shape, H, fused)`: the LM-head path, fused or with the logits materialised.
struct LinearCase {
    shape: [usize; 3],
    width: usize,
    fused: bool,
}

impl std::fmt::Display for LinearCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [n, t, v] = self.shape;
        let head = if self.fused { "fused" } else { "unfused" };
        write!(f, "flex/{n}x{t}x{v}/H{}/{head}", self.width)
    }
}

fn linear_cases() -> Vec<LinearCase> {
    [true, false]
        .map(|fused| LinearCase {
            shape: [4, 64, 4096],
            width: 256,
            fused,
        })
        .into()
}

#[divan::bench(args = linear_cases(), sample_count = 5, sample_size = 1)]
fn linear_forward_backward(bencher: divan::Bencher, case: &LinearCase) {
    let device = Device::flex().autodiff();
    let inputs = Workload::linear(case.shape, case.width, case.fused, &device);
    bencher.bench_local(|| inputs.forward_backward().expect("forward and backward"));
}
