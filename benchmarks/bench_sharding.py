"""DDP vs FSDP2 ZeRO-2 vs ZeRO-3 on two CPU ranks: step time, generation, bytes per rank.

    python benchmarks/bench_sharding.py [--nproc 2] [--repeats 5]
    python benchmarks/bench_sharding.py --exit-loop 50 [--budget-s 600]

The first form launches ``--nproc`` gloo ranks under torchrun. Each rank builds one trainer per
variant (the course's step, batch 64 split over the ranks, 4 PPO epochs x 2 minibatches, with
responses of exactly 20 tokens so that every rank generates equally many), and the variants'
steps alternate after a warm-up step. The table gives the median over the repeats of the
trainer's own phase timers (whole step, 2. generation, 6. PPO epochs) and each rank's bytes:
parameters + gradients + Adam states of actor and critic (``rlhf_edu.sharding.local_bytes``),
the frozen models' parameters, and the trained weights still gathered when the last training
forward returns. Variants:

* ``ddp``: ``shard="none"``, whole models on every rank;
* ``zero2`` / ``zero3``: FSDP2 shards, the rollout gathering actor and critic once
  (``Sharded.gather = "rollout"``);
* ``zero2/layer``, ``zero3/layer``: the rollout gathers only the root units and each block is
  gathered by FSDP's hooks when it runs (under zero3 that is once per generated token).

The second form runs ``rlhf-edu train --nproc 2 --shard zero3`` with a tiny budget again and
again and counts the exit codes (a rank that aborts while the process group is torn down shows
up here), stopping early when ``--budget-s`` seconds have passed. Writes
``results/sharding.json`` (the table) or ``results/sharding_exits.json`` (the counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common

VARIANTS = {"ddp": ("none", "rollout"), "zero2": ("zero2", "rollout"),
            "zero3": ("zero3", "rollout"), "zero2/layer": ("zero2", "layer"),
            "zero3/layer": ("zero3", "layer")}
# responses of exactly 20 tokens: per-block gathering during generation ("layer") needs every
# rank to generate equally many tokens, and the variants must share one config
CONFIG = dict(batch_size=64, response_len=20, stop_at_eos=False, ppo_epochs=4, minibatches=2,
              seed=0)
PHASES = {"step": "time_step", "generate": "time_2_generate", "ppo": "time_6_ppo"}


def _trainers(held: dict[str, list[int]]) -> dict:
    """One trainer per variant; ``held[variant]`` collects the gathered bytes after forward."""
    from rlhf_edu import sharding
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    trainers = {}
    for name, (stage, gather) in VARIANTS.items():
        trainer = RLHFTrainer(PPOConfig(**CONFIG, shard=stage))
        if trainer.sharded is not None:
            trainer.sharded.gather = gather
        held[name] = []
        trainer.policy.register_forward_hook(
            lambda module, args, output, name=name: held[name].append(
                sharding.gathered_bytes(module)))
        trainers[name] = trainer
    return trainers


def _row(name: str, trainer, rank: int, held: list[int]) -> dict:
    from rlhf_edu import sharding

    measured = trainer.history[1:]  # after the warm-up step
    trained = sharding.local_bytes(trainer.policy, sharding.optimizers(trainer))
    return {
        "variant": name, "rank": rank,
        **{k: _common.median([m[key] for m in measured]) for k, key in PHASES.items()},
        "model_states": sum(trained.values()), **trained,
        "frozen": sum(sharding.local_bytes(m)["parameters"]
                      for m in (trainer.models.reward, trainer.models.reference)),
        "held_after_forward": held[-1],  # after the last training forward
        "gathers": trainer.sharded.gathers if trainer.sharded is not None else 0,
        "steps": len(trainer.history)}


def rank_main(out: str, repeats: int) -> None:
    """Under torchrun: time the variants on this rank; rank 0 writes every rank's rows."""
    import torch.distributed as dist

    from rlhf_edu import distributed

    _common.setup()
    rank, world = distributed.init_from_env("cpu")
    held: dict[str, list[int]] = {}
    trainers = _trainers(held)
    # the same rotation on every rank (no time-based stopping: ranks must agree on each step)
    _common.interleaved({name: t.step for name, t in trainers.items()}, repeats=repeats)
    rows = [_row(name, t, rank, held[name]) for name, t in trainers.items()]
    everyone: list = [None] * world
    dist.all_gather_object(everyone, rows)
    if rank == 0:
        Path(out).write_text(json.dumps([r for per in everyone for r in per]))
    trainers.clear()  # the wrapped models go before the process group (distributed.shutdown)
    distributed.shutdown()


