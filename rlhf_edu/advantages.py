"""Advantages for RLHF: masked statistics, masked whitening, GAE and critic-free estimators.

Step 5 of the RLHF flow (see DESIGN.md): the per-token rewards from `rewards.py` and the
critic's values become advantages (how much better a token was than the critic expected) and
returns (the critic's regression targets).

Without a critic the baseline comes from the other responses instead: GRPO, Dr. GRPO and RLOO
compare each response with the others sampled for the same prompt (a group of G contiguous
rows), REINFORCE++ with the whole batch. Their sequence advantages `(B,)` are spread over the
response tokens with `token_advantages`.

`METHODS` is the method table the trainer dispatches through: name -> advantage function,
whether it needs a critic or groups, its KL placement, estimator and beta, one line of
description. A new method is one entry (`register_method`) and its function.

All tensors are `(B, T)`: B responses, T response positions. `mask` is 1 on response tokens
and 0 on padding (bool or float). Padding never influences a result on a response token.

References:
- Schulman, Moritz, Levine, Jordan, Abbeel (2016), "High-Dimensional Continuous Control Using
  Generalized Advantage Estimation", https://arxiv.org/abs/1506.02438 (GAE, eq. 16).
- CleanRL's `ppo.py` (the `lastgaelam` reverse loop), https://github.com/vwxyzjn/cleanrl
- TRL's `whiten`/`masked_whiten` (shift_mean=False keeps the mean, used for rewards).
- Shao et al. (2024), "DeepSeekMath" (GRPO, outcome supervision), https://arxiv.org/abs/2402.03300
- Liu et al. (2025), "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO:
  no division by the group's std), https://arxiv.org/abs/2503.20783
- Ahmadian et al. (2024), "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
  from Human Feedback in LLMs" (RLOO), https://arxiv.org/abs/2402.14740
- Hu (2025), "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
  https://arxiv.org/abs/2501.03262 (return-to-go of KL-penalised token rewards, batch-normalised)

Validation comes from `rlhf_edu.validate`. Padding follows one policy, shared with `rewards.py`
and `ppo.py`: whatever a masked-out position holds (NaN included) changes no result and no
gradient, and NaN or inf at a response position is refused, naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlhf_edu.validate import (
    EPS_MAX,
    WHITEN_EPS,
    MaskCheck,
    check_2d,
    check_bool,
    check_finite,
    check_float,
    check_floating,
    check_int,
    check_mask,
    check_result,
    check_same_device,
    check_same_shape,
    check_tensor,
)

__all__ = ["masked_mean", "masked_var", "whiten", "gae", "Method", "METHODS", "register_method",
           "method", "grpo_advantages", "rloo_advantages", "reinforce_pp_advantages",
           "token_advantages"]


def _zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """`x` where the bool `mask` is True, else a zero: bit for bit `x * mask` for finite `x`
    (the zero keeps the sign of `x`, as `x * 0` does), but NaN or inf in the padding stays out
    of the result (`NaN * 0` is NaN) and out of the gradient."""
    return torch.where(mask, x, torch.zeros_like(x).copysign(x.detach()))


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def _masked_mean(x: Tensor, mask: Tensor, dim: int | None = None,
                 count: Tensor | None = None) -> Tensor:
    """`masked_mean` without validation, for callers that already checked `mask` (bool).
    `count`: `mask.sum(dim)` (any dtype), for a caller taking several means under one mask."""
    # torch.where instead of x * mask: a NaN/inf in the padding must not leak (NaN * 0 = NaN).
    total = torch.where(mask, x, 0.0)
    total = total.sum() if dim is None else total.sum(dim)
    count = count if count is not None else mask.sum() if dim is None else mask.sum(dim)
    return total / count.to(total.dtype)  # the integer count, cast as the division would


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
    return check_result("masked_mean", _masked_mean(x, m, dim), lambda: _too_large("x", x, m))


def _too_large(name: str, x: Tensor, m: Tensor) -> str:
    """Why a sum or mean of the finite entries of ``x`` (where the bool ``m``) overflows."""
    big = torch.where(m, x.detach(), torch.zeros_like(x)).abs().max().item()
    return (f"{name}'s values (largest |{name}| = {big:g}) are too large to sum in {x.dtype}; "
            "rescale them")


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance (divide by N, not N - 1) of `x` over the entries where `mask` is 1.

    `x` and `mask` are `(B, T)`; returns a scalar tensor.
    """
    m = _check_stats_input(x, mask)
    x = torch.where(m, x, torch.zeros_like(x))  # padding stays out of the gradient too
    mean = _masked_mean(x, m)
    return check_result("masked_var", _masked_mean((x - mean) ** 2, m),
                        lambda: _too_large("x", x, m))


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
    check_float("eps", eps, **WHITEN_EPS)
    if reduce is not None and not callable(reduce):
        raise ValueError(f"reduce must be a callable or None, got {type(reduce).__name__}")
    check = MaskCheck(mask, x, "x", finite={"x": x})
    m = check.m
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
    # the one read back: the input checks, the count and the sums' finiteness
    empty, overflow = check.read(count == 0, ~torch.isfinite(stats).all())
    if empty:
        raise ValueError("mask has no unmasked entries; cannot whiten")
    if overflow:
        raise ValueError(f"whiten: the sum of squares of x overflowed from finite inputs: "
                         f"{_too_large('x', x, m)}")
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
    check = MaskCheck(mask, rewards, "rewards", every_row=True,
                      finite={"rewards": rewards, "values": values})
    with check as m:  # the checks are read back once, with the result's
        advantages, returns = _gae(rewards, values, m, gamma, lam)
    check.result("the GAE returns", returns, lambda: (
        f"the discounted sums of rewards (largest |reward| "
        f"{torch.where(m, rewards, 0).abs().max().item():g}) and values (largest |value| "
        f"{torch.where(m, values, 0).abs().max().item():g}) overflow {rewards.dtype}; "
        "rescale them"))
    return advantages, returns


