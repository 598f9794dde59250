"""Exercise 12: the entropy bonus, c2 * H(actor), from the actor's logits.

PPO's loss can carry a third term, ``- c2 * H``: the mean entropy of the actor's next-token
distribution over the response tokens (``PPOConfig.ent_coef`` is c2). Raising the entropy
keeps the policy from collapsing onto a few tokens too early. The trainer computes ``H`` from
the logits the actor's forward pass already has; here you write that computation.

================  ==========  ===========================================================
Symbol            Shape       Description
================  ==========  ===========================================================
``logits``        (B, T, V)   the actor's raw scores for every token of the vocabulary
``mask``          (B, T)      1.0 on response tokens, 0.0 on padding
``temperature``   float > 0   the policy samples from softmax(logits / temperature)
================  ==========  ===========================================================

With ``p = softmax(logits / temperature)`` over the last dimension, the entropy at one
position is ``H = - sum_v p_v log p_v`` (in nats: the natural log), a sum over the *whole*
vocabulary. It is 0 for a distribution sure of one token and ``log V`` for the uniform one.

Grade: ``rlhf-edu grade 12`` or ``pytest tests/exercises/test_ex12_entropy.py`` (uniform and
hand-made distributions, logits of magnitude 1e4, temperature, padding, gradients, random
logits against ``rlhf_edu.ppo.entropy_from_logits``). Solution: ``solutions/ex12_entropy.py``.
"""

from __future__ import annotations

import torch  # noqa: F401  (you will need it)
from torch import Tensor


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy in nats of softmax(`logits` / `temperature`) at every position: `(B, T, V)` →
    `(B, T)`, differentiable in `logits`.

    Hint: take `log p` from `torch.log_softmax`, not `torch.log(torch.softmax(...))`: at logits
    of 1e4 the softmax underflows to exact zeros and log(0) = -inf, so 0 * -inf gives NaN.
    With log_softmax every log p is finite, and p = log_p.exp() is 0 where it underflows.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 12: the entropy at every position (token_entropy in "
                              "exercises/ex12_entropy.py)")
    # ============================================================================


def masked_entropy(logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """The mean entropy over the response tokens: `logits` `(B, T, V)`, `mask` `(B, T)` → a
    scalar tensor, differentiable in `logits` (the H of the loss's `- c2 * H`).

    Hint: use `token_entropy`, then average over the positions where `mask` is 1 only; the
    padding's logits are whatever the model computed there and must not count.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 12: the masked mean entropy (masked_entropy in "
                              "exercises/ex12_entropy.py)")
    # ============================================================================
