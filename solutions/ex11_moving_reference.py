"""Solution of Exercise 11: a moving reference's KL vs the drift from SFT (see exercises/)."""

from __future__ import annotations

import torch
from torch import Tensor


def reference_version(step: int, every: int) -> int:
    """The version copied at the last reset before step `step`; 0 (SFT) when frozen."""
    if every == 0:
        return 0
    return (step - 1) // every * every  # copies happen after steps every, 2 every, ...


def kl(logp: Tensor, logq: Tensor) -> Tensor:
    """sum_v p_v (log p_v - log q_v): the expectation under p, the sampling policy."""
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_to_reference_and_sft(policies: Tensor, every: int) -> tuple[Tensor, Tensor]:
    """KL(version s-1 || reference at step s) and KL(version s-1 || SFT), s = 1..S."""
    S = policies.size(0) - 1
    sampling = policies[:S]  # (S, V): step s samples with version s - 1
    refs = torch.tensor([reference_version(s, every) for s in range(1, S + 1)])
    to_ref = kl(sampling, policies[refs])  # (S,)
    to_sft = kl(sampling, policies[0].expand_as(sampling))  # (S,)
    return to_ref, to_sft
