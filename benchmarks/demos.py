"""The course's measured runs: a beta sweep, adaptive KL, and PPO vs rejection sampling by seed.

A sweep of fixed KL coefficients beta (reward hacking at beta=0, no learning at beta=10, the
useful range between), the adaptive controller, and PPO vs rejection sampling over several
seeds, at equal generated samples and at equal optimizer steps.

    python benchmarks/demos.py [--steps 120] [--betas 0 0.01 ...] [--seeds 0 1 2] [--jobs 2]
    python benchmarks/demos.py --only "beta=0.2" "rejection sampling (16 x best-of-4), seed 1"
    python benchmarks/demos.py --list

Without ``--only`` it records every run and writes ``--out`` from scratch; with ``--only`` it
records just the named runs and merges them into the existing file (the other runs are kept).
The file is rewritten after each run, so an interrupted recording keeps the runs it finished.
``--jobs`` runs that many at once, one process and one torch thread each (a run's numbers do not
depend on which process records it); 23 runs take 21 minutes with 2 jobs on a quiet 2-core
machine.
Run names: ``beta=<b>`` (PPO, fixed beta, seed 0), ``adaptive, target KL 2``,
``beta=0.05, entropy bonus <c2>`` (the entropy coefficient c2 > 0), and for each seed
``beta=0.05``, ``rejection sampling (16 x best-of-4)`` (one optimizer step per batch) and
``rejection sampling (16 x best-of-4, 4 epochs x 2 minibatches)`` (8 steps per batch, as
PPO's 4 epochs x 2 minibatches), with ``, seed <s>`` appended for seeds other than 0.

Every recorded step carries ``samples`` (generated so far) and ``optimizer_steps`` (actor
updates so far), computed from the run's settings; ``meta`` holds each run's kind, seed,
settings and seconds. Prints one table (first step vs the mean of the last 10 steps). The
notebooks and the beta-choosing exercise read the file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch

from rlhf_edu.distributed import configure_threads
from rlhf_edu.models import build_models
from rlhf_edu.plots import DEMOS_PATH
from rlhf_edu.sampling import rejection_sampling
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

KEYS = ("rm_score", "gold_score", "kl", "repetition", "well_formed")
BETAS = (0.0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 10.0)
SEEDS = (0, 1, 2)
ENTROPY_BONUSES = (0.01, 0.05)  # c2 > 0 beside the beta=0.05 run (notebook 4)
RS = "rejection sampling (16 x best-of-4)"
RS_EQUAL_STEPS = "rejection sampling (16 x best-of-4, 4 epochs x 2 minibatches)"
RS_SETTINGS = {RS: dict(prompts_per_step=16, n=4),
               RS_EQUAL_STEPS: dict(prompts_per_step=16, n=4, epochs=4, minibatches=2)}


def seeded(name: str, seed: int) -> str:
    """The run name for ``seed``: seed 0 keeps the bare name (the course's runs)."""
    return name if seed == 0 else f"{name}, seed {seed}"


def run_table(betas=BETAS, seeds=SEEDS) -> dict[str, dict]:
    """Every run by name: ``{"kind": "ppo" | "rejection sampling", "seed", "settings"}``."""
    table = {f"beta={b:g}": {"kind": "ppo", "seed": 0, "settings": {"beta": float(b)}}
             for b in sorted(set(betas))}
    table["adaptive, target KL 2"] = {"kind": "ppo", "seed": 0, "settings": {
        "beta": 0.05, "adaptive_kl": True, "kl_target": 2.0}}
    for c2 in ENTROPY_BONUSES:
        table[f"beta=0.05, entropy bonus {c2:g}"] = {"kind": "ppo", "seed": 0, "settings": {
            "beta": 0.05, "ent_coef": c2}}
    for seed in sorted(set(seeds)):
        table[seeded("beta=0.05", seed)] = {"kind": "ppo", "seed": seed,
                                            "settings": {"beta": 0.05}}
        for name, settings in RS_SETTINGS.items():
            table[seeded(name, seed)] = {"kind": "rejection sampling", "seed": seed,
                                         "settings": dict(settings)}
    return table


def per_step_counts(spec: dict) -> tuple[int, int]:
    """(generated samples, actor optimizer steps) per training step of the run ``spec``."""
    s = spec["settings"]
    if spec["kind"] == "ppo":
        cfg = PPOConfig(seed=spec["seed"], **s)
        return cfg.batch_size, cfg.ppo_epochs * cfg.minibatches
    return s["prompts_per_step"] * s["n"], s.get("epochs", 1) * s.get("minibatches", 1)


def with_counts(history: list[dict], spec: dict) -> list[dict]:
    """``history`` with cumulative ``samples`` and ``optimizer_steps`` on every step, from
    the run's settings (and checked against what the run recorded itself, if it did)."""
    samples, updates = per_step_counts(spec)
    out = []
    for m in history:
        counts = {"samples": m["step"] * samples, "optimizer_steps": m["step"] * updates}
        for k, v in counts.items():
            if k in m and m[k] != v:
                raise ValueError(f"step {m['step']} recorded {k}={m[k]}, its settings give {v}")
        out.append({**m, **counts})
    return out


def record(spec: dict, steps: int) -> list[dict]:
    """Train one run of the table for ``steps`` steps and return its metrics per step."""
    if spec["kind"] == "ppo":
        trainer = RLHFTrainer(PPOConfig(seed=spec["seed"], **spec["settings"]))
        history = trainer.train(steps, progress=False)
    else:
        history = rejection_sampling(build_models(), steps, seed=spec["seed"],
                                     **spec["settings"])
    slim = [{k: v for k, v in m.items() if not k.startswith("time_")} for m in history]
    return with_counts(slim, spec)


def record_timed(name: str, spec: dict, steps: int, threads: int) -> tuple[str, list, float]:
    """:func:`record` in a worker process with ``threads`` torch threads: (name, history, s)."""
    configure_threads(threads)
    start = time.perf_counter()
    history = record(spec, steps)
    return name, history, time.perf_counter() - start


def merged(old: dict, new_runs: dict[str, list[dict]], meta: dict[str, dict],
           table: dict[str, dict], steps: int) -> dict:
    """``old``'s runs (counts filled in from ``table`` where missing) updated by ``new_runs``."""
    if old.get("steps", steps) != steps:
        raise ValueError(f"{old['steps']} steps recorded, got --steps {steps}: "
                         "merged runs must have the same length")
    runs = {name: with_counts(h, table[name]) if name in table else h
            for name, h in old.get("runs", {}).items()}
    old_meta = {name: m for name, m in old.get("meta", {}).items()}
    for name in runs:
        if name in table and name not in old_meta:
            old_meta[name] = {k: table[name][k] for k in ("kind", "seed", "settings")}
    runs.update(new_runs)
    old_meta.update(meta)
    return {"steps": steps, "seed": 0, "runs": runs, "meta": old_meta}


def print_table(results: dict[str, list[dict]], seconds: dict[str, float], steps: int,
                threads: int) -> None:
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{threads} thread(s); {steps} steps of 64 samples each")
    header = "".join(f"{k:>13}" for k in KEYS)
    print(f"{'run':<66}{'':>6}{header}{'seconds':>10}")
    for name, history in results.items():
        last = history[-10:]
        end = {k: sum(m[k] for m in last) / len(last) for k in KEYS}
        print(f"{name:<66}{'start':>6}" + "".join(f"{history[0][k]:>13.2f}" for k in KEYS))
        print(f"{'':<66}{'end':>6}" + "".join(f"{end[k]:>13.2f}" for k in KEYS)
              + f"{seconds[name]:>10.1f}")
        print(f"{'':<72}sample: {history[-1]['sample']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="training steps per run")
    parser.add_argument("--betas", type=float, nargs="+", default=list(BETAS),
                        help="fixed KL coefficients of the beta sweep (seed 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="seeds of the PPO (beta=0.05) vs rejection-sampling comparison")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="record only these runs and merge them into --out")
    parser.add_argument("--list", action="store_true", help="print the run names and exit")
    parser.add_argument("--jobs", type=int, default=2, help="runs recorded at once")
    parser.add_argument("--out", type=Path, default=DEMOS_PATH,
                        help="where to write the runs (default: the copy the package ships)")
    args = parser.parse_args()
    for flag in ("steps", "jobs"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    table = run_table(args.betas, args.seeds)
    if args.list:
        print("\n".join(table))
        return
    unknown = [n for n in args.only or () if n not in table]
    if unknown:
        parser.error(f"unknown run name(s) {unknown}; see --list (with the same --betas/--seeds)")
    names = args.only or list(table)
    old = {}
    if args.only:
        if not args.out.is_file():
            parser.error(f"--only merges into an existing file; {args.out} does not exist")
        old = json.loads(args.out.read_text())
        merged(old, {}, {}, table, args.steps)  # a length mismatch fails before any training
    threads = configure_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results, meta, seconds = {}, {}, {}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(record_timed, n, table[n], args.steps, threads) for n in names]
        for future in as_completed(futures):
            name, results[name], seconds[name] = future.result()
            meta[name] = {k: table[name][k] for k in ("kind", "seed", "settings")}
            meta[name]["seconds"] = round(seconds[name], 1)
            done = [n for n in names if n in results]  # in the table's order
            # written after every run: an interrupted recording keeps the runs it finished
            data = merged(old, {n: results[n] for n in done}, {n: meta[n] for n in done}, table,
                          args.steps)
            args.out.write_text(json.dumps(data, indent=1))
            print(f"recorded {name} in {seconds[name]:.0f} s; {args.out} has "
                  f"{len(data['runs'])} runs", flush=True)
    print_table({n: results[n] for n in names}, seconds, args.steps, threads)


if __name__ == "__main__":
    main()
