"""The critic modes measured: separate, shared and head, over several seeds (notebook 7).

    python benchmarks/critic_modes.py [--steps 20] [--seeds 0 1 2] [--out PATH]

Trains PPO (the course's defaults, beta 0.05) from the shipped weights with each critic mode
and seed and writes every step's metrics to ``rlhf_edu/data/critic_modes.json``:
``{"steps", "threads", "machine", "params": {mode: critic parameters}, "runs": {"<mode>, seed
<s>": [metrics per step]}}``. Step times are kept (``time_step``, ``time_6_ppo``) for the
record: they describe the machine that recorded them, not yours. Prints one table per mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rlhf_edu.distributed import configure_threads
from rlhf_edu.models import describe
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

MODES = ("separate", "shared", "head")
SEEDS = (0, 1, 2)
KEEP = ("step", "value_loss", "rm_score", "gold_score", "kl", "time_step", "time_6_ppo")
OUT = Path(__file__).resolve().parents[1] / "rlhf_edu" / "data" / "critic_modes.json"


def run_name(mode: str, seed: int) -> str:
    return f"{mode}, seed {seed}"


def record(mode: str, seed: int, steps: int) -> tuple[int, list[dict]]:
    """(critic parameters, metrics per step) of one run."""
    trainer = RLHFTrainer(PPOConfig(critic_mode=mode, seed=seed))
    params = {r["role"]: r["params"] for r in describe(trainer.models)}["critic"]
    history = trainer.train(steps, progress=False)
    return params, [{k: m[k] for k in KEEP} for m in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps must be >= 2, got {args.steps}")
    threads = configure_threads()
    data = {"steps": args.steps, "threads": threads,
            "machine": f"{platform.processor() or platform.machine()}, torch "
                       f"{torch.__version__}", "params": {}, "runs": {}}
    for seed in args.seeds:
        for mode in MODES:
            start = time.perf_counter()
            data["params"][mode], data["runs"][run_name(mode, seed)] = record(
                mode, seed, args.steps)
            args.out.write_text(json.dumps(data, indent=1))  # an interruption keeps the runs
            print(f"{run_name(mode, seed)}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{data['machine']}, {threads} thread(s), {args.steps} steps")
    print(f"{'run':<18}{'value loss 1-2':>15}{'last 2':>8}{'RM':>7}{'gold':>7}{'KL':>7}"
          f"{'s/step':>8}")
    for name, h in data["runs"].items():
        early = (h[0]["value_loss"] + h[1]["value_loss"]) / 2
        late = (h[-1]["value_loss"] + h[-2]["value_loss"]) / 2
        t = sum(m["time_step"] for m in h[1:]) / (len(h) - 1)
        print(f"{name:<18}{early:>15.3f}{late:>8.3f}{h[-1]['rm_score']:>+7.2f}"
              f"{h[-1]['gold_score']:>+7.2f}{h[-1]['kl']:>7.2f}{t:>8.2f}")


if __name__ == "__main__":
    main()
