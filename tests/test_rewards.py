"""Tests for rlhf_edu.rewards: KL estimators and per-token reward assembly."""

import math

import pytest
import torch

from rlhf_edu.rewards import compute_rewards, kl_penalty, last_token_index


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# KL estimators
# ------------------------------------------------------------------------------------------


def test_k1_k2_k3_formulas():
    logp, ref = rand(3, 5, seed=0), rand(3, 5, seed=1)
    d = logp - ref
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), d)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), 0.5 * d**2)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.exp(-d) - 1 + d)
    # k3 written as the blog writes it, with r = p_ref / p
    r = torch.exp(ref - logp)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), (r - 1) - torch.log(r))


def test_default_estimator_is_k1():
    logp, ref = rand(2, 3, seed=0), rand(2, 3, seed=1)
    torch.testing.assert_close(kl_penalty(logp, ref), logp - ref)


def test_k3_nonnegative_elementwise_and_k1_can_be_negative():
    logp = rand(50, 40, seed=2) * 3
    ref = rand(50, 40, seed=3) * 3
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()
    assert (kl_penalty(logp, ref, "k1") < 0).any()
    # tiny differences: k3 stays >= 0 despite rounding
    tiny = torch.linspace(-1e-7, 1e-7, 1001, dtype=torch.float32)
    assert (kl_penalty(tiny[None], torch.zeros(1, 1001), "k3") >= 0).all()


def test_full_kl_equals_direct_sum():
    logits, ref_logits = rand(2, 3, 11, seed=4), rand(2, 3, 11, seed=5) * 2
    p = torch.softmax(logits, -1)
    q = torch.softmax(ref_logits, -1)
    direct = (p * (p.log() - q.log())).sum(-1)
    full = kl_penalty(logits, ref_logits, "full")
    assert full.shape == (2, 3)
    torch.testing.assert_close(full, direct)
    assert (full >= 0).all()
    assert kl_penalty(logits, logits, "full").abs().max() < 1e-12


def test_full_kl_stable_for_large_logits():
    logits = torch.tensor([[[1000.0, 0.0, -1000.0]]])
    ref = torch.tensor([[[0.0, 1000.0, -1000.0]]])
    out = kl_penalty(logits, ref, "full")
    torch.testing.assert_close(out, torch.tensor([[1000.0]]))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_k3_unbiased_in_expectation(estimator):
    # Sample tokens from pi; the mean per-token estimate must match the exact KL(pi || ref).
    g = torch.Generator().manual_seed(1234)
    V, n = 8, 200_000
    logits = torch.randn(V, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(V, generator=g, dtype=torch.float64)
    exact = kl_penalty(logits[None, None], ref_logits[None, None], "full").item()
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    tokens = torch.multinomial(logp.exp(), n, replacement=True, generator=g)
    est = kl_penalty(logp[tokens][None], ref_logp[tokens][None], estimator)
    stderr = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < 4 * stderr, (est.mean().item(), exact, stderr)


def test_k2_is_biased_but_close_for_nearby_distributions():
    # k2's expectation is only a second-order approximation of the KL.
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, generator=g, dtype=torch.float64)
    ref_logits = logits + 0.05 * torch.randn(6, generator=g, dtype=torch.float64)
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    p = logp.exp()
    exact = (p * (logp - ref_logp)).sum()
    expected_k2 = (p * 0.5 * (logp - ref_logp) ** 2).sum()
    assert expected_k2 != pytest.approx(exact.item(), rel=1e-6)
    assert expected_k2 == pytest.approx(exact.item(), rel=0.1)


# ------------------------------------------------------------------------------------------
# last_token_index and compute_rewards
# ------------------------------------------------------------------------------------------


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 0, 3, 2]
    assert last_token_index(mask.bool()).dtype == torch.long


def test_compute_rewards_places_score_on_last_token():
    lengths = [3, 1, 5]
    mask = (torch.arange(5)[None] < torch.tensor(lengths)[:, None]).float()
    logp, ref = rand(3, 5, seed=0), rand(3, 5, seed=1)
    scores = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    beta = 0.1
    rewards = compute_rewards(scores, logp, ref, mask, beta)
    expected = -beta * (logp - ref) * mask
    for b, length in enumerate(lengths):
        expected[b, length - 1] += scores[b]
    torch.testing.assert_close(rewards, expected)
    assert (rewards[mask == 0] == 0).all()


