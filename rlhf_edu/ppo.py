"""PPO for RLHF: the clipped losses, the combined objective and the KL controllers.

Step 6 of the RLHF flow (see DESIGN.md). With the probability ratio
`r_t = pi(a_t | s_t) / pi_old(a_t | s_t) = exp(logp - old_logp)` and advantages `A_t`:

- clipped surrogate objective  L_clip = E[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]
- value loss                   L_VF   = 1/2 E[max((V - R)^2, (V_clipped - R)^2)]
- chapter objective (maximise) L      = L_clip - c1 L_VF + c2 Entropy
- loss we minimise                     policy_loss + c1 value_loss - c2 entropy = -L

The expectations are masked means over every response token of the batch. The KL
controllers set beta, the weight of the KL penalty in `rewards.compute_rewards`, or, with
GRPO's "KL in the loss", of `beta * E[k3(pi || pi_ref)]` added to the loss (`kl_loss`).
Without a critic (GRPO, RLOO, REINFORCE++) there is no value loss.

References:
- Schulman, Wolski, Dhariwal, Radford, Klimov (2017), "Proximal Policy Optimization
  Algorithms", https://arxiv.org/abs/1707.06347 (eq. 7 clipping, eq. 9 combined objective).
- Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences",
  https://arxiv.org/abs/1909.08593 (adaptive KL controller, sec. 2.2).
- John Schulman (2020), "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html
  (the k3 estimator used for `approx_kl`).
- Shao et al. (2024), "DeepSeekMath", https://arxiv.org/abs/2402.03300 (GRPO: the k3 KL to
  the reference added to the loss, eq. 3-4).
- CleanRL `ppo.py` and TRL's PPO trainer (value clipping, clipfrac), for the same
  conventions in code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from rlhf_edu.advantages import _masked_mean
from rlhf_edu.model import entropy_from_logits
from rlhf_edu.rewards import _check_estimator, _kl
from rlhf_edu.validate import (
    BETA_FLOOR,
    CLIP_MIN,
    COEF_MAX,
    VF_CLIP_MAX,
    check_bool,
    check_float,
    check_floating,
    check_int,
    check_mask,
    check_same_shape,
    shown,
)

__all__ = [
    "entropy_from_logits",
    "ppo_losses",
    "check_ppo_inputs",
    "PPOInputs",
    "total_loss",
    "FixedKLController",
    "AdaptiveKLController",
    "COEF_MAX",
    "BETA_FLOOR",
    "VF_CLIP_MAX",
]

# The domains of the numbers this module takes, where a result stays finite and meaningful.
# COEF_MAX (rlhf_edu.validate, where rewards.py and the configs read it too) bounds beta (KL in
# the reward or in the loss) and the loss coefficients c1, c2. At beta = 10 the policy already
# barely moves (FACTS.md); 1e4 is a thousand times that, and keeps beta * KL, c1 * value_loss
# and c2 * entropy finite in fp32 for any term below 3e34, where a coefficient of 1e39
# overflows fp32 at once (inf or NaN loss, which reads as "diverged").
# The adaptive controller keeps beta in [BETA_FLOOR, COEF_MAX]; vf_clip is at most VF_CLIP_MAX
# (both in rlhf_edu.validate, with their reasons).


def ppo_losses(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    values: Tensor | None,
    old_values: Tensor | None,
    returns: Tensor | None,
    mask: Tensor,
    clip: float = 0.2,
    vf_clip: float | None = 0.2,
    entropy: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_estimator: str = "k3",
    checked: bool = False,
) -> dict[str, Tensor]:
    """PPO's clipped policy loss and clipped value loss, with diagnostics.

    Args:
        logprobs: `(B, T)` log-probabilities of the sampled tokens under the current policy
            (differentiable).
        old_logprobs: `(B, T)` the same under the policy that sampled them (rollout time).
        advantages: `(B, T)` from `gae` (usually whitened).
        values: `(B, T)` current critic values (differentiable); None without a critic
            (GRPO, RLOO, REINFORCE++): then `old_values` and `returns` are None too and
            there is no value loss.
        old_values: `(B, T)` critic values at rollout time, or None.
        returns: `(B, T)` value targets from `gae`, or None.
        mask: `(B, T)`, 1 on response tokens. Whatever any input holds where it is 0 (NaN
            included) reaches neither the losses nor the gradients. Where it is 1, NaN or inf
            in the rollout's data (`old_logprobs`, `advantages`, `old_values`, `returns`) is
            refused; the current forward pass is not read back (a NaN there is a diverged
            model: it shows in the loss, which the trainer checks, naming the step).
        clip: eps of the ratio clipping, in (0, 1]: the ratio is kept in [1 - eps, 1 + eps];
            at eps >= 1 the lower bound 1 - eps <= 0 no longer clips any ratio (ratios are
            positive), so larger values only stretch the upper bound.
        vf_clip: how far values may move from `old_values` before the clipped error takes
            over, in (0, VF_CLIP_MAX]; None disables value clipping.
        entropy: optional `(B, T)` per-token entropy (see `entropy_from_logits`).
        ref_logprobs: optional `(B, T)` reference log-probs of the sampled tokens: GRPO's
            "KL in the loss". The current policy's per-token KL to the reference (estimator
            `kl_estimator`, see `rewards.kl_penalty`; GRPO uses k3) is then returned as
            `kl_loss`, differentiable, for `total_loss(..., kl_coef=beta)`.
        kl_estimator: "k1", "k2" or "k3".
        checked: the rollout's side is rows of `check_ppo_inputs`' result (checked, zeroed on
            padding, bool `mask`), as the trainer passes them: no per-call checks or read back.

    Returns:
        A dict of scalar tensors:
        - `policy_loss`: masked mean of `max(-A r, -A clip(r, 1 - eps, 1 + eps))`, i.e. minus
          the clipped surrogate objective (differentiable).
        - `value_loss`: `0.5 *` masked mean of `max((v - R)^2, (v_clipped - R)^2)`
          (differentiable); only with a critic.
        - `entropy`: masked mean entropy, only if `entropy` was given (differentiable).
        - `kl_loss`: masked mean of the per-token KL to the reference, only if
          `ref_logprobs` was given (differentiable).
        - `clipfrac`: fraction of tokens whose clipped policy term is the active one.
        - `vf_clipfrac`: the same for the value loss; only with a critic.
        - `approx_kl`: masked mean of `(r - 1) - log r`, the k3 estimate of KL(old || new).
        Diagnostics (`clipfrac`, `vf_clipfrac`, `approx_kl`) are detached.
    """
    x, m, n = _masked_inputs(
        {"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages,
         "values": values, "old_values": old_values, "returns": returns, "entropy": entropy,
         "ref_logprobs": ref_logprobs}, mask, clip, vf_clip, kl_estimator, checked)
    policy_loss, clipfrac, approx_kl = _policy_loss(x["logprobs"], x["old_logprobs"],
                                                    x["advantages"], m, clip, n)
    out = {"policy_loss": policy_loss}
    if values is not None:
        out["value_loss"], vf_clipfrac = _value_loss(x["values"], x["old_values"],
                                                     x["returns"], m, vf_clip, n)
    if entropy is not None:
        out["entropy"] = _masked_mean(x["entropy"], m, count=n)
    if ref_logprobs is not None:  # GRPO: the KL to the reference in the loss, not the reward
        out["kl_loss"] = _masked_mean(_kl(x["logprobs"], x["ref_logprobs"], kl_estimator), m,
                                      count=n)
    out["clipfrac"] = clipfrac
    if values is not None:
        out["vf_clipfrac"] = vf_clipfrac.detach()
    out["approx_kl"] = approx_kl
    return out


def _masked_inputs(tensors: dict[str, Tensor | None], mask: Tensor, clip: float,
                   vf_clip: float | None, kl_estimator: str, checked: bool
                   ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The given tensors (None left out) set to 0 on padding, the mask as bools and its count
    of response tokens (in the log-probs' dtype, which the means divide by); after
    `ppo_losses`' checks unless the caller has `checked` them (then `mask` must be bool)."""
    if not check_bool("checked", checked):
        m = _check_inputs(tensors, mask, clip, vf_clip, kl_estimator)
    elif isinstance(mask, Tensor) and mask.dtype == torch.bool:
        m = mask
    else:
        raise ValueError(f"checked=True takes the bool mask from check_ppo_inputs, got "
                         f"{mask.dtype if isinstance(mask, Tensor) else shown(mask)}")
    # Padding is set to 0 before any arithmetic: whatever it held (NaN from a rollout's
    # padding, say) then reaches neither the losses nor, through exp and max, the gradients.
    # Checked inputs have the rollout's side zeroed once per batch; the current pass's remain.
    zero = _CURRENT if checked else tensors
    x = {k: torch.where(m, v, 0.0) if k in zero else v
         for k, v in tensors.items() if v is not None}
    return x, m, m.sum().to(x["logprobs"].dtype)  # counted once for every mean


