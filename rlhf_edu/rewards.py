"""Per-token rewards for RLHF: KL estimators and reward assembly.

Step 4 of the RLHF flow (see DESIGN.md): the reward model gives one score per response, the
reference model keeps the policy close to where it started. Each response token t gets
`-beta * KL_t` (a penalty for drifting from the reference), and the score is added on the
last response token (or on every token, for a per-token "process" reward).

KL estimators, with `d = logp - logp_ref` for the sampled token (Schulman's blog):
- k1 = d                      unbiased for KL(pi || pi_ref), can be negative per token
- k2 = d^2 / 2                biased, low variance, always >= 0
- k3 = exp(-d) - 1 + d        unbiased and always >= 0 (the "(r - 1) - log r" estimator)
- full                        the exact KL over the vocabulary from both models' logits

`KL_ESTIMATORS` maps each name to its function; an unknown name is refused, never computed
as another estimator, and a new estimator is one entry there (`register_kl_estimator`).

All per-token tensors are `(B, T)`; `mask` is 1 on response tokens and 0 on padding.

References:
- John Schulman (2020), "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html
- Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences",
  https://arxiv.org/abs/1909.08593 (reward = score - beta * KL, adaptive beta in `ppo.py`).
- Ouyang et al. (2022), "Training language models to follow instructions with human
  feedback" (InstructGPT), https://arxiv.org/abs/2203.02155, eq. 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_edu.validate import (
    COEF_MAX,
    MaskCheck,
    check_2d,
    check_finite,
    check_float,
    check_floating,
    check_mask,
    check_result,
    check_same_device,
    check_same_shape,
    check_tensor,
    shown,
)

__all__ = ["KL_ESTIMATORS", "register_kl_estimator", "token_estimators", "kl_penalty",
           "compute_rewards", "last_token_index"]


def _k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return logprobs - ref_logprobs


def _k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    d = logprobs - ref_logprobs
    return 0.5 * d * d


def _k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    d = logprobs - ref_logprobs
    # expm1 keeps precision when d is near 0; the clamp removes the tiny negatives that
    # rounding can produce, so k3 >= 0 holds exactly, as it does mathematically.
    return (torch.expm1(-d) + d).clamp_min(0.0)


def _full(logits: Tensor, ref_logits: Tensor) -> Tensor:
    # Normalise in at least float32: bf16 log-probabilities are too coarse for a KL.
    acc = torch.promote_types(logits.dtype, torch.float32)
    logp = F.log_softmax(logits.to(acc), dim=-1)
    logq = F.log_softmax(ref_logits.to(acc), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).to(logits.dtype)  # (B, T)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _k1, "k2": _k2, "k3": _k3, "full": _full}
"""name -> estimate ``(B, T)`` from the sampled tokens' log-probs ``(B, T)`` of policy and
reference (``"full"``: from their logits ``(B, T, V)``); a new estimator is one entry here"""
FULL = "full"  # the one estimator that reads logits, not the sampled tokens' log-probs


def register_kl_estimator(name: str, estimate: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Add ``estimate(logprobs, ref_logprobs) -> (B, T)`` to :data:`KL_ESTIMATORS` as ``name``;
    a name already taken is refused. Remove it with ``del KL_ESTIMATORS[name]``."""
    if not isinstance(name, str) or name in KL_ESTIMATORS or not callable(estimate):
        raise ValueError(f"register_kl_estimator needs a new name and a function, got "
                         f"{shown(name)} (taken: {', '.join(KL_ESTIMATORS)})")
    KL_ESTIMATORS[name] = estimate


def token_estimators() -> tuple[str, ...]:
    """The estimators that work from the sampled tokens' log-probs (all but "full"): the ones
    a run's ``kl_estimator`` may name."""
    return tuple(k for k in KL_ESTIMATORS if k != FULL)


def _check_estimator(estimator: object) -> None:
    if not isinstance(estimator, str) or estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {shown(estimator)}; expected one of {', '.join(KL_ESTIMATORS)}"
        )


