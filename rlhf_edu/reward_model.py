"""The reward model: preference pairs, the Bradley-Terry ranking loss, training and evaluation.

Human labellers are played by :func:`rlhf_edu.task.gold_score` through a Bradley-Terry coin flip:
of two responses to the same prompt, ``a`` is preferred with probability
``sigmoid(sharpness * (gold(a) - gold(b)))``, so labels are noisy the way human labels are.
The reward model is the SFT GPT with a scalar head, trained on
``loss = -log sigmoid(r_chosen - r_rejected)`` (Ouyang et al. 2022, eq. 1).

It only ever sees what the SFT model writes, which is nearly always well-formed: it learns to
count positive words, and nothing stops it from loving ``the food was great great great !``.
That blind spot is the reward hack that the KL penalty has to hold back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .model import GPT
from .models import RewardModel
from .pretrain import encode_texts, pad_right
from .task import Tokenizer, gold_score, sample_prompts
from .validate import (
    check_bool,
    check_finite,
    check_float,
    check_instance,
    check_int,
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
    return -F.logsigmoid(r_chosen - r_rejected).mean()


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
        for b, p in enumerate(chunk):
            texts.append(f"{p} {tok.decode(out.response[b])}".strip())
            rows.append(out.tokens[b][out.valid[b]].tolist())
    return texts, rows


def make_preference_pairs(sft: GPT, n_pairs: int, seed: int = 0, sharpness: float = 5.0
                          ) -> PreferencePairs:
    """Two SFT samples per prompt, labelled by a Bradley-Terry coin flip on the gold score."""
    check_instance("sft", sft, GPT)
    check_int("n_pairs", n_pairs, minimum=1)
    check_seed("seed", seed)
    check_float("sharpness", sharpness, minimum=0)
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


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs: PreferencePairs) -> float:
    """Fraction of pairs with different gold scores that the RM orders like the gold score."""
    check_instance("rm", rm, RewardModel)
    check_instance("pairs", pairs, PreferencePairs)
    rm.eval()
    differ = pairs.gold_chosen != pairs.gold_rejected
    if not differ.any():
        raise ValueError("no pair has different gold scores; accuracy is undefined")
    rc = rm.raw(pairs.chosen, pairs.chosen_valid)
    rr = rm.raw(pairs.rejected, pairs.rejected_valid)
    agree = (rc > rr) == (pairs.gold_chosen > pairs.gold_rejected)
    return agree[differ].float().mean().item()


@torch.no_grad()
def normalise(rm: RewardModel, sft: GPT, n: int = 1000, seed: int = 0) -> None:
    """Set ``rm.mean``/``rm.std`` so scores of ``n`` >= 2 SFT samples have mean 0 and std 1."""
    check_instance("rm", rm, RewardModel)
    check_instance("sft", sft, GPT)
    check_int("n", n, minimum=2)
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    _, rows = sample_responses(sft, sample_prompts(n, g), g)
    raw = rm.eval().raw(*pad_right(rows, Tokenizer().pad_id))
    rm.mean.fill_(raw.mean())
    rm.std.fill_(raw.std().clamp(min=1e-6))


def train_reward_model(sft: GPT, pairs: PreferencePairs, epochs: int = 2, batch_size: int = 32,
                       lr: float = 3e-4, seed: int = 0, progress: bool = True) -> RewardModel:
    """A :class:`RewardModel` initialised from ``sft`` and trained on ``pairs``; z-normalised."""
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_float("lr", lr, minimum=0, strict_min=True)
    check_seed("seed", seed)
    check_bool("progress", progress)
    check_instance("sft", sft, GPT)
    check_instance("pairs", pairs, PreferencePairs)
    if len(pairs) == 0:
        raise ValueError("pairs is empty (0 pairs); expected at least one pair to train on")
    torch.manual_seed(seed)
    rm = RewardModel(copy.deepcopy(sft)).train()
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(pairs) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="train reward model", disable=not progress)
    for _ in range(epochs):
        for idx in torch.randperm(len(pairs), generator=g).split(batch_size):
            loss = bradley_terry_loss(rm.raw(pairs.chosen[idx], pairs.chosen_valid[idx]),
                                      rm.raw(pairs.rejected[idx], pairs.rejected_valid[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    normalise(rm, sft, seed=derived_seed(seed, 1))
    return rm.eval()


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
    check_int("n", n, minimum=2)
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
