"""Ctrl-C during training: finish the running step, stop, and keep what was trained.

Every training loop (``pretrain``, ``train_reward_model``, ``train_dpo``, and the RLHF
trainer's) runs inside :class:`DeferredInterrupt`: a Ctrl-C (SIGINT) is held until the step
ends, so the model is never left half-updated, and a second Ctrl-C stops at once. The loops
that train one model then raise :class:`TrainingInterrupted`, which carries that model, and
the commands save it with :func:`save_interrupted` (atomically, its metadata saying where it
stopped) and exit 130 with one line.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from torch import nn

from .checkpoint import atomic_save, model_checkpoint


def ctrl_c_raises() -> None:
    """Let Ctrl-C raise ``KeyboardInterrupt`` in a process that was started with SIGINT
    ignored (a background job of a non-interactive shell inherits that), so the commands keep
    their promise: one line and exit 130. A handler someone installed (Jupyter's) is kept; only
    the main thread can set one."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class DeferredInterrupt:
    """Hold a Ctrl-C (SIGINT) until the running step ends; a second Ctrl-C stops at once.

    A step interrupted halfway would leave the model updated by part of an optimiser step;
    holding the signal to the end of the step keeps every saved state a whole step. The loop
    reads ``requested`` after each step. Only the main thread can receive signals; elsewhere
    this does nothing.
    """

    def __enter__(self) -> DeferredInterrupt:
        self.requested = False
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt("interrupted twice: stopped in the middle of a step")
        self.requested = True
        print("\nCtrl-C: finishing this step, then stopping (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._installed:  # a handler installed outside Python reads as None: use Python's
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.default_int_handler)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training loop between two steps; ``model`` is the model trained so
    far (in eval mode), after ``step`` of ``total`` optimiser steps, in pass ``epoch``.

    It is a ``KeyboardInterrupt``, so a notebook or a script stops, and the model is not lost:
    ``except TrainingInterrupted as e: e.model``.
    """

    def __init__(self, what: str, model: nn.Module, step: int, total: int,
                 epoch: int) -> None:
        self.what, self.model = what, model
        self.step, self.total, self.epoch = step, total, epoch
        super().__init__(f"{what} interrupted after step {step} of {total} (epoch {epoch})")

    @property
    def where(self) -> dict[str, int]:
        """Where training stopped, as checkpoint metadata records it."""
        return {"step": self.step, "of": self.total, "epoch": self.epoch}


def save_interrupted(e: TrainingInterrupted, out: str | Path, kind: str,
                     **meta: object) -> KeyboardInterrupt:
    """Save ``e.model`` to ``out`` atomically as a ``kind`` checkpoint ("sft" or "reward")
    whose metadata holds ``meta`` and ``interrupted``: the step, of how many, and the epoch.
    Returns the ``KeyboardInterrupt`` to raise: its one line says what was saved where."""
    model = e.model
    config = model.config if hasattr(model, "config") else model.gpt.config
    atomic_save(model_checkpoint(kind, config, model.state_dict(), **meta,
                                 interrupted=e.where), out)
    return KeyboardInterrupt(f"{e}; saved the model trained so far to {out}")


__all__ = ["ctrl_c_raises", "DeferredInterrupt", "TrainingInterrupted", "save_interrupted"]
