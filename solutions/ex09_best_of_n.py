"""Exercise 9 (solution): what best-of-n buys (the expected maximum) and costs (its KL).

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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def expected_best_of_n(scores: Tensor, n: int) -> float:
    """E[max of `n` draws with replacement] from the m equally likely `scores` `(m,)`."""
    m = scores.numel()
    x = scores.double().sort().values  # (m,) ascending: x_(1) .. x_(m)
    cdf = torch.arange(m + 1, dtype=torch.float64) / m  # (m + 1,) k/m for k = 0..m
    weights = cdf[1:] ** n - cdf[:-1] ** n  # (m,) P(max = x_(k)) = (k/m)^n - ((k-1)/m)^n
    return float((weights * x).sum())


def best_of_n_probs(probs: Tensor, rewards: Tensor, n: int) -> Tensor:
    """q_i = F(r_i)^n - F(r_i^-)^n for each of the K outcomes `(K,)`, in the input's order."""
    order = rewards.argsort()  # (K,) outcome indices by ascending reward
    p = probs.double()[order]  # (K,) in reward order
    upto = p.cumsum(0)  # F(r_i): mass rewarded at most r_i
    below = (upto - p).clamp(min=0)  # F(r_i^-): mass rewarded less than r_i
    q = torch.empty_like(p)
    q[order] = upto ** n - below ** n  # back to the input's order
    return q.to(probs.dtype)


def best_of_n_kl(probs: Tensor, rewards: Tensor, n: int) -> float:
    """sum_i q_i log(q_i / p_i) over the outcomes best-of-`n` can pick (q_i > 0)."""
    q = best_of_n_probs(probs, rewards, n).double()
    p = probs.double()
    keep = q > 0
    return float((q[keep] * torch.log(q[keep] / p[keep])).sum())


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n - 1) / n nats."""
    return math.log(n) - (n - 1) / n


def compounded_kl_bound(n: int, rounds: int) -> float:
    """`rounds` exact rounds of best-of-`n` are one best-of-n^rounds: its bound."""
    return best_of_n_kl_bound(n ** rounds)
