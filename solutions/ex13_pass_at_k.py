"""Exercise 13 (solution): the unbiased pass@k as a product, and its curve over problems.

pass@k = 1 - C(n - c, k) / C(n, k): one minus the chance that k of the n samples, drawn
without replacement, are all wrong (Chen et al. 2021, https://arxiv.org/abs/2107.03374). The
ratio of binomials is the product of (1 - k / i) for i = n - c + 1 .. n, whose factors all lie
in (0, 1]: no factorial, no overflow, whatever n is.
"""

from __future__ import annotations


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k (a float) of one problem: `n` samples, `c` correct, `k` attempts."""
    if n - c < k:  # fewer than k wrong: any k samples hold a correct one
        return 1.0
    all_wrong = 1.0  # C(n - c, k) / C(n, k), one factor per correct sample
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def pass_at_k_curve(counts: list[int], n: int, ks: list[int]) -> list[float]:
    """For each k of `ks`, the mean over the problems of `pass_at_k(n, c, k)`."""
    return [sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks]
