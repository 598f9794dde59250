"""Graded tests of Exercise 3 (exercises/ex03_gae.py): GAE with masks.

References: hand-made cases where GAE reduces to something obvious (Monte-Carlo returns at
lam=1, the TD residual at lam=0), an explicit double sum, and ``rlhf_edu.advantages.gae``.
"""

from __future__ import annotations

import pytest
import torch
from grading_utils import expect_close, expect_pair, expect_tensor

from rlhf_edu.advantages import gae as package_gae

EXERCISE = "ex03_gae"


def call(ex, rewards, values, mask, gamma, lam):
    result = ex.gae(rewards, values, mask, gamma=gamma, lam=lam)
    adv, ret = expect_pair(result, "gae", "(advantages, returns)")
    shape = tuple(rewards.shape)
    return expect_tensor(adv, "advantages", shape), expect_tensor(ret, "returns", shape)


def reasons(mask: torch.Tensor, what: str, got: torch.Tensor | None = None,
            rewards: torch.Tensor | None = None, values: torch.Tensor | None = None,
            gamma: float = 1.0):
    """Why each position of ``what`` is wrong. Given the learner's advantages ``got`` and the
    inputs, the last response token of a row is diagnosed: a value bootstrapped from the
    padding (V_{t+1} read after the end) and an advantage carried over from the padding
    (A_{t+1} not reset there) are different mistakes and get different messages."""
    last = {b: int(mask[b].nonzero().max()) for b in range(mask.shape[0])}

    def at_last_token(b: int, t: int) -> str:
        plain = f"t={t} is the last response token of row {b}: the response has ended"
        if got is None or rewards is None or values is None or t + 1 >= mask.shape[1]:
            return (f"{plain}, so nothing comes from the padding after it (V_(t+1) = 0 and "
                    "A_(t+1) = 0) and A_t = r_t - V_t")
        r, v, g = float(rewards[b, t]), float(values[b, t]), float(got[b, t])
        bootstrapped = r + gamma * float(values[b, t + 1]) - v
        if abs(g - bootstrapped) <= 1e-4 * max(1.0, abs(bootstrapped)):
            return (f"{plain}, so no value is bootstrapped from the padding after it: use "
                    f"V_(t+1) = 0 there, not values[{b}, {t + 1}] = "
                    f"{float(values[b, t + 1]):.4g} (A_t = r_t - V_t)")
        if abs(g - (r - v)) > 1e-4 * max(1.0, abs(r - v)):
            return (f"{plain}: A_t = r_t - V_t = {r - v:.4g}; it looks like A_(t+1) was carried "
                    "over from the padding after it - the running advantage must restart "
                    "from 0 at the end of each response (multiply A_(t+1) by mask[t+1])")
        return f"{plain}, so A_t = r_t - V_t"

    def why(i: tuple[int, ...]) -> str:
        b, t = i
        if not mask[b, t]:
            return f"that position is padding, so {what}[{b}, {t}] should be 0"
        if t == last[b]:
            text = at_last_token(b, t)
            return text + (" and the return is A_t + V_t" if what == "returns" else "")
        extra = " (returns = advantages + values)" if what == "returns" else ""
        return (f"A_t = delta_t + gamma * lam * A_(t+1), delta_t = r_t + gamma * V_(t+1) - V_t"
                f"{extra}")
    return why


