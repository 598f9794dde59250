"""Exercise 9: why not just fine-tune on high-reward responses? What best-of-n buys and costs.

Rejection sampling draws n responses per prompt and keeps the one the reward model scores
highest; rejection-sampling fine-tuning then trains the actor on the winners. Two numbers say
what one such filter does: the score it gains (the expected maximum of n draws) and how far it
moves the policy (its KL to the policy it filtered). Repeating the filter compounds the second.

=====================  ======  ===========================================================
Symbol                 Shape   Description
=====================  ======  ===========================================================
``scores``             (m,)    reward-model scores of m responses sampled for ONE prompt:
                               an empirical distribution, each sample equally likely
``n``                  int     responses drawn per prompt; the best one is kept
``probs``              (K,)    the policy's probability of each of K possible responses
``rewards``            (K,)    the reward of each of those K responses, all distinct, in
                               any order (not sorted)
``rounds``             int     rounds of rejection sampling, each fitting best-of-n exactly
=====================  ======  ===========================================================

Formulas:

* The maximum of n draws (with replacement) from m equally likely values x_(1) <= ... <= x_(m)
  is x_(k) with probability (k/m)^n - ((k-1)/m)^n, k = 1..m: the chance that all n draws are
  among the k smallest, minus the chance that they are all among the k - 1 smallest.
* Over K outcomes with probabilities p_i and CDF F(r) = P(reward <= r), best-of-n picks
  outcome i with probability q_i = F(r_i)^n - F(r_i^-)^n, F(r_i^-) = P(reward < r_i).
* KL(best-of-n || policy) = sum_i q_i log(q_i / p_i) (terms with q_i = 0 are 0). When no
  outcome is likely (a continuous reward), q_i / p_i -> n F^(n-1) and the KL is
  log n - (n - 1) / n (Stiennon et al. 2020, https://arxiv.org/abs/2009.01325, appendix);
  otherwise that is an upper bound (Beirami et al. 2024, https://arxiv.org/abs/2401.01879).
* Rejection-sampling fine-tuning repeats the filter with the reward model fixed. If a round
  fits best-of-n of the current policy exactly, the best of n draws from best-of-n is the best
  of n * n draws from the start: after `rounds` rounds the policy is best-of-n^rounds.

Grade: ``rlhf-edu grade 9`` or ``pytest tests/exercises/test_ex09_best_of_n.py`` (hand-made
distributions, every draw enumerated, unsorted rewards and ties, the limit of many outcomes).
Solution: ``solutions/ex09_best_of_n.py``.
"""

from __future__ import annotations

import math  # noqa: F401  (you will need it)

import torch  # noqa: F401
from torch import Tensor


def expected_best_of_n(scores: Tensor, n: int) -> float:
    """E[max of `n` draws] (a float) from the empirical distribution of `scores` `(m,)`:
    draws with replacement, each of the m samples equally likely.

    Hint: sort the scores first (`scores.sort().values`); x_(k) is the maximum with probability
    (k/m)^n - ((k-1)/m)^n for k = 1..m (check: the probabilities sum to 1, and n = 1 gives
    the mean). Equal scores need nothing special.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 9: compute the expected best-of-n score "
                              "(expected_best_of_n in exercises/ex09_best_of_n.py)")
    # ============================================================================


def best_of_n_probs(probs: Tensor, rewards: Tensor, n: int) -> Tensor:
    """The best-of-`n` policy `(K,)`: the probability that each of the K outcomes is the best
    of n draws from `probs` `(K,)`, their rewards `rewards` `(K,)` distinct and in any order.

    Hint: `rewards.argsort()` puts the outcomes in reward order; a cumulative sum of their
    probabilities in that order is F(r_i), and F(r_i) - p_i is F(r_i^-). Put the results back
    in the input's order (the outcomes are not sorted).
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 9: compute the best-of-n policy's probabilities "
                              "(best_of_n_probs in exercises/ex09_best_of_n.py)")
    # ============================================================================


def best_of_n_kl(probs: Tensor, rewards: Tensor, n: int) -> float:
    """KL(best-of-`n` || policy) in nats (a float), exactly, for the K outcomes of `probs` and
    `rewards` `(K,)`.

    Hint: use `best_of_n_probs`; the KL sums q log(q / p) over the outcomes with q > 0.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 9: compute the exact KL of best-of-n to the policy "
                              "(best_of_n_kl in exercises/ex09_best_of_n.py)")
    # ============================================================================


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n - 1) / n (a float): the KL of best-of-`n` when no two responses tie, and an
    upper bound on `best_of_n_kl` for any distribution.

    Hint: natural log. n = 1 keeps every sample: its KL is 0.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 9: write the best-of-n KL formula "
                              "(best_of_n_kl_bound in exercises/ex09_best_of_n.py)")
    # ============================================================================


def compounded_kl_bound(n: int, rounds: int) -> float:
    """The KL bound (a float) after `rounds` rounds of rejection-sampling fine-tuning, each
    fitting best-of-`n` of the previous round's policy exactly, the reward model fixed.

    Hint: best-of-n of best-of-n is best-of-(n * n) of the start. KLs of successive rounds do
    not simply add up. 0 rounds: the policy has not moved.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 9: compound the best-of-n KL over rounds "
                              "(compounded_kl_bound in exercises/ex09_best_of_n.py)")
    # ============================================================================
