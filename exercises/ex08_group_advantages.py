"""Exercise 8: group-relative advantages (GRPO, Dr. GRPO, RLOO) and the DPO / IPO loss.

Two ways to drop models from the RLHF step. The critic-free estimators sample G responses per
prompt and use the group itself as the baseline, so no value network is trained. DPO drops the
reward model and the sampling too: it trains on preference pairs directly.

=====================  ======  ===========================================================
Symbol                 Shape   Description
=====================  ======  ===========================================================
``scores``             (B,)    one reward per response; B = (prompts) x G, and the G
                               responses to one prompt are contiguous rows
``group_size``         int     G, responses per prompt (B is a multiple of G)
``adv``                (B,)    one advantage per response
``mask``               (B, T)  1 on response tokens, 0 on padding
``policy_chosen``      (B,)    summed log-prob of the chosen response under the policy
``policy_rejected``    (B,)    the same for the rejected response
``ref_chosen``         (B,)    summed log-prob of the chosen response under the reference
``ref_rejected``       (B,)    the same for the rejected response
=====================  ======  ===========================================================

Formulas (group g holds rows ``g*G .. g*G + G - 1``):

* GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300):
  ``A_i = (r_i - mean_g) / (std_g + eps)``, std with Bessel's correction (divide by G - 1,
  torch's default), eps added to the std. Dr. GRPO (Liu et al. 2025,
  https://arxiv.org/abs/2503.20783) drops the division: ``A_i = r_i - mean_g``.
* RLOO (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740): the baseline of response i is
  the mean of the OTHER G - 1 rewards of its group, ``A_i = r_i - (sum_g - r_i) / (G - 1)``.
* Every response token gets its response's advantage; padding gets 0.
* DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290), with
  ``h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)``:
  "sigmoid": mean of ``-log sigmoid(beta * h)``; "ipo" (Azar et al. 2023,
  https://arxiv.org/abs/2310.12036): mean of ``(h - 1 / (2 beta))^2``.
  The implicit rewards are ``beta * (policy - ref)`` for each side, detached.

Grade: ``rlhf-edu grade 8`` or ``pytest tests/exercises/test_ex08_group_advantages.py``
(hand-made groups and pairs, equal rewards, G = 2, padding, extreme margins, gradients).
Solution: ``solutions/ex08_group_advantages.py``.
"""

from __future__ import annotations

import torch  # noqa: F401  (you will need it)
import torch.nn.functional as F  # noqa: F401
from torch import Tensor


def grpo_advantages(scores: Tensor, group_size: int, scale: bool = True,
                    eps: float = 1e-4) -> Tensor:
    """GRPO's advantages `(B,)` -> `(B,)`: each reward minus its group's mean, divided by its
    group's std (Bessel) + eps when `scale` is True (Dr. GRPO when False).

    Hint: `scores.view(-1, group_size)` puts one group per row; `.mean(dim=1, keepdim=True)`
    and `.std(dim=1, keepdim=True)` then work per group. A group of equal rewards has std 0:
    its advantages must be 0, not NaN.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 8: compute the group-normalised GRPO advantages "
                              "(grpo_advantages in exercises/ex08_group_advantages.py)")
    # ============================================================================


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """RLOO's advantages `(B,)` -> `(B,)`: each reward minus the mean of the other G - 1
    rewards of its group (leave one out).

    Hint: the others' sum is the group's sum minus the response's own reward.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 8: compute the leave-one-out RLOO advantages "
                              "(rloo_advantages in exercises/ex08_group_advantages.py)")
    # ============================================================================


def spread_over_tokens(adv: Tensor, mask: Tensor) -> Tensor:
    """Per-token advantages `(B, T)` float: row b holds `adv[b]` on its response tokens and 0
    on padding.

    Hint: `adv[:, None]` is `(B, 1)` and broadcasts against `(B, T)`; the mask may be bool.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 8: spread each response's advantage over its tokens "
                              "(spread_over_tokens in exercises/ex08_group_advantages.py)")
    # ============================================================================


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, beta: float = 0.1, loss: str = "sigmoid"
             ) -> tuple[Tensor, Tensor, Tensor]:
    """`(loss, chosen_rewards, rejected_rewards)`: the mean DPO ("sigmoid") or IPO ("ipo")
    loss, a scalar tensor differentiable in the policy log-probs, and `beta * (policy - ref)`
    `(B,)` for the chosen and for the rejected responses, detached.

    Hint: `F.logsigmoid(x)` stays finite where `torch.log(torch.sigmoid(x))` gives -inf
    (x = -200). IPO's target margin is 1 / (2 beta), not 1 / beta.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 8: compute the DPO / IPO loss and implicit rewards "
                              "(dpo_loss in exercises/ex08_group_advantages.py)")
    # ============================================================================