def explicit_gae(rewards, values, mask, gamma, lam):
    """The definition: A_t = sum over later response tokens l of (gamma lam)^(l-t) delta_l."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    r, v = rewards.double(), values.double()
    for b in range(B):
        n = int(mask[b].sum())  # right padding: tokens 0 .. n-1
        delta = [r[b, t] + gamma * (v[b, t + 1] if t + 1 < n else 0.0) - v[b, t]
                 for t in range(n)]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** (k - t) * delta[k] for k in range(t, n))
    ret = (adv + v) * mask.double()
    return adv.float(), ret.float()


def right_padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T) < torch.tensor(lengths)[:, None]).float()


def test_returns_advantages_and_returns(ex):
    mask = torch.ones(2, 4)
    adv, ret = call(ex, torch.zeros(2, 4), torch.zeros(2, 4), mask, 1.0, 0.95)
    expect_close(adv, torch.zeros(2, 4), "advantages", "no reward and no value: nothing to gain")
    expect_close(ret, torch.zeros(2, 4), "returns", "no reward and no value: nothing to gain")


def test_discounted_reward_reaches_earlier_tokens(ex):
    """lam = 1, values = 0: A_t is the discounted sum of the rewards from t on."""
    gamma = 0.9
    rewards = torch.zeros(1, 6)
    rewards[0, 4] = 1.0  # one reward, at t=4; t=5 is the last token
    adv, _ = call(ex, rewards, torch.zeros(1, 6), torch.ones(1, 6), gamma, 1.0)
    want = torch.tensor([[gamma ** (4 - t) if t <= 4 else 0.0 for t in range(6)]])

    def why(i):
        t = i[1]
        if t <= 4:
            return (f"with lam=1 and values 0, advantages[0, {t}] should include the discounted "
                    f"reward from t=4: gamma**{4 - t} * r_4 = {gamma ** (4 - t):.4g}")
        return "no reward comes after t=4, and rewards never flow forward in time"
    expect_close(adv, want, "advantages", why, backward=True)


def test_lambda_zero_is_the_td_residual(ex):
    gamma = 0.8
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    adv, _ = call(ex, rewards, values, torch.ones(1, 4), gamma, 0.0)
    next_v = torch.tensor([[0.4, 0.2, 0.6, 0.0]])
    want = rewards + gamma * next_v - values
    expect_close(adv, want, "advantages", lambda i: (
        "with lam=0 the advantage is the TD residual r_t + gamma * V_(t+1) - V_t"
        + (" with V_(t+1) = 0 after the last token" if i[1] == 3 else "")))


def test_lambda_one_is_the_return_minus_the_value(ex):
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    adv, ret = call(ex, rewards, values, torch.ones(1, 4), 1.0, 1.0)
    mc = rewards.flip(1).cumsum(1).flip(1)  # sum of the rewards from t to the end
    expect_close(adv, mc - values, "advantages", lambda i: (
        f"with gamma=lam=1, A_t is the sum of the rewards from t={i[1]} to the end minus V_t"))
    expect_close(ret, mc, "returns", lambda i: (
        f"with gamma=lam=1 the return at t={i[1]} is the sum of the rewards from t to the end"))


def test_padding_is_zero_and_not_bootstrapped(ex):
    mask = right_padded_mask([6, 3], 6)
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                            [0.0, 0.0, 2.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                           [0.3, 0.2, 0.1, 100.0, 100.0, 100.0]])  # junk in the padding
    adv, ret = call(ex, rewards, values, mask, 1.0, 0.95)
    want_adv, want_ret = explicit_gae(rewards, values, mask, 1.0, 0.95)
    expect_close(adv, want_adv, "advantages",
                 reasons(mask, "advantages", adv, rewards, values, 1.0), backward=True)
    expect_close(ret, want_ret, "returns",
                 reasons(mask, "returns", adv, rewards, values, 1.0), backward=True)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.5)])
def test_random_against_the_definition(ex, gamma, lam):
    g = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    B, T = 5, 12
    mask = right_padded_mask(torch.randint(1, T + 1, (B,), generator=g).tolist(), T)
    rewards = torch.randn(B, T, generator=g) * mask
    values = torch.randn(B, T, generator=g)
    adv, ret = call(ex, rewards, values, mask, gamma, lam)
    want_adv, want_ret = explicit_gae(rewards, values, mask, gamma, lam)
    why_adv = reasons(mask, "advantages", adv, rewards, values, gamma)
    expect_close(adv, want_adv, "advantages", why_adv, backward=True)
    expect_close(ret, want_ret, "returns", reasons(mask, "returns", adv, rewards, values, gamma),
                 backward=True)
    # and the package agrees with the definition
    expect_close(adv, package_gae(rewards, values, mask, gamma, lam)[0], "advantages", why_adv,
                 backward=True)


def test_returns_are_advantages_plus_values(ex):
    g = torch.Generator().manual_seed(11)
    mask = right_padded_mask([7, 5, 2], 7)
    rewards, values = torch.randn(3, 7, generator=g) * mask, torch.randn(3, 7, generator=g)
    adv, ret = call(ex, rewards, values, mask, 1.0, 0.9)
    expect_close(ret, (adv + values) * mask, "returns", lambda i: (
        f"returns[{i[0]}, {i[1]}] should be advantages + values there (the critic's target)"
        if mask[i] else "that position is padding, so the return should be 0"))
