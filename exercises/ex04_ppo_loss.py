"""Exercise 4: PPO's clipped policy loss and clipped value loss.

Step 6 of an RLHF step: PPO updates the actor and the critic several times on the same batch.
Clipping keeps each update close to the policy (and the values) that produced the batch.

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

With ``r_t = pi / pi_old = exp(logprobs - old_logprobs)`` (Schulman et al. 2017,
https://arxiv.org/abs/1707.06347, eq. 7):

* policy loss = - mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)
* value loss  = 1/2 mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2),
  ``V_clip = old_values + clip(values - old_values, -vf_clip, vf_clip)``

where ``mean_t`` is the mean over every response token of the batch (padding excluded).

Grade: ``rlhf-edu grade 4`` or ``pytest tests/exercises/test_ex04_ppo_loss.py`` (hand-made
clipping cases, gradients, padding, random tensors against ``rlhf_edu.ppo.ppo_losses``).
Solution: ``solutions/ex04_ppo_loss.py``.
"""

from __future__ import annotations

import torch  # noqa: F401  (you will need it)
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` `(B, T)` over the positions where `mask` `(B, T)` is 1: a scalar tensor.

    Hint: divide by the number of response tokens, not by B * T. Padding may hold anything,
    even inf: pick the response entries with `torch.where(mask > 0, x, 0)` rather than
    multiplying (0 * inf is NaN).
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 4: average over response tokens (masked_mean in "
                              "exercises/ex04_ppo_loss.py)")
    # ============================================================================


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    clip: float = 0.2) -> Tensor:
    """PPO's clipped policy loss (to minimise): a scalar tensor, differentiable in `logprobs`.

    Hint: take the elementwise *minimum* of the two objectives, then the masked mean, then
    the minus sign. A token whose ratio left [1 - eps, 1 + eps] in the direction its advantage
    favours gets no gradient; one that moved the wrong way keeps its gradient.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 4: compute the clipped policy loss (ppo_policy_loss "
                              "in exercises/ex04_ppo_loss.py)")
    # ============================================================================


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   vf_clip: float = 0.2) -> Tensor:
    """PPO's clipped value loss: a scalar tensor, differentiable in `values`.

    Hint: clip the *change* of the value (`values - old_values`), not the value itself, and
    keep the larger of the two squared errors. Do not forget the factor 1/2.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 4: compute the clipped value loss (ppo_value_loss in "
                              "exercises/ex04_ppo_loss.py)")
    # ============================================================================
