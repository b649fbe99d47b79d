#!/usr/bin/env python3
"""Ratios of the GPU run (benches/gpu.sh's gpu-bench.jsonl): for each shape, head and dtype,
ours on each device against each PyTorch CUDA peer (peer time / ours: above 1 we are faster),
and our forward against one read pass of the logits."""
import json, sys

ours, peers = [], []
for line in open(sys.argv[1]):
    rec = json.loads(line)
    (peers if "all" in rec else ours).append(rec)
dtypes = {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.float16": "f16"}
for o in ours:
    if "error" in o:
        print(o["error"]); continue
    key = (o["shape"], o.get("hidden"), o["dtype"])
    match = [p for p in peers if (p["shape"], p["hidden"], dtypes[p["dtype"]]) == key]
    print(f'\n{o["shape"]} hidden={o.get("hidden")} {o["dtype"]} ours on {o["device"]}: '
          f'forward {o["forward_s"]:.4f} s, fwd+bwd {o["forward_backward_s"]:.4f} s')
    for p in match:
        for name, r in p["all"].items():
            if "error" in r:
                print(f"  {name}: {r['error']}"); continue
            if name == "readpass":
                print(f'  read pass {r["forward_s"]:.4f} s ({r["gb_per_s"]:.0f} GB/s): '
                      f'ours forward = {o["forward_s"] / r["forward_s"]:.2f}x the read pass')
                continue
            print(f'  {name}: forward {r["forward_s"]:.4f} s ({r["forward_s"] / o["forward_s"]:.2f}x), '
                  f'fwd+bwd {r["forward_backward_s"]:.4f} s ({r["forward_backward_s"] / o["forward_backward_s"]:.2f}x), '
                  f'peak {r["peak_gb"]:.2f} GB')
