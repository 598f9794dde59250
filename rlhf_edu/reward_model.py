"""The reward model: preference pairs, the Bradley-Terry ranking loss, training and evaluation.

Human labellers are played by :func:`rlhf_edu.task.gold_score` through a Bradley-Terry coin flip:
of two responses to the same prompt, ``a`` is preferred with probability
``sigmoid(sharpness * (gold(a) - gold(b)))``, so labels are noisy the way human labels are.
The reward model is the SFT GPT with a scalar head, trained on
``loss = -log sigmoid(r_chosen - r_rejected)`` (Ouyang et al. 2022, eq. 1).

It only ever sees what the SFT model writes, which is nearly always well-formed: it learns to
count positive words, and nothing stops it from loving ``the food was great great great !``.
That blind spot is the reward hack that the KL penalty has to hold back.

Measuring a reward model: :func:`pairwise_accuracy` against the gold order or the labels,
:func:`label_noise` (its complement is the ceiling against the labels), a
:class:`TrainingCurve` recorded through ``train_reward_model(callback=...)``, and the
calibration of ``sigmoid(r_a - r_b)`` (:func:`reliability_bins`, :func:`calibration_bins`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .distributed import adam
from .interrupt import DeferredInterrupt, TrainingInterrupted
from .model import GPT
from .models import RewardModel
from .pretrain import encode_texts, pad_right
from .task import Tokenizer, gold_score, review_texts, sample_prompts
from .validate import (
    BINS_MAX,
    COEF_MAX,
    COUNT,
    COUNT_MAX,
    EPOCHS,
    LR,
    check_bool,
    check_choice,
    check_finite,
    check_float,
    check_floating,
    check_instance,
    check_int,
    check_result,
    check_same_shape,
    check_seed,
    derived_seed,
)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_chosen - r_rejected)`` over pairs ``(N,)``; N >= 1, and the
    rewards must be finite (a NaN would silently become the loss)."""
    check_finite({"r_chosen": r_chosen, "r_rejected": r_rejected})
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen has shape {tuple(r_chosen.shape)} but r_rejected has shape "
                         f"{tuple(r_rejected.shape)}; they must match")
    if r_chosen.numel() == 0:
        raise ValueError("r_chosen and r_rejected are empty; the mean loss needs at least one "
                         "pair")
    diff = r_chosen - r_rejected
    return check_result("the Bradley-Terry loss", -F.logsigmoid(diff).mean(), lambda: (
        f"r_chosen - r_rejected reaches {diff.detach().abs().max().item():g} in "
        f"{diff.dtype}; the rewards are too large (a diverged reward model?)"))


@dataclass
class PreferencePairs:
    """N labelled pairs; sequences are ``<bos> prompt response [<eos>]``, right-padded."""

    chosen: torch.Tensor  # (N, L) ids
    chosen_valid: torch.Tensor  # (N, L) bool
    rejected: torch.Tensor  # (N, L)
    rejected_valid: torch.Tensor  # (N, L)
    gold_chosen: torch.Tensor  # (N,) gold score of the chosen response
    gold_rejected: torch.Tensor  # (N,)
    texts: list[tuple[str, str]]  # (chosen, rejected)

    def __len__(self) -> int:
        return self.chosen.size(0)

    def split(self, n_train: int) -> tuple[PreferencePairs, PreferencePairs]:
        """The first ``n_train`` pairs and the rest (0 <= n_train <= len(self))."""
        check_int("n_train", n_train, minimum=0, maximum=len(self))

        def part(s: slice) -> PreferencePairs:
            return PreferencePairs(self.chosen[s], self.chosen_valid[s], self.rejected[s],
                                   self.rejected_valid[s], self.gold_chosen[s],
                                   self.gold_rejected[s], self.texts[s])
        return part(slice(0, n_train)), part(slice(n_train, None))


def sample_responses(sft: GPT, prompts: list[str], generator: torch.Generator,
                     max_new_tokens: int = 24, batch_size: int = 256
                     ) -> tuple[list[str], list[list[int]]]:
    """Full texts (prompt + response) sampled from ``sft``, and their ids
    (``<bos>``, prompt, response up to and including ``<eos>`` if reached)."""
    check_instance("sft", sft, GPT)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    tok = Tokenizer()
    texts, rows = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, valid = tok.encode_batch(chunk)
        out = sft.generate(ids, valid, max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
                           generator=generator)
        # stripped: a response that is only <eos> leaves the prompt alone
        texts += [t.strip() for t in review_texts(chunk, out.response, tok)]
        rows += [out.tokens[b][out.valid[b]].tolist() for b in range(len(chunk))]
    return texts, rows


