"""Which models can you drop? PPO, GRPO, Dr. GRPO, RLOO, REINFORCE++, rejection sampling and
DPO recorded on an equal budget over three seeds, for notebook 09.

    python benchmarks/methods.py                      # every run (see "Time" below)
    python benchmarks/methods.py --jobs 1             # one process (slower, steadier step times)
    python benchmarks/methods.py --steps 3 --seeds 0 --extra-seeds 0 --dpo-evals 2 --out m.json
    python benchmarks/methods.py --only "grpo, seed 1" "dpo, seed 2"   # re-record, merge
    python benchmarks/methods.py --list

Budget (the same for every online method): ``--steps`` steps (60) of 64 generated responses,
3,840 samples per run; every batch gives 4 epochs x 2 minibatches = 8 actor updates.

* **PPO** (``advantage_estimator="gae"``, today's defaults: separate critic, beta 0.05, k1 in
  the reward), one response per prompt.
* **GRPO, Dr. GRPO, RLOO**: groups of G = 8 (8 prompts x 8 responses per step). G = 8 is TRL's
  default ``num_generations``; with a batch of 64 it keeps 8 different prompts per step while
  each baseline is a mean over 7-8 responses (with G = 2 the group std is a single difference,
  with G = 64 a step would see one prompt). Each takes its paper's beta, KL estimator and
  KL placement from ``PPOConfig`` (see ``rlhf_edu.trainer.METHOD_DEFAULTS``).
* **REINFORCE++**: 64 prompts, one response each (the batch is the baseline), beta 0.01.
* **Rejection sampling**: 16 prompts x best-of-4 = 64 responses per step; fine-tuned on the 16
  winners for 4 epochs x 2 minibatches (8 updates per batch, as the others).
* **DPO** (offline, beta 0.1): no responses are generated. It gets the labelled data the reward
  model got: the same preference pairs (the ones ``rlhf-edu train-rm`` trained the shipped RM on,
  rebuilt from the RM checkpoint's seed and pair count) for the same number of epochs (2) and
  batch (32 pairs). The online methods spend that data through the RM and then 3,840 samples on
  top; DPO spends nothing more. It is evaluated with ``rlhf_edu.dpo.evaluate_policy`` (640 fresh
  samples, as many as the online methods' last 10 steps) after ``--dpo-evals`` training steps;
  a run of k steps is exactly the first k steps of a longer one (same order, same updates), so
  each evaluation point trains from the start for k steps.
* Extra GRPO runs (``--extra-seeds``, default all three): beta = 0 on the learned RM, and the
  gold reward (``reward="gold"``, verifiable) at beta = 0 and at GRPO's beta 0.04.

Each run stores its config, the models it holds (``rlhf_edu.models.describe``) and one dict per
step: ``gold_score``, ``rm_score``, ``kl`` (per response, the method's own estimator: k1, or k3
for the GRPOs; both are unbiased), ``well_formed``, ``repetition`` (for rejection sampling both
are measured on the chosen samples), ``entropy`` where the method has one, ``time_step`` and
``seconds`` (cumulative), ``samples`` (generated so far) and ``optimizer_steps`` (actor updates so
far), ``adv_abs_mean`` (mean |advantage| per response) and, for the group methods,
``group_std`` (the mean over a step's groups of the std of their G scores, what GRPO divides
by), and a sample text every 10 steps; DPO's evaluations also carry ``pairs_seen``, and its
run its training log (``loss``, ``reward_accuracy``, ``reward_margin`` every 10 steps).
Writes ``rlhf_edu/data/methods.json`` after every run (an interrupted recording keeps what it
finished) and prints a table: the mean of the last 10 steps, mean +- standard deviation over
the seeds.

Time: 10 minutes with ``--jobs 2`` on a quiet 2-core VM (one thread per process, nothing else
running; the shipped file, recorded 2026-12-02 with the fused Adam). DPO is the longest run
(8,000 pairs to draw, the reference's log-probs of all of them, 500 training steps, 3
evaluations). A PPO step takes ~0.7-0.9 s there; with other work on the machine a step can take
several times as long, and the recorded step times carry that load, so compare methods by
their quickest steps when the recording was not quiet.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import _common
import torch

from rlhf_edu.checkpoint import safe_load
from rlhf_edu.dpo import DPOPairs, dpo_pairs, evaluate_policy, train_dpo
from rlhf_edu.models import build_models, describe, load_pretrained, weights_path
from rlhf_edu.plots import end_mean
from rlhf_edu.reward_model import make_preference_pairs
from rlhf_edu.sampling import rejection_sampling
from rlhf_edu.task import sample_prompts
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

OUT = Path(__file__).resolve().parent.parent / "rlhf_edu" / "data" / "methods.json"
STEPS = 60
BATCH = 64
GROUP = 8
SEEDS = (0, 1, 2)
LAST = 10  # the table's "end": mean of the last LAST steps
SAMPLE_EVERY = 10  # keep a sample text every SAMPLE_EVERY steps (and at the last)
RM_HELDOUT = 1000  # `rlhf-edu train-rm --heldout` default: pairs drawn after the training ones
DPO_EVALS = (125, 500)
DPO_EVAL_SAMPLES = LAST * BATCH
DPO = dict(beta=0.1, loss="sigmoid", batch_size=32, lr=1e-4)

# method -> (kind, settings): PPOConfig fields for "online", keyword arguments otherwise
METHODS: dict[str, tuple[str, dict]] = {
    "ppo": ("online", dict(advantage_estimator="gae")),
    "grpo": ("online", dict(advantage_estimator="grpo", group_size=GROUP)),
    "dr_grpo": ("online", dict(advantage_estimator="dr_grpo", group_size=GROUP)),
    "rloo": ("online", dict(advantage_estimator="rloo", group_size=GROUP)),
    "reinforce_pp": ("online", dict(advantage_estimator="reinforce_pp")),
    "rejection_sampling": ("rejection sampling",
                           dict(prompts_per_step=16, n=4, epochs=4, minibatches=2)),
    "dpo": ("dpo", dict(DPO)),
}
EXTRAS: dict[str, tuple[str, dict]] = {
    "grpo_beta0": ("online", dict(advantage_estimator="grpo", group_size=GROUP, beta=0.0)),
    "grpo_gold": ("online", dict(advantage_estimator="grpo", group_size=GROUP, reward="gold")),
    "grpo_gold_beta0": ("online", dict(advantage_estimator="grpo", group_size=GROUP,
                                       reward="gold", beta=0.0)),
}
LABELS = {"ppo": "PPO", "grpo": "GRPO", "dr_grpo": "Dr. GRPO", "rloo": "RLOO",
          "reinforce_pp": "REINFORCE++", "rejection_sampling": "rejection sampling",
          "dpo": "DPO", "grpo_beta0": "GRPO, β = 0 (learned RM)",
          "grpo_gold": "GRPO, gold reward, β = 0.04", "grpo_gold_beta0": "GRPO, gold reward, β = 0"}
STEP_KEYS = ("step", "samples", "optimizer_steps", "gold_score", "rm_score", "kl",
             "well_formed", "repetition", "entropy", "response_len", "beta", "time_step",
             "group_std", "adv_abs_mean")
TABLE_KEYS = ("gold_score", "rm_score", "kl", "well_formed", "repetition")


def run_name(method: str, seed: int) -> str:
    return f"{method}, seed {seed}"


def run_table(seeds: Sequence[int] = SEEDS, extra_seeds: Sequence[int] = SEEDS
              ) -> dict[str, dict]:
    """Every run by name: ``{"method", "kind", "seed", "settings"}``."""
    table = {}
    for methods, run_seeds in ((METHODS, seeds), (EXTRAS, extra_seeds)):
        for method, (kind, settings) in methods.items():
            for seed in sorted(set(run_seeds)):
                table[run_name(method, seed)] = {"method": method, "kind": kind, "seed": seed,
                                                 "settings": dict(settings)}
    return table


def _compact(x: object) -> object:
    """Floats to 6 significant digits (the file stays small; plots need no more)."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _compact(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_compact(v) for v in x]
    return x


