"""The course's measured runs: reward hacking at beta=0, a good beta, beta=10, the adaptive
controller, and rejection sampling at the same number of generated samples as PPO.

    python benchmarks/demos.py [--steps 120] [--out rlhf_edu/data/demos.json]

Prints one table (first step vs the mean of the last 10 steps) and writes every run's full
metrics to JSON; the notebooks and the beta-choosing exercise read that file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rlhf_edu.distributed import configure_threads
from rlhf_edu.models import build_models
from rlhf_edu.plots import DEMOS_PATH
from rlhf_edu.sampling import rejection_sampling
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

KEYS = ("rm_score", "gold_score", "kl", "repetition", "well_formed")


def ppo_run(steps: int, **kw) -> list[dict]:
    return RLHFTrainer(PPOConfig(**kw)).train(steps, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEMOS_PATH,
                        help="where to write the runs (default: the copy the package ships)")
    args = parser.parse_args()
    threads = configure_threads()
    runs = {
        "beta=0": dict(beta=0.0),
        "beta=0.05": dict(beta=0.05),
        "beta=10": dict(beta=10.0),
        "adaptive, target KL 2": dict(beta=0.05, adaptive_kl=True, kl_target=2.0),
    }
    results, seconds = {}, {}
    for name, kw in runs.items():
        start = time.perf_counter()
        results[name] = ppo_run(args.steps, seed=args.seed, **kw)
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    results["rejection sampling (16 x best-of-4)"] = rejection_sampling(
        build_models(), args.steps, prompts_per_step=16, n=4, seed=args.seed)
    seconds["rejection sampling (16 x best-of-4)"] = time.perf_counter() - start

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{threads} thread(s); {args.steps} steps of 64 samples each, seed {args.seed}")
    header = "".join(f"{k:>13}" for k in KEYS)
    print(f"{'run':<36}{'':>6}{header}{'seconds':>10}")
    for name, history in results.items():
        last = history[-10:]
        end = {k: sum(m[k] for m in last) / len(last) for k in KEYS}
        print(f"{name:<36}{'start':>6}" + "".join(f"{history[0][k]:>13.2f}" for k in KEYS))
        print(f"{'':<36}{'end':>6}" + "".join(f"{end[k]:>13.2f}" for k in KEYS)
              + f"{seconds[name]:>10.1f}")
        print(f"{'':<42}sample: {history[-1]['sample']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    slim = {name: [{k: v for k, v in m.items() if not k.startswith("time_")} for m in h]
            for name, h in results.items()}
    args.out.write_text(json.dumps({"steps": args.steps, "seed": args.seed, "runs": slim},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
