#!/usr/bin/env python3
# Needs: python3 -m venv .venv && .venv/bin/pip install torch trl==1.16.0 && .venv/bin/pip install --no-deps liger-kernel
# The PyTorch peers of examples/bench_grpo.rs (docs/performance.md).
"""One GRPO step's log-probs + loss from hidden states, timed forward (no grad) and forward+backward.

N completions of T tokens (lengths uniform in [T/2, T], right-padded), hidden states [N, T, H] at the completion
positions, an LM head [V, H] scaled so that the logits are standard normal, normal advantages, the given loss_type and
beta (random reference log-probs when beta > 0), per-token entropies computed (TRL always computes them):
  trl16   TRL 1.16's own GRPOTrainer._compute_loss on a model patched with TRL's own add_fused_lm_head (the fused,
          tiled LM head its trainer uses); the model's backbone returns the hidden states, after a 1-token prompt.
  liger   Liger-Kernel's LigerFusedLinearGRPOLoss (chunked over the batch, the logits of one chunk at a time),
          torch.compile'd (its default) when inductor can compile here, else eager (said on stderr).
  matmul  logits = hidden @ W.T, log_softmax, gather, entropy, then TRL's per-token dapo/grpo formula in plain torch.
With --only NAME only that implementation runs, so that the process's peak memory (peak_rss_gb, inputs included) is its
own.
Usage: grpo_peers.py N T V H [--reps R] [--loss TYPE] [--beta B] [--only NAME]
"""
import json, resource, statistics, sys, tempfile, time, warnings
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore")
args = sys.argv[1:]
n, t, v, h = map(int, args[:4])
flag = lambda name, default: args[args.index(name) + 1] if name in args else default
reps = int(flag("--reps", 5))
loss_type = flag("--loss", "dapo")
beta = float(flag("--beta", 0.0))
only = flag("--only", None)
torch.manual_seed(0)
hidden = torch.randn(n, t, h)
weight = torch.randn(v, h) / h ** 0.5
ids = torch.randint(0, v, (n, t))
lengths = torch.randint(t // 2, t + 1, (n,))
mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
advantages = torch.randn(n)
reference = torch.empty(n, t).uniform_(-12.0, -8.0) if beta != 0.0 else None


def median(fn):
    fn()
    ts = []
    for _ in range(reps):
        s = time.perf_counter(); fn(); ts.append(time.perf_counter() - s)
    return statistics.median(ts)


def trl16():
    """TRL's GRPOTrainer._compute_loss, made without __init__ (which wants a dataset and a Hub model), its attributes
    as __init__ sets them from a real GRPOConfig, the model patched with TRL's add_fused_lm_head as __init__ does."""
    from accelerate import Accelerator
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    class Config(PretrainedConfig):
        model_type = "grpo_peer"

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = None

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return BaseModelOutput(last_hidden_state=self.hidden)

    class Model(PreTrainedModel):
        config_class = Config
        base_model_prefix = "model"

        def __init__(self):
            super().__init__(Config(vocab_size=v, hidden_size=h))
            self.model = Backbone()
            self.lm_head = nn.Linear(h, v, bias=False)
            with torch.no_grad():
                self.lm_head.weight.copy_(weight)

        def get_output_embeddings(self):
            return self.lm_head

    config = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none", num_generations=2,
                        per_device_train_batch_size=2, loss_type=loss_type, beta=beta, max_completion_length=t)
    model = Model()
    add_fused_lm_head(model, temperature=config.temperature, cast_lm_head_to_fp32=config.cast_lm_head_to_fp32,
                      outputs=("log_probs", "entropy"))
    model.train(True)
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.args, trainer.model, trainer.accelerator = config, model, Accelerator(cpu=True)
    trainer.max_completion_length, trainer.temperature = t, config.temperature
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = False, config.vllm_importance_sampling_correction
    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.aux_loss_enabled = False
    trainer.importance_sampling_level = config.importance_sampling_level
    trainer.off_policy_mask_threshold = config.off_policy_mask_threshold
    trainer.top_entropy_quantile = config.top_entropy_quantile
    trainer.entropy_coef, trainer.use_adaptive_entropy, trainer._entropy_bonus_enabled = 0.0, False, False
    trainer.epsilon_low = config.epsilon
    trainer.epsilon_high = config.epsilon_high if config.epsilon_high is not None else config.epsilon
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.current_gradient_accumulation_steps = 1
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": ids, "completion_mask": mask, "advantages": advantages,
        "num_items_in_batch": mask.sum(),
    }
    if reference is not None:
        inputs["ref_per_token_logps"] = reference

    def run(grad):
        # The prompt's one hidden state, then the completion positions': the head scores the T labelled positions.
        hs = torch.cat([torch.zeros(n, 1, h), hidden], 1)
        hs = hs.requires_grad_(True) if grad else hs
        model.model.hidden = hs
        return trainer._compute_loss(model, inputs), hs

    def fw():
        with torch.no_grad():
            run(False)[0].item()

    def fb():
        model.zero_grad(set_to_none=True)
        loss, hs = run(True)
        loss.backward()
        assert hs.grad is not None and model.lm_head.weight.grad is not None

    return fw, fb