def _check_kl_inputs(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> None:
    """Estimator, types and shapes of `kl_penalty`'s inputs (no values read)."""
    _check_estimator(estimator)
    check_floating("logprobs", logprobs)
    check_floating("ref_logprobs", ref_logprobs)
    check_same_device({"logprobs": logprobs, "ref_logprobs": ref_logprobs})
    check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    if estimator == FULL and logprobs.ndim != 3:
        raise ValueError(
            "estimator 'full' expects logits of shape (B, T, V), got logprobs with shape "
            f"{tuple(logprobs.shape)}"
        )


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1",
               mask: Tensor | None = None) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) for tokens sampled from pi.

    Args:
        logprobs: `(B, T)` log pi(token) of the sampled tokens under the policy; for
            `estimator="full"`, the policy's full logits `(B, T, V)`.
        ref_logprobs: `(B, T)` log pi_ref(token) under the reference; for "full", the
            reference's logits `(B, T, V)`.
        estimator: "k1", "k2", "k3" or "full" (see the module docstring), or any name added
            to `KL_ESTIMATORS`.
        mask: optional `(B, T)`, 1 on response tokens: the estimate is 0 where it is 0, and
            whatever the inputs hold there (NaN included) is ignored. Without it every
            position is a response token. NaN or inf at a response token is refused.

    Returns:
        `(B, T)` tensor of per-token KL estimates (0 on padding if `mask` is given).
    """
    _check_kl_inputs(logprobs, ref_logprobs, estimator)
    if mask is None:
        check_finite({"logprobs": logprobs, "ref_logprobs": ref_logprobs})
        kl = _kl(logprobs, ref_logprobs, estimator)
        return check_result("the KL estimate", kl, lambda: _overflow_cause(
            logprobs, ref_logprobs, estimator, kl))
    check = _check_kl_mask(mask, logprobs, ref_logprobs, estimator)
    with check as m:
        kl = _masked_kl(logprobs, ref_logprobs, estimator, m)
    return check.result("the KL estimate", kl, lambda: _overflow_cause(
        logprobs, ref_logprobs, estimator, kl))


def _overflow_cause(logprobs: Tensor, ref_logprobs: Tensor, estimator: str, kl: Tensor) -> str:
    """Why a KL estimate of finite inputs is not finite: the log-prob difference there."""
    idx = tuple((~torch.isfinite(kl)).nonzero()[0].tolist())
    if estimator == FULL:
        return (f"the logits at {idx} are too far apart for float32 "
                f"({logprobs.dtype}); pass them in float32 or float64")
    d = (logprobs[idx] - ref_logprobs[idx]).item()
    grows = {"k2": "d^2 / 2", "k3": "exp(-d)"}.get(estimator, estimator)
    return (f"logprobs - ref_logprobs = {d:g} there, and {estimator} = {grows} overflows "
            f"{logprobs.dtype}; log-probs that far apart mean a temperature or a policy far "
            "from the reference (k1 grows only linearly)")


def _check_kl_mask(mask: Tensor, logprobs: Tensor, ref_logprobs: Tensor, estimator: str,
                   every_row: bool = False, scores: Tensor | None = None) -> MaskCheck:
    """The checks of the mask against the `(B, T)` of the KL estimate, and of the inputs (and
    `scores`, if given) being finite where it is 1, queued to be read back with the result's
    (its `m`: the bool mask)."""
    check_tensor("mask", mask)
    kl_shape = tuple(logprobs.shape[:2] if estimator == FULL else logprobs.shape)
    if estimator == FULL and tuple(mask.shape) != kl_shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the logits have (B, T) = "
            f"{kl_shape}; they must match"
        )
    finite = {"logprobs": logprobs, "ref_logprobs": ref_logprobs}
    if scores is not None:
        finite["scores"] = scores
    return MaskCheck(mask, torch.empty(kl_shape, device="meta"), "logprobs",
                     every_row=every_row, finite=finite)


def _masked_kl(logprobs: Tensor, ref_logprobs: Tensor, estimator: str, m: Tensor) -> Tensor:
    """`_kl` with the padding (bool `m` False) set to 0 before and after: it never reaches the
    result or the gradient."""
    real = m[..., None] if estimator == FULL else m
    zeros = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    kl = _kl(torch.where(real, logprobs, zeros), torch.where(real, ref_logprobs, zeros),
             estimator)
    return torch.where(m, kl, torch.zeros_like(kl))


def _kl(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """The estimate itself, on checked inputs: the map's entry (an unknown name raises)."""
    _check_estimator(estimator)
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last response token of each row.

    Args:
        mask: `(B, T)`, 1 on response tokens; every row needs at least one.

    Returns:
        `(B,)` LongTensor. With right padding this is `length - 1`; it is also correct for
        left padding or holes, since it looks for the last 1, not at the row's length.
    """
    check_2d("mask", mask)
    m = check_mask(mask, mask, "mask", every_row=True)
    return _last_index(m)


def _last_index(m: Tensor) -> Tensor:
    """`last_token_index` of a checked bool mask."""
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)  # (B, T)
    return torch.where(m, positions, -1).amax(dim=1)


def compute_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
) -> Tensor:
    """Per-token rewards: `-beta * KL_t` on every response token plus the reward-model score.

    Args:
        scores: `(B,)` one score per response, added on the last response token of row b
            (where the reward model read it); or `(B, T)` per-token (process) rewards,
            added on every response token.
        logprobs: `(B, T)` policy log-probabilities of the sampled tokens ((B, T, V) logits
            for `estimator="full"`).
        ref_logprobs: `(B, T)` reference log-probabilities (logits for "full").
        mask: `(B, T)`, 1 on response tokens; every row needs at least one. Whatever the
            other inputs hold where it is 0 (NaN included) is ignored; NaN or inf where it
            is 1 (and anywhere in `(B,)` scores) is refused.
        beta: KL coefficient >= 0; 0 leaves only the score (the reward-hacking setting).
        estimator: KL estimator, see `kl_penalty`.

    Returns:
        `(B, T)` rewards, 0 on padding.
    """
    check_float("beta", beta, minimum=0, maximum=COEF_MAX)
    _check_kl_inputs(logprobs, ref_logprobs, estimator)
    check_tensor("mask", mask)
    check_same_device({"scores": scores, "logprobs": logprobs, "mask": mask})
    kl_shape = tuple(logprobs.shape[:2] if estimator == FULL else logprobs.shape)
    check_2d("logprobs", torch.empty(kl_shape, device="meta"))
    B, T = kl_shape
    check_tensor("scores", scores)
    if scores.shape not in ((B,), (B, T)):
        raise ValueError(
            f"scores must have shape (B,) = ({B},) or (B, T) = ({B}, {T}), "
            f"got {tuple(scores.shape)}"
        )
    check = _check_kl_mask(mask, logprobs, ref_logprobs, estimator, every_row=True,
                           scores=scores)
    with check as m:  # the checks are read back once, with the result's
        kl = _masked_kl(logprobs, ref_logprobs, estimator, m)  # (B, T), 0 on padding
        zeros = torch.zeros_like(kl)
        rewards = torch.where(m, -beta * kl, zeros)
        scores = scores.to(kl.dtype)
        if scores.ndim == 2:
            rewards = rewards + torch.where(m, scores, zeros)
        else:
            # The sequence-level score belongs to the whole response, so it lands on the token
            # that ended it; GAE then carries it back to earlier tokens.
            last = _last_index(m)  # (B,)
            rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.unsqueeze(1))
    return check.result("rewards", rewards, lambda: (
        f"beta ({beta:g}) x KL (largest {kl.abs().max().item():g}) plus the scores (largest "
        f"{scores.abs().max().item():g}) overflows {rewards.dtype}"))
