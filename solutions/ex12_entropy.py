"""Solution of Exercise 12: the entropy bonus from the actor's logits (see exercises/)."""

from __future__ import annotations

import torch
from torch import Tensor


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """`- sum_v p_v log p_v` of softmax(`logits` / `temperature`): `(B, T, V)` → `(B, T)`."""
    logp = torch.log_softmax(logits / temperature, dim=-1)  # (B, T, V), finite everywhere
    p = logp.exp()  # exactly 0 where it underflows: 0 * (finite log p) = 0, no NaN
    return -(p * logp).sum(-1)  # (B, T), in nats


def masked_entropy(logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """The mean of `token_entropy` over the response tokens (mask 1): a scalar."""
    h = token_entropy(logits, temperature)  # (B, T)
    # pick, don't multiply: the padding's entropy is finite here, but where keeps it out
    return torch.where(mask > 0, h, 0.0).sum() / mask.sum()