_CURRENT = ("logprobs", "values", "entropy")
"""`ppo_losses`' inputs from the current forward pass (the rest are the rollout's)"""


class PPOInputs(NamedTuple):
    """The rollout's side of `ppo_losses` for a whole batch, checked and zeroed on padding
    (`check_ppo_inputs`): index rows of each and pass them with `checked=True`. `(B, T)`
    each; None where the batch has none (no critic, no KL in the loss)."""

    mask: Tensor  # bool, True on response tokens
    old_logprobs: Tensor
    advantages: Tensor
    old_values: Tensor | None
    returns: Tensor | None
    ref_logprobs: Tensor | None


def check_ppo_inputs(old_logprobs: Tensor, advantages: Tensor, old_values: Tensor | None,
                     returns: Tensor | None, mask: Tensor, clip: float = 0.2,
                     vf_clip: float | None = 0.2, ref_logprobs: Tensor | None = None,
                     kl_estimator: str = "k3") -> PPOInputs:
    """`ppo_losses`' checks of the rollout's side, once for a whole batch: the settings, the
    `(B, T)` tensors' types and shapes, `mask` (0/1, a response token in every row, so that
    any minibatch of rows has one) and the tensors finite where it is 1. Returns them zeroed
    on padding, with the bool mask (`PPOInputs`), to pass row by row to
    `ppo_losses(..., checked=True)`. One read back."""
    tensors = {"logprobs": old_logprobs, "old_logprobs": old_logprobs,
               "advantages": advantages, "values": old_values, "old_values": old_values,
               "returns": returns, "ref_logprobs": ref_logprobs}
    m = _check_inputs(tensors, mask, clip, vf_clip, kl_estimator, every_row=True)
    zeroed = [None if t is None else torch.where(m, t, 0.0)
              for t in (old_logprobs, advantages, old_values, returns, ref_logprobs)]
    return PPOInputs(m, *zeroed)


