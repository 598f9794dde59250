"""Exercise 2: KL estimators and the per-token reward.

Step 4 of an RLHF step: the reward model gave one score per response; the reference model
keeps the policy close to where it started through a per-token KL penalty. You write the three
per-token KL estimators and assemble the reward that GAE (Exercise 3) will consume.

=================  ========  ==============================================================
Symbol             Shape     Description
=================  ========  ==============================================================
``logprobs``       (B, T)    log pi(token) of each sampled response token under the policy
``ref_logprobs``   (B, T)    log pi_ref(token) of the same tokens under the reference
``mask``           (B, T)    1.0 on response tokens, 0.0 on padding (float)
``scores``         (B,)      the reward model's score of each whole response
``beta``           float     the KL coefficient, >= 0
=================  ========  ==============================================================

With ``d = logprobs - ref_logprobs`` for tokens sampled from pi (Schulman, "Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html):

* k1 = d                       unbiased for KL(pi || pi_ref), negative on some tokens
* k2 = d^2 / 2                 biased, never negative; quadratic in d, so a few tokens with a
                               large |d| give it heavy tails (a larger spread than k1's)
* k3 = exp(-d) - 1 + d         unbiased and never negative ("(r - 1) - log r", r = pi_ref/pi);
                               exponential in -d, so the heaviest tail of the three

Grade: ``rlhf-edu grade 2`` or ``pytest tests/exercises/test_ex02_kl_reward.py`` (hand-made
cases, random tensors against ``rlhf_edu.rewards``, and Monte-Carlo unbiasedness).
Solution: ``solutions/ex02_kl_reward.py``.
"""

from __future__ import annotations

import torch  # noqa: F401  (you will need it)
from torch import Tensor


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 per token: `(B, T)`, `(B, T)` -> `(B, T)`.

    Hint: one subtraction.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 2: compute the k1 KL estimate (kl_k1 in "
                              "exercises/ex02_kl_reward.py)")
    # ============================================================================


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 per token: `(B, T)`, `(B, T)` -> `(B, T)`."""
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 2: compute the k2 KL estimate (kl_k2 in "
                              "exercises/ex02_kl_reward.py)")
    # ============================================================================


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 per token: `(B, T)`, `(B, T)` -> `(B, T)`; never negative.

    Hint: mind the sign: r = pi_ref / pi, so log r = ref_logprobs - logprobs.
    `torch.expm1(x)` computes exp(x) - 1 precisely when x is close to 0.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 2: compute the k3 KL estimate (kl_k3 in "
                              "exercises/ex02_kl_reward.py)")
    # ============================================================================


def total_reward(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                 beta: float) -> Tensor:
    """Per-token reward of RLHF: `-beta * k1` on every response token, plus each response's
    score on its last response token.

    Args:
        scores: `(B,)`, one score per response.
        logprobs: `(B, T)`.
        ref_logprobs: `(B, T)`.
        mask: `(B, T)`, 1.0 on response tokens; every row has at least one.
        beta: KL coefficient.

    Returns:
        `(B, T)` rewards, exactly 0 where `mask` is 0. Row b is
        `-beta * k1[b, t]` on its response tokens, and `scores[b]` is added at the last
        position t where `mask[b, t] == 1` (where the reward model read the whole response).

    Hint: multiply by `mask` to clear the padding. For the last response token, do not assume
    the padding is on the right: find the largest t whose mask is 1 (e.g. `torch.where` on
    `torch.arange(T)`, then `.max(dim=1)`), and add the scores there (index with
    `rewards[torch.arange(B), last]`, or use `scatter_add`).
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 2: assemble the per-token reward (total_reward in "
                              "exercises/ex02_kl_reward.py)")
    # ============================================================================
