"""Exercise 4 (solution): PPO's clipped policy loss and clipped value loss.

=================  ========  ============================================================
Symbol             Shape     Description
=================  ========  ============================================================
``logprobs``       (B, T)    log pi(token) under the current policy (differentiable)
``old_logprobs``   (B, T)    log pi_old(token) at rollout time
``advantages``     (B, T)    from GAE (Exercise 3)
``values``         (B, T)    the critic's current values (differentiable)
``old_values``     (B, T)    the critic's values at rollout time
``returns``        (B, T)    value targets from GAE
``mask``           (B, T)    1.0 on response tokens, 0.0 on padding
=================  ========  ============================================================

Schulman et al. (2017), https://arxiv.org/abs/1707.06347, eq. 7; value clipping as in
CleanRL and TRL.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` `(B, T)` over the positions where `mask` `(B, T)` is 1: a scalar."""
    mask = mask.to(x.dtype)
    # torch.where, not x * mask: inf or NaN at a padding position must not leak in (0 * inf)
    return torch.where(mask > 0, x, torch.zeros_like(x)).sum() / mask.sum()


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    clip: float = 0.2) -> Tensor:
    """Minus the clipped surrogate objective, averaged over response tokens: a scalar."""
    ratio = torch.exp(logprobs - old_logprobs)  # pi / pi_old, (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    # The objective is the smaller (pessimistic) of the two: a token gains nothing from moving
    # the ratio beyond 1 +- clip in the direction its advantage favours.
    objective = torch.min(unclipped, clipped)
    return -masked_mean(objective, mask)  # a loss to minimise


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   vf_clip: float = 0.2) -> Tensor:
    """`0.5 *` masked mean of `max((V - R)^2, (V_clipped - R)^2)`: a scalar."""
    # The clipped prediction stays within vf_clip of the value at rollout time.
    values_clipped = old_values + torch.clamp(values - old_values, -vf_clip, vf_clip)
    error = (values - returns) ** 2
    error_clipped = (values_clipped - returns) ** 2
    # The larger error: moving the value far from old_values cannot lower the loss.
    return 0.5 * masked_mean(torch.max(error, error_clipped), mask)