def slim(history: list[dict], samples: int, updates: int) -> list[dict]:
    """The recorded keys of each step, with cumulative ``samples``, ``optimizer_steps`` and
    ``seconds`` (from the run's settings and its step times; a count the run recorded itself
    must agree)."""
    out, seconds = [], 0.0
    for m in history:
        seconds += m["time_step"]
        counts = {"samples": m["step"] * samples, "optimizer_steps": m["step"] * updates}
        for k, v in counts.items():
            if k in m and m[k] != v:
                raise ValueError(f"step {m['step']} recorded {k}={m[k]}, its settings give {v}")
        row = {k: m[k] for k in STEP_KEYS if k in m} | counts | {"seconds": seconds}
        if m["step"] % SAMPLE_EVERY == 0 or m is history[-1]:
            row["sample"] = m["sample"]
        out.append(row)
    return out


def record_online(spec: dict, steps: int) -> dict:
    """A PPO-family run: ``steps`` steps of :class:`RLHFTrainer`."""
    cfg = PPOConfig(seed=spec["seed"], batch_size=BATCH, **spec["settings"])
    trainer = RLHFTrainer(cfg)
    history = trainer.train(steps, progress=False)
    return {"config": asdict(cfg), "models": describe(trainer.models),
            "history": slim(history, cfg.batch_size, cfg.ppo_epochs * cfg.minibatches)}


