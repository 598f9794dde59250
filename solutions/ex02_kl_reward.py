"""Exercise 2 (solution): KL estimators and the per-token reward.

=================  ========  ==============================================================
Symbol             Shape     Description
=================  ========  ==============================================================
``logprobs``       (B, T)    log pi(token) of each sampled response token under the policy
``ref_logprobs``   (B, T)    log pi_ref(token) of the same tokens under the reference
``mask``           (B, T)    1.0 on response tokens, 0.0 on padding (float)
``scores``         (B,)      the reward model's score of each whole response
``beta``           float     the KL coefficient, >= 0
=================  ========  ==============================================================

With ``d = logprobs - ref_logprobs`` for tokens sampled from pi (Schulman, "Approximating KL
Divergence", 2020): k1 = d, k2 = d^2 / 2, k3 = exp(-d) - 1 + d. k1 and k3 are unbiased for
KL(pi || pi_ref); k2 and k3 are never negative; k2 is biased. Their variance is low only while
d stays small: k2 grows like d^2 on both sides and k3 like exp(-d) for d << 0, so rare tokens
with a large |d| (for k3: tokens the policy finds far less likely than the reference) give
both heavier tails than k1, which is linear in d.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref per token: `(B, T)`, (B, T) -> `(B, T)`."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2 per token: `(B, T)`, (B, T) -> `(B, T)`."""
    d = logprobs - ref_logprobs
    return 0.5 * d * d


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = r - 1 - log r with r = pi_ref / pi per token: `(B, T)`, (B, T) -> `(B, T)`."""
    log_r = ref_logprobs - logprobs  # log(pi_ref / pi) = -d
    # expm1(x) = exp(x) - 1, computed without cancellation when x is near 0
    return torch.expm1(log_r) - log_r


def total_reward(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                 beta: float) -> Tensor:
    """Per-token reward: -beta * k1 on each response token, plus the score on the last one.

    Args:
        scores: `(B,)`.
        logprobs, ref_logprobs, mask: `(B, T)`; every row of `mask` has at least one 1.
        beta: KL coefficient.

    Returns:
        `(B, T)` rewards, 0 where `mask` is 0.
    """
    mask = mask.to(logprobs.dtype)
    rewards = -beta * kl_k1(logprobs, ref_logprobs) * mask  # (B, T), padding -> 0
    # The last response token is the last position whose mask is 1. Looking for it (instead
    # of using mask.sum() - 1) also works when the padding is on the left.
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)  # (B, T): 0 .. T-1
    last = torch.where(mask > 0, positions, -1).max(dim=1).values  # (B,)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards = rewards.clone()
    rewards[rows, last] += scores.to(rewards.dtype)  # the score belongs to the whole response
    return rewards
