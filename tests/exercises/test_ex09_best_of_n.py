"""Graded tests of Exercise 9 (exercises/ex09_best_of_n.py): the expected best-of-n score, the
best-of-n policy, its exact KL to the policy, the log n - (n - 1)/n formula and its compounding.

Expected values come from enumerating every draw (itertools.product) or from the formulas
written out with Python floats. When a result is wrong, the likely mistakes are computed too
(the mean instead of the maximum, draws without replacement, unsorted scores, an index off by
one, log n without its correction, the correction's sign flipped, KLs added over rounds, ...)
and a match names the mistake.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from grading_utils import _short, expect_close, expect_tensor, plain

EXERCISE = "ex09_best_of_n"


def expect_number(x: object, name: str, nan_hint: str = "") -> float:
    """``x`` must be a real number (a float, or a one-element tensor); returns it as a float.
    ``nan_hint`` says what a NaN most likely comes from."""
    x = plain(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.is_floating_point():
        return float(x.detach().reshape(()))
    if isinstance(x, bool) or not isinstance(x, int | float):
        pytest.fail(f"{name} should return a number (a float), got {type(x).__name__}: "
                    f"{_short(x)}", pytrace=False)
    value = float(x)
    if not math.isfinite(value):
        pytest.fail(f"{name} returned {value}: it should be a finite number"
                    + (f"; {nan_hint}" if nan_hint and math.isnan(value) else ""),
                    pytrace=False)
    return value


def close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isfinite(a) and abs(a - b) <= tol * max(1.0, abs(b))


def first_match(got: float, mistakes: list[tuple[float, str]]) -> str:
    return next((text for value, text in mistakes if close(got, value)), "")


# ------------------------------------------------------------------ expected best-of-n


def max_by_enumeration(values: list[float], n: int) -> float:
    """The mean of max over all m^n equally likely n-tuples of draws."""
    tuples = list(itertools.product(values, repeat=n))
    return sum(max(t) for t in tuples) / len(tuples)


def expected_max_mistakes(values: list[float], n: int) -> list[tuple[float, str]]:
    """Values a wrong expected_best_of_n is likely to return, with what went wrong."""
    m, x = len(values), sorted(values)
    out = [(sum(values) / m, "that is the mean of the scores (best-of-1): best-of-n averages "
                             "the MAXIMUM of n draws"),
           (max(values), "that is the largest score: best-of-n keeps the best of n random "
                         "draws, which is the largest sample only as n grows without end")]
    out.append((sum(((k + 1) / m) ** n * x[k] for k in range(m)),
                "it looks like each score was weighted by (k/m)^n, the probability that the "
                "maximum is AT MOST x_(k); the probability that it EQUALS x_(k) is "
                "(k/m)^n - ((k-1)/m)^n"))
    out.append((sum(((k / m) ** n - ((k - 1) / m) ** n) * x[k] for k in range(m)),
                "an index is off by one: with Python's 0-based k, x[k] is the (k+1)-th "
                "smallest, so its weight is ((k+1)/m)^n - (k/m)^n"))
    out.append((sum((((k + 1) / m) ** n - (k / m) ** n) * values[k] for k in range(m)),
                "it looks like the weights were applied to the scores as given: sort them first "
                "(the weight of x_(k) depends on its rank)"))
    out.append((sum(n * ((k + 1) / m) ** (n - 1) / m * x[k] for k in range(m)),
                "it looks like the continuous density n F^(n-1) f was used; on m equally "
                "likely samples the exact weights are (k/m)^n - ((k-1)/m)^n"))
    if m >= n:  # n distinct samples: max is x_(k) with probability C(k-1, n-1) / C(m, n)
        out.append((sum(math.comb(k, n - 1) / math.comb(m, n) * x[k] for k in range(m)),
                    "it looks like the n draws were taken without replacement (n distinct "
                    "samples); best-of-n draws independently, so the same score can come twice"))
    return out


def check_expected_max(ex, values: list[float], n: int, why: str) -> None:
    got = expect_number(ex.expected_best_of_n(torch.tensor(values), n), "expected_best_of_n")
    want = max_by_enumeration(values, n) if len(values) ** n <= 50_000 else None
    if want is None:
        m, x = len(values), sorted(values)
        want = sum((((k + 1) / m) ** n - (k / m) ** n) * x[k] for k in range(m))
    if not close(got, want):
        hint = first_match(got, expected_max_mistakes(values, n))
        pytest.fail(f"expected_best_of_n(scores={values}, n={n}) is {got:.6g} but should be "
                    f"{want:.6g}: {why}" + (f"; {hint}" if hint else ""), pytrace=False)


def test_expected_best_of_2_of_four_scores(ex):
    check_expected_max(ex, [0.0, 1.0, 2.0, 3.0], 2,
                       "of the 16 equally likely pairs of draws, 1 has maximum 0, 3 have 1, "
                       "5 have 2 and 7 have 3: (0 + 3 + 10 + 21) / 16 = 2.125")


def test_best_of_one_is_the_mean(ex):
    check_expected_max(ex, [0.5, -1.0, 2.0, 0.25, 1.0], 1,
                       "with n = 1 there is nothing to choose: the expected score is the mean")


def test_unsorted_scores_with_ties(ex):
    check_expected_max(ex, [1.5, -0.5, 1.5, 0.0, -2.0, 0.7], 3,
                       "the scores come in sample order, not sorted, and two samples scored "
                       "1.5; enumerating all 6^3 triples of draws gives this mean maximum")


@pytest.mark.parametrize("n", [2, 4, 7])
def test_expected_max_against_every_draw(ex, n):
    g = torch.Generator().manual_seed(90 + n)
    values = [round(v, 4) for v in torch.randn(5, generator=g).tolist()]
    check_expected_max(ex, values, n, f"the mean maximum over all 5^{n} tuples of draws")


def test_many_draws_approach_the_largest_score(ex):
    values = [0.1 * k for k in range(10)]
    check_expected_max(ex, values, 64,
                       "with n = 64 draws from 10 scores the best is almost always the largest, "
                       "0.9: the expected maximum is 0.9 - 0.1 * sum_(k<10) (k/10)^64")


# ------------------------------------------------------------------ the best-of-n policy


def bon_by_enumeration(probs: list[float], rewards: list[float], n: int) -> list[float]:
    """P(outcome i is the best of n draws), summing the probability of every n-tuple."""
    K = len(probs)
    q = [0.0] * K
    for t in itertools.product(range(K), repeat=n):
        best = max(t, key=lambda i: rewards[i])
        q[best] += math.prod(probs[i] for i in t)
    return q


def bon_mistakes(probs: list[float], rewards: list[float], n: int) -> list[tuple[list, str]]:
    K = len(probs)
    cdf = [sum(probs[:i + 1]) for i in range(K)]
    in_order = [cdf[i] ** n - (cdf[i] - probs[i]) ** n for i in range(K)]
    order = sorted(range(K), key=lambda i: -rewards[i])  # descending
    down = [0.0] * K
    acc = 0.0
    for i in order:
        down[i] = (acc + probs[i]) ** n - acc ** n
        acc += probs[i]
    cdf_sorted = {i: 0.0 for i in range(K)}
    acc = 0.0
    for i in sorted(range(K), key=lambda i: rewards[i]):
        acc += probs[i]
        cdf_sorted[i] = acc
    return [
        (in_order, "it looks like the outcomes were taken in the order given, as if sorted by "
                   "reward; sort them by reward (argsort) and put the results back"),
        (down, "it looks like the LOWEST reward was kept: best-of-n keeps the highest"),
        ([cdf_sorted[i] ** n for i in range(K)],
         "that is F(r_i)^n, the probability that the best is AT MOST outcome i; subtract "
         "F(r_i^-)^n, the probability that it is below"),
        ([n * probs[i] * cdf_sorted[i] ** (n - 1) for i in range(K)],
         "that is the continuous approximation n p_i F(r_i)^(n-1); with outcomes of finite "
         "probability use F(r_i)^n - F(r_i^-)^n"),
        ([p / sum(probs) for p in probs], "that is the policy itself: best-of-1"),
    ]


def check_bon(ex, probs: list[float], rewards: list[float], n: int, why: str) -> torch.Tensor:
    got = expect_tensor(ex.best_of_n_probs(torch.tensor(probs, dtype=torch.float64),
                                           torch.tensor(rewards, dtype=torch.float64), n),
                        "best_of_n_probs", (len(probs),))
    want = torch.tensor(bon_by_enumeration(probs, rewards, n), dtype=torch.float64)
    hint = ""
    if not torch.allclose(got.detach().double(), want, atol=1e-6):
        for values, text in bon_mistakes(probs, rewards, n):
            if torch.allclose(got.detach().double(), torch.tensor(values, dtype=torch.float64),
                              atol=1e-6):
                hint = text
                break
    expect_close(got.double(), want, "best_of_n_probs", why + (f"; {hint}" if hint else ""),
                 atol=1e-6)
    return got


def test_best_of_2_over_three_outcomes(ex):
    check_bon(ex, [0.5, 0.3, 0.2], [0.0, 1.0, 2.0], 2,
              "rewards 0 < 1 < 2, so F = 0.5, 0.8, 1: q = 0.25, 0.64 - 0.25 = 0.39, 1 - 0.64 = "
              "0.36")


def test_unsorted_rewards(ex):
    check_bon(ex, [0.2, 0.5, 0.3], [2.0, 0.0, 1.0], 2,
              "the same three outcomes listed in another order (rewards 2, 0, 1): the answer "
              "must follow them, q = 0.36, 0.25, 0.39")


def test_best_of_n_probs_against_every_draw(ex):
    g = torch.Generator().manual_seed(9)
    probs = torch.rand(5, generator=g) + 0.05
    probs = [round(p, 6) for p in (probs / probs.sum()).tolist()]
    probs[-1] = 1 - sum(probs[:-1])
    rewards = [0.3, -1.2, 2.5, 0.9, -0.1]
    got = check_bon(ex, probs, rewards, 3, "5 outcomes, rewards [0.3, -1.2, 2.5, 0.9, -0.1]: "
                                            "summed over all 5^3 triples of draws")
    total = float(got.sum())
    if abs(total - 1) > 1e-6:
        pytest.fail(f"best_of_n_probs sums to {total:.6g}: a distribution sums to 1",
                    pytrace=False)


# ------------------------------------------------------------------ KL


def kl_bound_mistakes(n: int) -> list[tuple[float, str]]:
    return [
        (math.log(n), "that is log n alone, the bound without its correction: "
                      "subtract (n - 1) / n"),
        (math.log(n) + (n - 1) / n, "the correction's sign is flipped: log n MINUS (n - 1) / n"),
        ((n - 1) / n - math.log(n), "the whole sign is flipped: a KL is never negative"),
        (math.log(n) - 1, "that is the large-n limit log n - 1; the correction is (n - 1) / n"),
        (math.log2(n) - (n - 1) / n, "that used log base 2; the KL is in nats: natural log"),
        (math.log(n) - (n - 1), "the correction is (n - 1) / n, not n - 1"),
        (math.log(n) - n / (n - 1) if n > 1 else math.nan,
         "the correction is (n - 1) / n, not n / (n - 1)"),
    ]


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_kl_formula(ex, n):
    got = expect_number(ex.best_of_n_kl_bound(n), "best_of_n_kl_bound")
    want = math.log(n) - (n - 1) / n
    if not close(got, want):
        hint = first_match(got, kl_bound_mistakes(n))
        pytest.fail(f"best_of_n_kl_bound({n}) is {got:.6g} but should be {want:.6g} = "
                    f"log {n} - {n - 1}/{n}" + (f": {hint}" if hint else ""), pytrace=False)


def exact_kl(probs: list[float], rewards: list[float], n: int) -> float:
    q = bon_by_enumeration(probs, rewards, n)
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, probs) if qi > 0)


ZERO_LOG_ZERO = ("an outcome best-of-n never picks has q = 0, and 0 * log(0 / p) is NaN in "
                 "floating point; its term is 0: sum over the outcomes with q > 0 only")


def check_kl(ex, probs: list[float], rewards: list[float], n: int, why: str) -> float:
    got = expect_number(ex.best_of_n_kl(torch.tensor(probs, dtype=torch.float64),
                                        torch.tensor(rewards, dtype=torch.float64), n),
                        "best_of_n_kl", ZERO_LOG_ZERO)
    want = exact_kl(probs, rewards, n)
    if not close(got, want):
        q = bon_by_enumeration(probs, rewards, n)
        mistakes = [
            (sum(pi * math.log(pi / qi) for qi, pi in zip(q, probs) if qi > 0),
             "that is KL(policy || best-of-n), the other direction: sum q log(q / p)"),
            (exact_kl(probs, rewards, n) / math.log(2), "that is in bits: use the natural log"),
            (math.log(n) - (n - 1) / n, "that is the formula log n - (n - 1)/n, which holds "
                                        "only when no outcome is likely; compute the sum "
                                        "over these outcomes"),
        ]
        hint = first_match(got, mistakes)
        pytest.fail(f"best_of_n_kl(probs={probs}, rewards={rewards}, n={n}) is {got:.6g} but "
                    f"should be {want:.6g}: {why}" + (f"; {hint}" if hint else ""),
                    pytrace=False)
    return got


def test_exact_kl_of_three_outcomes(ex):
    check_kl(ex, [0.5, 0.3, 0.2], [0.0, 1.0, 2.0], 2,
             "q = 0.25, 0.39, 0.36, so KL = 0.25 log(0.25/0.5) + 0.39 log(0.39/0.3) + "
             "0.36 log(0.36/0.2)")


def test_an_outcome_best_of_n_never_picks(ex):
    # the lowest reward is picked only if all n draws are it: with p = 0 that never happens
    check_kl(ex, [0.0, 0.6, 0.4], [-1.0, 0.0, 1.0], 3,
             "an outcome of probability 0 is never drawn; its q is 0 and so is its term "
             "(0 log 0 = 0, not NaN)")


def test_many_equally_likely_outcomes_reach_the_formula(ex):
    K, n = 400, 4
    probs, rewards = [1 / K] * K, [float(k) for k in range(K)]
    got = expect_number(ex.best_of_n_kl(torch.tensor(probs, dtype=torch.float64),
                                        torch.tensor(rewards, dtype=torch.float64), n),
                        "best_of_n_kl")
    m = [(k / K) ** n - ((k - 1) / K) ** n for k in range(1, K + 1)]
    want = sum(q * math.log(q * K) for q in m)
    bound = math.log(n) - (n - 1) / n
    if not close(got, want):
        pytest.fail(f"best_of_n_kl over {K} equally likely outcomes, n = {n}, is {got:.6g} but "
                    f"should be {want:.6g} (close to log 4 - 3/4 = {bound:.6g}: with no likely "
                    "outcome the formula is nearly exact)", pytrace=False)


def test_one_likely_outcome_keeps_the_kl_far_below_the_formula(ex):
    # the SFT actor often repeats its favourite response: best-of-n then moves it less
    probs, rewards = [0.9, 0.05, 0.05], [0.0, 1.0, -1.0]
    got = check_kl(ex, probs, rewards, 4,
                   "one response has probability 0.9, so most draws tie at the top")
    bound = math.log(4) - 3 / 4
    if not got < bound:
        pytest.fail(f"best_of_n_kl is {got:.6g}, above the formula {bound:.6g}: the formula is "
                    "an upper bound", pytrace=False)


# ------------------------------------------------------------------ compounding


@pytest.mark.parametrize("n, rounds", [(4, 0), (4, 1), (4, 2), (2, 5)])
def test_rounds_compound(ex, n, rounds):
    got = expect_number(ex.compounded_kl_bound(n, rounds), "compounded_kl_bound")
    N = n ** rounds
    want = math.log(N) - (N - 1) / N

    def b(k: float) -> float:
        return math.log(k) - (k - 1) / k

    mistakes = [
        (rounds * b(n), f"that is {rounds} x the one-round bound: best-of-{n} of best-of-{n} "
                        f"is best-of-{n * n} of the start, and its KL is more than the sum"),
        (b(n) ** rounds if rounds else math.nan, "the bound is not raised to a power: the "
                                                 "number of draws is"),
        (b(n * rounds) if rounds else math.nan,
         f"that is best-of-({n} x {rounds}); repeated filtering multiplies the draws: "
         f"{n}^{rounds}"),
        (b(n ** (rounds + 1)), f"an extra round: {rounds} round(s) are best-of-{n}^{rounds}"),
    ]
    if not close(got, want):
        hint = first_match(got, mistakes)
        pytest.fail(f"compounded_kl_bound(n={n}, rounds={rounds}) is {got:.6g} but should be "
                    f"{want:.6g}, the bound of best-of-{N}" + (f": {hint}" if hint else ""),
                    pytrace=False)
