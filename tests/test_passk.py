"""pass@k (rlhf_edu.passk): the unbiased estimator against exact rational arithmetic, its
monotonicity, its edges, the curve over problems, and one-line refusals of bad input."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

import rlhf_edu
from rlhf_edu import pass_at_k, pass_at_k_curve


def exact(n: int, c: int, k: int) -> Fraction:
    """1 - C(n - c, k) / C(n, k) in rational arithmetic (math.comb is 0 when k > n - c)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def assert_exact(n: int, c: int, k: int) -> None:
    got, want = pass_at_k(n, c, k), exact(n, c, k)
    assert isinstance(got, float)
    # within a few ulps of the exact value, relative to it (also when it is tiny)
    assert abs(Fraction(got) - want) <= Fraction(1, 10**13) * want + Fraction(1, 10**300), (
        n, c, k, got, float(want))


def cases(n: int, count: int, seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    picks = {(n, 0, 1), (n, n, n), (n, 1, 1), (n, 1, n), (n, n - 1, 1), (n, 1, n // 2)}
    while len(picks) < count:
        picks.add((n, rng.randint(0, n), rng.randint(1, n)))
    return sorted(picks)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 64])
def test_every_case_of_small_n_is_exact(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert_exact(n, c, k)


@pytest.mark.parametrize("n, seed", [(200, 0), (500, 1), (1000, 2), (5000, 3)])
def test_large_n_is_exact(n, seed):
    for case in cases(n, 60, seed):
        assert_exact(*case)


def test_tiny_values_keep_their_relative_precision():
    # 1 - prod with prod within 1e-6 of 1 would keep only ~10 digits; log1p / expm1 keep all
    for n, c, k in [(10**6, 1, 1), (500, 1, 2), (10**5, 3, 2), (2000, 1, 1)]:
        assert_exact(n, c, k)
    assert pass_at_k(10**6, 1, 1) == 1e-6


def test_pass_at_1_is_the_fraction_correct():
    for n in (1, 7, 64, 200, 999):
        for c in range(0, n + 1, max(1, n // 13)):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-15, abs=0)


def test_edges():
    assert pass_at_k(10, 0, 5) == 0.0  # nothing correct: nothing to find
    assert pass_at_k(10, 10, 1) == 1.0  # everything correct
    assert pass_at_k(10, 6, 5) == 1.0  # 4 wrong: any 5 hold a correct one (n - c < k)
    assert pass_at_k(10, 5, 5) < 1.0  # 5 wrong: one draw of 5 is all wrong
    assert pass_at_k(10, 5, 5) == pytest.approx(1 - 1 / 252)
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10**8, 1, 10**8) == 1.0  # the k = n draw holds every sample
    assert pass_at_k(200, 100, 100) == pytest.approx(1.0)  # C(100,100)/C(200,100) ~ 1e-59


def test_monotone_in_k_and_c():
    n = 200
    for c in (0, 1, 7, 50, 199):
        curve = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert all(a <= b for a, b in zip(curve, curve[1:])), c
    for k in (1, 2, 16, 150):
        by_c = [pass_at_k(n, c, k) for c in range(n + 1)]
        assert all(a <= b for a, b in zip(by_c, by_c[1:])), k
        assert all(0.0 <= v <= 1.0 for v in by_c)


def test_unbiased_where_the_plug_in_estimator_is_not():
    # sampling n from a problem of true rate p: E[pass_at_k] = 1 - (1 - p)^k exactly; the
    # plug-in 1 - (1 - c/n)^k averages to less
    n, k, p = 20, 5, Fraction(3, 10)
    law = [math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)]
    unbiased = sum(w * Fraction(pass_at_k(n, c, k)) for c, w in enumerate(law))
    plug_in = sum(w * (1 - (1 - Fraction(c, n)) ** k) for c, w in enumerate(law))
    truth = 1 - (1 - p) ** k
    assert abs(unbiased - truth) < Fraction(1, 10**12)
    assert truth - plug_in > Fraction(1, 100)


def test_curve_is_the_mean_over_problems():
    counts, n, ks = [0, 1, 10, 3, 3], 10, [1, 2, 5, 10]
    want = [sum(float(exact(n, c, k)) for c in counts) / len(counts) for k in ks]
    assert pass_at_k_curve(counts, n, ks) == pytest.approx(want, rel=1e-14)
    # solved always and never: 1/2 at every k (not the pass@k of a 5/10 problem)
    assert pass_at_k_curve([0, 10], 10, [1, 2, 5]) == [0.5, 0.5, 0.5]


def test_curve_takes_arrays_and_tensors():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 65, size=40)
    want = pass_at_k_curve(counts.tolist(), 64, list(range(1, 65)))
    assert pass_at_k_curve(counts, 64, np.arange(1, 65)) == want
    assert pass_at_k_curve(torch.from_numpy(counts), 64, range(1, 65)) == want
    assert all(a <= b for a, b in zip(want, want[1:]))
    assert isinstance(want, list) and all(isinstance(v, float) for v in want)


def test_exported():
    assert {"pass_at_k", "pass_at_k_curve"} <= set(rlhf_edu.__all__)


@pytest.mark.parametrize("call, message", [
    (lambda: pass_at_k(0, 0, 1), "n must be an int in [1, 10**8], got 0"),
    (lambda: pass_at_k(10, 11, 1), "c must be an int in [0, 10], got 11"),
    (lambda: pass_at_k(10, -1, 1), "c must be an int in [0, 10], got -1"),
    (lambda: pass_at_k(10, 3, 0), "k must be an int in [1, 10], got 0"),
    (lambda: pass_at_k(10, 3, 11), "k must be an int in [1, 10], got 11"),
    (lambda: pass_at_k(10.0, 3, 1), "n must be an int in [1, 10**8], got 10.0 (float)"),
    (lambda: pass_at_k(10, True, 1), "c must be an int in [0, 10], got True (bool)"),
    (lambda: pass_at_k(10, 3, "2"), "k must be an int in [1, 10], got '2' (str)"),
    (lambda: pass_at_k_curve([1, 11], 10, [1]), "counts[1] must be an int in [0, 10], got 11"),
    (lambda: pass_at_k_curve([1], 10, [1, 0]), "ks[1] must be an int in [1, 10], got 0"),
    (lambda: pass_at_k_curve([], 10, [1]), "counts must hold at least one int"),
    (lambda: pass_at_k_curve([1], 10, []), "ks must hold at least one int"),
    (lambda: pass_at_k_curve("12", 10, [1]), "counts must be a sequence of ints, got str"),
    (lambda: pass_at_k_curve(5, 10, [1]), "counts must be a sequence of ints, got int"),
    (lambda: pass_at_k_curve([1.5], 10, [1]), "counts[0] must be an int in [0, 10], got 1.5"),
    (lambda: pass_at_k_curve([1], 0, [1]), "n must be an int in [1, 10**8], got 0"),
])
def test_bad_input_is_one_line(call, message):
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text
