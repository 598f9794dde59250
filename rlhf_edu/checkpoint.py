"""Checkpoints: atomic writes, and loads that check the file matches what it is loaded into."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .model import GPTConfig
from .tasks import get_task
from .validate import check_path, shown


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
    except RuntimeError as e:
        Path(tmp).unlink(missing_ok=True)
        if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
            raise
        # torch's zip writer reports a full disk or a failed write as "[enforce fail at ...]"
        first = str(e).strip().splitlines()[0]
        raise OSError(f"could not write {str(path)!r} (full disk?): {first[:200]}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict, turning a missing, truncated or foreign file into ``ValueError``.

    The load is weights-only (no pickled code runs), and a file it refuses is reported as not
    an rlhf_edu checkpoint, without torch's advice to retry with ``weights_only=False``: that
    would run whatever code the file holds, the wrong step for a file you do not trust.
    """
    path = Path(check_path("checkpoint path", path))
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; expected a checkpoint file "
                         "(.pt)")
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):  # pickle garbage
            raise ValueError(f"checkpoint {str(path)!r} is corrupt or truncated "
                             f"(UnpicklingError: {_first_line(e)})") from None
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", str(e),
                          re.DOTALL)
        detail = " ".join(found.group(1).split()) if found else "refused"
        if "Unsupported global" in detail:  # a pickled class or function: not ours
            raise ValueError(f"checkpoint {str(path)!r} is not an rlhf_edu checkpoint: it holds "
                             f"Python objects that a safe (weights-only) load refuses ({detail}"
                             "); rlhf_edu checkpoints hold only tensors, numbers, strings and "
                             "containers") from None
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or truncated, or not an rlhf_edu "
                         f"checkpoint (a weights-only load refuses it: {detail})") from None
    except Exception as e:  # truncated zip, ...
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or truncated "
                         f"({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(obj, dict) or "kind" not in obj:
        held = f"a dict with keys {list(obj)[:8]}" if isinstance(obj, dict) else \
            f"a {type(obj).__name__}"
        raise ValueError(f"checkpoint {str(path)!r} is not an rlhf_edu checkpoint: it holds "
                         f"{held}, expected a dict with a 'kind' key")
    return obj


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def model_checkpoint(kind: str, config: GPTConfig, state_dict: dict, task: str = "reviews",
                     **meta: Any) -> dict:
    """The dict written for a pretrained model ("sft" or "reward") of ``task``."""
    return {"kind": kind, "config": asdict(config), "vocab": list(get_task(task).vocab),
            "state_dict": state_dict, "meta": meta}


def check_model_checkpoint(ckpt: dict, kind: str, path: str = "checkpoint",
                           task: str = "reviews") -> GPTConfig:
    """Check kind, vocabulary, config and state dict; return the stored :class:`GPTConfig`.

    Every problem is a one-line ``ValueError`` that starts with ``path``: a missing key, a
    value of the wrong type, a config key :class:`GPTConfig` does not know (or lacks), or a
    config value it refuses.
    """
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, expected a checkpoint dict")
    missing = [k for k in ("kind", "config", "vocab", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} has no {', '.join(map(repr, missing))}; expected a checkpoint "
                         "written by `rlhf-edu pretrain` or `rlhf-edu train-rm`")
    if ckpt["kind"] != kind:
        raise ValueError(f"{path} holds a {shown(ckpt['kind'])} model, expected {kind!r}")
    vocab = ckpt["vocab"]
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(w, str) for w in vocab):
        raise ValueError(f"{path}: 'vocab' must be a list of words, got {type(vocab).__name__}")
    expected = get_task(task).vocab
    if list(vocab) != list(expected):
        raise ValueError(f"{path} was trained with a different vocabulary "
                         f"({len(vocab)} words) than task {task!r}'s "
                         f"({len(expected)} words)")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path}: 'state_dict' must map parameter names to tensors")
    return GPTConfig.from_dict(ckpt["config"], where=f"{path}'s config")


# ------------------------------------------------------------------ sharded (DCP) directories

def save_sharded(state_dict: dict, parent: str | os.PathLike, prefix: str) -> str:
    """Every rank writes its shards of ``state_dict`` with ``torch.distributed.checkpoint``.

    The shards go into a new hidden directory ``parent/.{prefix}XXXX`` that rank 0 renames to
    ``parent/{prefix}XXXX`` once every rank has written (a directory without the dot is whole);
    its name is returned on every rank. Without a process group, one process writes it all.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    parent = Path(parent)
    distributed_run = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed_run else 0
    name: list[str | None] = [None]
    if rank == 0:
        parent.mkdir(parents=True, exist_ok=True)
        name = [Path(tempfile.mkdtemp(dir=parent, prefix=f".{prefix}")).name]
    if distributed_run:
        dist.broadcast_object_list(name, src=0)
    tmp, final = parent / name[0], parent / name[0].lstrip(".")
    dcp.save(state_dict, checkpoint_id=tmp, no_dist=not distributed_run)
    # dcp.save returns on rank 0 after every rank's files and the metadata are written
    if rank == 0:
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; checkpoints are ordinary files
        os.replace(tmp, final)
    return final.name


def check_sharded(directory: str | os.PathLike) -> Path:
    """``directory`` as a ``Path`` if it holds a whole DCP checkpoint, else ``ValueError``."""
    directory = Path(directory)
    if not (directory / ".metadata").is_file():
        raise ValueError(f"sharded checkpoint {str(directory)!r} is missing or unfinished (no "
                         ".metadata); its run cannot continue from it")
    return directory


def load_sharded(state_dict: dict, directory: str | os.PathLike) -> None:
    """Read a directory written by :func:`save_sharded` into ``state_dict``, in place.

    Each rank reads the parts of every tensor its ``state_dict`` holds (DTensor shards of any
    world size, or whole tensors); a missing or unfinished directory is a ``ValueError``.
    """
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    directory = check_sharded(directory)
    single = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():  # one process reading shards is what was asked for
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(state_dict, checkpoint_id=directory, no_dist=single)
        except (CheckpointException, RuntimeError, OSError, EOFError, pickle.UnpicklingError,
                KeyError) as e:
            # each rank would print a raw traceback of the reader (a pickle, EOF or DCP error;
            # DCP gathers the ranks' failures into one CheckpointException, a BaseException)
            if isinstance(e, CheckpointException) and e.failures:  # rank -> (error, trace)
                first = next(iter(e.failures.values()))
                e = first[0] if isinstance(first, tuple) else first
            reason = " ".join(str(e).split())[:120]
            raise ValueError(f"the sharded checkpoint {str(directory)!r} is damaged or "
                             f"incomplete ({type(e).__name__}{': ' + reason if reason else ''}); "
                             "remove the run's checkpoint or resume from a good copy") from None