def liger():
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    def make(compiled):
        return LigerFusedLinearGRPOLoss(beta=beta, compiled=compiled, use_ref_model=False, loss_type=loss_type,
                                        max_completion_length=t)

    loss_fn = make(True)
    try:  # inductor needs a C++ toolchain
        loss_fn(hidden, weight, ids, mask, advantages, ref_per_token_logps=reference)
    except Exception as e:
        print(json.dumps({"liger_compiled_error": str(e)[:200]}), file=sys.stderr)
        loss_fn = make(False)

    def fw():
        with torch.no_grad():
            loss_fn(hidden, weight, ids, mask, advantages, ref_per_token_logps=reference)[0].item()

    def fb():
        hs, ws = hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True)
        loss_fn(hs, ws, ids, mask, advantages, ref_per_token_logps=reference)[0].backward()

    return fw, fb


def matmul():
    if loss_type not in ("dapo", "grpo", "bnpo"):
        raise SystemExit(f"matmul implements dapo, grpo and bnpo, not {loss_type}")
    m = mask.float()

    def loss_of(hs, ws):
        logits = hs @ ws.t()
        logp = logits.log_softmax(-1)
        per_token_logps = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        coef = torch.exp(per_token_logps - per_token_logps.detach())
        a = advantages.unsqueeze(1)
        per_token = -torch.min(coef * a, torch.clamp(coef, 0.8, 1.2) * a)
        if reference is not None:
            d = reference - per_token_logps
            per_token = per_token + beta * (torch.exp(d) - d - 1)
        if loss_type == "grpo":
            loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
        else:
            loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
        return loss, (entropy * m).sum() / m.sum()

    def fw():
        with torch.no_grad():
            loss_of(hidden, weight)[0].item()

    def fb():
        hs, ws = hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True)
        loss_of(hs, ws)[0].backward()

    return fw, fb


res = {}
for name, make in {"trl16": trl16, "liger": liger, "matmul": matmul}.items():
    if only is not None and name != only:
        continue
    fw, fb = make()
    res[name] = (median(fw), median(fb))

if not res:
    sys.exit(f"no implementation ran (--only {only})")
best_fw = min(res, key=lambda k: res[k][0])
best_fb = min(res, key=lambda k: res[k][1])
print(json.dumps({
    "shape": f"{n}x{t}x{v}", "hidden": h, "loss_type": loss_type, "beta": beta, "threads": torch.get_num_threads(),
    "best_forward_s": res[best_fw][0], "best_forward_impl": best_fw,
    "best_forward_backward_s": res[best_fb][1], "best_forward_backward_impl": best_fb,
    "all": {k: {"forward_s": a, "forward_backward_s": b} for k, (a, b) in res.items()},
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
}), flush=True)