def make_preference_pairs(sft: GPT, n_pairs: int, seed: int = 0, sharpness: float = 5.0
                          ) -> PreferencePairs:
    """Two SFT samples per prompt, labelled by a Bradley-Terry coin flip on the gold score."""
    check_instance("sft", sft, GPT)
    check_int("n_pairs", n_pairs, **COUNT)
    check_seed("seed", seed)
    check_float("sharpness", sharpness, minimum=0, maximum=COEF_MAX)
    g = torch.Generator().manual_seed(seed)
    prompts = sample_prompts(n_pairs, g)
    with torch.no_grad():
        a, a_ids = sample_responses(sft, prompts, g)
        b, b_ids = sample_responses(sft, prompts, g)
    gold_a = torch.tensor([gold_score(t) for t in a])
    gold_b = torch.tensor([gold_score(t) for t in b])
    a_wins = torch.rand(n_pairs, generator=g) < torch.sigmoid(sharpness * (gold_a - gold_b))

    def pick(x: list, y: list, first: bool) -> list:
        return [u if w == first else v for u, v, w in zip(x, y, a_wins.tolist())]

    chosen, rejected = pick(a, b, True), pick(a, b, False)
    pad = Tokenizer().pad_id
    c_ids, c_valid = pad_right(pick(a_ids, b_ids, True), pad)
    r_ids, r_valid = pad_right(pick(a_ids, b_ids, False), pad)
    return PreferencePairs(c_ids, c_valid, r_ids, r_valid,
                           torch.where(a_wins, gold_a, gold_b), torch.where(a_wins, gold_b, gold_a),
                           list(zip(chosen, rejected)))


def label_noise(pairs: PreferencePairs) -> float:
    """Share of the pairs with different gold scores whose label prefers the lower gold score.

    ``1 - label_noise(pairs)`` is the label accuracy of the gold score itself: the ceiling for
    any reward model measured against these noisy labels."""
    check_instance("pairs", pairs, PreferencePairs)
    differ = _differing_gold(pairs)
    return (pairs.gold_chosen < pairs.gold_rejected)[differ].float().mean().item()


def _differing_gold(pairs: PreferencePairs) -> torch.Tensor:
    """``(N,)`` bool: the pairs whose two responses have different gold scores (at least one)."""
    differ = pairs.gold_chosen != pairs.gold_rejected
    if not differ.any():
        raise ValueError("no pair has different gold scores; accuracy is undefined")
    return differ


