"""ZeRO with PyTorch's FSDP2: the trained models sharded over ranks, sharded checkpoints.

Data parallelism with DDP keeps a whole copy of the actor and the critic, their gradients and
their Adam states on every rank. Sharding keeps ``1/N`` of each on each of N ranks instead:

=========  ===============================  ==========================================
stage      between steps (at rest)          from forward to backward
=========  ===============================  ==========================================
``none``   everything whole (DDP)           everything whole
``zero2``  parameters, gradients and Adam   each block's gathered parameters are kept
           states sharded                   until its backward (one gather per step)
``zero3``  the same, and the frozen reward  each block is gathered for its forward, freed,
           model and reference sharded too  and gathered again for its backward
=========  ===============================  ==========================================

FSDP2 (``torch.distributed.fsdp.fully_shard``) does the work, with one unit per transformer
block, one for the actor and one for the critic (what the blocks leave: embeddings, final
norms, the value head), and the root, the trainer's ``PolicyValue``, whose forward runs both.
A unit is gathered (all-gather) just before it runs and freed after. Each parameter is a
``DTensor`` split
along dimension 0 the way ``torch.chunk`` splits it: rank r holds rows
``[r * c, min((r + 1) * c, d0))`` with ``c = ceil(d0 / N)``, so a ``(1, 128)`` value head on two
ranks is one row on rank 0 and none on rank 1. Gradients are reduce-scattered into the same
shards, and Adam, built over the sharded parameters, keeps states of the shard's shape only.
FSDP2's "zero2" is not DeepSpeed's ZeRO-2 (which keeps whole parameters on every rank):
between steps both FSDP2 stages hold the same shards; they differ while a step runs.

Generation needs whole weights for every new token. Two ways are offered (``Sharded.gather``):

* ``"rollout"`` (default): gather the actor and critic once when the rollout starts and free
  them when it ends: one all-gather per step, whole weights held while generating (what large
  systems do when they copy the trained weights into their inference engine);
* ``"layer"``: gather only the units outside the blocks; each block is gathered by FSDP's
  hooks when it runs, so under zero3 a response of T tokens costs T all-gathers per block,
  at a block's memory.

Checkpoints of sharded runs are written with ``torch.distributed.checkpoint`` (DCP): every rank
writes its own shards, and a checkpoint written by N ranks loads into M ranks, or into a
single process with whole tensors. See :func:`save_checkpoint`.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import distributed
from .checkpoint import atomic_save, check_sharded, load_sharded, save_sharded
from .model import Block
from .validate import check_int

STAGES = ("none", "zero2", "zero3")


# ------------------------------------------------------------------ checks (before any rank)

def check_stage(stage: object) -> str:
    """``stage`` must be one of :data:`STAGES`; returns it."""
    if not isinstance(stage, str) or stage not in STAGES:
        raise ValueError(f"unknown shard stage {stage!r}; expected one of {', '.join(STAGES)}")
    return stage


def check_config(stage: str, placement: str | dict) -> None:
    """A sharded run keeps the four models on each rank's own device: no placement map."""
    check_stage(stage)
    if stage != "none" and placement != "colocate":
        raise ValueError(f"shard {stage!r} with placement {placement!r}: sharding splits every "
                         "model over the ranks' own devices; use placement 'colocate' (or "
                         "shard 'none' to place models on other devices)")


def check_world(stage: str, world: int) -> None:
    """Sharding splits over processes: it needs at least two (``--nproc 2``); ``world`` is the
    number of processes, an int >= 1."""
    check_stage(stage)
    check_int("world", world, minimum=1)
    if stage != "none" and world < 2:
        raise ValueError(f"--shard {stage} splits the models over processes, but this run has "
                         f"{world}; pass --nproc 2 or more (or --shard none)")


# ------------------------------------------------------------------ wrapping

def _fsdp():
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