def _check_inputs(tensors: dict[str, Tensor | None], mask: Tensor, clip: float,
                  vf_clip: float | None, kl_estimator: str, every_row: bool = False) -> Tensor:
    """`ppo_losses`' checks of the given tensors (None left out); the mask as bools."""
    _at_most("clip", check_float("clip", clip, minimum=CLIP_MIN), 1,
             "at eps >= 1 the lower bound 1 - eps clips no ratio")
    if vf_clip is not None:
        _at_most("vf_clip", check_float("vf_clip", vf_clip, minimum=0, strict_min=True),
                 VF_CLIP_MAX, "None disables value clipping")
    logprobs = check_floating("logprobs", tensors["logprobs"])
    given = [k for k in ("values", "old_values", "returns") if tensors[k] is not None]
    if given and len(given) < 3:
        raise ValueError(f"values, old_values and returns go together (all tensors, or all "
                         f"None without a critic); got tensors only for {', '.join(given)}")
    if tensors.get("ref_logprobs") is not None:
        _check_estimator(kl_estimator)
        if kl_estimator == "full":
            raise ValueError("kl_estimator 'full' needs the logits; the KL in the loss uses "
                             "k1, k2 or k3 of the sampled tokens")
    inputs = {k: v for k, v in tensors.items() if v is not None}
    for name, x in inputs.items():
        check_floating(name, x)
        check_same_shape(name, x, "logprobs", logprobs)
    # The rollout's data must be finite on response tokens; the current forward pass
    # (logprobs, values, entropy) is not read back: a NaN there is a diverged model, and it
    # shows in the loss, which the caller checks (the trainer, naming the step).
    rollout = {k: inputs[k] for k in ("old_logprobs", "advantages", "old_values", "returns",
                                      "ref_logprobs") if k in inputs}
    return check_mask(mask, logprobs, "logprobs", nonempty=True, every_row=every_row,
                      finite=rollout, what="; the PPO losses are undefined")


