"""Rejection sampling (best-of-n) and fine-tuning on the best samples: the baseline to PPO.

"Why not just fine-tune on high-reward responses?" Best-of-n draws ``n`` responses per prompt,
keeps the one the reward model likes best, and trains the actor on it with the ordinary
language-model loss (as in Llama 2's rejection-sampling fine-tuning). There is no critic, no
advantage, no ratio clipping, and no KL penalty: only the reference's KL is measured, to compare
with PPO at the same number of generated samples. ``epochs`` and ``minibatches`` set how many
optimizer steps each batch of winners gives (PPO's default is 4 epochs x 2 minibatches = 8), so
the two can also be compared per gradient step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .distributed import adam
from .model import Generation
from .models import Models
from .rewards import kl_penalty
from .task import Tokenizer, review_texts, sample_prompts, text_metrics
from .validate import (
    COEF_MAX,
    COUNT,
    EPOCHS,
    LR,
    check_float,
    check_floating,
    check_instance,
    check_int,
    check_same_shape,
    check_seed,
    derived_seed,
    shown,
)


@dataclass
class BestOfN:
    """The best of ``n`` responses per prompt. B prompts, P prompt width, T response width."""

    tokens: torch.Tensor  # (B, P + T)
    valid: torch.Tensor  # (B, P + T)
    mask: torch.Tensor  # (B, T) response tokens
    prompt_len: int
    scores: torch.Tensor  # (B,) reward-model score of the chosen response
    all_scores: torch.Tensor  # (B, n) scores of every candidate
    texts: list[str]  # (B,) the chosen responses, with their prompts
    all_texts: list[str]  # (B * n,) every candidate
    candidates: Generation | None = None  # every candidate, (B * n, ...), prompt-major


@torch.no_grad()
def best_of_n(models: Models, prompts: list[str], n: int, response_len: int = 20,
              generator: torch.Generator | None = None,
              missing_eos_penalty: float = 1.0) -> BestOfN:
    """Sample ``n`` responses per prompt from the actor and keep the highest-scoring one."""
    check_int("n", n, **COUNT)
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__} "
                         f"{shown(prompts)}")
    if not prompts:
        raise ValueError("prompts is empty")
    check_int("response_len", response_len, minimum=1)
    check_float("missing_eos_penalty", missing_eos_penalty, minimum=0, maximum=COEF_MAX)
    check_instance("models", models, Models, hint="from build_models")
    tok = Tokenizer()
    dev = next(models.actor.parameters()).device
    rdev = next(models.reward.parameters()).device
    ids, valid = tok.encode_batch([p for p in prompts for _ in range(n)])  # (B*n, P)
    models.actor.eval()
    out = models.actor.generate(ids.to(dev), valid.to(dev), response_len, eos_id=tok.eos_id,
                                pad_id=tok.pad_id, generator=generator)
    finished = (out.response == tok.eos_id).any(1)
    scores = models.reward(out.tokens.to(rdev), out.valid.to(rdev)).float().to(dev)
    scores = scores - missing_eos_penalty * (~finished).float()  # (B*n,)
    B = len(prompts)
    all_scores = scores.view(B, n)
    # (B,) row index of each prompt's best
    best = all_scores.argmax(1) + torch.arange(B, device=dev) * n
    all_texts = review_texts([p for p in prompts for _ in range(n)], out.response, tok)
    return BestOfN(out.tokens[best], out.valid[best], out.mask[best], out.prompt_len,
                   scores[best], all_scores, [all_texts[r] for r in best.tolist()], all_texts,
                   out)


def candidate_kl(models: Models, gen: Generation) -> torch.Tensor:
    """KL(actor || reference) per response of a batch the actor generated: ``(N,)`` nats.

    The k1 estimate summed over each response's tokens, from the log-probs recorded while
    sampling (the policy that drew them), as PPO measures its rollouts.
    """
    fdev = next(models.reference.parameters()).device
    ref = models.reference(gen.tokens.to(fdev), gen.valid.to(fdev), gen.prompt_len)
    ref = ref.logprobs.float().to(gen.logprobs.device)  # (N, T)
    return (kl_penalty(gen.logprobs.float(), ref) * gen.mask).sum(1)


def rejection_sampling(models: Models, steps: int, prompts_per_step: int = 16, n: int = 4,
                       response_len: int = 20, lr: float = 1e-4, epochs: int = 1,
                       seed: int = 0, callback=None, minibatches: int = 1) -> list[dict]:
    """Fine-tune the actor on its best-of-``n`` samples for ``steps`` steps.

    Each step generates ``prompts_per_step * n`` responses, as many as a PPO step with
    ``batch_size = prompts_per_step * n``, so the two can be compared per generated sample.
    The ``prompts_per_step`` winners are then trained on for ``epochs`` passes of
    ``minibatches`` shuffled minibatches each: ``epochs * minibatches`` optimizer steps per
    step, recorded (cumulative) as ``optimizer_steps`` beside ``samples``. ``kl`` is measured
    on every candidate (the current policy's samples, like PPO's), ``best_kl`` on the winners.
    """
    for name, value, bounds in (("steps", steps, {}), ("prompts_per_step", prompts_per_step,
                                COUNT), ("n", n, COUNT), ("response_len", response_len, {}),
                                ("epochs", epochs, EPOCHS), ("minibatches", minibatches, {})):
        check_int(name, value, **{"minimum": 1, **bounds})
    if prompts_per_step % minibatches:
        raise ValueError(f"prompts_per_step ({prompts_per_step}) must be divisible by "
                         f"minibatches ({minibatches}): each minibatch takes as many winners")
    check_float("lr", lr, **LR)
    check_seed("seed", seed)
    check_instance("models", models, Models, hint="from build_models")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {type(callback).__name__}")
    g = torch.Generator().manual_seed(seed)
    dev = next(models.actor.parameters()).device
    # prompts come from a CPU generator; tokens are sampled by one on the actor's device
    sample_g = g if dev.type == "cpu" else torch.Generator(dev).manual_seed(
        derived_seed(seed, 1))
    # minibatch order from its own generator, so prompts and samples do not depend on it
    order_g = torch.Generator().manual_seed(derived_seed(seed, 2))
    opt = adam(models.actor.parameters(), lr, eps=1e-5)
    history = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        prompts = sample_prompts(prompts_per_step, g)
        best = best_of_n(models, prompts, n, response_len, sample_g)
        with torch.no_grad():
            kl = candidate_kl(models, best.candidates).view(prompts_per_step, n)  # (B, n)
        chosen = best.all_scores.argmax(1)  # (B,) as best_of_n chose
        models.actor.train()
        losses = []
        for _ in range(epochs):
            # the order comes from a CPU generator (the same on any device), then moves
            order = (torch.randperm(prompts_per_step, generator=order_g, device="cpu").to(dev)
                     if minibatches > 1 else torch.arange(prompts_per_step, device=dev))
            for idx in order.chunk(minibatches):
                out = models.actor(best.tokens[idx], best.valid[idx], best.prompt_len)
                mask = best.mask[idx]  # (b, T)
                # the language-model loss on the chosen responses only (the prompt is given)
                loss = -(out.logprobs * mask).sum() / mask.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(models.actor.parameters(), 1.0)
                opt.step()
                losses.append(float(loss.detach()))
        judged, best_judged = text_metrics(best.all_texts), text_metrics(best.texts)
        metrics = {
            "step": step,
            "samples": step * prompts_per_step * n,
            "optimizer_steps": step * epochs * minibatches,
            # the policy's own quality (all samples), comparable with PPO's metrics
            "rm_score": float(best.all_scores.mean()),
            "gold_score": judged["gold_score"],
            "best_rm_score": float(best.scores.mean()),
            "best_gold_score": best_judged["gold_score"],
            "kl": float(kl.mean()),
            "best_kl": float(kl.gather(1, chosen[:, None].to(kl.device)).mean()),
            # the winners, which the actor is trained on
            "well_formed": best_judged["well_formed"],
            "repetition": best_judged["repetition"],
            "loss": sum(losses[:minibatches]) / minibatches,  # the first epoch's mean
            "sample": best.texts[0],
            "time_step": time.perf_counter() - start,
        }
        history.append(metrics)
        if callback is not None:
            callback(metrics)
    return history


# ---------------------------------------------------------------- what best-of-n buys and costs


def expected_best_of_n(scores: torch.Tensor, n: int) -> float:
    """E[max of ``n`` draws] from the empirical distribution of ``scores`` ``(m,)``.

    Draws are with replacement, each sample equally likely: the k-th smallest of m
    (k = 1..m) is the maximum with probability (k/m)^n - ((k-1)/m)^n (order statistics).
    ``n = 1`` gives the mean; ties need nothing special (equal values, equal maxima).
    """
    check_int("n", n, minimum=1)
    check_floating("scores", scores)
    if scores.ndim != 1 or not scores.numel():
        raise ValueError(f"scores must be a non-empty (m,) tensor, got {tuple(scores.shape)}")
    m = scores.numel()
    x = scores.double().sort().values  # (m,) ascending
    cdf = torch.arange(m + 1, dtype=torch.float64, device=x.device) / m  # (m + 1,) 0..1
    weights = cdf[1:] ** n - cdf[:-1] ** n  # (m,) P(the maximum is x[k])
    return float((weights * x).sum())


def best_of_n_probs(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The best-of-``n`` policy over K outcomes: ``(K,)`` probabilities from the policy's
    ``probs`` ``(K,)`` and the outcomes' distinct ``rewards`` ``(K,)`` (any order).

    With F the policy's reward CDF, outcome i is the best of n draws with probability
    F(r_i)^n - F(r_i^-)^n, where F(r_i^-) is the mass of the outcomes rewarded below r_i.
    """
    check_int("n", n, minimum=1)
    check_floating("probs", probs)
    check_floating("rewards", rewards)
    check_same_shape("probs", probs, "rewards", rewards)
    if probs.ndim != 1 or (probs < 0).any() or abs(float(probs.sum()) - 1) > 1e-6:
        raise ValueError("probs must be a (K,) probability vector: non-negative, summing to 1")
    if rewards.unique().numel() != rewards.numel():
        raise ValueError("rewards must be distinct: a tie leaves the best-of-n choice open")
    order = rewards.argsort()  # (K,) ascending reward
    above = probs.double()[order].cumsum(0)  # (K,) F(r), outcomes in reward order
    below = above - probs.double()[order]  # (K,) F(r^-)
    out = torch.empty_like(above)
    out[order] = above ** n - below.clamp(min=0) ** n
    return out.to(probs.dtype)


def best_of_n_kl(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> float:
    """KL(best-of-``n`` || policy) in nats, exactly, over K outcomes (see
    :func:`best_of_n_probs`). At most :func:`best_of_n_kl_bound` (Beirami et al. 2024), and
    close to it only when no single outcome is likely."""
    q = best_of_n_probs(probs, rewards, n).double()  # (K,)
    p = probs.double()
    keep = q > 0
    return float((q[keep] * (q[keep] / p[keep]).log()).sum())


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n - 1) / n nats: KL(best-of-``n`` || policy) when no two responses tie (a
    continuous reward; Stiennon et al. 2020), and an upper bound on it otherwise."""
    check_int("n", n, minimum=1)
    return math.log(n) - (n - 1) / n
