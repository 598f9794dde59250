"""Checkpoints: atomic writes, and loads that check the file matches what it is loaded into."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .model import GPTConfig
from .task import VOCAB


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``.

    A crash mid-write leaves the previous file intact: ``os.replace`` is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; checkpoints are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict, turning a missing, truncated or foreign file into ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or truncated "
                         f"({type(e).__name__}: {first_line})") from e
    if not isinstance(obj, dict) or "kind" not in obj:
        raise ValueError(f"checkpoint {str(path)!r} is not an rlhf_edu checkpoint")
    return obj


def model_checkpoint(kind: str, config: GPTConfig, state_dict: dict, **meta: Any) -> dict:
    """The dict written for a pretrained model ("sft" or "reward")."""
    return {"kind": kind, "config": asdict(config), "vocab": list(VOCAB),
            "state_dict": state_dict, "meta": meta}


def check_model_checkpoint(ckpt: dict, kind: str, path: str = "checkpoint") -> GPTConfig:
    """Check kind and vocabulary, return the stored :class:`GPTConfig`."""
    if ckpt.get("kind") != kind:
        raise ValueError(f"{path} holds a {ckpt.get('kind')!r} model, expected {kind!r}")
    if list(ckpt.get("vocab", [])) != list(VOCAB):
        raise ValueError(f"{path} was trained with a different vocabulary "
                         f"({len(ckpt.get('vocab', []))} words) than rlhf_edu.task.VOCAB "
                         f"({len(VOCAB)} words)")
    return GPTConfig(**ckpt["config"])