def _env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(_common.REPO), os.environ.get("PYTHONPATH", "")])}


def bench(nproc: int, repeats: int) -> None:
    info = _common.setup()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", __file__, "--rank-worker", str(out),
               "--repeats", str(repeats)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp)
        if result.returncode != 0:
            sys.exit(f"ranks failed ({result.returncode}):\n{result.stderr[-3000:]}")
        rows = json.loads(out.read_text())
    print(_common.machine_line(info))
    print(f"{nproc} gloo ranks; batch {CONFIG['batch_size']} ({CONFIG['batch_size'] // nproc} "
          f"per rank), responses of {CONFIG['response_len']} tokens, "
          f"{CONFIG['ppo_epochs']} PPO epochs x {CONFIG['minibatches']} minibatches, fp32\n")
    table = [{**r, "model_states_kB": r["model_states"] / 1e3, "frozen_kB": r["frozen"] / 1e3,
              "held_kB": r["held_after_forward"] / 1e3} for r in rows]
    print(_common.format_table(table, [
        ("variant", "variant", ""), ("rank", "rank", "d"), ("step", "step s", ".3f"),
        ("generate", "generate s", ".3f"), ("ppo", "PPO s", ".3f"),
        ("model_states_kB", "params+grads+Adam kB", ",.1f"),
        ("frozen_kB", "frozen kB", ",.1f"), ("held_kB", "gathered after fwd kB", ",.1f")]))
    path = _common.write_json("sharding.json", {"machine": info, "nproc": nproc,
                                                "config": CONFIG, "repeats": repeats,
                                                "rows": rows})
    print(f"\nwrote {path}")


def exit_loop(runs: int, budget_s: float) -> None:
    info = _common.setup()
    codes: Counter = Counter()
    aborts, seconds = 0, []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            if time.perf_counter() - start > budget_s:
                break
            cmd = [sys.executable, "-m", "rlhf_edu.cli", "train", "--nproc", "2", "--shard",
                   "zero3", "--steps", "1", "--batch", "8", "--response-len", "8",
                   "--ppo-epochs", "1", "--minibatches", "1", "--save-every", "0", "--quiet",
                   "--run-dir", str(Path(tmp) / f"run{i}")]
            t = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp)
            seconds.append(time.perf_counter() - t)
            codes[result.returncode] += 1
            aborts += "terminate called" in result.stderr
            print(f"run {i + 1:>3}: exit {result.returncode} ({seconds[-1]:.1f} s)", flush=True)
    done = sum(codes.values())
    print(_common.machine_line(info, "one run after another"))
    print(f"\n{done} of {runs} runs in {time.perf_counter() - start:.0f} s "
          f"(median {_common.median(seconds):.1f} s each): exit codes "
          f"{dict(sorted(codes.items()))}, 'terminate called' in {aborts}")
    path = _common.write_json("sharding_exits.json", {
        "machine": info, "runs_asked": runs, "runs_done": done, "exit_codes": dict(codes),
        "terminate_called": aborts, "median_seconds": _common.median(seconds)})
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="ranks (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="measured steps per variant after one warm-up (default: 5)")
    parser.add_argument("--exit-loop", type=int, default=0, metavar="N",
                        help="instead: run N tiny 2-rank zero3 trainings and count exit codes")
    parser.add_argument("--budget-s", type=float, default=600,
                        help="--exit-loop stops starting runs after this many seconds")
    parser.add_argument("--rank-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker:
        rank_main(args.rank_worker, args.repeats)
    elif args.exit_loop:
        exit_loop(args.exit_loop, args.budget_s)
    else:
        bench(args.nproc, args.repeats)


if __name__ == "__main__":
    main()