def _blocks(module: nn.Module | None) -> list[nn.Module]:
    """The transformer blocks inside ``module`` (each GPT's ``h``), in forward order."""
    return [m for m in module.modules() if isinstance(m, Block)] if module is not None else []


def _fsdp_modules(root: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@dataclass
class Sharded:
    """The sharded roots of a run: ``roots["policy"]`` (actor and critic, trained) and, under
    zero3, ``roots["reward"]`` and ``roots["reference"]``."""

    stage: str
    roots: dict[str, nn.Module]
    gather: str = "rollout"
    """how a rollout gathers the trained weights: "rollout" (once) or "layer" (FSDP's hooks)"""
    gathers: int = field(default=0, init=False)
    """whole-model gathers done by :meth:`gathered` (for the benchmark)"""

    @contextlib.contextmanager
    def gathered(self, equal_forwards: bool = False) -> Iterator[None]:
        """Whole trained weights inside the block (see the module docstring); sharded after.

        The units outside the blocks (embeddings, final norms, heads) are always gathered:
        generation calls the GPT's parts directly, never a unit's ``forward``, where FSDP's
        hooks would gather them. Every rank must enter the block together. ``"layer"``
        gathering also needs every rank to run equally many forwards inside
        (``equal_forwards``): a rank whose responses all reached ``<eos>`` stops generating,
        and the all-gathers it skips would pair with the other ranks' next ones.
        """
        if self.gather not in ("rollout", "layer"):
            raise ValueError(f"Sharded.gather must be 'rollout' or 'layer', got {self.gather!r}")
        if self.gather == "layer" and not equal_forwards:
            raise ValueError("Sharded.gather 'layer' gathers each block once per generated "
                             "token, so every rank must generate equally many: use it with "
                             "stop_at_eos=False, or gather 'rollout'")
        root = self.roots["policy"]
        units = [u for u in _fsdp_modules(root)
                 if self.gather == "rollout" or u not in _blocks(root)]
        if self.gather == "rollout":  # keep the blocks whole through every forward in here
            root.set_reshard_after_forward(False)
        try:
            for unit in units:
                unit.unshard()
            self.gathers += 1
            yield
        finally:
            root.set_reshard_after_forward(self.stage == "zero3")
            for unit in _fsdp_modules(root):
                unit.reshard()


def shard_models(models, stage: str, mesh=None, precision: str = "auto", *,
                 root: nn.Module) -> Sharded | None:
    """Wrap the trained actor and critic with FSDP2 (``fully_shard``) per block, then ``root``.

    ``root`` is the module whose ``forward`` runs the actor and the critic together (the
    trainer's ``PolicyValue``), so one forward gathers and one backward reduces both. Under
    "zero3" the frozen reward model and reference are sharded the same way. ``mesh`` defaults
    to all ranks on the actor's device type; ``precision`` follows
    :func:`rlhf_edu.distributed.uses_bf16`: bf16 gathers bf16 weights and reduces gradients in
    fp32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``), while the shards,
    their gradients and Adam stay fp32. Returns ``None`` for stage "none".
    """
    check_stage(stage)
    if stage == "none":
        return None
    fully_shard, MixedPrecisionPolicy = _fsdp()
    device = next(models.actor.parameters()).device
    _, world = distributed.rank_and_world()
    check_world(stage, world)
    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(device.type, (world,))
    bf16 = distributed.uses_bf16(device, precision)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                              reduce_dtype=torch.float32 if bf16 else None)
    after = stage == "zero3"  # reshard_after_forward: free each block's gathered weights
    # FSDP warns that a unit returns views (log-probs, values) in case a caller edits them in
    # place, which would skip its backward hook; the trainer never does
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    roots = {"policy": root}
    if stage == "zero3":  # the frozen models too (a task scored by a verifier has no reward model)
        roots.update({name: m for name, m in (("reward", models.reward),
                                              ("reference", models.reference)) if m is not None})
    for name, module in roots.items():
        # the trained root holds two models: each is a unit of its own, so calling one alone
        # (the critic's values, the actor's log-probs) gathers it through FSDP's hooks
        models_in = [m for m in (models.actor, models.critic) if m is not None] \
            if name == "policy" else []
        for unit in [b for m in models_in or [module] for b in _blocks(m)] + models_in:
            fully_shard(unit, mesh=mesh, reshard_after_forward=after, mp_policy=mp)
        fully_shard(module, mesh=mesh, reshard_after_forward=after, mp_policy=mp)
        _init_root(module)
    return Sharded(stage, roots)


