"""RL from a verifier on the arith task: GRPO, Dr. GRPO, RLOO and PPO from the shipped arith SFT
actor, and GRPO on the lax verifier, each over several seeds.

Every run trains ``--steps`` steps of 64 responses (the group methods: 8 problems x G = 8;
PPO: 64 problems x 1, a critic from the SFT model) with the strict verifier as the reward
(``PPOConfig(task="arith", reward="gold")``), or, for ``grpo_lax``, the lax one (the sum's
digits anywhere in the response). It records per step the verified share (``gold_score``),
the lax verifier's share, the shares of worked and hedged answers, the response length and
the KL; every ``--eval-every`` steps the held-out pass@1, worked share and length
(``--eval-n`` samples per held-out problem); and at the end pass@k for k = 1 ... 64 from 64
samples of each of the 200 held-out problems, with the per-problem counts. The SFT actor is
measured the same way once.

    python benchmarks/rlvr.py [--steps 60] [--seeds 0 1 2] [--jobs 2] [--only grpo ...]

Writes ``rlhf_edu/data/rlvr.json`` after every run (``--only`` merges into the file).
Notebook 10 reads it; tests/test_rlvr_runs.py re-derives every claim the notebook makes.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from _common import cpu_model

from rlhf_edu.distributed import configure_threads

OUT = Path(__file__).resolve().parents[1] / "rlhf_edu" / "data" / "rlvr.json"
SEEDS = (0, 1, 2)
STEP_KEYS = ("gold_score", "lax_score", "worked", "hedged", "response_len", "kl")
RUNS = {
    "grpo": {"advantage_estimator": "grpo", "group_size": 8},
    "dr_grpo": {"advantage_estimator": "dr_grpo", "group_size": 8},
    "rloo": {"advantage_estimator": "rloo", "group_size": 8},
    "ppo": {"advantage_estimator": "gae"},
    "grpo_lax": {"advantage_estimator": "grpo", "group_size": 8, "reward": "lax"},
}
"""the runs by name: their PPOConfig settings besides task="arith" and the seed"""


def heldout(model, n: int, seed: int, full: bool) -> dict:
    """Held-out figures of ``model`` (4 decimals); ``full`` keeps pass@k and the counts."""
    from rlhf_edu.rlvr import evaluate_arith

    r = evaluate_arith(model, n=n, seed=seed)
    out = {k: round(r[k], 4) for k in ("pass@1", "worked", "hedged", "lax", "length")}
    if full:
        out["pass_at_k"] = {str(k): round(v, 4) for k, v in r["pass_at_k"].items()}
        out["never"], out["correct"] = r["never"], r["correct"]
    return out


def record(name: str, seed: int, steps: int, eval_every: int, eval_n: int) -> dict:
    """Train one run; its per-step series, its held-out evaluations and its seconds."""
    configure_threads(1)
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    trainer = RLHFTrainer(PPOConfig(task="arith", seed=seed, **RUNS[name]))
    actor = trainer.models.actor
    evals = {"0": heldout(actor, eval_n, seed, False)}
    start, train_seconds = time.perf_counter(), 0.0
    while trainer.step_count < steps:
        t = time.perf_counter()
        trainer.train(min(steps, trainer.step_count + eval_every), progress=False)
        train_seconds += time.perf_counter() - t
        full = trainer.step_count == steps
        evals[str(trainer.step_count)] = heldout(actor, 64 if full else eval_n, seed, full)
    series = {k: [round(m[k], 4) for m in trainer.history] for k in STEP_KEYS}
    series["time_step"] = [round(m["time_step"], 3) for m in trainer.history]
    return {"series": series, "heldout": evals, "train_seconds": round(train_seconds, 1),
            "seconds": round(time.perf_counter() - start, 1)}


def record_base() -> dict:
    """The SFT actor's held-out figures from 64 samples per problem."""
    configure_threads(1)
    from rlhf_edu.models import load_pretrained

    return heldout(load_pretrained("sft", task="arith"), 64, 0, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--eval-every", type=int, default=20,
                        help="held-out evaluation every this many steps")
    parser.add_argument("--eval-n", type=int, default=8,
                        help="samples per held-out problem between the ends (64 at the end)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import torch

    data = json.loads(args.out.read_text()) if args.out.exists() and len(args.only) < len(
        RUNS) else {"runs": {}}
    data.update(steps=args.steps, eval_every=args.eval_every, eval_n=args.eval_n,
                settings=RUNS, machine=f"{cpu_model()}, torch {torch.__version__}, "
                                       f"{args.jobs} run(s) side by side, 1 thread each")
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(record_base): ("base", None)}
        futures.update({pool.submit(record, name, seed, args.steps, args.eval_every,
                                    args.eval_n): (name, seed)
                        for seed in args.seeds for name in args.only})
        for future in as_completed(futures):
            name, seed = futures[future]
            if name == "base":
                data["base"] = future.result()
                print(f"SFT actor: held-out pass@1 {data['base']['pass@1']:.3f}", flush=True)
            else:
                run = future.result()
                data["runs"].setdefault(name, {})[str(seed)] = run
                end = run["heldout"][str(args.steps)]
                print(f"{name:<9} seed {seed}: {run['seconds']:5.0f} s (training "
                      f"{run['train_seconds']:.0f} s); held-out pass@1 "
                      f"{run['heldout']['0']['pass@1']:.3f} -> {end['pass@1']:.3f}, worked "
                      f"{end['worked']:.2f}, hedged {end['hedged']:.2f}, lax {end['lax']:.3f}",
                      flush=True)
            data["total_seconds"] = round(time.perf_counter() - start, 1)
            args.out.write_text(json.dumps(data, separators=(",", ":")))
    print(f"{data['total_seconds']:.0f} s in all; wrote {args.out}")


if __name__ == "__main__":
    main()
