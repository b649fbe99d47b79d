#!/usr/bin/env python3
# Needs: python3 -m venv .venv && .venv/bin/pip install torch trl==1.16.0
# The PyTorch peers of the benchmarks in docs/performance.md.
"""The strongest PyTorch peer we can field on this CPU, for log-probs + DPO.

For N T V: times forward (no grad) and forward+backward of sequence log-probs + DPO with
  trl16      TRL 1.16's own `selective_log_softmax` (the function its trainers call)
  xent       F.cross_entropy(reduction='none'), ATen's fused log_softmax + nll
  compiled   torch.compile of the xent version (inductor C++), if it compiles
and prints the best of each phase, which implementation won, and every figure.
With --hidden H: the LM-head path instead, hidden [N*T, H] and weight [V, H]:
  trl_chunked  TRL 1.16's ChunkedLogProbFunction (chunked over vocab, recompute in backward)
  matmul_xent  logits = hidden @ W.T then xent.
With --only NAME only that implementation runs, so that the process's peak memory
(`peak_rss_gb`, inputs included) is its own.
Usage: torch_peers.py N T V [--hidden H] [--reps R] [--only NAME]
"""
import json, resource, statistics, sys, time
import torch
import torch.nn.functional as F

args = sys.argv[1:]
n, t, v = map(int, args[:3])
hidden = int(args[args.index("--hidden") + 1]) if "--hidden" in args else None
reps = int(args[args.index("--reps") + 1]) if "--reps" in args else 5
only = args[args.index("--only") + 1] if "--only" in args else None
torch.manual_seed(0)
labels = torch.randint(0, v, (n, t))
labels[torch.rand(n, t) < 0.1] = -100
ref = torch.randn(n)


def dpo(logps, beta=0.1):
    c, r = logps[: n // 2] - ref[: n // 2], logps[n // 2 :] - ref[n // 2 :]
    return -F.logsigmoid(beta * (c - r)).mean()


def median(fn):
    fn()
    ts = []
    for _ in range(reps):
        s = time.perf_counter(); fn(); ts.append(time.perf_counter() - s)
    return statistics.median(ts)


def shifted(lg):
    return lg[:, :-1], labels[:, 1:]


impls = {}
if hidden is None:
    logits = torch.randn(n, t, v)
    from trl.trainer.utils import selective_log_softmax

    def trl16(lg):
        lg, lb = shifted(lg)
        mask = lb != -100
        tok = selective_log_softmax(lg, lb.clamp(min=0))
        return (tok * mask).sum(-1)

    def xent(lg):
        lg, lb = shifted(lg)
        tok = -F.cross_entropy(lg.reshape(-1, v), lb.reshape(-1), reduction="none", ignore_index=-100)
        return tok.view(n, t - 1).sum(-1)

    impls = {"trl16": trl16, "xent": xent}
    try:
        if only not in (None, "compiled"):
            raise RuntimeError("skipped: --only")
        comp = torch.compile(xent)
        with torch.no_grad():
            comp(logits)
        x = logits.detach().requires_grad_(True); dpo(comp(x)).backward()
        impls["compiled"] = comp
    except Exception as e:  # inductor needs a C++ toolchain
        print(json.dumps({"compiled_error": str(e)[:200]}), file=sys.stderr)
    res = {}
    for name, f in impls.items():
        if only is not None and name != only:
            continue
        def fw():
            with torch.no_grad():
                dpo(f(logits)).item()
        def fb():
            x = logits.detach().requires_grad_(True)
            dpo(f(x)).backward()
        res[name] = (median(fw), median(fb))
else:
    from trl.kernels import ChunkedLogProbFunction
    h = torch.randn(n * t, hidden)
    w = torch.randn(v, hidden) / hidden ** 0.5
    tgt = torch.cat([labels[:, 1:], torch.full((n, 1), -100)], 1).reshape(-1)

    def trl_chunked(hs, ws):
        lp = ChunkedLogProbFunction.apply(hs, ws, None, tgt.clamp(min=0), 1.0, 4096, None, 1.0, ())[0]
        return (lp * (tgt != -100)).view(n, t).sum(-1)

    def matmul_xent(hs, ws):
        lg = hs @ ws.t()
        return (-F.cross_entropy(lg, tgt, reduction="none", ignore_index=-100)).view(n, t).sum(-1)

    impls = {"trl_chunked": trl_chunked, "matmul_xent": matmul_xent}
    res = {}
    for name, f in impls.items():
        if only is not None and name != only:
            continue
        def fw():
            with torch.no_grad():
                dpo(f(h, w)).item()
        def fb():
            hs, ws = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
            dpo(f(hs, ws)).backward()
        res[name] = (median(fw), median(fb))

if not res:  # e.g. --only compiled without a C++ toolchain, or an unknown name
    sys.exit(f"no implementation ran (--only {only})")
best_fw = min(res, key=lambda k: res[k][0])
best_fb = min(res, key=lambda k: res[k][1])
print(json.dumps({
    "shape": f"{n}x{t}x{v}", "hidden": hidden, "threads": torch.get_num_threads(),
    "best_forward_s": res[best_fw][0], "best_forward_impl": best_fw,
    "best_forward_backward_s": res[best_fb][1], "best_forward_backward_impl": best_fb,
    "all": {k: {"forward_s": a, "forward_backward_s": b} for k, (a, b) in res.items()},
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
}), flush=True)