def _gae(rewards: Tensor, values: Tensor, m: Tensor, gamma: float, lam: float
         ) -> tuple[Tensor, Tensor]:
    """`gae` on checked inputs (the bool mask `m`)."""
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


# --------------------------------------------------------------------------------------------
# Critic-free estimators: the baseline comes from the other responses
# --------------------------------------------------------------------------------------------


def _groups(scores: Tensor, group_size: int, method: str) -> Tensor:
    """`scores` `(B,)`, checked, as `(B / G, G)` in at least float32: row g holds the G
    responses to prompt g (rows g*G ... g*G + G - 1 of the batch)."""
    check_floating("scores", scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (B,), one per response, got "
                         f"{tuple(scores.shape)}")
    G = check_int("group_size", group_size)
    if G < 2:
        raise ValueError(f"group_size must be >= 2 for {method}, got {G}: a group of one "
                         "response has no other response to serve as its baseline")
    B = scores.numel()
    if B == 0 or B % G:
        raise ValueError(f"scores has {B} rows, which do not split into groups of "
                         f"group_size={G}")
    check_finite({"scores": scores})
    return scores.to(torch.promote_types(scores.dtype, torch.float32)).view(B // G, G)


def _zero_equal_groups(adv: Tensor, groups: Tensor) -> Tensor:
    """`adv` `(B / G, G)` with exact zeros in groups whose G rewards are all equal: rounding
    in the mean (0.1 + 0.1 + 0.1 != 0.3) would otherwise leave a tiny advantage, which a
    small std would blow up."""
    equal = (groups == groups[:, :1]).all(dim=1, keepdim=True)  # (B / G, 1)
    return torch.where(equal, torch.zeros_like(adv), adv)


def grpo_advantages(scores: Tensor, group_size: int, scale: bool = True,
                    eps: float = 1e-4) -> Tensor:
    """GRPO's advantage of each response: its reward against the others in its group.

    `A_i = (r_i - mean(group)) / (std(group) + eps)`, with the std of the G rewards computed
    with Bessel's correction (divide by G - 1, torch's default, as TRL does). `scale=False`
    leaves out the division: Dr. GRPO, whose authors show the std re-weights prompts (groups
    that are almost all right or all wrong get the largest advantages).

    Args:
        scores: `(B,)` one reward per response; rows g*G ... g*G + G - 1 answer the same
            prompt. NaN or inf is refused.
        group_size: G >= 2 responses per prompt; B must be a multiple of G.
        scale: divide by the group's std (GRPO) or not (Dr. GRPO).
        eps: added to the std, >= 0.

    Returns:
        `(B,)` advantages. A group whose rewards are all equal gets exactly 0 (it carries no
        signal about which response is better), never NaN.
    """
    groups = _groups(scores, group_size, "GRPO" if scale else "Dr. GRPO")
    check_bool("scale", scale)
    check_float("eps", eps, minimum=0, maximum=EPS_MAX)
    adv = groups - groups.mean(dim=1, keepdim=True)  # (B / G, G)
    if scale:  # an overflowing std would silently divide every advantage down to 0
        std = check_result("the groups' std", groups.std(dim=1, keepdim=True), lambda: (
            _too_large("scores", scores, torch.ones_like(scores, dtype=torch.bool))))
        adv = adv / (std + eps)
    adv = _zero_equal_groups(adv, groups).reshape(-1).to(scores.dtype)
    return check_result("grpo_advantages", adv, lambda: _too_large(
        "scores", scores, torch.ones_like(scores, dtype=torch.bool)))


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out: each reward minus the mean of the other G - 1 in its group.

    `A_i = r_i - (sum(group) - r_i) / (G - 1)`: the baseline does not contain the response
    itself, so it is an unbiased baseline (equal to `G / (G - 1) * (r_i - mean(group))`).

    Args:
        scores: `(B,)` one reward per response (with RLOO's KL penalty, `score - beta * KL`
            summed over the response); groups of G contiguous rows share a prompt.
        group_size: G >= 2.

    Returns:
        `(B,)` advantages; exactly 0 in a group of equal rewards.
    """
    groups = _groups(scores, group_size, "RLOO")
    G = groups.shape[1]
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (G - 1)  # (B / G, G)
    adv = _zero_equal_groups(groups - baseline, groups).reshape(-1).to(scores.dtype)
    return check_result("rloo_advantages", adv, lambda: _too_large(
        "scores", scores, torch.ones_like(scores, dtype=torch.bool)))


def reinforce_pp_advantages(
    rewards: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    reduce: Callable[[Tensor], Tensor | None] | None = None,
) -> Tensor:
    """REINFORCE++: the return-to-go of the per-token rewards, normalised over the batch.

    `G_t = sum_{s >= t} gamma^(s - t) r_s` over the response (the per-token rewards carry the
    KL penalty and the score on the last token, as `compute_rewards` builds them), then
    `(G_t - mean) / std` over every response token of the batch: the batch is the baseline.
    The return-to-go is GAE with zero values and lambda = 1.

    Args:
        rewards: `(B, T)` per-token rewards.
        mask: `(B, T)`, 1 on response tokens; every row needs one.
        gamma: discount in [0, 1].
        reduce: as in `whiten`: an all-reduce (SUM) makes the statistics those of all ranks.

    Returns:
        `(B, T)` advantages, 0 on padding.
    """
    check_2d("rewards", rewards)
    check_same_device({"rewards": rewards, "mask": mask})
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0)  # (B, T)
    return whiten(returns, mask, reduce=reduce)


def token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """One advantage per response `(B,)` given to each of its tokens: `(B, T)`, 0 on padding.

    Outcome-reward methods (GRPO, RLOO) judge a response as a whole, so every token the
    response chose shares its advantage.
    """
    check_floating("advantages", advantages)
    check_2d("mask", mask)
    if tuple(advantages.shape) != (mask.shape[0],):
        raise ValueError(f"advantages must have shape (B,) = ({mask.shape[0]},) for a mask of "
                         f"shape {tuple(mask.shape)}, got {tuple(advantages.shape)}")
    m = check_mask(mask, mask, "mask", finite={"advantages": advantages})
    spread = advantages[:, None].expand(m.shape)  # (B, T)
    return torch.where(m, spread, torch.zeros_like(spread))


# --------------------------------------------------------------------------------------------
# The method table: what the trainer, the config, the command line and the calculator read
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One way to turn rewards into advantages, and the defaults its paper uses.

    ``advantages(rewards, mask, *, values, config, reduce, trace)`` takes the per-token
    rewards ``(B, T)`` (the score on the last token, minus beta x KL per token when the KL is
    in the reward), the response ``mask`` ``(B, T)``, the critic's ``values`` ``(B, T)`` (None
    without a critic), the run's ``config`` (a ``PPOConfig``: ``gamma``, ``lam``,
    ``group_size``, ...), ``reduce`` (an all-reduce SUM across ranks, or None) and ``trace``
    (records a named tensor); it returns ``(advantages, returns)``, both ``(B, T)``, returns
    None when there is no critic to train.
    """

    name: str
    advantages: Callable[..., tuple[Tensor, Tensor | None]]
    needs_critic: bool
    """GAE: values are the baseline; the others build no critic (three models)"""
    needs_groups: bool
    """the baseline is the group of G responses to one prompt: group_size >= 2"""
    kl_in: str
    """"reward" (a per-token penalty) or "loss" (GRPO)"""
    kl_estimator: str
    beta: float
    description: str
    """one line for --help and the docs"""


def _gae_method(rewards: Tensor, mask: Tensor, *, values: Tensor, config, reduce=None,
                trace=None) -> tuple[Tensor, Tensor]:
    """PPO's advantages: GAE over the critic's values, whitened over the batch if asked."""
    advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = whiten(advantages, mask, reduce=reduce)
    return advantages, returns


def _group_method(estimate: Callable[[Tensor, int], Tensor]):
    """An outcome method: each response's summed reward ``(B,)`` against its group's, spread
    over its tokens."""
    def advantages(rewards: Tensor, mask: Tensor, *, values=None, config, reduce=None,
                   trace=None) -> tuple[Tensor, None]:
        sequence = estimate(rewards.sum(1), config.group_size)  # (B,): groups lie in a rank
        if trace is not None:
            trace("sequence_advantages", sequence)
        return token_advantages(sequence, mask), None  # (B, T)
    return advantages


def _reinforce_pp_method(rewards: Tensor, mask: Tensor, *, values=None, config, reduce=None,
                         trace=None) -> tuple[Tensor, None]:
    return reinforce_pp_advantages(rewards, mask, config.gamma, reduce=reduce), None


METHODS: dict[str, Method] = {}
"""name -> :class:`Method`: the methods ``PPOConfig.advantage_estimator`` may name"""


def register_method(entry: Method) -> Method:
    """Add ``entry`` to :data:`METHODS` (a new method is one entry and its function); a name
    already taken is refused. Remove it with ``del METHODS[name]``."""
    if not isinstance(entry, Method):
        raise ValueError(f"register_method takes a Method, got {type(entry).__name__}")
    if entry.name in METHODS:
        raise ValueError(f"method {entry.name!r} is already registered")
    METHODS[entry.name] = entry
    return entry


def method(name: str) -> Method:
    """The table's entry for ``name``; an unknown name raises, never runs as another method."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown advantage estimator {name!r}; expected one of "
                         f"{', '.join(METHODS)}")
    return METHODS[name]


for _entry in (
    Method("gae", _gae_method, True, False, "reward", "k1", 0.05,
           "PPO, GAE over a critic's values (Ziegler et al. 2019)"),
    Method("grpo", _group_method(grpo_advantages), False, True, "loss", "k3", 0.04,
           "reward minus its group's mean, over the group's std (Shao et al. 2024)"),
    Method("dr_grpo", _group_method(lambda s, g: grpo_advantages(s, g, scale=False)), False,
           True, "loss", "k3", 0.04, "GRPO without the std (Liu et al. 2025)"),
    Method("rloo", _group_method(rloo_advantages), False, True, "reward", "k1", 0.05,
           "reward minus the mean of its group's others (Ahmadian et al. 2024)"),
    Method("reinforce_pp", _reinforce_pp_method, False, False, "reward", "k1", 0.01,
           "return-to-go normalised over the batch, no critic (Hu 2025)"),
):
    register_method(_entry)