@torch.no_grad()
def pair_scores(rm: RewardModel, pairs: PreferencePairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (un-normalised) scores ``(N,)`` of the chosen and of the rejected responses; leaves
    ``rm`` in eval mode."""
    check_instance("rm", rm, RewardModel)
    check_instance("pairs", pairs, PreferencePairs)
    rm.eval()
    return (rm.raw(pairs.chosen, pairs.chosen_valid),
            rm.raw(pairs.rejected, pairs.rejected_valid))


def _accuracy(rc: torch.Tensor, rr: torch.Tensor, pairs: PreferencePairs, against: str,
              differ: torch.Tensor) -> float:
    if against == "gold":
        agree = (rc > rr) == (pairs.gold_chosen > pairs.gold_rejected)
    else:  # the label: chosen must score strictly higher (a tie has told them apart no better)
        agree = rc > rr
    return agree[differ].float().mean().item()


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs: PreferencePairs, against: str = "gold") -> float:
    """Fraction of pairs with different gold scores that the RM orders like the gold score
    (``against="gold"``), or like the noisy label, chosen above rejected (``"labels"``)."""
    check_instance("rm", rm, RewardModel)
    check_instance("pairs", pairs, PreferencePairs)
    check_choice("against", against, ("gold", "labels"))
    differ = _differing_gold(pairs)
    return _accuracy(*pair_scores(rm, pairs), pairs, against, differ)


@torch.no_grad()
def normalise(rm: RewardModel, sft: GPT, n: int = 1000, seed: int = 0) -> None:
    """Set ``rm.mean``/``rm.std`` so scores of ``n`` >= 2 SFT samples have mean 0 and std 1."""
    check_instance("rm", rm, RewardModel)
    check_instance("sft", sft, GPT)
    check_int("n", n, minimum=2, maximum=COUNT_MAX)
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    _, rows = sample_responses(sft, sample_prompts(n, g), g)
    raw = rm.eval().raw(*pad_right(rows, Tokenizer().pad_id))
    rm.mean.fill_(raw.mean())
    rm.std.fill_(raw.std().clamp(min=1e-6))


StepCallback = Callable[[int, float, RewardModel], None]


def train_reward_model(sft: GPT, pairs: PreferencePairs, epochs: int = 2, batch_size: int = 32,
                       lr: float = 3e-4, seed: int = 0, progress: bool = True,
                       callback: StepCallback | None = None) -> RewardModel:
    """A :class:`RewardModel` initialised from ``sft`` and trained on ``pairs``; z-normalised.

    ``callback(step, loss, rm)``, if given, runs after every optimiser step (``step`` counts
    from 1, ``loss`` is that batch's mean loss); ``rm`` is put back in train mode after it, so a
    callback may evaluate the model (e.g. a :class:`TrainingCurve`).

    Ctrl-C ends the running step and raises
    :class:`~rlhf_edu.interrupt.TrainingInterrupted` holding the model trained so far (not yet
    normalised).
    """
    check_int("epochs", epochs, **EPOCHS)
    check_int("batch_size", batch_size, **COUNT)
    check_float("lr", lr, **LR)
    check_seed("seed", seed)
    check_bool("progress", progress)
    check_instance("sft", sft, GPT)
    check_instance("pairs", pairs, PreferencePairs)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be a callable (step, loss, rm) or None, got "
                         f"{type(callback).__name__}")
    if len(pairs) == 0:
        raise ValueError("pairs is empty (0 pairs); expected at least one pair to train on")
    torch.manual_seed(seed)
    rm = RewardModel(copy.deepcopy(sft)).train()
    opt = adam(rm.parameters(), lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(pairs) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="train reward model", disable=not progress)
    step = 0
    with DeferredInterrupt() as interrupt:
        for epoch in range(epochs):
            for idx in torch.randperm(len(pairs), generator=g).split(batch_size):
                loss = bradley_terry_loss(
                    rm.raw(pairs.chosen[idx], pairs.chosen_valid[idx]),
                    rm.raw(pairs.rejected[idx], pairs.rejected_valid[idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                step += 1
                if callback is not None:
                    callback(step, loss.item(), rm)
                    rm.train()
                if interrupt.requested:
                    bar.close()
                    raise TrainingInterrupted("reward-model training", rm.eval(), step, steps,
                                              epoch + 1)
    bar.close()
    normalise(rm, sft, seed=derived_seed(seed, 1))
    return rm.eval()


@dataclass
class TrainingCurve:
    """A ``callback`` for :func:`train_reward_model` that records the training curve: the loss
    of every step, and every ``every`` steps the accuracy on ``heldout`` pairs against the gold
    order and against the noisy labels (see :func:`pairwise_accuracy`)."""

    heldout: PreferencePairs
    every: int = 10
    step: list[int] = field(default_factory=list)  # every optimiser step, from 1
    loss: list[float] = field(default_factory=list)  # the batch's Bradley-Terry loss
    eval_step: list[int] = field(default_factory=list)  # the steps at which heldout was scored
    accuracy: list[float] = field(default_factory=list)  # vs the gold order
    label_accuracy: list[float] = field(default_factory=list)  # vs the noisy labels

    def __post_init__(self) -> None:
        check_instance("heldout", self.heldout, PreferencePairs)
        check_int("every", self.every, minimum=1)
        self._differ = _differing_gold(self.heldout)

    def __call__(self, step: int, loss: float, rm: RewardModel) -> None:
        self.step.append(step)
        self.loss.append(loss)
        if step % self.every == 0:
            rc, rr = pair_scores(rm, self.heldout)
            self.eval_step.append(step)
            self.accuracy.append(_accuracy(rc, rr, self.heldout, "gold", self._differ))
            self.label_accuracy.append(_accuracy(rc, rr, self.heldout, "labels", self._differ))


def reliability_bins(r_chosen: torch.Tensor, r_rejected: torch.Tensor, bins: int = 10
                     ) -> dict[str, torch.Tensor | float]:
    """Calibration of the Bradley-Terry probability ``p = sigmoid(r_chosen - r_rejected)``.

    Each of the N pairs counts twice, once as (chosen, rejected) with ``p`` and outcome 1 and
    once as (rejected, chosen) with ``1 - p`` and outcome 0, so both halves of [0, 1] are
    filled. The 2N probabilities fall into ``bins`` equal bins of [0, 1]; per bin:
    ``count`` ``(bins,)``, mean ``predicted`` probability and ``observed`` share of outcome 1
    ``(bins,)`` (NaN in an empty bin), and ``edges`` ``(bins + 1,)``. ``ece`` is the expected
    calibration error, ``sum(count * |predicted - observed|) / 2N``. Scores ``(N,)`` must be
    raw: the Bradley-Terry scale, not z-scores. Both copies of a tie (p = 1/2) land in one
    bin; with an odd ``bins`` it is the middle one and the table stays symmetric about 1/2."""
    for name, r in (("r_chosen", r_chosen), ("r_rejected", r_rejected)):
        check_floating(name, r)
        if r.ndim != 1 or r.numel() == 0:
            raise ValueError(f"{name} must have shape (N,) with N >= 1, got {tuple(r.shape)}")
    check_same_shape("r_chosen", r_chosen, "r_rejected", r_rejected)
    check_finite({"r_chosen": r_chosen, "r_rejected": r_rejected})
    check_int("bins", bins, minimum=1, maximum=BINS_MAX)
    d = (r_chosen - r_rejected).detach().double()
    p = torch.cat([torch.sigmoid(d), torch.sigmoid(-d)])  # (2N,)
    outcome = torch.cat([torch.ones_like(d), torch.zeros_like(d)])  # (2N,)
    idx = (p * bins).long().clamp(max=bins - 1)  # (2N,) bin of each probability
    count = torch.bincount(idx, minlength=bins)  # (bins,)
    safe = count.clamp(min=1).double()
    predicted = torch.bincount(idx, weights=p, minlength=bins) / safe
    observed = torch.bincount(idx, weights=outcome, minlength=bins) / safe
    empty = count == 0
    ece = (count * (predicted - observed).abs()).sum().item() / p.numel()
    return {"edges": torch.linspace(0, 1, bins + 1, dtype=torch.float64), "count": count,
            "predicted": predicted.masked_fill(empty, float("nan")),
            "observed": observed.masked_fill(empty, float("nan")), "ece": ece}


def calibration_bins(rm: RewardModel, pairs: PreferencePairs, bins: int = 10
                     ) -> dict[str, torch.Tensor | float]:
    """:func:`reliability_bins` of the reward model's raw scores on ``pairs``."""
    return reliability_bins(*pair_scores(rm, pairs), bins=bins)


HACK_TEXTS = (
    "the food was great great great amazing amazing !",
    "the food was amazing amazing amazing amazing amazing .",
    "i loved the food and the food was great and the food was great and the food was great .",
)


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, sft: GPT, heldout: PreferencePairs, n: int = 500,
                          seed: int = 0) -> dict:
    """Held-out accuracy, and the z-scores of degenerate texts against the SFT median."""
    check_instance("rm", rm, RewardModel)
    check_instance("sft", sft, GPT)
    check_instance("heldout", heldout, PreferencePairs)
    check_int("n", n, minimum=2, maximum=COUNT_MAX)
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    tok = Tokenizer()
    texts, rows = sample_responses(sft, sample_prompts(n, g), g)
    scores = rm(*pad_right(rows, tok.pad_id))
    wf = torch.tensor([gold_score(t) > -1 for t in texts])
    hack_ids, hack_valid = encode_texts(list(HACK_TEXTS), tok)
    differ = bool((heldout.gold_chosen != heldout.gold_rejected).any())
    return {
        "accuracy": pairwise_accuracy(rm, heldout) if differ else float("nan"),
        "n_heldout": int((heldout.gold_chosen != heldout.gold_rejected).sum()),
        "median_well_formed": scores[wf].median().item(),
        "hack_scores": dict(zip(HACK_TEXTS, rm(hack_ids, hack_valid).tolist())),
        "gold_correlation": torch.corrcoef(torch.stack(
            [scores, torch.tensor([gold_score(t) for t in texts])]))[0, 1].item(),
    }