def _policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, m: Tensor,
                 clip: float, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The clipped policy loss, its clip fraction and the k3 estimate of KL(old || new), on
    inputs zeroed on padding (the last two detached); ``n`` counts the response tokens."""
    # The max of the two losses is the min of the two objectives (pessimistic bound).
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    policy_loss = _masked_mean(torch.max(pg_losses, pg_losses_clipped), m, count=n)
    with torch.no_grad():
        clipfrac = _masked_mean((pg_losses_clipped > pg_losses).to(ratio.dtype), m, count=n)
        # k3 estimator (Schulman's blog): unbiased for KL(old || new) and never negative.
        approx_kl = _masked_mean((ratio - 1.0) - log_ratio, m, count=n)
    return policy_loss, clipfrac, approx_kl


def _value_loss(values: Tensor, old_values: Tensor, returns: Tensor, m: Tensor,
                vf_clip: float | None, n: Tensor) -> tuple[Tensor, Tensor]:
    """The clipped value loss and its clip fraction, on inputs zeroed on padding; ``n``
    counts the response tokens."""
    # Clipping keeps the critic near its rollout-time predictions, as for the policy.
    vf_losses = (values - returns) ** 2
    if vf_clip is None:
        return 0.5 * _masked_mean(vf_losses, m, count=n), torch.zeros(
            (), dtype=values.dtype, device=values.device)
    values_clipped = old_values + torch.clamp(values - old_values, -vf_clip, vf_clip)
    vf_losses_clipped = (values_clipped - returns) ** 2
    value_loss = 0.5 * _masked_mean(torch.max(vf_losses, vf_losses_clipped), m, count=n)
    return value_loss, _masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), m,
                                    count=n)


def total_loss(losses: dict[str, Tensor], vf_coef: float = 0.1, ent_coef: float = 0.0,
               kl_coef: float = 0.0) -> Tensor:
    """The scalar loss to minimise: `policy_loss + c1 * value_loss - c2 * entropy + beta * KL`.

    Sign convention: the chapter (and PPO eq. 9) writes the objective to MAXIMISE as
    `L = L_clip - c1 * L_VF + c2 * Entropy`, where `L_clip` is the clipped surrogate
    objective. `policy_loss` is `-L_clip`, so the loss returned here is `-L`: the value
    error is added, and the entropy bonus is subtracted (minimising the loss raises entropy).

    Args:
        losses: the dict from `ppo_losses` (floating-point tensors). Their values are not
            read back (no host synchronisation): a NaN loss means training diverged, and
            the caller checks the loss it is about to step on.
        vf_coef: c1 in [0, COEF_MAX] (TRL's default 0.1); needs `losses["value_loss"]` when
            nonzero (a run without a critic passes 0).
        ent_coef: c2 in [0, COEF_MAX]; needs `losses["entropy"]` when nonzero.
        kl_coef: beta in [0, COEF_MAX] of the KL in the loss (GRPO); needs
            `losses["kl_loss"]` when nonzero. The term added is exactly
            `kl_coef * losses["kl_loss"]`.
    """
    for name, value in (("vf_coef", vf_coef), ("ent_coef", ent_coef), ("kl_coef", kl_coef)):
        _at_most(name, check_float(name, value, minimum=0), COEF_MAX, _COEF_WHY)
    if not isinstance(losses, Mapping):
        raise ValueError(f"losses must be the dict from ppo_losses, got {type(losses).__name__}")
    terms = {"value_loss": vf_coef, "entropy": -ent_coef, "kl_loss": kl_coef}
    needed = ["policy_loss"] + [k for k, c in terms.items() if c != 0]
    for key in needed:
        if key not in losses:
            if key == "entropy":
                raise ValueError(f"ent_coef is {ent_coef} but losses has no 'entropy'; "
                                 "pass entropy= to ppo_losses")
            if key == "kl_loss":
                raise ValueError(f"kl_coef is {kl_coef} but losses has no 'kl_loss'; "
                                 "pass ref_logprobs= to ppo_losses")
            raise ValueError(f"losses has no {key!r}; expected the dict from ppo_losses "
                             f"(keys {', '.join(map(repr, needed))}), got keys "
                             f"{shown(list(losses))}")
    for key in needed:
        check_floating(f"losses[{key!r}]", losses[key])
    loss = losses["policy_loss"]
    for key in needed[1:]:
        loss = loss + terms[key] * losses[key]
    return loss


def _controller_state(state: object, keys: tuple[str, ...]) -> dict[str, float]:
    """A KL controller's saved state, checked: a dict holding ``keys``."""
    if not isinstance(state, Mapping) or any(k not in state for k in keys):
        raise ValueError(f"a KL controller state must be a dict with keys {', '.join(keys)}, "
                         f"got {shown(state)}")
    return {k: state[k] for k in keys}


class FixedKLController:
    """A constant KL coefficient beta in [0, COEF_MAX] (the controller TRL uses)."""

    def __init__(self, beta: float) -> None:
        self.value = _at_most("beta", check_float("beta", beta, minimum=0), COEF_MAX,
                              _COEF_WHY) + 0.0  # -0.0 is 0

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns the unchanged beta. Same signature as the adaptive controller."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        state = _controller_state(state, ("value",))
        self.value = _at_most("state['value']", check_float("state['value']", state["value"],
                                                            minimum=0), COEF_MAX, _COEF_WHY) + 0.0


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019): steer the measured KL to a target.

    Each update, with the proportional error `e = clip(current_kl / target - 1, -0.2, 0.2)`,
    beta is multiplied by `1 + e * n_steps / horizon`: KL above the target raises beta (more
    penalty), below lowers it. The clip bounds how fast beta can move; `horizon` (in samples)
    sets the time scale. Beta stays in [BETA_FLOOR, COEF_MAX]: the update is multiplicative, so
    a beta of 0 (given, or rounded down to it in a long run) would never move again.

    Args:
        init_beta: starting beta, in [BETA_FLOOR, COEF_MAX] (use FixedKLController(0) for no
            penalty).
        target: target KL per response (nats), > 0.
        horizon: samples over which the error is corrected, >= 1 (10,000 in the paper).
    """

    def __init__(self, init_beta: float, target: float, horizon: float = 10000) -> None:
        self.value = _adaptive_beta("init_beta", init_beta)
        self.target = check_float("target", target, minimum=0, strict_min=True)
        self.horizon = _horizon("horizon", horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update beta from the KL measured on the last `n_steps` samples; return the new beta."""
        # current_kl may be negative (a k1 estimate on a batch is noisy); only NaN/inf is wrong.
        check_float("current_kl", current_kl)
        check_int("n_steps", n_steps, minimum=0)
        if n_steps > self.horizon:  # beta could go negative: 1 - 0.2 * n_steps / horizon
            raise ValueError(f"n_steps must be <= horizon ({self.horizon:g}), so that one update "
                             f"moves beta by at most 20 %, got {n_steps}")
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        beta = self.value * (1.0 + proportional_error * n_steps / self.horizon)
        self.value = min(max(beta, BETA_FLOOR), COEF_MAX)
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        state = _controller_state(state, ("value", "target", "horizon"))
        self.value = _adaptive_beta("state['value']", state["value"])
        self.target = check_float("state['target']", state["target"], minimum=0, strict_min=True)
        self.horizon = _horizon("state['horizon']", state["horizon"])