def record_rejection(spec: dict, steps: int) -> dict:
    """Best-of-n fine-tuning; holds actor, reward model and (only to measure KL) reference."""
    s = spec["settings"]
    models = build_models("none")
    history = rejection_sampling(models, steps, seed=spec["seed"], **s)
    rows = describe(models)
    for row in rows:
        row["needed"] = row["role"] != "reference"  # the reference only measures the KL
    return {"config": dict(s, seed=spec["seed"]), "models": rows,
            "history": slim(history, s["prompts_per_step"] * s["n"],
                            s["epochs"] * s["minibatches"])}


@functools.lru_cache(maxsize=1)
def rm_training_pairs() -> tuple[DPOPairs, dict]:
    """The preference pairs the shipped reward model was trained on, as DPO pairs, and the
    RM checkpoint's training settings (``rlhf-edu train-rm`` draws pairs + held-out pairs with
    its seed and keeps the first ``pairs`` for training)."""
    meta = safe_load(weights_path("reward"))["meta"]
    n, seed = meta["pairs"], meta["seed"]
    everything = make_preference_pairs(load_pretrained("sft"), n + RM_HELDOUT, seed=seed)
    train, _ = everything.split(n)
    # make_preference_pairs draws its prompts first, from a generator seeded with `seed`
    prompts = sample_prompts(n + RM_HELDOUT, torch.Generator().manual_seed(seed))[:n]
    return dpo_pairs(train, prompts), {"pairs": n, "epochs": meta["epochs"], "seed": seed}


def record_dpo(spec: dict, evals: tuple[int, ...]) -> dict:
    """DPO on the reward model's training pairs, evaluated after each of ``evals`` steps (and
    at step 0, the SFT actor); the run's own step count is the largest of ``evals``."""
    s, seed = spec["settings"], spec["seed"]
    pairs, rm_meta = rm_training_pairs()
    sft, reward = load_pretrained("sft"), load_pretrained("reward")
    history, training = [], []
    for k in (0, *sorted(set(evals))):
        start = time.perf_counter()
        if k == 0:
            policy, log = sft, []
        else:
            policy, log = train_dpo(sft, pairs, steps=k, seed=seed, **s)
        seconds = time.perf_counter() - start
        metrics = evaluate_policy(policy, sft, reward, n=DPO_EVAL_SAMPLES, seed=seed)
        row = {"step": k, "samples": 0, "optimizer_steps": k, "pairs_seen": k * s["batch_size"],
               **{key: metrics[key] for key in TABLE_KEYS + ("response_len",)},
               "seconds": seconds, "time_step": seconds / k if k else 0.0,
               "sample": metrics["samples"][0]}
        history.append(row)
        training = log or training
    n = len(pairs)
    epochs = max(evals) * s["batch_size"] / n
    models = [r for r in describe(build_models("none")) if r["role"] != "reward"]
    return {"config": dict(s, seed=seed, steps=max(evals), pairs=n, epochs=round(epochs, 3),
                           rm_training=rm_meta, eval_samples=DPO_EVAL_SAMPLES),
            "models": models, "history": history,
            "training": [{k: m[k] for k in ("step", "loss", "reward_accuracy", "reward_margin")}
                         for m in training if m["step"] % SAMPLE_EVERY == 0]}


