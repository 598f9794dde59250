"""pass@k: the chance that at least one of k samples solves a problem, estimated without bias.

Sample ``n`` responses to a problem, find ``c`` of them correct: the unbiased estimate of
pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code",
https://arxiv.org/abs/2107.03374) is the chance that k of the n, drawn without replacement, are
not all wrong::

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

and 1 when fewer than k are wrong (n - c < k). The binomials overflow a float from n ~ 1030
(C(2000, 1000) ~ 1e600), and their exact integers cost more the larger n is; the product needs
neither. Here the product is taken as a sum of logarithms (``log1p``), so a pass@k as small as
1e-300 keeps its relative precision too, and over the shorter of two equal products: the one
above, c terms, or C(n - c, k) / C(n, k) = prod_{j=0}^{k-1} (1 - c / (n - j)), k terms.

What it is not: 1 - (1 - c/n)^k, which draws the k with replacement (biased low for k > 1),
nor (c/n)^k, the chance that all k are right. pass@1 is c / n either way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .validate import COUNT_MAX, check_int

__all__ = ["pass_at_k", "pass_at_k_curve"]


def _pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k for checked n, c, k."""
    if n - c < k:  # fewer than k wrong: every draw of k holds a correct one
        return 1.0
    if c == 0:
        return 0.0
    if c <= k:  # c terms (1 - k/i), each > 0 since i >= n - c + 1 > k
        logs = (math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    else:  # k terms (1 - c/(n - j)), each > 0 since n - j >= n - k + 1 > c
        logs = (math.log1p(-c / (n - j)) for j in range(k))
    return -math.expm1(math.fsum(logs))  # 1 - prod, precise even when prod is near 1


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of a problem: ``n`` samples, ``c`` of them correct, ``k <= n`` drawn.

    ``1 - C(n - c, k) / C(n, k)`` computed as a product (no binomial, no overflow), for n up
    to 10**8 (``tests/test_passk.py`` checks it against exact fractions to n = 5000, within
    1e-13 of the value); 1.0 when ``n - c < k``. ``pass_at_k(n, c, 1)`` is ``c / n``.

    >>> pass_at_k(10, 1, 1), pass_at_k(10, 1, 5), pass_at_k(10, 6, 5)
    (0.1, 0.5, 1.0)
    >>> pass_at_k(200, 1, 0)
    Traceback (most recent call last):
    ValueError: k must be an int in [1, 200], got 0
    """
    n = check_int("n", n, minimum=1, maximum=COUNT_MAX)
    c = check_int("c", c, minimum=0, maximum=n)
    k = check_int("k", k, minimum=1, maximum=n)
    return _pass_at_k(n, c, k)


def _ints(name: str, values: object, minimum: int, maximum: int) -> list[int]:
    """``values`` (a list, tuple, NumPy array or tensor of ints) as a non-empty list of ints in
    ``[minimum, maximum]``; ``ValueError`` naming the first one that is not."""
    if hasattr(values, "tolist") and not isinstance(values, str | bytes):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    if not values:
        raise ValueError(f"{name} must hold at least one int, got an empty sequence")
    return [check_int(f"{name}[{i}]", v, minimum=minimum, maximum=maximum)
            for i, v in enumerate(values)]


def pass_at_k_curve(counts: Sequence[int], n: int, ks: Sequence[int]) -> list[float]:
    """The pass@k curve of a set of problems: for each k of ``ks``, the mean over the problems
    of ``pass_at_k(n, counts[i], k)``, problem i having ``counts[i]`` correct of ``n`` samples.

    >>> pass_at_k_curve([0, 1, 10], n=10, ks=[1, 5, 10])
    [0.3666666666666667, 0.5, 0.6666666666666666]
    """
    n = check_int("n", n, minimum=1, maximum=COUNT_MAX)
    counts = _ints("counts", counts, 0, n)
    ks = _ints("ks", ks, 1, n)
    tally = Counter(counts)  # problems with the same count share their pass@k
    return [math.fsum(m * _pass_at_k(n, c, k) for c, m in tally.items()) / len(counts)
            for k in ks]
