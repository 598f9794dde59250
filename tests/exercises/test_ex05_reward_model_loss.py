"""Graded tests of Exercise 5 (exercises/ex05_reward_model_loss.py): Bradley-Terry loss.

References: hand-made pairs, extreme score gaps, the analytic gradient, and
``rlhf_edu.reward_model.bradley_terry_loss``; finally a small linear reward model must learn
preferences when trained with the learner's loss.
"""

from __future__ import annotations

import math

import pytest
import torch
from grading_utils import _short, backward, expect_close, expect_scalar, expect_tensor, plain

from rlhf_edu.reward_model import bradley_terry_loss as package_loss

EXERCISE = "ex05_reward_model_loss"


def test_preference_probability(ex):
    r_chosen = torch.tensor([1.0, 0.0, -2.0, 5.0])
    r_rejected = torch.tensor([0.0, 0.0, 1.0, 5.0])
    got = expect_tensor(ex.preference_probability(r_chosen, r_rejected),
                        "preference_probability", (4,))
    want = torch.sigmoid(r_chosen - r_rejected)
    expect_close(got, want, "preference_probability", lambda i: (
        f"scores {r_chosen[i].item()} and {r_rejected[i].item()} differ by "
        f"{(r_chosen - r_rejected)[i].item()}; P = sigmoid(r_chosen - r_rejected)"
        + (" = 0.5 for equal scores" if r_chosen[i] == r_rejected[i] else "")))


def check_loss(ex, r_chosen, r_rejected, why: str) -> torch.Tensor:
    got = expect_scalar(ex.bradley_terry_loss(r_chosen, r_rejected), "bradley_terry_loss")
    want = package_loss(r_chosen.detach(), r_rejected.detach())
    n = r_chosen.numel()
    hint = ""
    if math.isclose(got.item(), n * want.item(), rel_tol=1e-4) and n > 1:
        hint = " (it looks like a sum over pairs; take the mean)"
    elif math.isclose(got.item(), -want.item(), rel_tol=1e-4):
        hint = " (a loss to minimise is the NEGATIVE log-likelihood)"
    elif not math.isfinite(got.item()):
        hint = " (log(sigmoid(x)) underflows to log(0) = -inf; use F.logsigmoid)"
    expect_close(got, want, "bradley_terry_loss", why + hint)
    return got


def test_loss_hand_made(ex):
    # differences 2, 0, -1: mean of log(1 + e^-2), log 2, log(1 + e)
    check_loss(ex, torch.tensor([2.0, 0.5, -1.0]), torch.tensor([0.0, 0.5, 0.0]),
               "the mean of -log sigmoid(r_chosen - r_rejected) over the 3 pairs: "
               "(0.1269 + 0.6931 + 1.3133) / 3")


def test_loss_of_a_model_that_cannot_tell(ex):
    check_loss(ex, torch.zeros(5), torch.zeros(5),
               "equal scores mean P = 1/2 for every pair, so the loss is log 2 = 0.6931")


def test_loss_with_extreme_score_gaps(ex):
    """A badly wrong model (chosen 200 below) must get a large finite loss, not inf."""
    check_loss(ex, torch.tensor([-100.0, 100.0]), torch.tensor([100.0, -100.0]),
               "pair 0 is wrong by 200 (loss 200), pair 1 right by 200 (loss 0): the mean is 100")


def test_loss_gradient(ex):
    r_chosen = torch.tensor([1.0, -0.5, 0.0, 2.0], requires_grad=True)
    r_rejected = torch.tensor([0.0, 0.5, 3.0, -1.0], requires_grad=True)
    loss = check_loss(ex, r_chosen, r_rejected, "-mean log sigmoid(r_chosen - r_rejected)")
    if not loss.requires_grad:
        pytest.fail("bradley_terry_loss is not differentiable (no grad_fn): keep it in torch, "
                    "without .item() or .detach()", pytrace=False)
    grads = backward(loss, r_chosen, r_rejected)
    p = torch.sigmoid(r_chosen - r_rejected).detach()
    for name, sign, grad in (("r_chosen", -1, grads[0]), ("r_rejected", 1, grads[1])):
        grad = torch.zeros(4) if grad is None else grad
        expect_close(grad, sign * (1 - p) / 4, f"d loss / d {name}", lambda i, name=name: (
            f"the gradient is {'-' if name == 'r_chosen' else '+'}(1 - P) / N per pair: it "
            f"{'raises' if name == 'r_chosen' else 'lowers'} the score of the "
            f"{name.split('_')[1]} response, most where the model is most wrong"))


def test_loss_random_against_package(ex):
    g = torch.Generator().manual_seed(3)
    r_chosen, r_rejected = torch.randn(64, generator=g) * 3, torch.randn(64, generator=g) * 3
    check_loss(ex, r_chosen, r_rejected, "-mean log sigmoid(r_chosen - r_rejected) over 64 pairs")


def test_pairwise_accuracy(ex):
    r_chosen = torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0])
    r_rejected = torch.tensor([0.0, 1.0, 4.0, 0.0, 4.0])
    got = ex.pairwise_accuracy(r_chosen, r_rejected)
    if not isinstance(got, float):
        pytest.fail(f"pairwise_accuracy should return a Python float, got {type(got).__name__}:"
                    f" {_short(got)} (use .item())", pytrace=False)
    if not math.isclose(got, 0.6, rel_tol=1e-6):
        pytest.fail(f"pairwise_accuracy is {got:.4g} but should be 0.6: pairs 0, 1 and 4 are "
                    "ordered right, pair 2 wrong, and pair 3 is a tie, which counts as wrong",
                    pytrace=False)


def test_training_with_the_loss_learns_the_preferences(ex):
    """A linear reward model trained with the learner's loss must rank held-out pairs."""
    g = torch.Generator().manual_seed(0)
    d, n = 8, 512
    true_w = torch.randn(d, generator=g)
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    a_wins = (a @ true_w > b @ true_w)[:, None]
    chosen, rejected = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    w = torch.zeros(d, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    for _ in range(100):
        loss = plain(ex.bradley_terry_loss(chosen[:384] @ w, rejected[:384] @ w))
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            pytest.fail("bradley_terry_loss must return a differentiable tensor", pytrace=False)
        opt.zero_grad()
        backward(loss, w)
        opt.step()
    with torch.no_grad():
        acc = (chosen[384:] @ w > rejected[384:] @ w).float().mean().item()
    if acc < 0.9:
        pytest.fail(f"a linear reward model trained 100 steps with bradley_terry_loss orders "
                    f"only {acc:.0%} of held-out pairs right (expected >= 90%): the loss should "
                    "fall as r_chosen - r_rejected grows", pytrace=False)
