"""Advantages for RLHF: masked statistics, masked whitening and GAE.

Step 5 of the RLHF flow (see DESIGN.md): the per-token rewards from `rewards.py` and the
critic's values become advantages (how much better a token was than the critic expected) and
returns (the critic's regression targets).

All tensors are `(B, T)`: B responses, T response positions. `mask` is 1 on response tokens
and 0 on padding (bool or float). Padding never influences a result on a response token.

References:
- Schulman, Moritz, Levine, Jordan, Abbeel (2016), "High-Dimensional Continuous Control Using
  Generalized Advantage Estimation", https://arxiv.org/abs/1506.02438 (GAE, eq. 16).
- CleanRL's `ppo.py` (the `lastgaelam` reverse loop), https://github.com/vwxyzjn/cleanrl
- TRL's `whiten`/`masked_whiten` (shift_mean=False keeps the mean, used for rewards).

Validation comes from `rlhf_edu.validate`. Padding follows one policy, shared with `rewards.py`
and `ppo.py`: whatever a masked-out position holds (NaN included) changes no result and no
gradient, and NaN or inf at a response position is refused, naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlhf_edu.validate import (
    check_2d,
    check_bool,
    check_float,
    check_int,
    check_mask,
    check_same_shape,
    check_tensor,
)

__all__ = ["masked_mean", "masked_var", "whiten", "gae"]


def _zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """`x` where the bool `mask` is True, else a zero: bit for bit `x * mask` for finite `x`
    (the zero keeps the sign of `x`, as `x * 0` does), but NaN or inf in the padding stays out
    of the result (`NaN * 0` is NaN) and out of the gradient."""
    return torch.where(mask, x, torch.zeros_like(x).copysign(x.detach()))


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def _masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """`masked_mean` without validation, for callers that already checked `mask` (bool)."""
    # torch.where instead of x * mask: a NaN/inf in the padding must not leak (NaN * 0 = NaN).
    total = torch.where(mask, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / mask.sum()
    return total.sum(dim) / mask.sum(dim)


def _check_stats_input(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """The bool mask of `masked_mean`/`masked_var`, after checking `x`, `mask` and `dim`."""
    check_tensor("x", x)
    if dim is not None:
        check_int("dim", dim, minimum=-max(x.ndim, 1), maximum=max(x.ndim, 1) - 1)
    m = check_mask(mask, x, "x", finite={"x": x})
    count = m.sum() if dim is None else m.sum(dim)
    if (count == 0).any():
        where = "" if dim is None else f" along dim {dim}"
        raise ValueError(f"mask has no unmasked entries{where}; the mean is undefined")
    return m


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the entries where `mask` is 1.

    Args:
        x: `(B, T)` values (any shape works, as long as `mask` has the same shape); NaN or
            inf is refused where `mask` is 1 and ignored where it is 0.
        mask: `(B, T)`, 1 on response tokens, 0 on padding.
        dim: None averages over every unmasked entry of the batch (a scalar); an int averages
            along that dimension only (e.g. `dim=1` gives one mean per response, `(B,)`).
    """
    m = _check_stats_input(x, mask, dim)
    return _masked_mean(x, m, dim)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance (divide by N, not N - 1) of `x` over the entries where `mask` is 1.

    `x` and `mask` are `(B, T)`; returns a scalar tensor.
    """
    m = _check_stats_input(x, mask)
    x = torch.where(m, x, torch.zeros_like(x))  # padding stays out of the gradient too
    mean = _masked_mean(x, m)
    return _masked_mean((x - mean) ** 2, m)


def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce: Callable[[Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Masked whitening: `(x - mean) / sqrt(var + eps)` with statistics over unmasked entries.

    Args:
        x: `(B, T)` values, usually advantages; NaN or inf is refused where `mask` is 1.
        mask: `(B, T)`, 1 on response tokens. Padding never enters the mean or the variance
            (nor the gradient), and the output is 0 at masked positions.
        shift_mean: if False the mean is added back, so only the scale changes (TRL does this
            for rewards, whose sign carries meaning).
        eps: added to the variance so a constant input does not divide by zero.
        reduce: optional callable applied to the stacked tensor `[sum, sum of squares, count]`
            (shape `(3,)`) before mean and variance are formed. With data parallelism pass an
            all-reduce (SUM) so every rank whitens with the global statistics of the whole
            batch. It may return the reduced tensor or reduce in place and return None, so
            `torch.distributed.all_reduce` itself can be passed.

    Returns:
        `(B, T)` tensor: unmasked entries have mean 0 and (population) variance
        `var / (var + eps)`, i.e. 1 up to eps.
    """
    check_tensor("x", x)
    check_bool("shift_mean", shift_mean)
    check_float("eps", eps, minimum=0)
    if reduce is not None and not callable(reduce):
        raise ValueError(f"reduce must be a callable or None, got {type(reduce).__name__}")
    m = check_mask(mask, x, "x", finite={"x": x})
    x = torch.where(m, x, torch.zeros_like(x))  # padding stays out of the gradient too
    # Accumulate in at least float32: a bf16 count is exact only up to 256.
    acc = torch.promote_types(x.dtype, torch.float32)
    xm = x.to(acc)
    # Three sums in one tensor: one all_reduce gives global statistics (not a mean of means).
    stats = torch.stack([xm.sum(), (xm * xm).sum(), m.sum().to(acc)])
    if reduce is not None:
        reduced = reduce(stats)
        if reduced is not None:
            stats = reduced
    total, total_sq, count = stats.unbind()
    if count.item() == 0:
        raise ValueError("mask has no unmasked entries; cannot whiten")
    mean = total / count
    # One-pass variance E[x^2] - E[x]^2; clamp the tiny negatives rounding can produce.
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    out = (x.to(acc) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Generalized Advantage Estimation
# --------------------------------------------------------------------------------------------


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016) over response tokens.

    With the TD residual `delta_t = r_t + gamma * V_{t+1} - V_t`, the advantage is
    `A_t = sum_l (gamma * lam)^l * delta_{t+l}`, computed by the reverse recursion
    `A_t = delta_t + gamma * lam * A_{t+1}`. The value after the last response token is 0: the
    response has ended (terminal), so nothing is bootstrapped from the padding.

    Args:
        rewards: `(B, T)` per-token rewards (from `compute_rewards`).
        values: `(B, T)` critic values V(s_t), usually detached.
        mask: `(B, T)`, 1 on response tokens. Any 0/1 pattern works: a masked position acts
            as an episode boundary (its value is not bootstrapped and the recursion restarts).
            Rewards and values there are ignored, NaN included; NaN or inf where `mask` is 1
            is refused.
        gamma: discount in [0, 1]; RLHF uses 1.0 (responses are short and end for sure).
        lam: GAE lambda in [0, 1]: 0 gives the one-step TD residual (low variance, biased by
            the critic), 1 gives the Monte-Carlo return minus V (unbiased, high variance).

    Returns:
        `(advantages, returns)`, both `(B, T)` and 0 where `mask` is 0;
        `returns = advantages + values` on response tokens (the critic's targets).
    """
    check_2d("rewards", rewards)
    check_tensor("values", values)
    check_same_shape("values", values, "rewards", rewards)
    check_float("gamma", gamma, minimum=0, maximum=1)
    check_float("lam", lam, minimum=0, maximum=1)
    m = check_mask(mask, rewards, "rewards", every_row=True,
                   finite={"rewards": rewards, "values": values})

    T = rewards.shape[1]
    lastgaelam = torch.zeros_like(rewards[:, 0])  # (B,) A_{t+1}, 0 past the end
    advantages_reversed = []
    for t in reversed(range(T)):
        if t < T - 1:
            # A masked next position contributes no value: terminal after the last token.
            nextvalues = _zero_padding(values[:, t + 1], m[:, t + 1])
        else:
            nextvalues = torch.zeros_like(lastgaelam)
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        # Zeroing padding restarts the recursion from 0 when it crosses a masked position
        # into the tokens before it.
        lastgaelam = _zero_padding(delta + gamma * lam * lastgaelam, m[:, t])
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = _zero_padding(advantages + values, m)
    return advantages, returns
