"""Exercise 3 (solution): Generalized Advantage Estimation over response tokens.

=============  ========  =================================================================
Symbol         Shape     Description
=============  ========  =================================================================
``rewards``    (B, T)    per-token rewards (Exercise 2), 0 on padding
``values``     (B, T)    the critic's V(s_t) at each response token
``mask``       (B, T)    1.0 on response tokens, 0.0 on padding; padding is on the right
``gamma``      float     discount, in [0, 1]
``lam``        float     GAE lambda, in [0, 1]
=============  ========  =================================================================

delta_t = r_t + gamma * V_{t+1} - V_t, with V_{t+1} = 0 after the last response token;
A_t = delta_t + gamma * lam * A_{t+1} (Schulman et al. 2016, eq. 16); returns = A + V.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Advantages and returns, both `(B, T)` and 0 where `mask` is 0."""
    mask = mask.to(rewards.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros(B, dtype=rewards.dtype)  # A_{t+1}; nothing after the end
    for t in reversed(range(T)):
        # The value of the next state counts only if the next position is a response token;
        # after the last one the response has ended (a terminal state, V = 0).
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros(B)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,) TD residual
        # Multiplying by the mask zeroes padding, so the recursion starts from 0 at the last
        # response token of each row.
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask  # the critic's targets, 0 on padding
    return advantages, returns
