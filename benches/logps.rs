//! Sequence log-probs + DPO, forward and forward+backward, on the CPU backends.
//!
//! `cargo bench` runs a small shape; `BENCH_SHAPES=paper cargo bench` adds 8×256×32000 and
//! 4×512×128256 (the latter needs about 3 GiB). The LM-head path (`forward_linear`, hidden
//! states `[N, T, H]` and a weight `[V, H]`) is timed against materialising the logits on a
//! small shape. The side-by-side comparison with PyTorch is `examples/bench_logps.rs` (see
//! docs/performance.md).

#[allow(dead_code)]
#[path = "../examples/common/bench.rs"]
mod bench;

use bench::Workload;
use burn::tensor::Device;

fn main() {
    divan::main();
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
