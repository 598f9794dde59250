"""Model FLOP utilisation (MFU) of one RLHF step against this machine's measured matmul rate.

    python benchmarks/bench_flops.py [--repeats 5]

1. The machine's fp32 matmul throughput on one thread: ``(1024 x 1024) @ (1024 x 1024)``
   (2 * 1024^3 FLOPs), timed in the same run, interleaved with the steps below.
2. One step (batch 64, exactly 16 response tokens, 4 PPO epochs x 2 minibatches) for two
   presets with randomly initialised models: "toy" (the shipped shape: 3 layers, 4 heads,
   width 128, ~0.6 M parameters per model) and "small" (6 layers, 8 heads, width 384,
   ~10.7 M parameters per model); context 128, vocabulary 64.
3. The step's FLOPs, counted from the shapes (matmuls only; layer norms, GELU, softmax and Adam
   are not counted, as is usual for MFU): a forward costs ``2 N`` per token, with ``N`` the
   ``12 L d^2`` block weights (plus ``V d`` where logits are computed), plus ``4 L d`` per
   attended key for attention scores and values (causal: ``s`` keys at position ``s``); a
   trained token costs 3x its forward (``6 N``). Generation runs the prompt once and each new
   token once (KV cache), rollout forwards (reward, reference, critic) and the PPO epochs
   (actor and critic, forward and backward) run the full sequence of ``P + T`` tokens.

MFU = counted FLOPs / measured seconds / matmul rate, for the whole step and per phase (from the
trainer's phase timers). The rate is this run's own: utilisation is a share of what this CPU's
matmul reaches on one thread, so it compares across machines where GFLOP/s do not. Target:
>= 20 % at "small".

4. Where the toy PPO phase's time goes (``ppo_budget.py``): its self time by kernel group under
   the profiler, its matmuls replayed alone, the *kernel ceiling* (the utilisation if nothing
   but the model's own kernels ran) and the ``aten::copy_`` calls of one toy step by caller.

Writes ``results/flops.json`` and prints the README's rows.
"""

from __future__ import annotations

import argparse
import time

import _common
import torch
from ppo_budget import copy_calls, format_budget, ppo_budget

from rlhf_edu.model import GPT, GPTConfig
from rlhf_edu.models import RewardModel, build_models
from rlhf_edu.task import PROMPTS
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

PRESETS = {
    "toy": GPTConfig(n_layer=3, n_head=4, n_embd=128, vocab_size=64, block_size=128),
    "small": GPTConfig(n_layer=6, n_head=8, n_embd=384, vocab_size=64, block_size=128),
}
BATCH, RESPONSE_LEN, EPOCHS = 64, 16, 4
PROMPT_LEN = 1 + max(len(p.split()) for p in PROMPTS)  # <bos> + the longest prompt: the batch
MATMUL_N = 1024


def body_flops(c: GPTConfig, rows: int, keys: list[int]) -> float:
    """Forward FLOPs of the blocks for ``rows`` sequences whose queries see ``keys[i]`` keys."""
    weights = 2 * 12 * c.n_layer * c.n_embd ** 2 * len(keys)
    attention = 4 * c.n_layer * c.n_embd * sum(keys)
    return rows * (weights + attention)


def step_flops(c: GPTConfig, B: int = BATCH, P: int = PROMPT_LEN, T: int = RESPONSE_LEN,
               epochs: int = EPOCHS) -> dict[str, float]:
    """FLOPs of each phase of one step (no <eos> stopping: every row has ``T`` tokens)."""
    S = P + T
    full = list(range(1, S + 1))  # a full-sequence forward: position s sees s keys
    lm_head = 2 * c.vocab_size * c.n_embd  # logits of one position
    scalar_head = 2 * c.n_embd
    generate = (body_flops(c, B, list(range(1, P + 1)))  # the prompt, once
                + body_flops(c, B, list(range(P + 1, S)))  # each new token but the last
                + B * T * lm_head)
    score = body_flops(c, B, full) + B * scalar_head
    reference = body_flops(c, B, full) + B * T * lm_head
    values = body_flops(c, B, full) + B * T * scalar_head
    ppo = epochs * 3 * (2 * body_flops(c, B, full) + B * T * (lm_head + scalar_head))
    return {"2_generate": generate, "3_score": score, "4_reference_kl": reference,
            "5_values_gae": values, "6_ppo": ppo}


def matmul_seconds(a: torch.Tensor, b: torch.Tensor, reps: int = 10) -> float:
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - start) / reps


def readme_row(rows: list[dict], rate: float, info: dict) -> str:
    """The README's utilisation row: per preset, the whole step and the phases as a share of
    the matmul rate measured in the same run."""
    def preset(r: dict) -> str:
        def pct(key: str) -> str:
            return f"{100 * r[key]:.0f} %"
        return (f"{r['preset']} ({r['params'] / 1e6:.1f} M): step {pct('mfu')} (generation "
                f"{pct('mfu_2_generate')}, reference forward {pct('mfu_4_reference_kl')}, "
                f"PPO phase {pct('mfu_6_ppo')})")
    return (f"| model FLOP utilisation, as a share of the {MATMUL_N}³ fp32 matmul rate measured "
            f"in the same run ({rate / 1e9:.0f} GFLOP/s on one thread"
            f"{_common.load_note(info)}) | "
            + "; ".join(preset(r) for r in rows) + " |")


