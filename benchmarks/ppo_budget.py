"""Where a toy PPO phase's time goes, and how many ``aten::copy_`` one step makes.

Used by ``bench_flops.py`` (its part 4); also runs alone:

    python benchmarks/ppo_budget.py

1. The PPO phase of one toy step (batch 64, 16 tokens, 4 epochs x 2 minibatches) under
   ``torch.profiler``: self CPU time grouped into the model's kernels (matmuls, attention, GELU,
   layer norm, fused Adam) and everything else (other ATen ops: masks, losses, gradient norms;
   and Python and dispatch time, the profiled wall time no op accounts for).
2. Every matmul of that phase replayed alone, each shape warm in cache: the rate these shapes
   reach on this CPU. With it, the *kernel ceiling*: the utilisation the phase would reach if
   nothing but its own kernels ran (matmuls at their replayed speed, the other kernels at their
   profiled time), as a share of the 1024³ matmul rate.
3. The ``aten::copy_`` calls of one whole step, by where torch makes them: fused Adam's
   per-parameter step counters (``_foreach_add_`` on CPU adds 1 to each counter through a
   converted scalar), ``addmm`` writing a ``Linear``'s bias into its output before the matmul,
   and the rest (ours, and other ops' internals).

The profiler adds a few microseconds to every op, so "other" is an upper bound; the kernel
groups, each op tens to hundreds of microseconds, are within a few percent.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

KERNELS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "gelu": ("aten::gelu", "aten::gelu_backward"),
    "layer_norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "adam": ("aten::_fused_adam_", "aten::_fused_adamw_"),
}
"""the model's own kernels, by group; every other op's self time counts as overhead"""


def _median_seconds(fn, reps: int = 7, inner: int = 5) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return sorted(times)[reps // 2]


def kernel_seconds(fn) -> tuple[float, float]:
    """(seconds in the model's own kernels, profiled wall seconds) of one call of ``fn``: the
    least time ``fn`` could take if everything else (Python, dispatch, small ops) were free."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    names = {n for group in KERNELS.values() for n in group}
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in names) / 1e6, wall


def replay_matmuls(events) -> tuple[float, float]:
    """(FLOPs, seconds) of the profiled ``mm``/``addmm`` calls, each shape timed alone."""
    shapes = Counter((e.name, tuple(tuple(s) for s in e.input_shapes if s))
                     for e in events if e.name in ("aten::mm", "aten::addmm"))
    flops = seconds = 0.0
    for (name, shape), n in shapes.items():
        args = [torch.randn(s) for s in shape]
        (M, K), N = shape[-2], shape[-1][1]
        fn = (lambda a=args: torch.addmm(*a)) if name == "aten::addmm" else \
            (lambda a=args: torch.mm(*a))
        flops += 2 * M * N * K * n
        seconds += _median_seconds(fn) * n
    return flops, seconds


def ppo_budget(trainer, flops: float, rate: float) -> dict:
    """Part 1 and 2 for ``trainer``'s PPO phase; ``flops``: the phase's counted FLOPs,
    ``rate``: the machine's 1024³ matmul FLOP/s."""
    batch = trainer.rollout()
    trainer.update(batch)  # warm
    start = time.perf_counter()
    trainer.update(batch)
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        trainer.update(batch)
        profiled_wall = time.perf_counter() - start
    self_ms = Counter()
    for e in prof.key_averages():
        group = next((g for g, names in KERNELS.items() if e.key in names), "other ops")
        self_ms[group] += e.self_cpu_time_total / 1e3
    self_ms["python and dispatch"] = profiled_wall * 1e3 - sum(self_ms.values())
    mm_flops, mm_alone = replay_matmuls(prof.events())
    kernels_s = mm_alone + sum(self_ms[g] for g in KERNELS if g != "matmul") / 1e3
    return {
        "wall_s": wall, "profiled_wall_s": profiled_wall, "self_ms": dict(self_ms),
        "matmul_flops": mm_flops, "matmul_alone_s": mm_alone,
        "matmul_alone_rate_share": mm_flops / mm_alone / rate,
        "utilisation": flops / wall / rate, "kernel_ceiling": flops / kernels_s / rate,
    }


def copy_calls(trainer) -> dict[str, int]:
    """Part 3: ``aten::copy_`` calls of one whole step of ``trainer``, by their caller."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step()
    out = Counter()
    for e in prof.events():
        if e.name != "aten::copy_":
            continue
        chain, parent = [], e.cpu_parent
        while parent is not None and len(chain) < 4:
            chain.append(parent.name)
            parent = parent.cpu_parent
        if "aten::_foreach_add_" in chain:
            out["fused Adam step counters"] += 1
        elif chain[:1] == ["aten::addmm"]:
            out["addmm bias into output"] += 1
        else:
            out["the rest"] += 1
    return {"total": sum(out.values()), **out}


def format_budget(budget: dict, copies: dict[str, int]) -> list[str]:
    """The printed lines of parts 1-3."""
    ms = budget["self_ms"]
    total = budget["profiled_wall_s"] * 1e3
    order = [*KERNELS, "other ops", "python and dispatch"]
    lines = [f"toy PPO phase, {budget['wall_s'] * 1e3:.0f} ms ({total:.0f} ms profiled): "
             + ", ".join(f"{g} {ms.get(g, 0):.0f} ms ({ms.get(g, 0) / total:.0%})"
                         for g in order),
             f"its matmuls replayed alone: {budget['matmul_alone_s'] * 1e3:.0f} ms, "
             f"{budget['matmul_alone_rate_share']:.0%} of the 1024^3 rate",
             f"utilisation {budget['utilisation']:.1%}; kernel ceiling (only the model's "
             f"kernels run, matmuls at their replayed speed) {budget['kernel_ceiling']:.1%}",
             f"aten::copy_ in one toy step: {copies['total']} = "
             + ", ".join(f"{k} {v}" for k, v in copies.items() if k != "total")]
    return lines


def toy_trainer(seed: int = 0):
    """The toy step the copies are counted on: shipped models, batch 64, exactly 16 tokens."""
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    trainer = RLHFTrainer(PPOConfig(batch_size=64, response_len=16, stop_at_eos=False,
                                    seed=seed))
    trainer.step()
    return trainer


if __name__ == "__main__":
    import _common
    from bench_flops import MATMUL_N, PRESETS, matmul_seconds, step_flops

    info = _common.setup()
    trainer = toy_trainer()
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    rate = 2 * MATMUL_N ** 3 / _common.median([matmul_seconds(a, b) for _ in range(5)])
    print(_common.machine_line(info, "one process"))
    print(f"1024^3 matmul: {rate / 1e9:.1f} GFLOP/s")
    budget = ppo_budget(trainer, step_flops(PRESETS["toy"])["6_ppo"], rate)
    print("\n".join(format_budget(budget, copy_calls(trainer))))
