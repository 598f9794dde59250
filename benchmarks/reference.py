"""Does the reference have to stay frozen? A moving reference vs a frozen one vs none.

Three variants of the course's PPO run (the default settings), each over several seeds:

- ``frozen``: the reference is the SFT model for the whole run, beta = 0.05 (the chapter's
  design, the course default);
- ``moving``: beta = 0.05, but the actor is copied into the reference every ``--every`` steps
  (``PPOConfig.ref_reset_every``), so the penalty only holds the policy near where it was a
  few steps ago;
- ``none``: beta = 0, no reference at all.

Each step records the gold score, the reward model's score, the KL to the reference the
penalty uses (``kl``) and the KL to the SFT model (``kl_sft``): for ``frozen`` and ``none``
the reference *is* the SFT model, so ``kl_sft`` is ``kl``; for ``moving`` the trainer measures
it against a frozen SFT copy kept for that purpose.

    python benchmarks/reference.py [--steps 80] [--every 10] [--seeds 0 1 2] [--jobs 3]

Writes ``rlhf_edu/data/reference.json`` (4 decimals) after every run; ``--jobs`` runs that
many processes side by side, one thread each. Notebook 5 and Exercise 11 read the file;
tests/test_reference_runs.py re-derives every claim the notebook makes from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from rlhf_edu.distributed import configure_threads

OUT = Path(__file__).resolve().parents[1] / "rlhf_edu" / "data" / "reference.json"
KEYS = ("gold_score", "rm_score", "kl", "kl_sft")
SEEDS = (0, 1, 2)


def variants(every: int) -> dict[str, dict]:
    """The PPOConfig settings of each variant, by name."""
    return {"frozen": {"beta": 0.05},
            "moving": {"beta": 0.05, "ref_reset_every": every},
            "none": {"beta": 0.0}}


def record(settings: dict, seed: int, steps: int) -> tuple[dict[str, list[float]], float]:
    """Train one run; its series per key (4 decimals) and the seconds it took."""
    configure_threads(1)
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    start = time.perf_counter()
    history = RLHFTrainer(PPOConfig(seed=seed, **settings)).train(steps, progress=False)
    series = {k: [round(m.get(k, m["kl"]), 4) for m in history] for k in KEYS}
    return series, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="training steps per run")
    parser.add_argument("--every", type=int, default=10,
                        help="the moving reference copies the actor every this many steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--jobs", type=int, default=3, help="runs side by side")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    table = variants(args.every)
    data = {"steps": args.steps, "every": args.every, "seeds": args.seeds,
            "variants": table, "runs": {name: {} for name in table},
            "seconds": {name: {} for name in table},
            "machine": f"{platform.processor() or platform.machine()}, torch "
                       f"{torch.__version__}, {args.jobs} run(s) side by side, 1 thread each"}
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(record, settings, seed, args.steps): (name, seed)
                   for seed in args.seeds for name, settings in table.items()}
        for future in as_completed(futures):
            name, seed = futures[future]
            series, seconds = future.result()
            data["runs"][name][str(seed)] = series
            data["seconds"][name][str(seed)] = round(seconds, 1)
            data["total_seconds"] = round(time.perf_counter() - start, 1)
            args.out.write_text(json.dumps(data, separators=(",", ":")))
            last = {k: sum(v[-10:]) / 10 for k, v in series.items()}
            print(f"{name:<7} seed {seed}: {seconds:6.0f} s; last 10 steps: "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in last.items()), flush=True)
    print(f"{data['total_seconds']:.0f} s in all; wrote {args.out}")


if __name__ == "__main__":
    main()
