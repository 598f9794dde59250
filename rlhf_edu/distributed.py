"""Where the computation runs: threads, device and seeds, decided in one place."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default: ``$RLHF_EDU_THREADS`` or 1) and return the number.

    The toy models are too small to gain from a second thread, and OpenMP's spin-waiting makes a
    step 10-50x slower whenever another process is busy on a 2-core machine, so one thread is the
    default. Benchmarks print this value with their tables.
    """
    n = n if n is not None else int(os.environ.get("RLHF_EDU_THREADS", "1"))
    if n <= 0:
        raise ValueError(f"threads must be positive, got {n}")
    torch.set_num_threads(n)
    return n


def select_device(device: str = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; otherwise the named device, checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} "
                             "CUDA device(s) visible")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- torch.distributed

ROLES = ("actor", "critic", "reward", "reference")


def init_from_env() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(rank, world_size)``; ``(0, 1)`` without ``torchrun``. The backend is nccl when
    CUDA is available and gloo otherwise, so the same code runs as CPU processes in tests.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl" and world > torch.cuda.device_count():
            raise ValueError(f"{world} processes requested but only {torch.cuda.device_count()} "
                             "CUDA device(s) are visible (one process per GPU with nccl)")
        dist.init_process_group(backend)
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (in place, also returned); a no-op in a single process."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def shutdown() -> None:
    """Leave the process group cleanly.

    Callers drop their DDP-wrapped models first; collecting garbage before
    ``destroy_process_group`` avoids an abort at interpreter exit that gloo otherwise shows in
    about one run in three.
    """
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str = "auto") -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under torchrun with CUDA, else as named."""
    dev = select_device(device)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = select_device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    return dev


def resolve_placement(placement: str | dict, device: torch.device) -> dict[str, torch.device]:
    """Device of each role: "colocate" puts all four on ``device``; a dict names them.

    Roles missing from the dict stay on ``device``. The actor and the critic must share a
    device: PPO updates them with one loss, and the critic may read the actor's hidden states.
    """
    if placement == "colocate":
        return dict.fromkeys(ROLES, device)
    if not isinstance(placement, dict):
        raise ValueError(f"placement must be 'colocate' or a dict role -> device, "
                         f"got {placement!r}")
    unknown = sorted(set(placement) - set(ROLES))
    if unknown:
        raise ValueError(f"placement names unknown role(s) {unknown}; roles are "
                         f"{', '.join(ROLES)}")
    devices = {role: select_device(str(placement.get(role, device))) for role in ROLES}
    if devices["actor"] != devices["critic"]:
        raise ValueError(f"actor ({devices['actor']}) and critic ({devices['critic']}) must be "
                         "on the same device: one PPO loss updates both")
    return devices


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; on CPU a disabled context (fp32 keeps CPU runs bit-exact)."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=enabled and device.type == "cuda")
