"""Record short PPO runs at several KL coefficients for Exercise 7 (choosing beta).

    python tests/exercises/data/record_beta_runs.py [--out beta_runs.json] [--fresh]

Each run is ``RLHFTrainer(PPOConfig(beta=..., seed=...)).train(steps)`` with the shipped SFT
and reward models. Its per-step metrics are stored without the ``time_*`` keys (they vary from
machine to machine), together with a label that the graded test checks ``diagnose_beta``
against.

The label comes from the *gold* score, the hidden "human" judgement that a learner never sees
in real life. ``start`` is the mean gold score of the first 3 steps (the policy has hardly
been updated yet); the rest of the run is cut into blocks of 10 steps, with ``last`` and
``best`` the mean gold score of the last block and of the best block:

* ``"too_low"``  gold collapsed after its peak, ``best - last > 0.3``: the policy kept climbing
  on the reward model after the "human" stopped liking it (over-optimisation, reward hacking);
* ``"too_high"`` gold hardly moved, ``last - start < 0.15``: the KL penalty held the policy at
  the reference (good runs gain 0.3 or more);
* ``"ok"``       otherwise: gold rose and held.

The betas are chosen far from the boundaries between verdicts, so that the labels do not
hinge on a seed or on small changes to the package: beta=0.1 and beta=1 end in between
(moderately held back) and are left out.
The learner's ``diagnose_beta`` has to reach the same verdict from the signals a practitioner
does have (reward-model score, KL, repetition, entropy, response length).
Runs already in ``--out`` with the same beta, seed and steps are kept, not run again (the
runs are deterministic on CPU); ``--fresh`` runs everything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlhf_edu.distributed import configure_threads
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

# (beta, seed, steps). beta=0 runs longer: with seeds 1 and 2 the collapse can come later
# than with seed 0 (the beta=0 run of rlhf_edu/data/demos.json).
RUNS = [(0.0, 1, 150), (0.0, 2, 150), (0.02, 0, 100), (0.05, 1, 100), (3.0, 0, 100),
        (10.0, 1, 100)]
START = 3  # steps averaged for the starting gold score
WINDOW = 10  # steps per block
COLLAPSE = 0.3  # gold fall from the best block that means over-optimisation
GAIN = 0.15  # gold rise below which the policy "did not move"


def label_from_gold(history: list[dict]) -> str:
    """The verdict the hidden gold score gives on a run (see the module docstring)."""
    start = sum(m["gold_score"] for m in history[:START]) / START
    blocks = [history[i:i + WINDOW] for i in range(0, len(history), WINDOW)]
    gold = [sum(m["gold_score"] for m in b) / len(b) for b in blocks]
    if max(gold) - gold[-1] > COLLAPSE:
        return "too_low"
    if gold[-1] - start < GAIN:
        return "too_high"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "beta_runs.json")
    parser.add_argument("--fresh", action="store_true", help="run every run again")
    args = parser.parse_args()
    configure_threads()
    old = {} if args.fresh or not args.out.exists() else json.loads(args.out.read_text())["runs"]
    runs = {}
    for beta, seed, steps in RUNS:
        name = f"beta={beta:g}, seed {seed}"
        start = time.perf_counter()
        if name in old and len(old[name]["history"]) == steps:
            history = old[name]["history"]
        else:
            trainer = RLHFTrainer(PPOConfig(beta=beta, seed=seed))
            history = trainer.train(steps, progress=False)
            history = [{k: v for k, v in m.items() if not k.startswith("time_")}
                       for m in history]
        runs[name] = {"beta": beta, "seed": seed, "steps": steps,
                      "label": label_from_gold(history), "history": history}
        print(f"{name:<20} {runs[name]['label']:<9} gold {history[0]['gold_score']:+.2f} -> "
              f"{history[-1]['gold_score']:+.2f}  rm {history[0]['rm_score']:+.2f} -> "
              f"{history[-1]['rm_score']:+.2f}  kl {history[-1]['kl']:.2f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    args.out.write_text(json.dumps({"start": START, "window": WINDOW, "collapse": COLLAPSE,
                                    "gain": GAIN, "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
