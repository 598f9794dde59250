"""Exercise 8 (solution): group-relative advantages (GRPO, Dr. GRPO, RLOO) and the DPO / IPO loss.

=====================  ======  ===========================================================
Symbol                 Shape   Description
=====================  ======  ===========================================================
``scores``             (B,)    one reward per response; the G responses to one prompt are
                               contiguous rows
``group_size``         int     G, responses per prompt
``adv``                (B,)    one advantage per response
``mask``               (B, T)  1 on response tokens, 0 on padding
``policy_chosen``      (B,)    summed log-prob of the chosen response under the policy
``policy_rejected``    (B,)    the same for the rejected response
``ref_chosen``         (B,)    summed log-prob of the chosen response under the reference
``ref_rejected``       (B,)    the same for the rejected response
=====================  ======  ===========================================================
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def grpo_advantages(scores: Tensor, group_size: int, scale: bool = True,
                    eps: float = 1e-4) -> Tensor:
    """(r - group mean) / (group std + eps), std with Bessel's correction; `scale=False`
    (Dr. GRPO) keeps r - group mean. `(B,)` -> `(B,)`."""
    groups = scores.view(-1, group_size)  # (B / G, G): one prompt's responses per row
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:  # eps outside the root: an all-equal group gives 0 / eps = 0, not 0 / 0
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """r_i minus the mean of the other G - 1 rewards of its group. `(B,)` -> `(B,)`."""
    groups = scores.view(-1, group_size)  # (B / G, G)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def spread_over_tokens(adv: Tensor, mask: Tensor) -> Tensor:
    """Each response's advantage on its response tokens, 0 on padding: `(B,)`, `(B, T)` ->
    `(B, T)`."""
    return adv[:, None] * mask.to(adv.dtype)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, beta: float = 0.1, loss: str = "sigmoid"
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Mean DPO ("sigmoid") or IPO ("ipo") loss, and the detached implicit rewards
    beta * (policy - ref) of the chosen and of the rejected responses, `(B,)` each."""
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,)
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss must be 'sigmoid' or 'ipo', got {loss!r}")
    chosen_rewards = (beta * (policy_chosen - ref_chosen)).detach()
    rejected_rewards = (beta * (policy_rejected - ref_rejected)).detach()
    return losses.mean(), chosen_rewards, rejected_rewards
