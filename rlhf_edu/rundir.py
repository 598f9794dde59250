"""A run directory: one writer at a time, and no state it can be left in is a dead end.

A run writes ``config.json`` (its :class:`~rlhf_edu.trainer.PPOConfig`), ``metrics.jsonl`` (a
line per step), ``checkpoint.pt`` (the last saved state), ``training.png``, and holds an
exclusive lock on ``.lock`` while it runs (``filelock``: the operating system's lock on every
platform, freed when the process ends, however it ends; ``.pid`` names the holder), so a second
run started on the same directory is refused at once instead of interleaving its steps with the
first one's. A sharded run (``--shard``)
also writes ``shards-XXXX/``, every rank's part of the trained models (DCP), which its
``checkpoint.pt`` names; resuming it takes the same ``--shard``.

What a directory may hold when a run starts, and what happens:

==========================================  ==================  ==========================
holds                                       fresh start         ``resume``
==========================================  ==================  ==========================
nothing (or does not exist)                 starts              refused: nothing to resume
a run without a checkpoint (killed early)   refused: resume it  restarts it from step 0
a checkpoint                                refused: resume it  continues from it
another run's config                        refused             refused, nothing written
==========================================  ==================  ==========================
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from .checkpoint import safe_load
from .validate import check_int

CONFIG, METRICS, CHECKPOINT, LOCK, PID = ("config.json", "metrics.jsonl", "checkpoint.pt",
                                         ".lock", ".pid")


def _plain(config: dict) -> dict:
    """The config as JSON sees it (tuples become lists), so saved and new ones compare."""
    return json.loads(json.dumps(config))


def _differences(theirs: dict, mine: dict) -> dict:
    keys = sorted(set(theirs) | set(mine))
    return {k: (theirs.get(k), mine.get(k)) for k in keys if theirs.get(k) != mine.get(k)}


def check(path: str | Path, config: dict, resume: bool) -> int | None:
    """Raise ``ValueError`` unless a run with ``config`` may start (or resume) in ``path``.

    Reads only. Returns the step of the checkpoint a resumed run continues from, or ``None``
    when it starts from step 0.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run directory {str(path)!r} is a file, not a directory")
    present = [name for name in (CONFIG, METRICS, CHECKPOINT) if (path / name).exists()]
    mine = _plain(config)
    if not resume:
        if present:
            raise ValueError(f"run directory {str(path)!r} already holds a run "
                             f"({', '.join(present)}); pass --resume to continue it or choose "
                             "another --run-dir")
        return None
    if not present:
        raise ValueError(f"--resume: {str(path)!r} holds no run to continue (no config.json, "
                         "metrics.jsonl or checkpoint.pt); start one without --resume")
    if CHECKPOINT in present:
        state = safe_load(path / CHECKPOINT)
        if state.get("kind") != "rlhf-run" or not isinstance(state.get("config"), dict):
            raise ValueError(f"{str(path / CHECKPOINT)!r} is not an RLHF run checkpoint")
        theirs = _plain(state["config"])  # the step of a damaged file: one line naming it
        step = check_int(f"the step in {str(path / CHECKPOINT)!r}", state.get("step", 0),
                         minimum=0, maximum=2**63 - 1)
    elif CONFIG in present:
        try:
            theirs = json.loads((path / CONFIG).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(path / CONFIG)!r} is not valid JSON ({e}); delete it to "
                             "restart the run from step 0") from e
        if not isinstance(theirs, dict):
            raise ValueError(f"{str(path / CONFIG)!r} holds a {type(theirs).__name__}, not a "
                             "run's settings; delete it to restart the run from step 0")
        step = None
    else:  # killed before it wrote anything but metrics: nothing to compare with
        return None
    stage, saved = mine.get("shard", "none"), theirs.get("shard", "none")
    if stage != saved:  # the checkpoint's layout: DCP shards, or one file of whole tensors
        how = f"with --shard {saved}" if saved != "none" else "without --shard"
        raise ValueError(f"run directory {str(path)!r} holds a run trained {how}; resume it "
                         f"{how} (this run asks for shard {stage!r})")
    diff = _differences(theirs, mine)
    if diff:
        raise ValueError(f"run directory {str(path)!r} holds a different run (config differs "
                         f"in {diff}); resume it with its own settings or choose another "
                         "--run-dir")
    return step


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """The directory of one run, locked for as long as this object holds it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # not thread-local: a trainer's finalizer may release it from another thread
        self._lock = FileLock(self.path / LOCK, thread_local=False)

    def _try_lock(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    def _holder(self) -> str:
        """The pid the holder wrote, or "?" (it has not written it yet)."""
        try:
            text = (self.path / PID).read_text().strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "?"

    def busy(self) -> int | None:
        """The process id of the run that holds the directory now (-1 if it has not said),
        or ``None`` if no run holds it."""
        if not (self.path / LOCK).exists():
            return None
        if self._try_lock():
            self._lock.release()
            return None
        holder = self._holder()
        return int(holder) if holder != "?" else -1

    def acquire(self) -> None:
        """Create the directory and take its lock; ``ValueError`` if another run holds it."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"run directory {str(self.path)!r} is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        if not self._try_lock():
            raise ValueError(f"run directory {str(self.path)!r} is in use by another run "
                             f"(process {self._holder()}); wait for it to end or choose another "
                             "--run-dir")
        try:
            _write_text(self.path / PID, f"{os.getpid()}\n")
        except BaseException:
            self._lock.release(force=True)
            raise

    def release(self) -> None:
        """Let the next run in (the operating system also does this when the process ends)."""
        if self._lock.is_locked:
            (self.path / PID).unlink(missing_ok=True)  # before the next run can write its own
            self._lock.release(force=True)

    def claim(self, config: dict, resume: bool) -> int | None:
        """Lock, check (:func:`check`), then make the directory hold this run.

        A fresh run writes ``config.json``; a resumed run without a checkpoint starts again
        from step 0 (its partial ``metrics.jsonl`` is cleared). Nothing is written unless every
        check passed. Returns the checkpoint step to resume from, or ``None``.
        """
        self.acquire()
        try:
            step = check(self.path, config, resume)
            if step is None:
                (self.path / METRICS).unlink(missing_ok=True)
            _write_text(self.path / CONFIG, json.dumps(_plain(config), indent=2))
        except BaseException:
            self.release()
            raise
        return step
