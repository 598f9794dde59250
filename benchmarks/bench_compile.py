"""``--compile`` on the course run: compile time, steady-state speed-up, break-even, whole runs.

    python benchmarks/bench_compile.py [--steps 60] [--runs 3]

Part 1, per step: an eager and a compiled trainer of the course run (``PPOConfig(beta=0.05)``:
batch 64, responses of up to 20 tokens that stop at ``<eos>``, 4 PPO epochs x 2 minibatches)
start from the same seed and take ``--steps`` steps each, alternately, the compiled one first.
Compile time is the compiled trainer's first step minus the eager trainer's first step; the
steady-state speed-up is the median of the per-step ratios eager / compiled after the first
step; break-even is the number of steps after which the saved time has paid the compile
time. Graphs are counted with TorchDynamo's counters (``unique_graphs``: one per compile, the
first included; each trained graph also compiles its backward once). It runs in a fresh
process twice: with an empty inductor cache (cold) and again on the cache the first left
(warm).

Part 2, whole runs: ``rlhf-edu train --beta 0.05 --steps 60`` without and with ``--compile``
(the compiled one on the warm cache of part 1), each a fresh process timed from start to exit,
alternating, ``--runs`` times each; the median of each. Writes ``results/compile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

COURSE = dict(beta=0.05)
"""the course run's settings (``rlhf-edu train --beta 0.05``; everything else the default)"""


def per_step(steps: int) -> dict:
    """Part 1 in this process: eager and compiled trainers alternate ``steps`` steps each."""
    from torch._dynamo.utils import counters

    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    eager = RLHFTrainer(PPOConfig(**COURSE))
    compiled = RLHFTrainer(PPOConfig(**COURSE, compile=True))
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    widths, graphs = [], []
    for step in range(steps):
        # the compiled trainer takes the first step: nothing else runs between its
        # construction (which starts inductor's CPU probe on a thread) and its first compiled
        # call, and the process's one-time costs fall on it (conservative)
        pair = (("eager", eager), ("compiled", compiled))
        for name, trainer in (pair[::-1] if step == 0 else pair):
            start = time.perf_counter()
            metrics = trainer.step()
            times[name].append(time.perf_counter() - start)
        widths.append(metrics["response_len"])
        graphs.append(counters["stats"]["unique_graphs"])
    ratios = [e / c for e, c in zip(times["eager"][1:], times["compiled"][1:])]
    e_step, c_step = (_common.median(times[k][1:]) for k in ("eager", "compiled"))
    compile_s = times["compiled"][0] - times["eager"][0]
    saved = e_step - c_step
    return {
        "steps": steps, "eager_step_s": e_step, "compiled_step_s": c_step,
        "speedup": _common.median(ratios), "compile_s": compile_s,
        "break_even_steps": compile_s / saved if saved > 0 else None,
        "graphs": graphs[-1], "graphs_after_first_step": graphs[0],
        "mean_response_len_range": [min(widths), max(widths)],
        "first_step_s": {k: v[0] for k, v in times.items()},
    }


def child(steps: int, cache: str) -> dict:
    """Part 1 in a fresh process whose inductor cache is ``cache``."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def whole_runs(runs: int, steps: int, cache: str) -> dict[str, list[float]]:
    """Part 2: seconds of ``rlhf-edu train --beta 0.05 --steps N [--compile]``, alternating."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    exe = str(Path(sys.executable).with_name("rlhf-edu"))
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(runs):
        order = ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")
        for name in order:
            with tempfile.TemporaryDirectory() as run_dir:
                cmd = [exe, "train", "--beta", "0.05", "--steps", str(steps), "--quiet",
                       "--run-dir", run_dir, *(["--compile"] if name == "compiled" else [])]
                start = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    return times


def report(info: dict, cold: dict, warm: dict, runs: dict[str, list[float]]) -> list[str]:
    """The printed summary; its last lines are the README's rows."""
    e, c = (_common.median(runs[k]) for k in ("eager", "compiled"))
    e_min, c_min = min(runs["eager"]), min(runs["compiled"])  # least disturbed by other work
    even = (f"after {warm['break_even_steps']:.0f} steps" if warm["break_even_steps"]
            else "never (a compiled step is not faster)")
    lines = [_common.machine_line(info, "eager and compiled alternate; medians"),
             f"part 1, {warm['steps']} course steps per trainer, in a fresh process:"]
    for name, r in (("cold cache", cold), ("warm cache", warm)):
        be = f"{r['break_even_steps']:.0f}" if r["break_even_steps"] else "never"
        lines.append(
            f"  {name}: compile {r['compile_s']:.1f} s; step {r['eager_step_s']:.3f} s eager, "
            f"{r['compiled_step_s']:.3f} s compiled (steady-state {r['speedup']:.3f}x); "
            f"break-even after {be} steps; {r['graphs']} graph(s) compiled in "
            f"{r['steps']} steps ({r['graphs_after_first_step']} after the first)")
    lines += [f"part 2, `rlhf-edu train --beta 0.05 --steps {warm['steps']}`, whole process, "
              f"{len(runs['eager'])} runs each: {e:.1f} s eager, {c:.1f} s with --compile "
              f"(warm cache): {e / c:.3f}x", "README rows:",
              f"| `--compile`, course run (batch 64, <=20 tokens{_common.load_note(info)}): "
              f"compile time, steady-state step | {warm['compile_s']:.1f} s warm cache "
              f"({cold['compile_s']:.0f} s cold), "
              f"{warm['graphs']} graph(s) in {warm['steps']} steps; {warm['speedup']:.2f}x per "
              f"step; break-even {even} (warm cache) |",
              f"| `rlhf-edu train --beta 0.05 --steps {warm['steps']}` with / without "
              f"`--compile` (warm cache, whole process, alternating{_common.load_note(info)}) | "
              f"medians {c:.1f} s / {e:.1f} s ({e / c:.2f}x, {len(runs['eager'])} runs each); "
              f"fastest runs {c_min:.1f} s / {e_min:.1f} s ({e_min / c_min:.2f}x) |"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="course steps (default 60)")
    parser.add_argument("--runs", type=int, default=3, help="whole runs of each (default 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    info = _common.setup()
    if args.child:
        print(json.dumps(per_step(args.steps)))
        return
    with tempfile.TemporaryDirectory() as cache:
        cold = child(args.steps, cache)
        _common.write_json("compile.json", {"machine": info, "cold": cold})  # kept if stopped
        warm = child(args.steps, cache)
        _common.write_json("compile.json", {"machine": info, "cold": cold, "warm": warm})
        runs = whole_runs(args.runs, args.steps, cache)
    lines = report(info, cold, warm, runs)
    print("\n".join(lines))
    path = _common.write_json("compile.json", {"machine": info, "cold": cold, "warm": warm,
                                               "whole_runs_s": runs, "summary": lines})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
