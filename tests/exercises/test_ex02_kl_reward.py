"""Graded tests of Exercise 2 (exercises/ex02_kl_reward.py): KL estimators, per-token reward.

References: hand-made numbers, ``rlhf_edu.rewards`` (``kl_penalty``, ``compute_rewards``) on
random tensors, and the exact KL of small categorical distributions (unbiasedness).
"""

from __future__ import annotations

import math

import pytest
import torch
from grading_utils import expect_close, expect_tensor

from rlhf_edu.rewards import compute_rewards, kl_penalty

EXERCISE = "ex02_kl_reward"
ESTIMATORS = {"k1": "kl_k1", "k2": "kl_k2", "k3": "kl_k3"}
FORMULAS = {"k1": "logprobs - ref_logprobs", "k2": "(logprobs - ref_logprobs)**2 / 2",
            "k3": "exp(ref_logprobs - logprobs) - 1 - (ref_logprobs - logprobs)"}


def random_logprobs(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(B, T, generator=g) * 3  # log-probs are <= 0
    ref_logprobs = (logprobs + 0.7 * torch.randn(B, T, generator=g)).clamp_max(0.0)
    return logprobs, ref_logprobs


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_hand_made(ex, name):
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5]])
    d = torch.tensor([[0.5, -1.0, 0.0]])
    want = {"k1": d, "k2": 0.5 * d**2, "k3": torch.exp(-d) - 1 + d}[name]
    got = expect_tensor(getattr(ex, ESTIMATORS[name])(logprobs, ref_logprobs),
                        f"{ESTIMATORS[name]}(logprobs, ref_logprobs)", (1, 3))
    expect_close(got, want, ESTIMATORS[name], lambda i: (
        f"with logprobs {logprobs[i].item()} and ref_logprobs {ref_logprobs[i].item()}, "
        f"{name} = {FORMULAS[name]}"))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_random_against_package(ex, name):
    logprobs, ref_logprobs = random_logprobs(6, 11, seed=2)
    got = expect_tensor(getattr(ex, ESTIMATORS[name])(logprobs, ref_logprobs),
                        ESTIMATORS[name], (6, 11))
    expect_close(got, kl_penalty(logprobs, ref_logprobs, name), ESTIMATORS[name],
                 f"{name} = {FORMULAS[name]}")


def test_k2_and_k3_never_negative(ex):
    logprobs, ref_logprobs = random_logprobs(8, 50, seed=3)
    for fn in ("kl_k2", "kl_k3"):
        got = expect_tensor(getattr(ex, fn)(logprobs, ref_logprobs), fn, (8, 50))
        if (got < -1e-6).any():
            i = tuple((got < -1e-6).nonzero()[0].tolist())
            pytest.fail(f"{fn}{list(i)} is {got[i].item():.4g}; this estimator can never be "
                        "negative (r - 1 - log r >= 0 for every r > 0)", pytrace=False)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_estimator_is_unbiased(ex, name):
    """Averaged over tokens sampled from pi, k1 and k3 estimate KL(pi || pi_ref) exactly."""
    g = torch.Generator().manual_seed(4)
    logp = torch.log_softmax(torch.randn(6, generator=g), 0)  # pi over 6 tokens
    logq = torch.log_softmax(torch.randn(6, generator=g), 0)  # pi_ref
    exact = float((logp.exp() * (logp - logq)).sum())
    n = 200_000
    tokens = torch.multinomial(logp.exp(), n, replacement=True, generator=g)
    logprobs, ref_logprobs = logp[tokens].view(1, n), logq[tokens].view(1, n)
    est = expect_tensor(getattr(ex, ESTIMATORS[name])(logprobs, ref_logprobs), ESTIMATORS[name],
                        (1, n)).double()
    stderr = float(est.std()) / math.sqrt(n)
    if abs(float(est.mean()) - exact) > 5 * stderr + 1e-4:
        pytest.fail(f"averaged over {n:,} tokens sampled from pi, {ESTIMATORS[name]} is "
                    f"{float(est.mean()):.4f} but KL(pi || pi_ref) is {exact:.4f}: {name} must "
                    "be an unbiased estimate (is the sign or the order of logprobs and "
                    "ref_logprobs right?)", pytrace=False)


# ------------------------------------------------------------------ total_reward


def reward_reasons(mask: torch.Tensor, beta: float):
    """Why the expected reward at a position is what it is, for failure messages."""
    last = {b: max(t for t in range(mask.shape[1]) if mask[b, t]) for b in range(mask.shape[0])}

    def why(i: tuple[int, ...]) -> str:
        b, t = i
        if not mask[b, t]:
            return "that position is padding (mask is 0), so its reward must be 0"
        if t == last[b]:
            return (f"t={t} is the last response token of row {b}, so it gets -beta * k1 plus "
                    f"scores[{b}]")
        return (f"t={t} is a response token before the last one (t={last[b]}), so it gets "
                f"only -beta * k1 with beta={beta}")
    return why


def expected_rewards(scores, logprobs, ref_logprobs, mask, beta):
    """An obvious loop over positions."""
    B, T = mask.shape
    out = torch.zeros(B, T)
    for b in range(B):
        last = max(t for t in range(T) if mask[b, t])
        for t in range(T):
            if mask[b, t]:
                out[b, t] = -beta * (logprobs[b, t] - ref_logprobs[b, t])
        out[b, last] += scores[b]
    return out


def check_reward(ex, scores, logprobs, ref_logprobs, mask, beta):
    got = expect_tensor(ex.total_reward(scores, logprobs, ref_logprobs, mask, beta),
                        "total_reward(...)", tuple(mask.shape))
    want = expected_rewards(scores, logprobs, ref_logprobs, mask, beta)
    expect_close(got, want, "rewards", reward_reasons(mask, beta))
    return got


def test_total_reward_hand_made(ex):
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0],
                         [1.0, 1.0, 1.0, 1.0, 1.0]])
    logprobs = torch.tensor([[-1.0, -0.5, -2.0, -3.0, -3.0],
                             [-0.2, -0.4, -0.6, -0.8, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -0.5, -1.0, -1.0, -1.0],
                                 [-0.2, -0.2, -0.2, -0.2, -0.2]])
    check_reward(ex, torch.tensor([2.0, -1.0]), logprobs, ref_logprobs, mask, beta=0.1)


def test_total_reward_beta_zero_is_only_the_score(ex):
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logprobs, ref_logprobs = random_logprobs(2, 3, seed=5)
    check_reward(ex, torch.tensor([0.5, 1.5]), logprobs, ref_logprobs, mask, beta=0.0)


def test_total_reward_score_on_last_unmasked_token(ex):
    """Left padding: the last response token is the last 1 in the mask, not mask.sum() - 1."""
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0],
                         [0.0, 1.0, 1.0, 0.0, 0.0]])
    logprobs, ref_logprobs = random_logprobs(2, 5, seed=6)
    check_reward(ex, torch.tensor([3.0, -2.0]), logprobs, ref_logprobs, mask, beta=0.05)


def test_total_reward_random_against_package(ex):
    g = torch.Generator().manual_seed(7)
    B, T = 6, 13
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).float()
    logprobs, ref_logprobs = random_logprobs(B, T, seed=8)
    logprobs = torch.where(mask > 0, logprobs, torch.full_like(logprobs, -30.0))  # junk padding
    scores = torch.randn(B, generator=g)
    got = check_reward(ex, scores, logprobs, ref_logprobs, mask, beta=0.2)
    expect_close(got, compute_rewards(scores, logprobs, ref_logprobs, mask, 0.2), "rewards",
                 reward_reasons(mask, 0.2))
