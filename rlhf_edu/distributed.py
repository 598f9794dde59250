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
