"""Exercise 13: pass@k, the chance that at least one of k samples solves a problem.

With a verifier (is the final answer right?) a policy is measured by sampling: draw n
responses to a problem and count the c correct ones. pass@k asks whether k attempts would
have found a correct one. Drawing k of the n *without replacement*, the chance that all k are
wrong is C(n - c, k) / C(n, k), which gives the unbiased estimator of Chen et al. 2021
("Evaluating Large Language Models Trained on Code", https://arxiv.org/abs/2107.03374)::

    pass@k = 1 - C(n - c, k) / C(n, k)

==============  ========  ===============================================================
Symbol          Type      Description
==============  ========  ===============================================================
``n``           int >= 1  samples drawn for one problem
``c``           int       how many of them the verifier accepts, 0 <= c <= n
``k``           int       the attempts pass@k allows, 1 <= k <= n
``counts``      list      c of each problem of a set, all sampled n times
``ks``          list      the k at which to evaluate the curve
==============  ========  ===============================================================

Three things to get right:

* Not 1 - (1 - c/n)^k: that plugs the fraction correct into the formula for k independent
  draws, *with* replacement, and is biased low (for k > 1). Nor (c/n)^k, the chance that
  all k are correct.
* The binomials are huge: C(200, 100) ~ 9e58, 200! ~ 8e374 (beyond a float's 1.8e308) and
  C(2000, 1000) ~ 2e600. Write the ratio as a product instead, each factor in (0, 1]::

      C(n - c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)        (c factors)

* When fewer than k samples are wrong (n - c < k), every set of k holds a correct one:
  pass@k is exactly 1.0.

A set of problems has the curve k -> the mean over problems of each problem's pass@k.

Grade: ``rlhf-edu grade 13`` or ``pytest tests/exercises/test_ex13_pass_at_k.py`` (hand-made
cases, exact fractions for n up to 2000, the edges, curves over problems); failures name the
likely mistake. The package's own is ``rlhf_edu.pass_at_k``. Solution:
``solutions/ex13_pass_at_k.py``.
"""

from __future__ import annotations

import math  # noqa: F401  (you may need it)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k (a float) of one problem: `n` samples, `c` correct, `k` attempts.

    Hint: return 1.0 first when n - c < k; otherwise multiply (1 - k / i) for i from n - c + 1
    to n inclusive (Python's `range` stops one before its end) and return 1 minus the product.
    Check: c = 0 gives 0.0, k = 1 gives c / n, and (n, c, k) = (5, 2, 2) gives 1 - 3/10 = 0.7.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 13: compute the unbiased pass@k of one problem "
                              "(pass_at_k in exercises/ex13_pass_at_k.py)")
    # ============================================================================


def pass_at_k_curve(counts: list[int], n: int, ks: list[int]) -> list[float]:
    """The pass@k curve of a set of problems: a list with, for each k of `ks`, the mean over
    the problems of `pass_at_k(n, c, k)`, c being each problem's count in `counts`.

    Hint: average each problem's pass@k, not the counts: a problem solved 10 times in 10 and
    one solved 0 times give 1/2 at every k, which is not the pass@k of a problem solved 5
    times in 10.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 13: average pass@k over the problems for each k "
                              "(pass_at_k_curve in exercises/ex13_pass_at_k.py)")
    # ============================================================================
