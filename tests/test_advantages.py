"""Tests for rlhf_edu.advantages: masked statistics, whitening and GAE."""

import pytest
import torch

from rlhf_edu.advantages import gae, masked_mean, masked_var, whiten


def prefix_mask(lengths, T):
    """(B, T) float mask with lengths[b] leading ones per row (right padding)."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()


def gae_brute_force(rewards, values, mask, gamma, lam):
    """Obvious O(T^2) GAE: A_t = sum_l (gamma*lam)^l delta_{t+l} within each run of tokens.

    Works for any 0/1 mask: a masked position ends the run (terminal, no bootstrap).
    """
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        m = mask[b].tolist()
        for t in range(T):
            if not m[t]:
                continue
            total, k = 0.0, t
            while k < T and m[k]:
                next_value = values[b, k + 1].item() if k + 1 < T and m[k + 1] else 0.0
                delta = rewards[b, k].item() + gamma * next_value - values[b, k].item()
                total += (gamma * lam) ** (k - t) * delta
                k += 1
            adv[b, t] = total
    return adv


# ------------------------------------------------------------------------------------------
# GAE
# ------------------------------------------------------------------------------------------


def test_gae_hand_worked_example():
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma = 1, lam = 0.95, value after end = 0:
    #   delta_2 = 1 + 0   - 0.7 = 0.3     A_2 = 0.3
    #   delta_1 = 0 + 0.7 - 0.6 = 0.1     A_1 = 0.1 + 0.95 * 0.3   = 0.385
    #   delta_0 = 0 + 0.6 - 0.5 = 0.1     A_0 = 0.1 + 0.95 * 0.385 = 0.46575
    #   returns = A + V = [0.96575, 0.985, 1.0]
    # Second row: length 2, the padded slot holds junk that must be ignored:
    #   delta_1 = 1 + 0 - 0.6 = 0.4       A_1 = 0.4
    #   delta_0 = 0 + 0.6 - 0.5 = 0.1     A_0 = 0.1 + 0.95 * 0.4 = 0.48
    #   returns = [0.98, 1.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.9]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    expected_adv = torch.tensor([[0.46575, 0.385, 0.3], [0.48, 0.4, 0.0]], dtype=torch.float64)
    expected_ret = torch.tensor([[0.96575, 0.985, 1.0], [0.98, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, expected_ret)


def test_gae_lambda_extremes():
    # lam = 0: one-step TD residuals; lam = 1, gamma = 1: Monte-Carlo return-to-go minus V.
    rewards = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.25, 0.125]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    adv0, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    torch.testing.assert_close(
        adv0, torch.tensor([[1 + 0.25 - 0.5, 2 + 0.125 - 0.25, 3 - 0.125]], dtype=torch.float64)
    )
    adv1, ret1 = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret1, torch.tensor([[6.0, 5.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(adv1, ret1 - values)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.5, 1.0), (0.0, 0.5)])
def test_gae_matches_brute_force_random_lengths(gamma, lam):
    g = torch.Generator().manual_seed(0)
    lengths = [1, 4, 7, 2, 7, 5]
    T = 7
    mask = prefix_mask(lengths, T)
    rewards = torch.randn(len(lengths), T, generator=g, dtype=torch.float64)
    values = torch.randn(len(lengths), T, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, gae_brute_force(rewards, values, mask, gamma, lam))
    # zero on padding, returns = advantages + values on response tokens
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()
    torch.testing.assert_close(ret, (adv + values) * mask)


def test_gae_mask_with_holes_matches_brute_force():
    # Not the layout the trainer produces, but a masked slot must act as a boundary.
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    rewards = torch.randn(3, 6, generator=g, dtype=torch.float64)
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    adv, _ = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    torch.testing.assert_close(adv, gae_brute_force(rewards, values, mask, 0.95, 0.9))


def test_gae_bool_and_float_masks_agree():
    g = torch.Generator().manual_seed(2)
    mask = prefix_mask([3, 5], 5)
    rewards, values = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    a_float, r_float = gae(rewards, values, mask)
    a_bool, r_bool = gae(rewards, values, mask.bool())
    torch.testing.assert_close(a_float, a_bool)
    torch.testing.assert_close(r_float, r_bool)


def test_gae_padding_content_is_ignored():
    g = torch.Generator().manual_seed(3)
    mask = prefix_mask([2, 4, 1], 4)
    rewards, values = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    junk = torch.randn(3, 4, generator=g) * 100
    pad = mask == 0
    adv, ret = gae(rewards, values, mask)
    adv2, ret2 = gae(torch.where(pad, junk, rewards), torch.where(pad, -junk, values), mask)
    torch.testing.assert_close(adv, adv2)
    torch.testing.assert_close(ret, ret2)


# ------------------------------------------------------------------------------------------
# masked statistics and whitening
# ------------------------------------------------------------------------------------------


def test_masked_mean_and_var():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(15.0 / 5))
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([2.0, 3.0, 5.0]))
    # population variance of [1, 2, 3, 4, 5] is 2
    torch.testing.assert_close(masked_var(x, mask), torch.tensor(2.0))


def test_masked_mean_ignores_nan_in_padding():
    x = torch.tensor([[1.0, float("nan")], [3.0, float("inf")]])
    mask = torch.tensor([[1, 0], [1, 0]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(2.0))
    assert torch.isfinite(whiten(x, mask)).all()


def test_whiten_mean_zero_var_one_on_unmasked():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 12, generator=g) * 3 + 5
    mask = prefix_mask([12, 3, 7, 1, 12, 9, 5, 2], 12)
    out = whiten(x, mask)
    m = mask.bool()
    assert out[m].mean().abs() < 1e-5
    torch.testing.assert_close(out[m].var(unbiased=False), torch.tensor(1.0), rtol=1e-4, atol=0)
    assert (out[~m] == 0).all()


def test_whiten_shift_mean_false_keeps_mean():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) + 2.0
    mask = prefix_mask([6, 2, 4, 5], 6)
    m = mask.bool()
    out = whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(out[m].mean(), x[m].mean())
    torch.testing.assert_close(out[m].var(unbiased=False), torch.tensor(1.0, dtype=torch.float64))
    assert (out[~m] == 0).all()


def test_whiten_padding_does_not_change_result():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 7, generator=g)
    mask = prefix_mask([7, 1, 3, 6, 4], 7)
    x2 = torch.where(mask.bool(), x, torch.full_like(x, 1e6))
    torch.testing.assert_close(whiten(x, mask), whiten(x2, mask))


def test_whiten_reduce_receives_stacked_sums():
    x = torch.tensor([[1.0, 2.0, 7.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    seen = []

    def record(stats):
        seen.append(stats.clone())
        return stats

    whiten(x, mask, reduce=record)
    torch.testing.assert_close(seen[0], torch.tensor([6.0, 14.0, 3.0]))


def test_whiten_reduce_two_identical_ranks_gives_same_output():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, generator=g)
    mask = prefix_mask([5, 2, 3, 4], 5)
    expected = whiten(x, mask)

    def two_ranks(stats):  # an all_reduce(SUM) over two ranks holding the same data
        return 2 * stats

    def two_ranks_in_place(stats):  # like torch.distributed.all_reduce: in place, returns None
        stats.mul_(2)

    torch.testing.assert_close(whiten(x, mask, reduce=two_ranks), expected)
    torch.testing.assert_close(whiten(x, mask, reduce=two_ranks_in_place), expected)


def test_whiten_reduce_gives_global_statistics():
    # Two "ranks" each holding half the batch, reduced by summing their stats, must whiten
    # exactly as one process holding the whole batch.
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mask = prefix_mask([5, 1, 3, 4, 2, 5], 5)
    full = whiten(x, mask)
    halves = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    stats = []
    for xh, mh in halves:  # first pass: collect each rank's local stats
        whiten(xh, mh, reduce=lambda s: stats.append(s.clone()) or s)
    global_stats = stats[0] + stats[1]
    parts = [whiten(xh, mh, reduce=lambda s: global_stats) for xh, mh in halves]
    torch.testing.assert_close(torch.cat(parts), full)


def test_whiten_constant_input_is_finite():
    x = torch.full((2, 3), 4.0)
    out = whiten(x, torch.ones(2, 3))
    assert torch.isfinite(out).all() and (out == 0).all()


def test_whiten_bfloat16_keeps_dtype():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    out = whiten(x, torch.ones(3, 4))
    assert out.dtype == torch.bfloat16
    assert abs(out.float().mean().item()) < 0.02


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

R = torch.zeros(4, 7)
MASK = torch.ones(4, 7)
MASK_EMPTY_ROW = torch.ones(4, 7)
MASK_EMPTY_ROW[2] = 0
INF_VALUES = torch.zeros(4, 7)
INF_VALUES[3, 1] = float("-inf")

BAD_INPUTS = [
    (lambda: gae(R, R, MASK, gamma=1.5), r"gamma must be in \[0, 1\], got 1\.5"),
    (lambda: gae(R, R, MASK, lam=-0.1), r"lam must be in \[0, 1\], got -0\.1"),
    (lambda: gae(R, R, MASK, gamma=float("nan")), r"gamma must be in \[0, 1\], got nan"),
    (lambda: gae(R, torch.zeros(4, 8), MASK),
     r"values has shape \(4, 8\) but rewards has shape \(4, 7\); they must match"),
    (lambda: gae(R, R, torch.ones(4, 8)), r"mask has shape \(4, 8\) but rewards has shape"),
    (lambda: gae(R, R, MASK_EMPTY_ROW), r"mask row 2 has no response token"),
    (lambda: gae(R, INF_VALUES, MASK), r"values contains NaN or inf at index \(3, 1\)"),
    (lambda: gae(torch.zeros(7), torch.zeros(7), torch.ones(7)),
     r"rewards must have shape \(B, T\), got \(7,\)"),
    (lambda: gae(R, R, MASK * 2), r"mask must contain only 0 and 1, got 2\.0 at index \(0, 0\)"),
    (lambda: whiten(R, torch.zeros(4, 7)), r"mask has no unmasked entries"),
    (lambda: whiten(R, torch.ones(4, 8)), r"mask has shape \(4, 8\) but x has shape \(4, 7\)"),
    (lambda: whiten(R, MASK, eps=-1.0), r"eps must be in \[1e-12, 1\], got -1\.0"),
    (lambda: masked_mean(R, torch.zeros(4, 7)), r"mask has no unmasked entries"),
    (lambda: masked_mean(R, MASK_EMPTY_ROW, dim=1), r"mask has no unmasked entries along dim 1"),
    (lambda: masked_var(R, torch.zeros(4, 7)), r"mask has no unmasked entries"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
