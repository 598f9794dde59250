"""How far today's trainer is from the shipped recordings: one run of each recorded file, again.

    python benchmarks/drift.py [--adam fused loop] [--jobs 2]

The course's recorded runs (``rlhf_edu/data/*.json``, read by the notebooks and their tests)
were made by the scripts beside this one. When the trainer's numerics change (fused Adam became
the default in 2026-12; every recording was made again with it), a learner who runs a script
again gets other numbers; so does one on another CPU or torch version, whose kernels round
differently. This script retrains seed 0 of one configuration from each file, with each Adam
asked for (``fused``: the default, which the recordings use; ``loop``: the for-loop Adam), and
compares the per-step gold score, RM score (verified share on arith) and KL with the recording:

* the first step at which any of them differs from the recording by more than 0.001 (the files
  keep 4 decimals), or "none" when the whole run matches;
* the mean of each over the last 10 steps, recorded and now.

On the machine a recording was made on, the fused run matches it to the last step; a run
that matches with one Adam and parts with the other says the Adam, and nothing else, moved it.
Writes ``results/drift.json``.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from importlib.resources import files
from statistics import fmean

import _common

TOLERANCE = 1e-3
LAST = 10


def _load(name: str) -> dict:
    return json.loads((files("rlhf_edu") / "data" / f"{name}.json").read_text())


def cases() -> dict[str, dict]:
    """name -> the recording's config (PPOConfig keywords), steps and recorded series."""
    demos, methods = _load("demos"), _load("methods")
    reference, critic, rlvr = _load("reference"), _load("critic_modes"), _load("rlvr")

    def rows(history: list[dict], keys: tuple[str, ...]) -> dict[str, list[float]]:
        return {k: [m[k] for m in history] for k in keys}

    grpo = methods["runs"]["grpo, seed 0"]["config"]
    return {
        "demos.json beta=0.05": {
            "config": {"seed": 0, **demos["meta"]["beta=0.05"]["settings"]},
            "steps": demos["steps"],
            "recorded": rows(demos["runs"]["beta=0.05"], ("gold_score", "rm_score", "kl"))},
        "methods.json grpo, seed 0": {
            "config": {k: v for k, v in grpo.items() if v is not None},
            "steps": methods["steps"],
            "recorded": rows(methods["runs"]["grpo, seed 0"]["history"],
                             ("gold_score", "rm_score", "kl"))},
        "reference.json frozen, seed 0": {
            "config": {"seed": 0, **reference["variants"]["frozen"]},
            "steps": reference["steps"],
            "recorded": {k: reference["runs"]["frozen"]["0"][k]
                         for k in ("gold_score", "rm_score", "kl")}},
        "critic_modes.json shared, seed 0": {
            "config": {"seed": 0, "critic_mode": "shared"},
            "steps": critic["steps"],
            "recorded": rows(critic["runs"]["shared, seed 0"], ("gold_score", "rm_score", "kl"))},
        "rlvr.json grpo, seed 0": {
            "config": {"seed": 0, "task": "arith", **rlvr["settings"]["grpo"]},
            "steps": rlvr["steps"],
            "recorded": {k: rlvr["runs"]["grpo"]["0"]["series"][k]
                         for k in ("gold_score", "lax_score", "kl")}},
    }


def rerun(name: str, adam: str) -> dict:
    """Train case ``name`` again with the fused or the for-loop Adam; compare it."""
    import functools

    from rlhf_edu import distributed
    from rlhf_edu.distributed import configure_threads
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    configure_threads(1)
    case = cases()[name]
    distributed.adam = functools.partial(distributed.adam, fused=adam == "fused")
    history = RLHFTrainer(PPOConfig(**case["config"])).train(case["steps"], progress=False)
    now = {k: [m[k] for m in history] for k in case["recorded"]}
    first = next((i + 1 for i in range(case["steps"]) if any(
        abs(now[k][i] - case["recorded"][k][i]) > TOLERANCE for k in now)), None)
    return {"case": name, "adam": adam, "first_step_apart": first,
            "recorded_last": {k: fmean(v[-LAST:]) for k, v in case["recorded"].items()},
            "now_last": {k: fmean(v[-LAST:]) for k, v in now.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adam", nargs="+", choices=("fused", "loop"), default=["fused", "loop"])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    info = _common.setup()
    jobs = [(name, adam) for name in cases() for adam in args.adam]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(rerun, *zip(*jobs)))
    print(_common.machine_line(info, f"{args.jobs} processes"))
    for r in results:
        apart = r["first_step_apart"] or "none"
        last = ", ".join(f"{k} {r['recorded_last'][k]:.3f} -> {r['now_last'][k]:.3f}"
                         for k in r["now_last"])
        print(f"{r['case']:34s} {r['adam']:5s}: first step apart {apart}; last {LAST} steps "
              f"{last}")
    path = _common.write_json("drift.json", {"machine": info, "tolerance": TOLERANCE,
                                             "last": LAST, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