def test_compute_rewards_beta_zero_gives_only_score():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logp, ref = rand(2, 3, seed=2), rand(2, 3, seed=3)
    rewards = compute_rewards(torch.tensor([0.5, -2.0]), logp, ref, mask, beta=0.0)
    expected = torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(rewards, expected)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_compute_rewards_estimators(estimator):
    mask = torch.tensor([[1, 1, 1, 0]])
    logp, ref = rand(1, 4, seed=4), rand(1, 4, seed=5)
    rewards = compute_rewards(torch.tensor([0.0]), logp, ref, mask, 0.5, estimator=estimator)
    torch.testing.assert_close(rewards, -0.5 * kl_penalty(logp, ref, estimator) * mask)


def test_compute_rewards_full_estimator_from_logits():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logits, ref_logits = rand(2, 3, 7, seed=6), rand(2, 3, 7, seed=7)
    scores = torch.tensor([1.0, -1.0], dtype=torch.float64)
    rewards = compute_rewards(scores, logits, ref_logits, mask, 0.2, estimator="full")
    expected = -0.2 * kl_penalty(logits, ref_logits, "full") * mask
    expected[0, 1] += 1.0
    expected[1, 0] -= 1.0
    torch.testing.assert_close(rewards, expected)


def test_compute_rewards_per_token_scores():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logp, ref = rand(2, 3, seed=8), rand(2, 3, seed=9)
    scores = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]], dtype=torch.float64)
    rewards = compute_rewards(scores, logp, ref, mask, beta=0.1)
    torch.testing.assert_close(rewards, (-0.1 * (logp - ref) + scores) * mask)


def test_compute_rewards_score_at_last_token_for_left_padding():
    # The trap TRL users report: with left padding the last token is at T - 1.
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    logp = torch.zeros(2, 4)
    rewards = compute_rewards(torch.tensor([1.0, 2.0]), logp, logp, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 2]]))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

LP = torch.zeros(4, 7)
MASK = torch.ones(4, 7)
SCORES = torch.zeros(4)
MASK_EMPTY_ROW = torch.ones(4, 7)
MASK_EMPTY_ROW[2] = 0
NAN_SCORES = torch.tensor([0.0, 1.0, 2.0, float("nan")])
INF_LP = LP.clone()
INF_LP[1, 5] = float("inf")
HALF_MASK = MASK.clone()
HALF_MASK[0, 3] = 0.5

BAD_INPUTS = [
    (lambda: kl_penalty(LP, LP, "k4"),
     r"unknown KL estimator 'k4'; expected one of k1, k2, k3, full"),
    (lambda: kl_penalty(LP, torch.zeros(4, 8)),
     r"logprobs has shape \(4, 7\) but ref_logprobs has shape \(4, 8\); they must match"),
    (lambda: kl_penalty(INF_LP, LP), r"logprobs contains NaN or inf at index \(1, 5\)"),
    (lambda: kl_penalty(LP, INF_LP, "k3"), r"ref_logprobs contains NaN or inf at index \(1, 5\)"),
    (lambda: kl_penalty(LP, LP, "full"), r"estimator 'full' expects logits of shape \(B, T, V\)"),
    (lambda: compute_rewards(SCORES, LP, LP, MASK, beta=-0.1),
     r"beta must be in \[0, 10000\], got -0\.1"),
    (lambda: compute_rewards(SCORES, LP, LP, MASK, beta=float("nan")),
     r"beta must be in \[0, 10000\], got nan"),
    (lambda: compute_rewards(SCORES, LP, LP, MASK_EMPTY_ROW, 0.1),
     r"mask row 2 has no response token"),
    (lambda: compute_rewards(NAN_SCORES, LP, LP, MASK, 0.1),
     r"scores contains NaN or inf at index 3"),
    (lambda: compute_rewards(torch.zeros(3), LP, LP, MASK, 0.1),
     r"scores must have shape \(B,\) = \(4,\) or \(B, T\) = \(4, 7\), got \(3,\)"),
    (lambda: compute_rewards(SCORES, LP, LP, torch.ones(4, 8), 0.1),
     r"mask has shape \(4, 8\) but logprobs has shape \(4, 7\); they must match"),
    (lambda: compute_rewards(SCORES, LP, LP, HALF_MASK, 0.1),
     r"mask must contain only 0 and 1, got 0\.5 at index \(0, 3\)"),
    (lambda: compute_rewards(SCORES, LP, LP, MASK, 0.1, estimator="kl"),
     r"unknown KL estimator 'kl'"),
    (lambda: compute_rewards(SCORES, torch.zeros(4, 7, 5), torch.zeros(4, 7, 5),
                             torch.ones(4, 6), 0.1, estimator="full"),
     r"mask has shape \(4, 6\) but the logits have \(B, T\) = \(4, 7\)"),
    (lambda: last_token_index(MASK_EMPTY_ROW), r"mask row 2 has no response token"),
    (lambda: last_token_index(torch.ones(7)), r"mask must have shape \(B, T\), got \(7,\)"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