_COEF_WHY = "COEF_MAX: beyond it the other terms vanish and fp32 nears overflow"


def _at_most(name: str, x: float, maximum: float, why: str) -> float:
    """``x`` (``name``, checked by ``check_float``) if it is at most ``maximum``, else a one-line
    ``ValueError`` saying why the bound is there."""
    if x > maximum:
        raise ValueError(f"{name} must be <= {maximum:g} ({why}), got {x:g}")
    return x


def _adaptive_beta(name: str, value: object) -> float:
    """An adaptive controller's beta, checked: in [BETA_FLOOR, COEF_MAX], one-line message."""
    x = check_float(name, value, minimum=0)
    if x < BETA_FLOOR:
        raise ValueError(f"{name} must be >= {BETA_FLOOR:g} for the adaptive controller, which "
                         f"multiplies beta by at most 1.2 per update (from 0 it stays 0), got "
                         f"{x:g}; use FixedKLController(0) for no KL penalty")
    return _at_most(name, x, COEF_MAX, _COEF_WHY)


def _horizon(name: str, value: object) -> float:
    """An adaptive controller's horizon, checked: >= 1 sample, finite."""
    x = check_float(name, value, minimum=0, strict_min=True)
    if x < 1:
        raise ValueError(f"{name} must be >= 1 (samples over which the error is corrected), "
                         f"got {x:g}")
    return x
