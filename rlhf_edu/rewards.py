"""Per-token rewards for RLHF: KL estimators and reward assembly.

Step 4 of the RLHF flow (see DESIGN.md): the reward model gives one score per response, the
reference model keeps the policy close to where it started. Each response token t gets
`-beta * KL_t` (a penalty for drifting from the reference), and the score is added on the
last response token (or on every token, for a per-token "process" reward).

KL estimators, with `d = logp - logp_ref` for the sampled token (Schulman's blog):
- k1 = d                      unbiased for KL(pi || pi_ref), can be negative per token
- k2 = d^2 / 2                biased, low variance, always >= 0
- k3 = exp(-d) - 1 + d        unbiased and always >= 0 (the "(r - 1) - log r" estimator)
- full                        the exact KL over the vocabulary from both models' logits

All per-token tensors are `(B, T)`; `mask` is 1 on response tokens and 0 on padding.

References:
- John Schulman (2020), "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html
- Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences",
  https://arxiv.org/abs/1909.08593 (reward = score - beta * KL, adaptive beta in `ppo.py`).
- Ouyang et al. (2022), "Training language models to follow instructions with human
  feedback" (InstructGPT), https://arxiv.org/abs/2203.02155, eq. 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_edu.advantages import (
    _check_2d,
    _check_finite,
    _check_mask,
    _check_nonnegative,
    _check_same_shape,
)

__all__ = ["KL_ESTIMATORS", "kl_penalty", "compute_rewards", "last_token_index"]

KL_ESTIMATORS = ("k1", "k2", "k3", "full")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) for tokens sampled from pi.

    Args:
        logprobs: `(B, T)` log pi(token) of the sampled tokens under the policy; for
            `estimator="full"`, the policy's full logits `(B, T, V)`.
        ref_logprobs: `(B, T)` log pi_ref(token) under the reference; for "full", the
            reference's logits `(B, T, V)`.
        estimator: "k1", "k2", "k3" or "full" (see the module docstring).

    Returns:
        `(B, T)` tensor of per-token KL estimates (padding is not masked here).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}"
        )
    _check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    _check_finite("logprobs", logprobs)
    _check_finite("ref_logprobs", ref_logprobs)

    if estimator == "full":
        if logprobs.ndim != 3:
            raise ValueError(
                "estimator 'full' expects logits of shape (B, T, V), got logprobs with shape "
                f"{tuple(logprobs.shape)}"
            )
        # Normalise in at least float32: bf16 log-probabilities are too coarse for a KL.
        acc = torch.promote_types(logprobs.dtype, torch.float32)
        logp = F.log_softmax(logprobs.to(acc), dim=-1)
        logq = F.log_softmax(ref_logprobs.to(acc), dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1).to(logprobs.dtype)  # (B, T)

    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    # k3: expm1 keeps precision when d is near 0; the clamp removes the tiny negatives that
    # rounding can produce, so k3 >= 0 holds exactly, as it does mathematically.
    return (torch.expm1(-d) + d).clamp_min(0.0)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last response token of each row.

    Args:
        mask: `(B, T)`, 1 on response tokens; every row needs at least one.

    Returns:
        `(B,)` LongTensor. With right padding this is `length - 1`; it is also correct for
        left padding or holes, since it looks for the last 1, not at the row's length.
    """
    _check_2d("mask", mask)
    m = _check_mask(mask, mask, "mask", every_row=True)
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)  # (B, T)
    return torch.where(m, positions, -1).amax(dim=1)


def compute_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
) -> Tensor:
    """Per-token rewards: `-beta * KL_t` on every response token plus the reward-model score.

    Args:
        scores: `(B,)` one score per response, added on the last response token of row b
            (where the reward model read it); or `(B, T)` per-token (process) rewards,
            added on every response token.
        logprobs: `(B, T)` policy log-probabilities of the sampled tokens ((B, T, V) logits
            for `estimator="full"`).
        ref_logprobs: `(B, T)` reference log-probabilities (logits for "full").
        mask: `(B, T)`, 1 on response tokens; every row needs at least one.
        beta: KL coefficient >= 0; 0 leaves only the score (the reward-hacking setting).
        estimator: KL estimator, see `kl_penalty`.

    Returns:
        `(B, T)` rewards, 0 on padding.
    """
    _check_nonnegative("beta", beta)
    kl = kl_penalty(logprobs, ref_logprobs, estimator)  # (B, T)
    if estimator == "full" and mask.shape != kl.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the logits have (B, T) = "
            f"{tuple(kl.shape)}; they must match"
        )
    _check_2d("logprobs", kl)
    m = _check_mask(mask, kl, "logprobs", every_row=True)
    B, T = kl.shape
    if scores.shape not in ((B,), (B, T)):
        raise ValueError(
            f"scores must have shape (B,) = ({B},) or (B, T) = ({B}, {T}), "
            f"got {tuple(scores.shape)}"
        )
    _check_finite("scores", scores)

    zeros = torch.zeros_like(kl)
    rewards = torch.where(m, -beta * kl, zeros)
    scores = scores.to(kl.dtype)
    if scores.ndim == 2:
        return rewards + torch.where(m, scores, zeros)
    # The sequence-level score belongs to the whole response, so it lands on the token that
    # ended it; GAE then carries it back to earlier tokens.
    last = last_token_index(m)  # (B,)
    return rewards.scatter_add(1, last.unsqueeze(1), scores.unsqueeze(1))
