"""Property tests (hypothesis) for rewards, advantages and PPO losses.

Shapes and masks come from hypothesis (so failures shrink to small masks); tensor values come
from a seeded torch.Generator, seeded by hypothesis.
"""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rlhf_edu.advantages import gae, masked_mean, whiten
from rlhf_edu.ppo import ppo_losses
from rlhf_edu.rewards import compute_rewards, kl_penalty

SETTINGS = settings(max_examples=50, deadline=None)
seeds = st.integers(0, 2**31 - 1)
unit = st.floats(0.0, 1.0)


@st.composite
def masks(draw, prefix=None):
    """(B, T) bool mask, every row with at least one token; right-padded if prefix."""
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    if prefix is None:
        prefix = draw(st.booleans())
    if prefix:
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        rows = [[t < length for t in range(T)] for length in lengths]
    else:
        row = st.lists(st.booleans(), min_size=T, max_size=T).filter(any)
        rows = draw(st.lists(row, min_size=B, max_size=B))
    return torch.tensor(rows)


def randn_like_mask(mask, seed, n=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(mask.shape, generator=g, dtype=torch.float64) for _ in range(n)]


def with_junk_padding(x, mask, seed):
    """x with every masked entry replaced by large random junk."""
    (junk,) = randn_like_mask(mask, seed + 1, scale=1e3)
    return torch.where(mask, x, junk)


