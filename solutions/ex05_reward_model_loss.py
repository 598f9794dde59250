"""Exercise 5 (solution): the reward model's Bradley-Terry ranking loss.

================  ======  ================================================================
Symbol            Shape   Description
================  ======  ================================================================
``r_chosen``      (N,)    reward-model score of the response the labeller preferred
``r_rejected``    (N,)    score of the other response of the same pair
================  ======  ================================================================

Bradley-Terry: P(chosen preferred) = sigmoid(r_chosen - r_rejected); the loss is its negative
log-likelihood (Ouyang et al. 2022, eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def preference_probability(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """P(chosen preferred over rejected) under Bradley-Terry: `(N,)`, `(N,)` -> `(N,)`."""
    return torch.sigmoid(r_chosen - r_rejected)


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Mean over pairs of `-log sigmoid(r_chosen - r_rejected)`: a scalar."""
    # logsigmoid(x) = -softplus(-x) never overflows: log(sigmoid(-200)) would be log(0) = -inf
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Fraction of pairs the reward model orders like the labeller (ties count as wrong)."""
    return (r_chosen > r_rejected).float().mean().item()
