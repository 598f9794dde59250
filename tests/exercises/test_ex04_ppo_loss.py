"""Graded tests of Exercise 4 (exercises/ex04_ppo_loss.py): PPO's clipped losses.

References: one-token cases for each clipping regime (value and gradient), padding, and
``rlhf_edu.ppo.ppo_losses`` on random tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from grading_utils import backward, expect_close, expect_scalar

from rlhf_edu.ppo import ppo_losses

EXERCISE = "ex04_ppo_loss"


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


# ------------------------------------------------------------------ masked_mean


def test_masked_mean_ignores_padding(ex):
    x = torch.tensor([[1.0, 2.0, 3.0, float("inf")],
                      [5.0, float("nan"), -7.0, 1e30]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0],
                         [1.0, 0.0, 0.0, 0.0]])
    got = expect_scalar(ex.masked_mean(x, mask), "masked_mean(x, mask)")
    want = (1 + 2 + 3 + 5) / 4
    if not close(got.item(), want):
        hint = ""
        if close(got.item(), 11 / 8):
            hint = ": it divides by B * T = 8; divide by the number of response tokens, 4"
        elif not math.isfinite(got.item()):
            hint = (": padding holds inf and NaN here, and 0 * inf is NaN; select the response "
                    "entries with torch.where instead of multiplying by the mask")
        pytest.fail(f"masked_mean is {got.item():.6g} but the mean of the 4 response tokens "
                    f"(1, 2, 3, 5) is {want}{hint}", pytrace=False)


# ------------------------------------------------------------------ policy loss

POLICY_CASES = [
    # ratio, advantage, expected loss, gradient of the loss w.r.t. logprobs, explanation
    (1.5, 1.0, -1.2, 0.0, "the ratio rose above 1 + eps = 1.2 for a good token: the objective "
     "is capped at 1.2 * A, so the loss is -1.2 and the gradient is 0 (no reward for going "
     "further)"),
    (1.5, -1.0, 1.5, 1.5, "the ratio rose above 1.2 for a bad token: min(r A, 1.2 A) = r A = "
     "-1.5 is the unclipped term, so the loss is 1.5 and the gradient pushes the ratio back"),
    (0.5, 1.0, -0.5, -0.5, "the ratio fell below 1 - eps = 0.8 for a good token: min(0.5, 0.8) "
     "is the unclipped 0.5, so the loss is -0.5 and the gradient raises the ratio again"),
    (0.5, -1.0, 0.8, 0.0, "the ratio fell below 0.8 for a bad token: the objective is capped at "
     "0.8 * A = -0.8, so the loss is 0.8 and the gradient is 0"),
    (1.1, 2.0, -2.2, -2.2, "inside [0.8, 1.2] clipping does nothing: the loss is -r A = -2.2"),
]


@pytest.mark.parametrize("ratio, adv, want, grad, why", POLICY_CASES,
                         ids=["good-high", "bad-high", "good-low", "bad-low", "inside"])
def test_policy_loss_clipping_regimes(ex, ratio, adv, want, grad, why):
    old = torch.tensor([[-2.0]])
    logprobs = (old + math.log(ratio)).requires_grad_(True)
    loss = expect_scalar(ex.ppo_policy_loss(logprobs, old, torch.tensor([[adv]]),
                                            torch.ones(1, 1), clip=0.2), "ppo_policy_loss")
    if not close(loss.item(), want):
        sign = " (a loss to minimise is minus the objective)" if close(loss.item(), -want) else ""
        pytest.fail(f"ppo_policy_loss with ratio {ratio}, advantage {adv:+} is {loss.item():.4g} "
                    f"but should be {want}: {why}{sign}", pytrace=False)
    if not loss.requires_grad:
        pytest.fail("ppo_policy_loss is not differentiable in logprobs (no grad_fn): keep the "
                    "computation in torch, without .item(), .detach() or torch.no_grad()",
                    pytrace=False)
    (grad_logprobs,) = backward(loss, logprobs)
    g = 0.0 if grad_logprobs is None else grad_logprobs.item()
    if not close(g, grad):
        pytest.fail(f"d loss / d logprobs is {g:.4g} but should be {grad} with ratio {ratio}, "
                    f"advantage {adv:+}: {why}", pytrace=False)


def random_batch(seed: int, B: int = 6, T: int = 10):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T) < torch.randint(1, T + 1, (B,), generator=g)[:, None]).float()
    old = -torch.rand(B, T, generator=g) * 3
    logprobs = old + 0.4 * torch.randn(B, T, generator=g)  # ratios from ~0.3 to ~3
    advantages = torch.randn(B, T, generator=g)
    old_values = torch.randn(B, T, generator=g)
    values = old_values + 0.5 * torch.randn(B, T, generator=g)
    returns = old_values + torch.randn(B, T, generator=g)
    return logprobs, old, advantages, values, old_values, returns, mask


@pytest.mark.parametrize("clip", [0.2, 0.1])
def test_policy_loss_random_against_package(ex, clip):
    logprobs, old, adv, values, old_values, returns, mask = random_batch(1)
    logprobs[mask == 0] = 5.0  # junk at padding positions (ratio e^8)
    want = ppo_losses(logprobs, old, adv, values, old_values, returns, mask, clip=clip)
    got = expect_scalar(ex.ppo_policy_loss(logprobs, old, adv, mask, clip=clip),
                        "ppo_policy_loss")
    expect_close(got, want["policy_loss"], f"ppo_policy_loss(clip={clip})",
                 "the masked mean over response tokens of max(-r A, -clip(r, 1-eps, 1+eps) A); "
                 "padding (mask 0) must not count")


# ------------------------------------------------------------------ value loss

VALUE_CASES = [
    # value, old value, return, expected loss, gradient w.r.t. value, explanation
    (0.1, 0.0, 1.0, 0.405, -0.9, "inside the clip range both errors are (0.1 - 1)^2 = 0.81; "
     "the loss is 0.5 * 0.81"),
    (0.5, 0.0, 1.0, 0.32, 0.0, "the value moved 0.5 from its old value, past vf_clip = 0.2: the "
     "clipped value is 0.2, its error (0.2 - 1)^2 = 0.64 is the larger one, so the loss is "
     "0.5 * 0.64 and the gradient is 0"),
    (0.5, 0.0, 0.0, 0.125, 0.5, "the value moved past the clip range away from the return: "
     "the unclipped error 0.25 is the larger, so the loss is 0.5 * 0.25 with its gradient"),
    # the same regimes away from 0: the clip range is centred on the OLD value, not on 0
    (1.1, 1.0, 2.0, 0.405, -0.9, "the value moved 0.1 from its old value 1.0, inside the clip "
     "range [0.8, 1.2]: both errors are (1.1 - 2)^2 = 0.81; the loss is 0.5 * 0.81"),
    (1.5, 1.0, 2.0, 0.32, 0.0, "the value moved 0.5 from its old value 1.0, past vf_clip = 0.2: "
     "the clipped value is 1.2, its error (1.2 - 2)^2 = 0.64 is the larger one, so the loss is "
     "0.5 * 0.64 and the gradient is 0"),
    (0.5, 1.0, 0.0, 0.32, 0.0, "the value moved -0.5 from its old value 1.0: the clipped value "
     "is 0.8, its error 0.8^2 = 0.64 is larger than the unclipped 0.5^2 = 0.25, so the loss is "
     "0.5 * 0.64 and the gradient is 0"),
]


def clipped_the_value_itself(v, old, ret, vf_clip: float):
    """What a value loss that clamps V itself to [-vf_clip, vf_clip] (not its change) gives."""
    v, old, ret = (torch.as_tensor(x, dtype=torch.float64) for x in (v, old, ret))
    wrong = torch.clamp(v, -vf_clip, vf_clip)
    return 0.5 * torch.maximum((v - ret) ** 2, (wrong - ret) ** 2)


VALUE_ITSELF = ("it looks like the value itself was clipped to [-vf_clip, vf_clip]; the clip "
                "limits how far V moves from its OLD value: V_clip = old_values + "
                "clamp(values - old_values, -vf_clip, vf_clip)")


@pytest.mark.parametrize("v, old, ret, want, grad, why", VALUE_CASES,
                         ids=["inside", "clipped", "unclipped-larger", "inside-old-1",
                              "clipped-old-1", "clipped-down-old-1"])
def test_value_loss_clipping_regimes(ex, v, old, ret, want, grad, why):
    values = torch.tensor([[v]], requires_grad=True)
    loss = expect_scalar(ex.ppo_value_loss(values, torch.tensor([[old]]), torch.tensor([[ret]]),
                                           torch.ones(1, 1), vf_clip=0.2), "ppo_value_loss")
    if not close(loss.item(), want):
        hint = " (did you forget the factor 1/2?)" if close(loss.item(), 2 * want) else ""
        if close(loss.item(), clipped_the_value_itself(v, old, ret, 0.2).item()):
            hint = f" ({VALUE_ITSELF})"
        pytest.fail(f"ppo_value_loss with value {v}, old value {old}, return {ret} is "
                    f"{loss.item():.4g} but should be {want}: {why}{hint}", pytrace=False)
    if not loss.requires_grad:
        pytest.fail("ppo_value_loss is not differentiable in values (no grad_fn)", pytrace=False)
    (grad_values,) = backward(loss, values)
    g = 0.0 if grad_values is None else grad_values.item()
    if not close(g, grad):
        pytest.fail(f"d loss / d values is {g:.4g} but should be {grad}: {why}", pytrace=False)


@pytest.mark.parametrize("vf_clip", [0.2, 0.5])
def test_value_loss_random_against_package(ex, vf_clip):
    logprobs, old, adv, values, old_values, returns, mask = random_batch(2)
    values[mask == 0] = 1e3  # junk at padding positions
    want = ppo_losses(logprobs, old, adv, values, old_values, returns, mask, vf_clip=vf_clip)
    got = expect_scalar(ex.ppo_value_loss(values, old_values, returns, mask, vf_clip=vf_clip),
                        "ppo_value_loss")
    hint = ("did you forget the factor 1/2? " if close(got.item(), 2 * want["value_loss"].item())
            else "")
    itself = clipped_the_value_itself(values, old_values, returns, vf_clip)
    why = hint + ("0.5 * the masked mean of max((V - R)^2, (V_clip - R)^2), with "
                  "V_clip = old_values + clip(values - old_values, -vf_clip, vf_clip)")
    if close(got.item(), (itself * mask).sum().item() / mask.sum().item()):
        why = VALUE_ITSELF
    expect_close(got, want["value_loss"], f"ppo_value_loss(vf_clip={vf_clip})", why)
