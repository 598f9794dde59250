"""Exercise 5: the reward model's Bradley-Terry ranking loss.

Before RLHF, the reward model learns from pairs: for each prompt a labeller saw two responses
and chose one. The model gives each response a scalar score and is trained so that the chosen
one scores higher.

================  ======  ================================================================
Symbol            Shape   Description
================  ======  ================================================================
``r_chosen``      (N,)    reward-model score of the response the labeller preferred
``r_rejected``    (N,)    score of the other response of the same pair
================  ======  ================================================================

Bradley-Terry model: ``P(chosen preferred) = sigmoid(r_chosen - r_rejected)``; the loss is the
negative log-likelihood of the labels, ``-log sigmoid(r_chosen - r_rejected)``, averaged over
the N pairs (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, eq. 1).

Grade: ``rlhf-edu grade 5`` or ``pytest tests/exercises/test_ex05_reward_model_loss.py``
(hand-made pairs, extreme score gaps, gradients, and ``rlhf_edu.reward_model``).
Solution: ``solutions/ex05_reward_model_loss.py``.
"""

from __future__ import annotations

import torch  # noqa: F401  (you will need it)
import torch.nn.functional as F  # noqa: F401
from torch import Tensor


def preference_probability(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """P(chosen preferred over rejected) under Bradley-Terry: `(N,)`, `(N,)` -> `(N,)`.

    Hint: only the difference of the scores matters.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 5: compute the Bradley-Terry preference probability "
                              "(preference_probability in exercises/ex05_reward_model_loss.py)")
    # ============================================================================


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Mean over pairs of `-log sigmoid(r_chosen - r_rejected)`: a scalar tensor,
    differentiable in both inputs.

    Hint: `torch.log(torch.sigmoid(x))` is -inf once sigmoid(x) rounds to 0 (x = -200 in
    float32); `F.logsigmoid` computes the same thing without overflow.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 5: compute the Bradley-Terry ranking loss "
                              "(bradley_terry_loss in exercises/ex05_reward_model_loss.py)")
    # ============================================================================


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Fraction of the N pairs in which the chosen response scores strictly higher: a Python
    float in [0, 1]; a tie counts as wrong (the model has not told them apart).

    Hint: `.float().mean().item()` turns a boolean tensor into a fraction.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 5: compute the pairwise accuracy "
                              "(pairwise_accuracy in exercises/ex05_reward_model_loss.py)")
    # ============================================================================