def record(name: str, spec: dict, steps: int, dpo_evals: tuple[int, ...]) -> tuple[str, dict]:
    """Record one run (in a worker process): ``(name, run)``."""
    _common.setup()  # one thread in this process too
    start = time.perf_counter()
    if spec["kind"] == "online":
        run = record_online(spec, steps)
    elif spec["kind"] == "rejection sampling":
        run = record_rejection(spec, steps)
    else:
        run = record_dpo(spec, dpo_evals)
    run = {k: spec[k] for k in ("method", "kind", "seed")} | run
    run["wall_seconds"] = time.perf_counter() - start
    return name, _compact(run)


def late(run: dict, key: str, last: int = LAST) -> float:
    """A run's end: the mean of ``key`` over its last ``last`` steps (DPO: its last
    evaluation, which already averages ``last`` x 64 samples)."""
    return end_mean(run["history"], key, 1 if run["kind"] == "dpo" else last)


def print_table(data: dict) -> None:
    print(_common.machine_line(data["machine"], f"{data['machine']['jobs']} runs at a time"))
    by_method: dict[str, list[dict]] = {}
    for run in data["runs"].values():
        by_method.setdefault(run["method"], []).append(run)
    print(f"end of each run (mean of the last {LAST} steps; DPO: its last evaluation), "
          "mean +- std over seeds")
    head = "".join(f"{k:>17}" for k in TABLE_KEYS)
    print(f"{'method':<28}{'seeds':>6}{head}{'s/step':>9}{'quickest':>9}{'samples':>9}")
    for method, runs in by_method.items():
        cells = []
        for key in TABLE_KEYS:
            xs = [late(r, key) for r in runs]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):>+10.3f} +-{sd:>5.3f}")
        times = [m["time_step"] for r in runs for m in r["history"] if m["time_step"] > 0]
        # median, and the quickest tenth of the steps: the least disturbed by other work
        quick = statistics.quantiles(times, n=10)[0] if len(times) > 1 else times[0]
        samples = runs[0]["history"][-1]["samples"]
        print(f"{LABELS[method]:<28}{len(runs):>6}{''.join(cells)}"
              f"{statistics.median(times):>9.2f}{quick:>9.2f}{samples:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per online run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=list(SEEDS),
                        help="seeds of the extra GRPO runs (beta 0, gold reward)")
    parser.add_argument("--dpo-evals", type=int, nargs="+", default=list(DPO_EVALS),
                        help="DPO steps after which the policy is evaluated; the last is its "
                             "length")
    parser.add_argument("--jobs", type=int, default=2, help="runs recorded at once")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="record only these runs and merge them into --out")
    parser.add_argument("--list", action="store_true", help="print the run names and exit")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for name in ("steps", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.dpo_evals) < 1:
        parser.error(f"--dpo-evals must be >= 1, got {args.dpo_evals}")
    table = run_table(args.seeds, args.extra_seeds)
    if args.list:
        print("\n".join(table))
        return
    unknown = [n for n in args.only or () if n not in table]
    if unknown:
        parser.error(f"unknown run name(s) {unknown}; see --list")
    names = args.only or list(table)
    info = _common.setup()
    data = {"runs": {}}
    if args.only:
        if not args.out.is_file():
            parser.error(f"--only merges into an existing file; {args.out} does not exist")
        data = json.loads(args.out.read_text())
        if data["steps"] != args.steps:
            parser.error(f"{args.out} has {data['steps']}-step runs, got --steps {args.steps}")
    data.update(steps=args.steps, batch_size=BATCH, group_size=GROUP, last=LAST,
                labels=LABELS, machine=info | {"jobs": args.jobs})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the longest runs first, so the pool does not end on one long run
    cost = {"online": 2, "dpo": 3, "rejection sampling": 1}
    names.sort(key=lambda n: (-cost[table[n]["kind"]] - (table[n]["method"] == "ppo"), n))
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(record, n, table[n], args.steps, tuple(args.dpo_evals))
                   for n in names]
        for future in as_completed(futures):
            name, run = future.result()
            data["runs"][name] = run
            data["runs"] = {n: data["runs"][n] for n in table if n in data["runs"]}
            args.out.write_text(json.dumps(data, indent=1) + "\n")
            print(f"{time.perf_counter() - start:6.0f} s  recorded {name} in "
                  f"{run['wall_seconds']:.0f} s", flush=True)
    if not args.only:  # the time of a whole recording
        data["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print_table(data)
    print(f"wrote {args.out} ({len(data['runs'])} runs) in {time.perf_counter() - start:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
