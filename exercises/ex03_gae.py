"""Exercise 3: Generalized Advantage Estimation over response tokens.

Step 5 of an RLHF step: the per-token rewards (Exercise 2) and the critic's values become
advantages, how much better each token turned out than the critic expected, and returns, the
critic's regression targets.

=============  ========  =================================================================
Symbol         Shape     Description
=============  ========  =================================================================
``rewards``    (B, T)    per-token rewards (Exercise 2), 0 on padding
``values``     (B, T)    the critic's V(s_t) at each response token
``mask``       (B, T)    1.0 on response tokens, 0.0 on padding; padding is on the right
``gamma``      float     discount, in [0, 1]
``lam``        float     GAE lambda, in [0, 1]
=============  ========  =================================================================

GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16):
``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = sum_l (gamma * lam)^l delta_{t+l}``,
i.e. ``A_t = delta_t + gamma * lam * A_{t+1}``.

Grade: ``rlhf-edu grade 3`` or ``pytest tests/exercises/test_ex03_gae.py`` (hand-made cases for
each term, and random tensors against ``rlhf_edu.advantages.gae``).
Solution: ``solutions/ex03_gae.py``.
"""

from __future__ import annotations

import torch  # noqa: F401  (you will need it)
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Advantages and returns of each response token.

    Args:
        rewards: `(B, T)`.
        values: `(B, T)`; entries at padding positions may hold anything (ignore them).
        mask: `(B, T)`, 1.0 on response tokens, then 0.0 on the padding after the last one.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        `(advantages, returns)`, both `(B, T)`, exactly 0 where `mask` is 0, and
        `returns = advantages + values` on response tokens.

    Hint: loop backwards over t = T-1, ..., 0 keeping A_{t+1} (one value per row, `(B,)`).
    After the last response token the response has ended: V_{t+1} there is 0, not the value
    the critic wrote at the padding position (multiply the next value by the next mask).
    Multiplying A_t by `mask[:, t]` zeroes the padding and restarts the recursion at each
    row's last token.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 3: compute GAE advantages and returns (gae in "
                              "exercises/ex03_gae.py)")
    # ============================================================================
