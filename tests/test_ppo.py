"""Tests for rlhf_edu.ppo: clipped losses, diagnostics, the combined loss, KL controllers."""

import math

import pytest
import torch

from rlhf_edu.ppo import (
    AdaptiveKLController,
    FixedKLController,
    check_ppo_inputs,
    entropy_from_logits,
    ppo_losses,
    total_loss,
)


def losses_for(logprobs, old_logprobs, advantages, mask=None, **kwargs):
    """ppo_losses with dummy value tensors, for tests that only look at the policy part."""
    zeros = torch.zeros_like(old_logprobs)
    mask = torch.ones_like(old_logprobs) if mask is None else mask
    return ppo_losses(logprobs, old_logprobs, advantages, zeros, zeros, zeros, mask, **kwargs)


def test_checked_rows_equal_per_call_checks_bit_for_bit():
    """The trainer's path (the rollout's side checked and zeroed once per batch, then rows of
    it with checked=True) gives exactly the losses and gradients of ppo_losses checking each
    call, NaN in the rollout's padding included."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    mask[:, 0] = 1
    rollout = {k: torch.randn(B, T, generator=g) for k in
               ("old_logprobs", "advantages", "old_values", "returns", "ref_logprobs")}
    for t in rollout.values():
        t[mask == 0] = float("nan")
    current = {k: torch.randn(B, T, generator=g) for k in ("logprobs", "values", "entropy")}
    x = check_ppo_inputs(rollout["old_logprobs"], rollout["advantages"], rollout["old_values"],
                         rollout["returns"], mask, ref_logprobs=rollout["ref_logprobs"])
    assert x.mask.dtype == torch.bool and torch.equal(x.mask, mask.bool())
    assert not torch.isnan(x.advantages).any()
    idx = torch.tensor([4, 1, 2])

    def run(checked):
        lp, v = (current[k][idx].clone().requires_grad_() for k in ("logprobs", "values"))
        src = x if checked else type(x)(mask, *(rollout[k] for k in (
            "old_logprobs", "advantages", "old_values", "returns", "ref_logprobs")))
        out = ppo_losses(lp, src.old_logprobs[idx], src.advantages[idx], v,
                         src.old_values[idx], src.returns[idx], src.mask[idx],
                         entropy=current["entropy"][idx], ref_logprobs=src.ref_logprobs[idx],
                         checked=checked)
        loss = total_loss(out, 0.1, 0.01, 0.05)
        loss.backward()
        return {k: v.detach() for k, v in out.items()}, lp.grad, v.grad

    (a, ga, va), (b, gb, vb) = run(False), run(True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), (a, b)
    assert torch.equal(ga, gb) and torch.equal(va, vb)
    assert torch.isfinite(ga).all() and (ga[mask[idx] == 0] == 0).all()


# ------------------------------------------------------------------------------------------
# policy loss
# ------------------------------------------------------------------------------------------

# One row of tokens, clip = 0.2; ratio r = exp(logp - old_logp):
#   0: A = +1, r = 1.5  clipped side (r > 1 + eps, A > 0)     -> no gradient, counted as clipped
#   1: A = -1, r = 0.5  clipped side (r < 1 - eps, A < 0)     -> no gradient, counted as clipped
#   2: A = +1, r = 0.5  outside the range, but -A*r is larger -> gradient, not clipped
#   3: A = -1, r = 1.5  outside the range, but -A*r is larger -> gradient, not clipped
#   4: A = +2, r = 1.1  inside the range                      -> gradient, not clipped
#   5: padding with an extreme ratio                          -> ignored everywhere
RATIOS = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1, 30.0]], dtype=torch.float64)
ADV = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0, 5.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 1, 1, 0]])


def test_policy_gradient_zero_exactly_on_clipped_side():
    old = torch.zeros(1, 6, dtype=torch.float64)
    logp = RATIOS.log().requires_grad_()
    out = losses_for(logp, old, ADV, MASK, clip=0.2)
    out["policy_loss"].backward()
    grad = logp.grad[0]
    assert grad[0] == 0 and grad[1] == 0 and grad[5] == 0
    # d/dlogp of -A*r/N is -A*r/N (N = 5 response tokens)
    expected = -ADV[0, 2:5] * RATIOS[0, 2:5] / 5
    torch.testing.assert_close(grad[2:5], expected)
    assert (grad[2:5] != 0).all()


def test_policy_loss_value_and_clipfrac_on_hand_example():
    old = torch.zeros(1, 6, dtype=torch.float64)
    out = losses_for(RATIOS.log(), old, ADV, MASK, clip=0.2)
    # per token max(-A r, -A clip(r)): [-1.2, 0.8, -0.5, 1.5, -2.2] -> mean -0.32
    torch.testing.assert_close(out["policy_loss"], torch.tensor(-1.6 / 5, dtype=torch.float64))
    torch.testing.assert_close(out["clipfrac"], torch.tensor(2 / 5, dtype=torch.float64))


def test_policy_loss_equals_minus_A_r_mean_when_unclipped():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logp = old + 0.1 * torch.rand(4, 6, generator=g, dtype=torch.float64) - 0.05  # |log r|<.05
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.arange(6)[None] < torch.tensor([6, 2, 4, 1])[:, None]).float()
    out = losses_for(logp, old, adv, mask, clip=0.2)
    ratio = torch.exp(logp - old)
    expected = (-adv * ratio * mask).sum() / mask.sum()
    torch.testing.assert_close(out["policy_loss"], expected)
    assert out["clipfrac"] == 0


def test_ratio_one_gives_minus_mean_advantage_and_zero_kl():
    adv = torch.tensor([[1.0, 2.0, 3.0]])
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    out = losses_for(logp, logp.clone(), adv)
    torch.testing.assert_close(out["policy_loss"], torch.tensor(-2.0))
    assert out["approx_kl"] == 0 and out["clipfrac"] == 0


def test_approx_kl_is_k3_of_ratio_and_nonnegative():
    g = torch.Generator().manual_seed(1)
    old = torch.randn(3, 5, generator=g, dtype=torch.float64)
    logp = old + torch.randn(3, 5, generator=g, dtype=torch.float64)
    out = losses_for(logp, old, torch.zeros(3, 5, dtype=torch.float64))
    log_r = logp - old
    torch.testing.assert_close(out["approx_kl"], ((log_r.exp() - 1) - log_r).mean())
    assert out["approx_kl"] >= 0


def test_diagnostics_detached_losses_differentiable():
    logp = torch.zeros(2, 3, requires_grad=True)
    values = torch.zeros(2, 3, requires_grad=True)
    entropy = torch.ones(2, 3, requires_grad=True)
    z = torch.zeros(2, 3)
    out = ppo_losses(logp, z, torch.ones(2, 3), values, z, torch.ones(2, 3), torch.ones(2, 3),
                     entropy=entropy)
    for key in ("policy_loss", "value_loss", "entropy"):
        assert out[key].requires_grad, key
    for key in ("clipfrac", "vf_clipfrac", "approx_kl"):
        assert not out[key].requires_grad, key
    assert set(out) == {"policy_loss", "value_loss", "entropy", "clipfrac", "vf_clipfrac",
                        "approx_kl"}
    assert "entropy" not in losses_for(logp, z, z)


# ------------------------------------------------------------------------------------------
# value loss
# ------------------------------------------------------------------------------------------


def test_value_clipping_hand_example():
    # old_v = 0 everywhere, vf_clip = 0.2, returns R = 1:
    #   v =  1.0: v_clipped = 0.2, (v-R)^2 = 0,    (v_c-R)^2 = 0.64 -> clipped term active
    #   v =  0.1: v_clipped = 0.1, both 0.81                           -> not clipped
    #   v = -1.0: v_clipped = -0.2, (v-R)^2 = 4,   (v_c-R)^2 = 1.44 -> unclipped term active
    #   v =  5.0: padding
    values = torch.tensor([[1.0, 0.1, -1.0, 5.0]], dtype=torch.float64, requires_grad=True)
    old_values = torch.zeros(1, 4, dtype=torch.float64)
    returns = torch.ones(1, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    z = torch.zeros(1, 4, dtype=torch.float64)
    out = ppo_losses(z, z, z, values, old_values, returns, mask, vf_clip=0.2)
    torch.testing.assert_close(
        out["value_loss"], torch.tensor(0.5 * (0.64 + 0.81 + 4.0) / 3, dtype=torch.float64)
    )
    torch.testing.assert_close(out["vf_clipfrac"], torch.tensor(1 / 3, dtype=torch.float64))
    out["value_loss"].backward()
    # the clipped term does not depend on v once clamped: no gradient for token 0 or padding
    grad = values.grad[0]
    assert grad[0] == 0 and grad[3] == 0
    torch.testing.assert_close(grad[1:3], torch.tensor([0.1 - 1.0, -1.0 - 1.0],
                                                       dtype=torch.float64) / 3)

    unclipped = ppo_losses(z, z, z, values, old_values, returns, mask, vf_clip=None)
    torch.testing.assert_close(
        unclipped["value_loss"], torch.tensor(0.5 * (0.0 + 0.81 + 4.0) / 3, dtype=torch.float64)
    )
    assert unclipped["vf_clipfrac"] == 0


def test_entropy_is_masked_mean():
    ent = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    z = torch.zeros(2, 3)
    out = ppo_losses(z, z, z, z, z, z, mask, entropy=ent)
    torch.testing.assert_close(out["entropy"], torch.tensor(2.0))


# ------------------------------------------------------------------------------------------
# entropy_from_logits and total_loss
# ------------------------------------------------------------------------------------------


def test_entropy_from_logits_matches_categorical():
    logits = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(2))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    torch.testing.assert_close(entropy_from_logits(torch.zeros(2, 2, 10)),
                               torch.full((2, 2), math.log(10)))


def test_entropy_from_logits_stable():
    logits = torch.tensor([[[1e4, 0.0, -1e4], [0.0, 0.0, float("-inf")]]], requires_grad=True)
    ent = entropy_from_logits(logits)
    torch.testing.assert_close(ent, torch.tensor([[0.0, math.log(2)]]))
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_total_loss_sign_convention():
    losses = {"policy_loss": torch.tensor(1.0), "value_loss": torch.tensor(2.0),
              "entropy": torch.tensor(3.0, requires_grad=True)}
    torch.testing.assert_close(total_loss(losses, vf_coef=0.5, ent_coef=0.01),
                               torch.tensor(1.0 + 0.5 * 2.0 - 0.01 * 3.0))
    # Minimising the loss must *raise* the entropy (a bonus in the maximised objective).
    total_loss(losses, vf_coef=0.5, ent_coef=0.01).backward()
    assert losses["entropy"].grad < 0
    # default: vf_coef 0.1, no entropy term
    torch.testing.assert_close(total_loss(losses), torch.tensor(1.2))


# ------------------------------------------------------------------------------------------
# KL controllers
# ------------------------------------------------------------------------------------------


def test_fixed_controller_is_constant():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 256) == 0.05 and ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_moves_beta_toward_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL twice the target: error 1.0 clipped to +0.2
    assert ctl.update(12.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 10 % above: error 0.1, not clipped -> beta increases
    assert ctl.update(6.6, 1000) == pytest.approx(0.1 * (1 + 0.1 * 0.1))
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 0: error -1 clipped to -0.2 -> beta decreases
    assert ctl.update(0.0, 1000) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(6.0, 1000) == pytest.approx(0.1)  # on target: unchanged


def test_adaptive_controller_state_dict_resumes_exactly():
    kls = [3.0, 9.0, 7.5, 1.0, 6.2]
    ctl = AdaptiveKLController(0.2, target=5.0, horizon=2000)
    for kl in kls[:2]:
        ctl.update(kl, 64)
    resumed = AdaptiveKLController(1.0, target=1.0, horizon=1.0)
    resumed.load_state_dict(ctl.state_dict())
    assert [ctl.update(kl, 64) for kl in kls[2:]] == [resumed.update(kl, 64) for kl in kls[2:]]


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

Z = torch.zeros(2, 3)
ONES = torch.ones(2, 3)


def call_ppo(**overrides):
    args = dict(logprobs=Z, old_logprobs=Z, advantages=Z, values=Z, old_values=Z, returns=Z,
                mask=ONES)
    args.update(overrides)
    return ppo_losses(**args)


BAD_INPUTS = [
    (lambda: call_ppo(clip=0.0), r"clip must be >= 1e-06, got 0\.0"),
    (lambda: call_ppo(clip=-0.2), r"clip must be >= 1e-06, got -0\.2"),
    (lambda: call_ppo(vf_clip=-1.0), r"vf_clip must be > 0, got -1\.0"),
    (lambda: call_ppo(advantages=torch.zeros(2, 4)),
     r"advantages has shape \(2, 4\) but logprobs has shape \(2, 3\); they must match"),
    (lambda: call_ppo(entropy=torch.zeros(2)),
     r"entropy has shape \(2,\) but logprobs has shape \(2, 3\)"),
    (lambda: call_ppo(mask=torch.ones(3, 3)), r"mask has shape \(3, 3\) but logprobs"),
    (lambda: call_ppo(mask=torch.zeros(2, 3)), r"mask has no unmasked entries"),
    (lambda: total_loss({"policy_loss": Z, "value_loss": Z}, ent_coef=0.01),
     r"ent_coef is 0\.01 but losses has no 'entropy'"),
    (lambda: total_loss({"policy_loss": Z, "value_loss": Z}, vf_coef=-1.0),
     r"vf_coef must be >= 0, got -1\.0"),
    (lambda: FixedKLController(-0.1), r"beta must be >= 0, got -0\.1"),
    (lambda: AdaptiveKLController(-0.1, 6.0), r"init_beta must be >= 0, got -0\.1"),
    (lambda: AdaptiveKLController(0.1, 0.0), r"target must be > 0, got 0\.0"),
    (lambda: AdaptiveKLController(0.1, 6.0, horizon=0), r"horizon must be > 0, got 0"),
    (lambda: AdaptiveKLController(0.1, float("inf")), r"target must be finite, got inf"),
    (lambda: AdaptiveKLController(0.1, 6.0).update(float("nan"), 10),
     r"current_kl must be finite, got nan"),
    (lambda: AdaptiveKLController(0.1, 6.0).update(1.0, -5),
     r"n_steps must be an int >= 0, got -5"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
