"""How one RLHF step's time and peak memory grow as batch size, response length and model
width double.

    python benchmarks/bench_scaling.py [--repeats 5]

Base point: batch 16, 16 response tokens (no ``<eos>`` stop), a 3-layer, 4-head GPT of width 128
(context 128, vocabulary 64, random weights), 4 PPO epochs x 2 minibatches. Each series doubles
one of the three twice (batch 16/32/64, tokens 16/32/64, width 128/256/512).

* Time: all seven distinct points are built in one process and their steps alternate (median of
  the repeats after a warm-up step), so load falls on every point alike.
* Memory: each point runs again in a fresh subprocess (``--memory-point``). torch's CPU
  allocations are invisible to ``tracemalloc``, so this reads the kernel's resident-set
  counters: the peak RSS is reset after the models and optimisers are built (``/proc/self/
  clear_refs``, Linux), two steps run, and the reported figure is that peak minus the RSS
  before the first step, i.e. what a step adds: Adam states, gradients, activations, KV cache.
  Without ``clear_refs`` it falls back to ``resource.getrusage`` ``ru_maxrss`` deltas.

The slope of log(time) against log(size) is fitted per series (1 = linear). Writes
``results/scaling.json`` and ``results/scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

import _common
import torch

from rlhf_edu.model import GPT, GPTConfig
from rlhf_edu.models import RewardModel, build_models
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

BASE = {"batch": 16, "tokens": 16, "width": 128}
SERIES = {"batch": (16, 32, 64), "tokens": (16, 32, 64), "width": (128, 256, 512)}


def make_trainer(batch: int, tokens: int, width: int) -> RLHFTrainer:
    torch.manual_seed(0)
    c = GPTConfig(n_layer=3, n_head=4, n_embd=width, vocab_size=64, block_size=128)
    models = build_models(sft=GPT(c), reward=RewardModel(GPT(c)))
    return RLHFTrainer(PPOConfig(batch_size=batch, response_len=tokens, stop_at_eos=False,
                                 seed=0), models)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_point(batch: int, tokens: int, width: int) -> dict:
    """Run in a fresh process: what two steps add to the resident set (MiB)."""
    _common.setup()
    trainer = make_trainer(batch, tokens, width)
    try:
        before = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak RSS
        method = "VmHWM after clear_refs minus VmRSS before the steps"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss delta"
    for _ in range(2):
        trainer.step()
    peak = (rss_kib("VmHWM") if method.startswith("VmHWM")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {"step_mib": (peak - before) / 1024, "peak_rss_mib": peak / 1024, "method": method}


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return (sum((a - mx) * (b - my) for a, b in zip(lx, ly))
            / sum((a - mx) ** 2 for a in lx))


def plot(rows: list[dict], slopes: dict, info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for series, marker in zip(SERIES, "osD"):
        pts = [r for r in rows if r["series"] == series]
        x = [r[series] / BASE[series] for r in pts]
        axes[0].plot(x, [r["step_s"] for r in pts], marker=marker,
                     label=f"{series} (slope {slopes[series]['time']:.2f})")
        axes[1].plot(x, [r["step_mib"] for r in pts], marker=marker,
                     label=f"{series} (slope {slopes[series]['memory']:.2f})")
    for ax, ylabel in zip(axes, ("seconds per step (median)", "MiB a step adds (peak RSS)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks([1, 2, 4], ["x1", "x2", "x4"])
        ax.set_xlabel("size relative to batch 16, 16 tokens, width 128")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("RLHF step scaling (log-log, fitted slopes in the legend)", fontsize=10)
    _common.save_figure(fig, path, info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-point", nargs=3, type=int, metavar=("BATCH", "TOKENS", "WIDTH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_point:
        print(json.dumps(memory_point(*args.memory_point)))
        return
    info = _common.setup()
    points = sorted({(s, *[v if k == s else BASE[k] for k in BASE]) for s, vs in SERIES.items()
                     for v in vs}, key=lambda p: p[1:])
    keys = sorted({p[1:] for p in points})  # distinct (batch, tokens, width)
    trainers = {k: make_trainer(*k) for k in keys}
    history: dict[tuple, list[float]] = {k: [] for k in keys}
    _common.interleaved({str(k): (lambda k=k: history[k].append(trainers[k].step()["time_step"]))
                         for k in keys}, repeats=args.repeats)
    trainers.clear()  # free them before the memory subprocesses run
    memory = {}
    for k in keys:
        out = subprocess.run([sys.executable, __file__, "--memory-point", *map(str, k)],
                             capture_output=True, text=True, check=True)
        memory[k] = json.loads(out.stdout.strip().splitlines()[-1])

    rows = []
    for series, values in SERIES.items():
        for v in values:
            k = tuple(v if name == series else BASE[name] for name in BASE)
            rows.append({"series": series, **dict(zip(BASE, k)),
                         "step_s": _common.median(history[k][1:]), **memory[k]})
    slopes = {}
    for series in SERIES:
        pts = [r for r in rows if r["series"] == series]
        xs = [r[series] for r in pts]
        slopes[series] = {"time": slope(xs, [r["step_s"] for r in pts]),
                          "memory": slope(xs, [r["step_mib"] for r in pts])}

    print(f"\nRLHF step scaling: time (median of {args.repeats} steps after a warm-up, points "
          "alternating) and memory (fresh process per point)")
    print(_common.machine_line(info))
    print(f"memory: {rows[0]['method']} (Linux /proc counters; tracemalloc cannot see torch)")
    print(_common.format_table(rows, [
        ("series", "doubling", "s"), ("batch", "batch", "d"), ("tokens", "tokens", "d"),
        ("width", "width", "d"), ("step_s", "s/step", ".3f"), ("step_mib", "step MiB", ".1f"),
        ("peak_rss_mib", "peak RSS MiB", ".0f")]))
    print("fitted log-log slopes (time, memory): " + "; ".join(
        f"{s} {v['time']:.2f}, {v['memory']:.2f}" for s, v in slopes.items()))
    png = _common.RESULTS / "scaling.png"
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, slopes, info, png)
    path = _common.write_json("scaling.json", {"machine": info, "base": BASE, "rows": rows,
                                               "slopes": slopes})
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
