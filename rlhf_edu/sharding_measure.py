"""Each rank's bytes under DDP, zero2 and zero3, measured beside the calculator's prediction.

:func:`measure_ranks` starts CPU ranks with ``torchrun`` (gloo); each runs one PPO step of the
shipped toy actor and critic per stage (``python -m rlhf_edu.sharding_measure --measure``) and
counts the bytes it really holds (:func:`rlhf_edu.sharding.local_bytes`), which
:func:`format_ranks` sets beside :func:`rlhf_edu.memory.fsdp2_local_bytes`' figures. It runs
trainers, so it imports the trainer (downstream of it in the data flow); the trainer imports
:mod:`rlhf_edu.sharding`, which imports neither.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch.distributed as dist

from . import distributed
from .memory import fsdp2_local_bytes
from .sharding import STAGES, check_stage, gathered_bytes, local_bytes, optimizers, whole
from .trainer import PPOConfig, RLHFTrainer
from .validate import check_float

# seconds the measuring ranks may take: one PPO step per stage needs ~10 s; a day is beyond any
# wait, and subprocess.run(timeout=1e308) fails with "OverflowError: cannot convert float infinity"
TIMEOUT_MAX = 86400.0
MEASURE_CONFIG = dict(batch_size=8, response_len=8, ppo_epochs=1, minibatches=1, seed=0)


def predicted(shapes: list[tuple[int, ...]], world: int, rank: int, sharded: bool,
              dtype_bytes: int = 4) -> dict[str, int]:
    """What :func:`rlhf_edu.memory.fsdp2_local_bytes` says ``rank`` holds of parameters with
    ``shapes`` (fp32 shards, gradients and Adam moments), or of whole ones if not ``sharded``.
    Returns ``{"parameters", "gradients", "optimizer"}`` in bytes."""
    b = fsdp2_local_bytes([tuple(s) for s in shapes], world if sharded else 1,
                          rank if sharded else 0, param_bytes=dtype_bytes)
    return {"parameters": b["weights"], "gradients": b["gradients"],
            "optimizer": b["optimizer_states"]}


def _measure_stage(stage: str) -> dict:
    """One PPO step with ``stage`` on this rank; its bytes and the shapes to predict them."""
    trainer = RLHFTrainer(PPOConfig(**MEASURE_CONFIG, shard=stage))
    held = []
    hook = trainer.policy.register_forward_hook(
        lambda module, args, out: held.append(gathered_bytes(module)))
    trainer.step()
    hook.remove()
    trained = local_bytes(trainer.policy, optimizers(trainer))
    frozen_models = [m for m in (trainer.models.reward, trainer.models.reference) if m is not None]
    frozen = sum(local_bytes(m)["parameters"] for m in frozen_models)
    row = {"stage": stage, "rank": trainer.rank, **trained, "frozen": frozen,
           "held_after_forward": held[-1],  # after the last training forward
           "trained_shapes": [tuple(whole(p).shape) for p in trainer.policy.parameters()],
           "frozen_shapes": [tuple(whole(p).shape) for m in frozen_models
                             for p in m.parameters()]}
    trainer.ddp = None
    del trainer
    return row


def _measure_main(out: str, stages: list[str]) -> None:
    """Under torchrun: measure each stage on every rank; rank 0 writes the rows to ``out``."""
    rank, world = distributed.init_from_env("cpu")
    rows = [_measure_stage(stage) for stage in stages]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        Path(out).write_text(json.dumps([r for per_rank in gathered for r in per_rank]))
    distributed.shutdown()


def _prediction(row: dict, world: int) -> dict:
    """The calculator's figures for ``row``'s rank: at rest, and gathered after forward."""
    rank, shapes, stage = row["rank"], row["trained_shapes"], row["stage"]
    return {**predicted(shapes, world, rank, sharded=stage != "none"),
            "frozen": predicted(row["frozen_shapes"], world, rank,
                                sharded=stage == "zero3")["parameters"],
            "held_after_forward": 0 if stage == "zero3" else
            predicted(shapes, world, rank, sharded=False)["parameters"]}


def measure_ranks(stages: Iterable[str] = ("none", "zero2", "zero3"), nproc: int = 2,
                  timeout: float = 300) -> list[dict]:
    """Launch ``nproc`` CPU ranks (torchrun, gloo), run one PPO step of the shipped toy actor
    and critic per stage, and return one row per (stage, rank): the bytes each rank measured
    (``local_bytes``) beside the prediction (``torch.chunk``'s rows, fp32), both in bytes.

    Keys: ``stage, rank, parameters, gradients, optimizer, frozen, held_after_forward`` and
    ``predicted`` (a dict with the same five keys). "held_after_forward" is the trained
    weights still gathered when the root's forward returns: whole under DDP and zero2, none
    under zero3. ``timeout``: seconds for all ranks, in [1, TIMEOUT_MAX].
    """
    stages = [check_stage(s) for s in stages]
    distributed.check_nproc(nproc, "cpu")
    check_float("timeout", timeout, minimum=1, maximum=TIMEOUT_MAX)
    if nproc < 2:
        raise ValueError(f"nproc must be >= 2 to compare sharding stages, got {nproc}")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "rlhf_edu.sharding_measure", "--measure",
               str(out), *stages]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                cwd=tmp)
        if result.returncode != 0 or not out.exists():
            tail = result.stderr.strip().splitlines()[-5:]
            raise RuntimeError(f"the {nproc} measuring ranks failed (exit "
                               f"{result.returncode}): {' | '.join(tail)}")
        rows = json.loads(out.read_text())
    keys = ("parameters", "gradients", "optimizer", "frozen", "held_after_forward")
    return [{**{k: row[k] for k in ("stage", "rank", *keys)},
             "predicted": _prediction(row, nproc)} for row in rows]


def format_ranks(rows: list[dict]) -> str:
    """The rows of :func:`measure_ranks` as a table in kB (1 kB = 1000 bytes), by stage and
    rank; the last column says whether all five figures equal the calculator's, byte for byte,
    and names the prediction of any that does not."""
    keys = ("parameters", "gradients", "optimizer", "frozen", "held_after_forward")
    heads = ("params", "grads", "Adam", "frozen", "gathered")
    lines = [f"{'stage':<6}{'rank':>5}" + "".join(f"{h + ' kB':>13}" for h in heads)
             + "  = calculator"]
    for row in sorted(rows, key=lambda r: (STAGES.index(r["stage"]), r["rank"])):
        misses = [f"{h} {row['predicted'][k] / 1e3:.1f}" for k, h in zip(keys, heads)
                  if row[k] != row["predicted"][k]]
        lines.append(f"{row['stage']:<6}{row['rank']:>5}"
                     + "".join(f"{row[k] / 1e3:>13.1f}" for k in keys)
                     + ("  yes" if not misses else "  no: " + ", ".join(misses)))
    return "\n".join(lines)


__all__ = ["MEASURE_CONFIG", "predicted", "measure_ranks", "format_ranks"]


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--measure":
        _measure_main(sys.argv[2], sys.argv[3:] or list(STAGES))
    else:
        sys.exit("usage: python -m rlhf_edu.sharding_measure --measure OUT.json [STAGE ...] "
                 "(under torchrun; see rlhf_edu.sharding_measure.measure_ranks)")