def _init_root(root: nn.Module) -> None:
    """Make ``root`` FSDP's root now and allocate each unit's gathered buffers once.

    FSDP picks as root the first unit whose forward runs; generation runs the blocks before
    the root's forward ever does, so the root is settled here (``_lazy_init`` is what the
    root's first forward would call). Gathering once outside ``torch.inference_mode`` keeps
    the buffers ordinary tensors that training can later use with autograd.
    """
    root._get_fsdp_state()._lazy_init()
    for unit in _fsdp_modules(root):
        unit.unshard()
        unit.reshard()


def gathered_during(method):
    """Decorate a trainer method that runs the actor outside the root's ``forward``
    (generation, values): its ``sharded`` models are gathered for the call, a collective
    call that every rank makes. Ranks generate equally many tokens only in a rollout with
    ``stop_at_eos=False`` (``sample`` always stops at ``<eos>``)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        sharded = getattr(self, "sharded", None)
        if sharded is None:
            return method(self, *args, **kwargs)
        equal = method.__name__ == "rollout" and not self.config.stop_at_eos
        with sharded.gathered(equal_forwards=equal):
            return method(self, *args, **kwargs)
    return wrapper


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: ``DTensor.to_local()``, or ``t`` itself if it is not sharded."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (all-gathered from the shards if ``t`` is a DTensor)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Whether every element of ``tensors`` is finite on every rank: a 0-dim bool tensor.

    Replicated tensors are checked here alone; when some are shards (DTensors), each rank
    checks its own shards and one sum over ranks joins the answers, so all ranks agree.
    """
    from torch.distributed.tensor import DTensor

    # the smallest and the largest x are finite exactly when every x is (NaN propagates
    # through both): one vectorised pass per tensor, where the inf-norm's |x| then max runs
    # about 20x slower on CPU (a shard may be empty: it has no extremes)
    extremes = [m for x in map(local, tensors) if x.numel() for m in torch.aminmax(x)]
    ok = (torch.isfinite(torch.stack(extremes)).all() if extremes else torch.tensor(True)
          ).to(local(tensors[0]).device)
    if any(isinstance(t, DTensor) for t in tensors):
        bad = distributed.all_reduce_sum((~ok).float().reshape(1))
        ok = bad[0] == 0
    return ok


# ------------------------------------------------------------------ bytes per rank

def _nbytes(t: torch.Tensor) -> int:
    t = local(t)
    return t.numel() * t.element_size()