def gae_vectorised(rewards, values, mask, gamma, lam):
    """GAE for right-padded masks without a loop: A = delta @ Gamma^T, Gamma[t, k] = (g l)^(k-t)."""
    m = mask.to(rewards.dtype)
    next_values = torch.cat([values[:, 1:] * m[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * m
    T = rewards.shape[1]
    k_minus_t = torch.arange(T)[None, :] - torch.arange(T)[:, None]  # (T, T)
    discount = torch.where(k_minus_t >= 0, (gamma * lam) ** k_minus_t.clamp(min=0).double(), 0.0)
    return (deltas @ discount.T) * m


def gae_lambda_return(rewards, values, mask, gamma, lam):
    """GAE by its definition as an exponentially weighted average of n-step advantages.

    A_t = sum_{n=1}^{m-1} (1 - lam) lam^(n-1) A_t^(n) + lam^(m-1) A_t^(m), m = steps left,
    A_t^(n) = sum_{l<n} gamma^l r_{t+l} + gamma^n V_{t+n} - V_t, V = 0 after the last token.
    """
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        length = int(mask[b].sum())
        r, v = rewards[b, :length].tolist(), values[b, :length].tolist() + [0.0]
        for t in range(length):
            steps_left = length - t
            total = 0.0
            for n in range(1, steps_left + 1):
                n_step = sum(gamma**i * r[t + i] for i in range(n)) + gamma**n * v[t + n] - v[t]
                weight = (1 - lam) * lam ** (n - 1) if n < steps_left else lam ** (n - 1)
                total += weight * n_step
            adv[b, t] = total
    return adv


@SETTINGS
@given(mask=masks(prefix=True), seed=seeds, gamma=unit, lam=unit)
def test_gae_loop_matches_vectorised_and_lambda_return(mask, seed, gamma, lam):
    rewards, values = randn_like_mask(mask, seed, n=2)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, gae_vectorised(rewards, values, mask, gamma, lam))
    torch.testing.assert_close(adv, gae_lambda_return(rewards, values, mask, gamma, lam))
    torch.testing.assert_close(ret, torch.where(mask, adv + values, 0.0))


@SETTINGS
@given(mask=masks(), seed=seeds, gamma=unit, lam=unit)
def test_gae_ignores_masked_positions(mask, seed, gamma, lam):
    rewards, values = randn_like_mask(mask, seed, n=2)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    adv2, ret2 = gae(
        with_junk_padding(rewards, mask, seed),
        with_junk_padding(values, mask, seed + 7),
        mask.float(),
        gamma=gamma,
        lam=lam,
    )
    torch.testing.assert_close(adv, adv2)
    torch.testing.assert_close(ret, ret2)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


@SETTINGS
@given(
    mask=masks(),
    seed=seeds,
    loc=st.floats(-100, 100),
    scale=st.floats(1e-3, 1e3),
    shift_mean=st.booleans(),
)
def test_whiten_statistics_and_padding(mask, seed, loc, scale, shift_mean):
    assume(mask.sum() >= 2)  # random normals: >= 2 entries means >= 2 distinct values
    (x,) = randn_like_mask(mask, seed, scale=scale)
    x = x + loc
    eps = 1e-8
    out = whiten(x, mask, shift_mean=shift_mean, eps=eps)
    torch.testing.assert_close(out, whiten(with_junk_padding(x, mask, seed), mask, shift_mean))
    assert (out[~mask] == 0).all()

    mean, var = x[mask].mean(), x[mask].var(unbiased=False)
    out_mean = out[mask].mean() - (0.0 if shift_mean else mean)
    assert abs(out_mean) < 1e-6 * (1 + abs(mean))
    torch.testing.assert_close(out[mask].var(unbiased=False), var / (var + eps), rtol=1e-5,
                               atol=0)


@SETTINGS
@given(mask=masks(), seed=seeds)
def test_masked_mean_matches_selection(mask, seed):
    (x,) = randn_like_mask(mask, seed)
    torch.testing.assert_close(masked_mean(x, mask), x[mask].mean())


@SETTINGS
@given(
    mask=masks(),
    seed=seeds,
    beta=st.floats(0.0, 10.0),
    estimator=st.sampled_from(["k1", "k2", "k3"]),
    per_token=st.booleans(),
)
def test_compute_rewards_ignores_masked_positions(mask, seed, beta, estimator, per_token):
    logp, ref, token_scores = randn_like_mask(mask, seed, n=3)
    scores = token_scores if per_token else token_scores[:, 0]
    rewards = compute_rewards(scores, logp, ref, mask, beta, estimator)
    if per_token:
        scores = with_junk_padding(scores, mask, seed + 3)
    # junk padding may overflow k3's exp() there; it must still not reach the result
    rewards2 = compute_rewards(
        scores,
        with_junk_padding(logp, mask, seed),
        with_junk_padding(ref, mask, seed + 5),
        mask,
        beta,
        estimator,
    )
    torch.testing.assert_close(rewards, rewards2)
    assert (rewards[~mask] == 0).all()
    # the total reward of a row is its score minus beta times its summed KL
    kl = kl_penalty(logp, ref, estimator)
    expected_total = (torch.where(mask, scores, 0.0).sum(1) if per_token else scores) - beta * (
        torch.where(mask, kl, 0.0).sum(1)
    )
    torch.testing.assert_close(rewards.sum(1), expected_total)


@SETTINGS
@given(
    logp=st.lists(st.floats(-30, 0), min_size=1, max_size=20),
    shift=st.floats(-30, 30),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_k3_nonnegative(logp, shift, dtype):
    logp_t = torch.tensor([logp], dtype=dtype)
    ref = logp_t + shift * torch.linspace(-1, 1, len(logp), dtype=dtype)
    k3 = kl_penalty(logp_t, ref, "k3")
    assert (k3 >= 0).all()
    assert (kl_penalty(logp_t, ref, "k2") >= 0).all()


@SETTINGS
@given(mask=masks(), seed=seeds, clip=st.floats(0.01, 0.5), vf_clip=st.floats(0.01, 1.0))
def test_ppo_losses_ignore_masked_positions(mask, seed, clip, vf_clip):
    logp, old, adv, values, old_values, returns = randn_like_mask(mask, seed, n=6, scale=0.5)
    out = ppo_losses(logp, old, adv, values, old_values, returns, mask, clip, vf_clip)
    junk = [with_junk_padding(x, mask, seed + i) for i, x in enumerate(
        [logp, old, adv, values, old_values, returns])]
    out2 = ppo_losses(*junk, mask, clip, vf_clip)
    for key in out:
        torch.testing.assert_close(out[key], out2[key])
    assert out["approx_kl"] >= 0 and 0 <= out["clipfrac"] <= 1 and 0 <= out["vf_clipfrac"] <= 1
