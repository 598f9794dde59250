"""The tasks the trainer can learn, one entry each: what a prompt is, what the SFT data is, how
a response is judged.

===========  ===============================  =============================  ==================
task         prompts                          judged by                      reward model
===========  ===============================  =============================  ==================
``reviews``  review openings (``the food``)   the hidden gold score          learned, shipped
``arith``    ``3 7 2 + 4 8 9 =``              a verifier (exact sum), or     none: the verifier
                                              a lax one that can be fooled   is the reward
===========  ===============================  =============================  ==================

A task is a :class:`Task`; :data:`TASKS` maps names to them and :func:`get_task` looks one up.
Models and trainer read the task's vocabulary, prompts, scorers and metrics from here and from
nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import arith, task
from .validate import shown


@dataclass(frozen=True)
class Task:
    """One task: ``vocab`` (words, specials first), ``sample_prompts(n, generator)``,
    ``corpus(n, seed)`` (SFT texts), ``scorers`` (name -> score of one prompt + response
    text; "gold" is the task's own judge), ``metrics(texts)`` (the means every report prints,
    ``gold_score`` among them), whether a learned reward model ships (``reward_model``), and
    the stem of its shipped weights (``sft.pt`` for reviews, ``arith_sft.pt``)."""

    name: str
    description: str
    vocab: tuple[str, ...]
    sample_prompts: Callable[[int, torch.Generator | None], list[str]]
    corpus: Callable[[int, int], list[str]]
    scorers: dict[str, Callable[[str], float]]
    metrics: Callable[[list[str]], dict[str, float]]
    reward_model: bool
    weights_prefix: str
    corpus_size: int
    epochs: int

    def tokenizer(self) -> task.Tokenizer:
        """The word-level tokenizer over this task's vocabulary."""
        return task.Tokenizer(self.vocab)

    def score(self, name: str, texts: list[str]) -> list[float]:
        """Each text's score by the scorer ``name`` (``"gold"``, or ``"lax"`` for arith)."""
        if name not in self.scorers:
            raise ValueError(f"task {self.name!r} has no scorer {shown(name)}; expected one of "
                             f"{', '.join(self.scorers)}")
        return [self.scorers[name](t) for t in texts]


TASKS: dict[str, Task] = {
    "reviews": Task(
        "reviews", "restaurant reviews from a small grammar; a learned reward model and a "
        "hidden gold score", task.VOCAB, task.sample_prompts, task.sample_corpus,
        {"gold": task.gold_score}, task.text_metrics, True, "", 30_000, 4),
    "arith": Task(
        "arith", "three-digit additions, answered directly or column by column; a verifier "
        "(exact sum) instead of a reward model", arith.VOCAB, arith.sample_prompts,
        arith.sample_corpus, {"gold": arith.verify, "lax": arith.verify_lax},
        arith.text_metrics, False, "arith_", 40_000, 3),
}
"""the tasks by name"""


def get_task(name: str) -> Task:
    """The task called ``name``; a one-line ``ValueError`` naming the known ones otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {shown(name)}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def task_of_vocab(vocab: tuple[str, ...] | list[str]) -> Task | None:
    """The task whose vocabulary is ``vocab`` (a checkpoint records it), or None."""
    return next((t for t in TASKS.values() if list(t.vocab) == list(vocab)), None)


__all__ = ["Task", "TASKS", "get_task", "task_of_vocab"]
