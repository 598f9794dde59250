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

The small `_check_*` helpers at the top are the package's shared input validation; `rewards.py`
and `ppo.py` import them so every error message has the same form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["masked_mean", "masked_var", "whiten", "gae"]


# --------------------------------------------------------------------------------------------
# Shared validation (package-internal). Errors are raised early and name the argument, the
# offending value and what was expected.
# --------------------------------------------------------------------------------------------


def _fmt_index(idx: list[int]) -> str:
    """`[3]` -> "3", `[0, 3]` -> "(0, 3)" (how a learner would index the tensor)."""
    return str(idx[0]) if len(idx) == 1 else str(tuple(idx))


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must match"
        )


def _check_2d(name: str, x: Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); a batch needs at least "
                         "one row and one token")


def _check_finite(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    bad = (~torch.isfinite(x)).nonzero()
    if len(bad) > 0:
        raise ValueError(f"{name} contains NaN or inf at index {_fmt_index(bad[0].tolist())}")


def _check_mask(mask: Tensor, like: Tensor, like_name: str, every_row: bool = False) -> Tensor:
    """Validate `mask` against `like` and return it as a bool tensor.

    Accepts bool or numeric masks holding only 0 and 1. With `every_row=True` each row of a
    `(B, T)` mask must hold at least one response token (GAE and reward placement need one).
    """
    _check_same_shape("mask", mask, like_name, like)
    if mask.dtype != torch.bool:
        bad = ((mask != 0) & (mask != 1)).nonzero()
        if len(bad) > 0:
            idx = bad[0].tolist()
            raise ValueError(
                f"mask must contain only 0 and 1, got {mask[tuple(idx)].item()} "
                f"at index {_fmt_index(idx)}"
            )
        mask = mask != 0
    if every_row:
        empty = (~mask.any(dim=-1)).nonzero()
        if len(empty) > 0:
            raise ValueError(f"mask row {_fmt_index(empty[0].tolist())} has no response token")
    return mask


def _check_unit_interval(name: str, value: float) -> None:
    # `not (0 <= v <= 1)` is also True for NaN, so NaN is rejected here too.
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_nonnegative(name: str, value: float) -> None:
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_positive(name: str, value: float) -> None:
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


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


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the entries where `mask` is 1.

    Args:
        x: `(B, T)` values (any shape works, as long as `mask` has the same shape).
        mask: `(B, T)`, 1 on response tokens, 0 on padding.
        dim: None averages over every unmasked entry of the batch (a scalar); an int averages
            along that dimension only (e.g. `dim=1` gives one mean per response, `(B,)`).
    """
    m = _check_mask(mask, x, "x")
    count = m.sum() if dim is None else m.sum(dim)
    if (count == 0).any():
        where = "" if dim is None else f" along dim {dim}"
        raise ValueError(f"mask has no unmasked entries{where}; the mean is undefined")
    return _masked_mean(x, m, dim)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance (divide by N, not N - 1) of `x` over the entries where `mask` is 1.

    `x` and `mask` are `(B, T)`; returns a scalar tensor.
    """
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce: Callable[[Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Masked whitening: `(x - mean) / sqrt(var + eps)` with statistics over unmasked entries.

    Args:
        x: `(B, T)` values, usually advantages.
        mask: `(B, T)`, 1 on response tokens. Padding never enters the mean or the variance,
            and the output is 0 at masked positions.
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
    m = _check_mask(mask, x, "x")
    _check_nonnegative("eps", eps)
    # Accumulate in at least float32: a bf16 count is exact only up to 256.
    acc = torch.promote_types(x.dtype, torch.float32)
    xm = torch.where(m, x, torch.zeros_like(x)).to(acc)
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
        gamma: discount in [0, 1]; RLHF uses 1.0 (responses are short and end for sure).
        lam: GAE lambda in [0, 1]: 0 gives the one-step TD residual (low variance, biased by
            the critic), 1 gives the Monte-Carlo return minus V (unbiased, high variance).

    Returns:
        `(advantages, returns)`, both `(B, T)` and 0 where `mask` is 0;
        `returns = advantages + values` on response tokens (the critic's targets).
    """
    _check_2d("rewards", rewards)
    _check_same_shape("values", values, "rewards", rewards)
    m = _check_mask(mask, rewards, "rewards", every_row=True).to(rewards.dtype)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    _check_finite("rewards", rewards)
    _check_finite("values", values)

    T = rewards.shape[1]
    lastgaelam = torch.zeros_like(rewards[:, 0])  # (B,) A_{t+1}, 0 past the end
    advantages_reversed = []
    for t in reversed(range(T)):
        if t < T - 1:
            # A masked next position contributes no value: terminal after the last token.
            nextvalues = values[:, t + 1] * m[:, t + 1]
        else:
            nextvalues = torch.zeros_like(lastgaelam)
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        # Multiplying by m[:, t] zeroes padding, so the recursion restarts from 0 when it
        # crosses a masked position into the tokens before it.
        lastgaelam = (delta + gamma * lam * lastgaelam) * m[:, t]
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = (advantages + values) * m
    return advantages, returns
