#!/usr/bin/env python3
# Needs: python3 -m venv .venv && .venv/bin/pip install torch trl==1.16.0  (CUDA build of torch)
"""The PyTorch CUDA peers of the GPU benchmarks in docs/performance.md, for log-probs + DPO.

For N T V on one CUDA GPU, in --dtype f32|bf16 (logits or hidden states/head in that dtype):
  trl16        TRL 1.16's `selective_log_softmax` (its Triton kernel on CUDA)
  xent         F.cross_entropy(reduction='none') on the logits
  readpass     one read of the logits (`amax` over the vocabulary): the HBM floor
With --hidden H, the LM-head path: hidden [N*T, H] and head [V, H]:
  trl_chunked  TRL 1.16's ChunkedLogProbFunction (its fused LM head)
  matmul_xent  logits = hidden @ W.T then F.cross_entropy
Times forward (no grad) and forward+backward (medians of --reps, CUDA-synchronised) and the
peak CUDA memory of each, one JSON line. --only NAME runs one implementation.
Usage: gpu_peers.py N T V [--hidden H] [--dtype f32|bf16] [--reps R] [--only NAME]
"""
import json, statistics, sys, time
import torch
import torch.nn.functional as F

args = sys.argv[1:]
n, t, v = map(int, args[:3])
opt = lambda k, d: type(d)(args[args.index(k) + 1]) if k in args else d
hidden, reps, only = opt("--hidden", 0) or None, opt("--reps", 10), opt("--only", "")
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[opt("--dtype", "f32")]
dev = torch.device("cuda")
torch.manual_seed(0)
labels = torch.randint(0, v, (n, t), device=dev)
labels[torch.rand(n, t, device=dev) < 0.1] = -100
ref = torch.randn(n, device=dev)


def dpo(logps, beta=0.1):
    c, r = logps[: n // 2] - ref[: n // 2], logps[n // 2 :] - ref[n // 2 :]
    return -F.logsigmoid(beta * (c - r)).mean()


def timed(fn):
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize(); s = time.perf_counter(); fn(); torch.cuda.synchronize()
        ts.append(time.perf_counter() - s)
    return statistics.median(ts), (torch.cuda.max_memory_allocated() - base) / 1e9


res = {}
if hidden is None:
    logits = torch.randn(n, t, v, device=dev, dtype=dtype)
    from trl.trainer.utils import selective_log_softmax

    def shifted(lg):
        return lg[:, :-1], labels[:, 1:]

    def trl16(lg):
        lg, lb = shifted(lg)
        mask = lb != -100
        return (selective_log_softmax(lg, lb.clamp(min=0)).float() * mask).sum(-1)

    def xent(lg):
        lg, lb = shifted(lg)
        tok = -F.cross_entropy(lg.reshape(-1, v), lb.reshape(-1), reduction="none", ignore_index=-100)
        return tok.float().view(n, t - 1).sum(-1)

    for name, f in {"trl16": trl16, "xent": xent}.items():
        if only and name != only:
            continue
        def fw():
            with torch.no_grad():
                dpo(f(logits))
        def fb():
            x = logits.detach().requires_grad_(True)
            dpo(f(x)).backward()
        (a, ma), (b, mb) = timed(fw), timed(fb)
        res[name] = {"forward_s": a, "forward_backward_s": b, "peak_gb": max(ma, mb)}
    if not only or only == "readpass":
        a, m = timed(lambda: logits.amax(-1))
        res["readpass"] = {"forward_s": a, "forward_backward_s": None, "peak_gb": m,
                           "gb_per_s": logits.numel() * logits.element_size() / a / 1e9}
else:
    from trl.kernels import ChunkedLogProbFunction
    h = torch.randn(n * t, hidden, device=dev, dtype=dtype)
    w = (torch.randn(v, hidden, device=dev) / hidden ** 0.5).to(dtype)
    tgt = torch.cat([labels[:, 1:], torch.full((n, 1), -100, device=dev)], 1).reshape(-1)

    def trl_chunked(hs, ws):
        lp = ChunkedLogProbFunction.apply(hs, ws, None, tgt.clamp(min=0), 1.0, 4096, None, 1.0, ())[0]
        return (lp.float() * (tgt != -100)).view(n, t).sum(-1)

    def matmul_xent(hs, ws):
        lg = hs @ ws.t()
        return (-F.cross_entropy(lg, tgt, reduction="none", ignore_index=-100)).float().view(n, t).sum(-1)

    for name, f in {"trl_chunked": trl_chunked, "matmul_xent": matmul_xent}.items():
        if only and name != only:
            continue
        def fw():
            with torch.no_grad():
                dpo(f(h, w))
        def fb():
            hs, ws = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
            dpo(f(hs, ws)).backward()
        try:
            (a, ma), (b, mb) = timed(fw), timed(fb)
            res[name] = {"forward_s": a, "forward_backward_s": b, "peak_gb": max(ma, mb)}
        except torch.OutOfMemoryError as e:
            res[name] = {"error": str(e)[:120]}
            torch.cuda.empty_cache()

print(json.dumps({"shape": f"{n}x{t}x{v}", "hidden": hidden, "dtype": str(dtype),
                  "gpu": torch.cuda.get_device_name(), "all": res}), flush=True)