def local_bytes(module: nn.Module, optimizer: torch.optim.Optimizer |
                Iterable[torch.optim.Optimizer] | None = None) -> dict[str, int]:
    """This rank's bytes of ``module``'s parameters and gradients and ``optimizer``'s states.

    Counts each tensor's local part (``DTensor.to_local()``: the unpadded shard, possibly
    empty), so the figures are exact, uneven shards included. ``optimizer`` may be a list.
    Returns ``{"parameters", "gradients", "optimizer", "step_counters"}`` in bytes:
    "optimizer" is the states shaped like the parameters (Adam's two moments), and
    "step_counters" the 0-d ones (Adam's ``step``, one fp32 scalar per parameter tensor), which
    :func:`rlhf_edu.memory.fsdp2_local_bytes` leaves out.
    """
    if optimizer is None:
        opts = []
    elif isinstance(optimizer, torch.optim.Optimizer):
        opts = [optimizer]
    else:
        opts = list(optimizer)
    params = list(module.parameters())  # parameters() yields a shared parameter once
    states = [v for opt in opts for st in opt.state.values() for v in st.values()
              if isinstance(v, torch.Tensor)]
    return {
        "parameters": sum(_nbytes(p) for p in params),
        "gradients": sum(_nbytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(_nbytes(v) for v in states if v.dim() > 0),
        "step_counters": sum(_nbytes(v) for v in states if v.dim() == 0),
    }


def gathered_bytes(root: nn.Module) -> int:
    """Bytes of ``root``'s parameters that are whole right now (not DTensor shards)."""
    from torch.distributed.tensor import DTensor

    return sum(_nbytes(p) for p in root.parameters() if not isinstance(p, DTensor))


# ------------------------------------------------------------------ checkpoints (DCP)

SHARDS_PREFIX = "shards-"


def optimizers(trainer) -> list[torch.optim.Optimizer]:
    """The trainer's optimisers: the actor's, and the critic's when there is a critic."""
    return [opt for opt in (trainer.actor_opt, trainer.critic_opt) if opt is not None]


def _policy_state(trainer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(trainer.policy, optimizers(trainer))
    return {"model": model, "optim": optim}


def save_checkpoint(trainer, path: str | Path) -> Path | None:
    """Write a sharded run's checkpoint; every rank calls it, rank 0 returns ``path``.

    Each rank writes its shards of the actor, the critic and their Adam states with DCP into a
    new directory beside ``path``; only then does rank 0 atomically write ``path`` itself (the
    run's step, config, KL controller, random generators and history, and the directory's name).
    ``path`` is the commit: a save cut short leaves the previous ``path`` and the shards it names
    untouched, and the next save deletes the unnamed leftovers.
    """
    path = Path(path)
    state = trainer.state_dict()  # every rank joins the gather of generator states
    meta = {k: v for k, v in state.items()
            if k not in ("actor", "critic", "actor_opt", "critic_opt")}
    name = save_sharded(_policy_state(trainer), path.parent, SHARDS_PREFIX)
    if trainer.rank != 0:
        return None
    atomic_save({**meta, "shards": name, "shard": trainer.config.shard}, path)
    for old in path.parent.iterdir():  # earlier shards and unfinished temporary directories
        if old.is_dir() and old.name != name and old.name.lstrip(".").startswith(SHARDS_PREFIX):
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(trainer, state: dict, path: str | Path) -> None:
    """Load the actor, the critic and their Adam states of a checkpoint into ``trainer``.

    A sharded checkpoint (``state["shards"]``) loads into any number of ranks and any stage,
    whole tensors in a single process included: DCP reads each rank's part of every tensor. A
    replicated checkpoint (written without sharding) cannot be read into sharded models.
    The config must match except for the stage.
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    if "shards" not in state:
        raise ValueError(f"{path} holds whole (replicated) weights written without --shard; "
                         f"load it into a run without sharding on {state['world_size']} "
                         f"process(es), not into shard {trainer.config.shard!r}")
    mine, theirs = dict(asdict(trainer.config)), dict(state["config"])
    mine.pop("shard", None)
    theirs.pop("shard", None)
    if mine != theirs:
        raise ValueError(f"{path} was written by a run with a different config")
    directory = check_sharded(path.parent / state["shards"])
    target = _policy_state(trainer)
    load_sharded(target, directory)
    set_state_dict(trainer.policy, optimizers(trainer),
                   model_state_dict=target["model"], optim_state_dict=target["optim"])


__all__ = ["STAGES", "Sharded", "shard_models", "local_bytes", "optimizers",
           "gathered_bytes", "all_finite", "save_checkpoint", "load_checkpoint",
           "check_stage", "check_config", "check_world", "gathered_during", "local", "whole"]
