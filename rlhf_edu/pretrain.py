"""Supervised pretraining (SFT) of the toy actor on a task's data (the review grammar, or the
arith task's worked and direct answers), and how to measure it."""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .distributed import adam
from .interrupt import DeferredInterrupt, TrainingInterrupted
from .model import GPT, GPTConfig
from .task import Tokenizer, parse, sample_corpus, text_metrics
from .tasks import get_task
from .validate import (
    COUNT,
    EPOCHS,
    LR,
    TEMPERATURE,
    TOKEN_ID_MAX,
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_same_device,
    check_seed,
    check_tensor,
    derived_seed,
    shown,
)


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists to right-padded ids ``(N, L)`` and their valid mask ``(N, L)``."""
    if not rows or not any(len(r) for r in rows):
        raise ValueError(f"rows must hold at least one non-empty list of ids, got {shown(rows)}")
    check_int("pad_id", pad_id, minimum=0, maximum=TOKEN_ID_MAX)
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, ids != pad_id


def encode_texts(texts: list[str], tok: Tokenizer, eos: list[bool] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``<bos> text [<eos>]`` per text, right-padded: ids ``(N, L)`` and valid mask ``(N, L)``."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"texts must be a non-empty list of strings, got {shown(texts)}")
    eos = eos if eos is not None else [True] * len(texts)
    if len(eos) != len(texts):
        raise ValueError(f"eos has {len(eos)} entries but texts has {len(texts)}; they must "
                         "match (one flag per text)")
    return pad_right([tok.encode(t, bos=True, eos=e) for t, e in zip(texts, eos)], tok.pad_id)


def lm_loss(model: GPT, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the real targets of right-padded ``ids`` ``(B, L)``."""
    check_tensor("ids", ids, ndim=2, shape="(B, L)")
    check_tensor("valid", valid)
    if valid.shape != ids.shape or ids.size(1) < 2:
        raise ValueError(f"ids {tuple(ids.shape)} and valid {tuple(valid.shape)} must have the "
                         "same shape (B, L) with L >= 2 (a token and its next)")
    check_same_device({"model": next(model.parameters()), "ids": ids,
                       "valid": valid})
    logits = model(ids[:, :-1])  # right padding needs no attention mask
    targets = ids[:, 1:].masked_fill(~valid[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=-100)


def pretrain(config: GPTConfig | None = None, n_reviews: int = 30_000, epochs: int = 4,
             batch_size: int = 64, lr: float = 2e-3, seed: int = 0, progress: bool = True,
             task: str = "reviews") -> GPT:
    """Train a GPT on ``n_reviews`` SFT texts of ``task`` (grammar samples, or arith's
    problems with their answers) with AdamW and cosine decay; eval mode on return.

    Ctrl-C ends the running step and raises
    :class:`~rlhf_edu.interrupt.TrainingInterrupted`, which holds the model trained so far."""
    check_int("n_reviews", n_reviews, **COUNT)
    check_int("epochs", epochs, **EPOCHS)
    check_int("batch_size", batch_size, **COUNT)
    check_float("lr", lr, **LR)
    check_seed("seed", seed)
    check_bool("progress", progress)
    check_instance("config", config, GPTConfig, none_ok=True)
    t = get_task(task)
    torch.manual_seed(seed)
    tok = t.tokenizer()
    model = GPT(config or GPTConfig())
    if len(tok) > model.config.vocab_size:
        raise ValueError(f"vocab_size {model.config.vocab_size} is smaller than the task's "
                         f"{len(tok)} words")
    ids, valid = encode_texts(t.corpus(n_reviews, seed), tok)
    opt = adam(model.parameters(), lr, weight_decay=0.01, betas=(0.9, 0.95))
    steps = epochs * math.ceil(n_reviews / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc="pretrain (SFT)", disable=not progress)
    step = 0
    with DeferredInterrupt() as interrupt:
        for epoch in range(epochs):
            for idx in torch.randperm(n_reviews, generator=g).split(batch_size):
                loss = lm_loss(model, ids[idx], valid[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                if interrupt.requested:
                    bar.close()
                    raise TrainingInterrupted("pretraining", model.eval(), step, steps,
                                              epoch + 1)
    bar.close()
    return model.eval()


def sample_texts(model: GPT, n: int, seed: int = 0, temperature: float = 1.0,
                 batch_size: int = 250) -> tuple[list[str], list[bool]]:
    """``n`` unconditional samples (from ``<bos>``) as text, and whether each reached ``<eos>``."""
    check_instance("model", model, GPT)
    check_int("n", n, **COUNT)
    check_seed("seed", seed)
    check_float("temperature", temperature, **TEMPERATURE)
    check_int("batch_size", batch_size, **COUNT)
    tok = Tokenizer()
    g = torch.Generator().manual_seed(seed)
    texts, finished = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        prompt = torch.full((b, 1), tok.bos_id, dtype=torch.long)
        out = model.generate(prompt, max_new_tokens=model.config.block_size - 1,
                             temperature=temperature, eos_id=tok.eos_id, pad_id=tok.pad_id,
                             generator=g)
        ended = (out.response == tok.eos_id).any(1)
        texts += [tok.decode(r) for r in out.response]
        finished += ended.tolist()
    return texts, finished


def sentiment_mix(texts: list[str]) -> dict[str, float]:
    """Fractions of positive / negative / neutral reviews among the well-formed ``texts``."""
    counts = Counter()
    for t in texts:
        review = parse(t)
        if review is not None:
            s = review.sentiment
            counts["positive" if s > 0 else "negative" if s < 0 else "neutral"] += 1
    total = max(1, sum(counts.values()))
    return {k: counts[k] / total for k in ("positive", "negative", "neutral")}


def evaluate_lm(model: GPT, n: int = 500, seed: int = 0, temperature: float = 1.0) -> dict:
    """The SFT acceptance figures on ``n`` samples: well-formed, repeats, sentiment vs corpus."""
    check_int("n", n, **COUNT)
    check_seed("seed", seed)
    texts, finished = sample_texts(model, n, seed, temperature)
    corpus = sample_corpus(n, derived_seed(seed, 1))
    judged = text_metrics(texts)
    return {
        "n": n,
        "well_formed": judged["well_formed"],
        "finished": sum(finished) / n,
        "repeat_rate": judged["repetition"],
        "gold": judged["gold_score"],
        "corpus_gold": text_metrics(corpus)["gold_score"],
        "mix": sentiment_mix(texts),
        "corpus_mix": sentiment_mix(corpus),
        "examples": texts[:5],
    }
