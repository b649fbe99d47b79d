#!/usr/bin/env bash
# The GPU benchmarks of docs/performance.md in one command, on a machine with an NVIDIA GPU:
#
#   bash benches/gpu.sh PYTHON      # PYTHON: an interpreter with a CUDA build of torch and trl==1.16.0
#
# For each shape: ours on CUDA (f32, bf16) and on wgpu/Vulkan (f32, f16), each in its own
# process, then the PyTorch CUDA peers (benches/peers/gpu_peers.py) in the same dtypes; every
# result is one JSON line in gpu-bench.jsonl, and benches/peers/gpu_table.py prints the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: bash benches/gpu.sh PYTHON}
cargo build --release --example bench_logps --features flex,autodiff,wgpu,cuda,fusion
BIN=target/release/examples/bench_logps
OUT=gpu-bench.jsonl
: > "$OUT"
ours() { "$BIN" "$@" | head -1 >> "$OUT" || echo "{\"error\":\"ours $*\"}" >> "$OUT"; }
for shape in "8 4096 128256" "4 512 128256"; do
    for dtype in f32 bf16; do ours $shape --device cuda --dtype "$dtype" --reps 10; done
    for dtype in f32 f16; do ours $shape --device wgpu --dtype "$dtype" --reps 10; done
    for dtype in f32 bf16; do "$PY" benches/peers/gpu_peers.py $shape --dtype "$dtype" >> "$OUT"; done
done
# The LM head: hidden [4, 512, 2048], head [128256, 2048].
for dtype in f32 bf16; do ours 4 512 128256 --hidden 2048 --device cuda --dtype "$dtype" --reps 5; done
ours 4 512 128256 --hidden 2048 --device wgpu --dtype f32 --reps 5
for dtype in f32 bf16; do
    "$PY" benches/peers/gpu_peers.py 4 512 128256 --hidden 2048 --dtype "$dtype" >> "$OUT"
done
"$PY" benches/peers/gpu_table.py "$OUT"
