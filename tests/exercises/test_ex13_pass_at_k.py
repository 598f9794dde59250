"""Graded tests of Exercise 13 (exercises/ex13_pass_at_k.py): the unbiased pass@k of one
problem, and the pass@k curve of a set of problems.

Expected values come from exact rational arithmetic, ``1 - Fraction(comb(n - c, k),
comb(n, k))``. When a result is wrong, the usual mistakes are computed too and a match names
the mistake: the biased 1 - (1 - c/n)^k, the naive (c/n)^k, the all-wrong chance without its
``1 -``, a product whose range is off by one, no 1.0 when n - c < k, binomials or factorials
taken as floats (an OverflowError, or inf / inf = NaN, from n = 171 on: 200! ~ 7.9e374), and
for the curve, the pass@k of the mean count or a sum instead of a mean.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from grading_utils import _short, plain

EXERCISE = "ex13_pass_at_k"

TOL = 1e-9  # relative, and absolute near 0: the product loses ~n ulps, mistakes far more

FLOATS = ("it looks like binomials or factorials were computed as floats: 200! ~ 7.9e374 and "
          "C(2000, 1000) ~ 2e600 are beyond a float's 1.8e308 (so float() overflows, and "
          "inf / inf is NaN); write C(n - c, k) / C(n, k) as the product of (1 - k / i) for "
          "i = n - c + 1 .. n, whose factors all lie in (0, 1]")
NOT_ONE = ("when fewer than k samples are wrong (n - c < k), every set of k samples holds a "
           "correct one, so pass@k is exactly 1.0: return it before the product (or the "
           "binomials, or the logarithms) meets a factor of 0 or a negative number")
OFF_BY_ONE = ("an index is off by one in the product: its factors are (1 - k / i) for i = "
              "n - c + 1, ..., n, both ends included, c of them: range(n - c + 1, n + 1) "
              "(or (1 - c / (n - j)) for j = 0, ..., k - 1, k of them)")


def exact(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k) in rational arithmetic (comb is 0 when k > n - c)."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def close(got: float, want: float) -> bool:
    return math.isfinite(got) and abs(got - want) <= TOL * max(abs(want), 1e-3)


def product(n: int, k: int, lo: int, hi: int) -> float | None:
    """1 - prod (1 - k / i) for i in range(lo, hi), or None where a factor divides by 0."""
    if lo <= 0 <= hi - 1:
        return None
    return 1 - math.prod(1 - k / i for i in range(lo, hi))


def mistakes(n: int, c: int, k: int) -> list[tuple[float | None, str]]:
    """Values a wrong pass_at_k is likely to return at (n, c, k), with what went wrong."""
    p = c / n
    out: list[tuple[float | None, str]] = [
        (1 - (1 - p) ** k,
         "it looks like the biased estimator 1 - (1 - c/n)^k: it treats the k attempts as draws "
         "WITH replacement at the rate c/n and is biased low; draw k of the n samples without "
         "replacement: 1 - C(n - c, k) / C(n, k)"),
        (p ** k, "it looks like (c/n)^k, the chance that all k attempts are correct; pass@k is "
                 "the chance that at least one is: 1 - C(n - c, k) / C(n, k)"),
        (1 - exact(n, c, k), "that is C(n - c, k) / C(n, k), the chance that all k attempts "
                             "are wrong; pass@k is 1 minus it"),
        (min(1.0, k * p), "that is k * c/n, the k chances added as if two attempts could never "
                          "both be correct"),
    ]
    for lo, hi in ((n - c, n + 1), (n - c + 1, n), (n - c, n), (n - c + 2, n + 1)):
        out.append((product(n, k, lo, hi), OFF_BY_ONE))
    for lo, hi in ((0, k + 1), (1, k + 1), (0, k - 1)):
        if all(n - j > 0 for j in range(lo, hi)):
            out.append((1 - math.prod(1 - c / (n - j) for j in range(lo, hi)), OFF_BY_ONE))
    return out


def expect_number(x: object, name: str) -> float:
    """``x`` must be a real number (a float, an int, or a one-element tensor)."""
    x = plain(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x.detach().reshape(()))
    if isinstance(x, bool) or not isinstance(x, int | float):
        pytest.fail(f"{name} should return a number (a float), got {type(x).__name__}: "
                    f"{_short(x)}", pytrace=False)
    return float(x)


def hint(n: int, c: int, k: int, got: float) -> str:
    if n - c < k:
        return NOT_ONE
    if not math.isfinite(got):
        return FLOATS
    if not 0 <= got <= 1:
        return "pass@k is a probability: it lies in [0, 1]"
    return next((text for value, text in mistakes(n, c, k)
                 if value is not None and close(got, value)), "")


def call(ex, n: int, c: int, k: int) -> float:
    """The learner's pass_at_k(n, c, k); the arithmetic errors of the usual mistakes fail
    with what they most likely mean."""
    problem = None
    try:
        return expect_number(ex.pass_at_k(n, c, k), "pass_at_k")
    except OverflowError as e:
        problem = f"OverflowError ({e}): {FLOATS}"
    except (ValueError, ZeroDivisionError) as e:
        if n - c >= k:
            raise
        problem = f"{type(e).__name__} ({e}): {NOT_ONE}"
    pytest.fail(f"pass_at_k(n={n}, c={c}, k={k}) raised {problem}", pytrace=False)


def check(ex, n: int, c: int, k: int, why: str = "") -> None:
    got, want = call(ex, n, c, k), exact(n, c, k)
    if not close(got, want):
        text = hint(n, c, k, got)
        pytest.fail(f"pass_at_k(n={n}, c={c}, k={k}) is {got:.10g} but should be {want:.10g}"
                    + (f": {why}" if why else "") + (f"; {text}" if text else ""),
                    pytrace=False)


# ------------------------------------------------------------------ one problem


def test_one_attempt_is_the_fraction_correct(ex):
    for n, c in [(10, 3), (7, 0), (64, 13), (200, 1), (5, 5)]:
        check(ex, n, c, 1, f"with k = 1 the one attempt is correct with probability c/n = {c}/{n}")


def test_two_attempts_of_five_samples(ex):
    check(ex, 5, 2, 2, "of the C(5, 2) = 10 pairs of samples, C(3, 2) = 3 hold only wrong "
                       "ones: pass@2 = 1 - 3/10 = 0.7")


def test_four_attempts_of_ten_samples(ex):
    check(ex, 10, 3, 4, "3 correct of 10: of the C(10, 4) = 210 sets of 4 samples, "
                        "C(7, 4) = 35 are all wrong: 1 - 35/210")


def test_nothing_correct_is_zero(ex):
    for n, k in [(10, 1), (10, 10), (200, 64)]:
        check(ex, n, 0, k, "no sample is correct: no attempt can be")


@pytest.mark.parametrize("n, c, k", [(10, 8, 3), (10, 10, 1), (6, 2, 5), (64, 60, 64)])
def test_fewer_wrong_than_attempts_is_one(ex, n, c, k):
    check(ex, n, c, k, f"only {n - c} sample(s) wrong: any {k} samples hold a correct one")


def test_every_case_up_to_twelve_samples(ex):
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                check(ex, n, c, k, "every (n, c, k) with n <= 12, against exact fractions")


def test_two_hundred_samples(ex):
    for n, c, k in [(200, 1, 1), (200, 1, 2), (200, 10, 64), (200, 100, 100), (200, 37, 5),
                    (200, 199, 1), (200, 3, 150)]:
        check(ex, n, c, k, "n = 200 samples, against exact fractions")


def test_two_thousand_samples(ex):
    for n, c, k in [(2000, 1, 2), (2000, 1000, 1000), (2000, 25, 100), (2000, 500, 4),
                    (2000, 1, 1000)]:
        check(ex, n, c, k, "n = 2000 samples, against exact fractions")


def test_random_cases(ex):
    rng = random.Random(13)
    for _ in range(40):
        n = rng.choice([16, 64, 100, 256, 500])
        check(ex, n, rng.randint(0, n), rng.randint(1, n), "random (n, c, k), against exact "
              "fractions")


# ------------------------------------------------------------------ the curve


def expect_curve(ex, counts: list[int], n: int, ks: list[int]) -> list[float]:
    x = plain(ex.pass_at_k_curve(counts, n, ks))
    if isinstance(x, torch.Tensor) and x.ndim == 1:
        x = x.tolist()
    if not isinstance(x, list | tuple) or len(x) != len(ks):
        pytest.fail(f"pass_at_k_curve should return a list of {len(ks)} floats, one per k of "
                    f"ks, got {type(x).__name__}: {_short(x)}" + (
                        "; it looks like one value per problem: average over the problems"
                        if isinstance(x, list | tuple) and len(x) == len(counts) else ""),
                    pytrace=False)
    return [expect_number(v, "pass_at_k_curve's entries") for v in x]


def curve_hint(ex, counts: list[int], n: int, ks: list[int], got: list[float]) -> str:
    def same(values: list[float]) -> bool:
        return all(close(a, b) for a, b in zip(got, values))

    m = len(counts)
    want = [sum(exact(n, c, k) for c in counts) / m for k in ks]
    mean_c = sum(counts) / m  # a fraction: 1 - prod (1 - mean_c / (n - j)), j < k
    if same([w * m for w in want]):
        return "that is the sum over the problems: divide by their number (the mean)"
    if same([1 - math.prod(1 - mean_c / (n - j) for j in range(k)) for k in ks]) or same(
            [1 - (1 - mean_c / n) ** k for k in ks]):
        return ("it looks like the pass@k of the average count: average each problem's "
                "pass@k instead (a problem always solved and one never solved give 1/2 at "
                "every k)")
    try:
        own = [sum(call(ex, n, c, k) for c in counts) / m for k in ks]
    except (Exception, pytest.fail.Exception):
        return ""
    if same(own):
        return "the mean of your pass_at_k is right, but pass_at_k is not (see its tests)"
    return ""


def check_curve(ex, counts: list[int], n: int, ks: list[int], why: str) -> list[float]:
    got = expect_curve(ex, counts, n, ks)
    want = [sum(exact(n, c, k) for c in counts) / len(counts) for k in ks]
    for k, g, w in zip(ks, got, want):
        if not close(g, w):
            text = curve_hint(ex, counts, n, ks, got)
            pytest.fail(f"pass_at_k_curve(counts={_short(counts, 40)}, n={n}) at k = {k} is "
                        f"{g:.10g} but should be {w:.10g}: {why}"
                        + (f"; {text}" if text else ""), pytrace=False)
    return got


def test_curve_of_three_problems(ex):
    check_curve(ex, [0, 1, 10], 10, [1, 5, 10],
                "problems solved 0, 1 and 10 times in 10: the mean of (0, 0.1, 1) at k = 1, "
                "of (0, 0.5, 1) at k = 5, of (0, 1, 1) at k = 10")


def test_curve_of_always_and_never(ex):
    check_curve(ex, [0, 10], 10, [1, 2, 5],
                "one problem always solved, one never: pass@k = 1/2 at every k")


def test_curve_over_many_problems(ex):
    rng = random.Random(64)
    counts = [rng.choice([0, 0, 1, 2, 5, 17, 40, 64]) for _ in range(30)]
    got = check_curve(ex, counts, 64, list(range(1, 65)),
                      "30 problems, 64 samples each, k = 1 .. 64")
    if any(b < a - 1e-12 for a, b in zip(got, got[1:])):
        pytest.fail("pass_at_k_curve decreases somewhere: more attempts never lower pass@k",
                    pytrace=False)