def budget_row(budget: dict, copies: dict[str, int]) -> str:
    """The README's row on where the toy PPO phase's time goes."""
    ms, total = budget["self_ms"], budget["profiled_wall_s"] * 1e3
    kernels = sum(ms.get(g, 0) for g in ("matmul", "attention", "gelu", "layer_norm", "adam"))
    return (f"| toy PPO phase: where the time goes (profiled), kernel ceiling, copies per step | "
            f"matmuls {ms['matmul'] / total:.0%}, attention + GELU + layer norm + Adam "
            f"{(kernels - ms['matmul']) / total:.0%}, other ops and Python "
            f"{1 - kernels / total:.0%}; its matmuls alone run at "
            f"{budget['matmul_alone_rate_share']:.0%} of the 1024³ rate; utilisation "
            f"{budget['utilisation']:.0%}, ceiling with only the model's kernels "
            f"{budget['kernel_ceiling']:.0%}; {copies['total']} `aten::copy_` per step, "
            f"{copies.get('fused Adam step counters', 0)} of them fused Adam's step counters and "
            f"{copies.get('addmm bias into output', 0)} `addmm`'s bias writes |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    info = _common.setup()
    torch.manual_seed(0)
    trainers, params = {}, {}
    for name, c in PRESETS.items():
        models = build_models(sft=GPT(c), reward=RewardModel(GPT(c)))
        params[name] = models.actor.gpt.num_params()
        trainers[name] = RLHFTrainer(PPOConfig(batch_size=BATCH, response_len=RESPONSE_LEN,
                                               stop_at_eos=False, ppo_epochs=EPOCHS), models)
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    history: dict[str, list[dict]] = {name: [] for name in PRESETS}
    matmul: list[float] = []
    fns = {"matmul": lambda: matmul.append(matmul_seconds(a, b))}
    fns.update({name: (lambda name=name: history[name].append(trainers[name].step()))
                for name in PRESETS})
    _common.interleaved(fns, repeats=args.repeats)
    rate = 2 * MATMUL_N ** 3 / _common.median(matmul[1:])  # FLOP/s, warm-up dropped

    rows = []
    for name, c in PRESETS.items():
        flops = step_flops(c)
        timed = history[name][1:]
        row = {"preset": name, "params": params[name], "shape": f"{c.n_layer}x{c.n_embd}",
               "step_s": _common.median([m["time_step"] for m in timed]),
               "step_gflop": sum(flops.values()) / 1e9}
        row["gflop_s"] = row["step_gflop"] / row["step_s"]
        row["mfu"] = row["gflop_s"] * 1e9 / rate
        for phase, f in flops.items():
            seconds = _common.median([m[f"time_{phase}"] for m in timed])
            row[f"mfu_{phase}"] = f / seconds / rate
        rows.append(row)

    print(f"\nModel FLOP utilisation of one RLHF step (batch {BATCH}, prompt {PROMPT_LEN}, "
          f"{RESPONSE_LEN} new tokens, {EPOCHS} PPO epochs), median of {args.repeats} steps")
    print(_common.machine_line(info))
    print(f"measured fp32 matmul ({MATMUL_N}^3, 1 thread, in this run): {rate / 1e9:.1f} "
          "GFLOP/s; every MFU below is a share of it")
    print(_common.format_table(rows, [
        ("preset", "preset", "s"), ("shape", "layers x width", "s"),
        ("params", "params/model", ",d"), ("step_gflop", "GFLOP/step", ".1f"),
        ("step_s", "s/step", ".3f"), ("gflop_s", "GFLOP/s", ".1f"), ("mfu", "MFU", ".1%"),
        ("mfu_2_generate", "MFU gen.", ".1%"), ("mfu_4_reference_kl", "MFU ref. fwd", ".1%"),
        ("mfu_6_ppo", "MFU PPO", ".1%")]))
    print("README row:\n" + readme_row(rows, rate, info))
    small = next(r for r in rows if r["preset"] == "small")
    met = small["mfu"] >= 0.20
    print(f"target: MFU >= 20 % at 'small': {'met' if met else 'NOT met'} ({small['mfu']:.1%})")
    budget = ppo_budget(trainers["toy"], step_flops(PRESETS["toy"])["6_ppo"], rate)
    copies = copy_calls(trainers["toy"])
    print("\n" + "\n".join(format_budget(budget, copies)))
    print("README row:\n" + budget_row(budget, copies))
    path = _common.write_json("flops.json", {
        "machine": info, "matmul_gflop_s": rate / 1e9, "matmul_s": matmul,
        "presets": {k: vars(v) for k, v in PRESETS.items()}, "rows": rows,
        "flops_per_phase": {k: step_flops(v) for k, v in PRESETS.items()}, "target_met": met,
        "toy_ppo_budget": budget, "toy_step_copies": copies})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
