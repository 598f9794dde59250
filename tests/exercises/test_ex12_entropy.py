"""Graded tests of Exercise 12 (exercises/ex12_entropy.py): the entropy of the actor's
next-token distribution per position, and its mean over the response tokens.

Expected values come from the definition, written out here with ``log_softmax`` in float64,
and from ``rlhf_edu.ppo.entropy_from_logits``, which the trainer uses. When a result is wrong,
the usual mistakes (log base 2, the sign, padding in the mean, -log p of one token instead of
the sum over the vocabulary, the temperature left out, softmax then log) are computed too,
and a match names the mistake.
"""

from __future__ import annotations

import math

import pytest
import torch
from grading_utils import backward, expect_close, expect_scalar, expect_tensor

from rlhf_edu.ppo import entropy_from_logits

EXERCISE = "ex12_entropy"


def definition(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """- sum_v p log p of softmax(logits / temperature), in float64, ``(B, T)``."""
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def near(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.detach().double()
    b = b.to(a)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and bool(
        torch.allclose(a, b, atol=1e-4, rtol=1e-4))


def token_hint(got: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> str:
    """What a wrong ``(B, T)`` entropy looks like it did."""
    want = definition(logits, temperature)
    if not bool(torch.isfinite(got).all()):
        return ("NaN or inf: log(softmax(x)) is log(0) = -inf wherever the softmax underflows "
                "(logits far apart), and 0 * -inf is NaN; take log p from torch.log_softmax")
    if near(got, want / math.log(2)):
        return "it looks like log base 2 (bits); the entropy here is in nats: use the natural log"
    if near(got, -want):
        return "the sign is flipped: H = - sum p log p is >= 0 (log p <= 0)"
    if temperature != 1.0 and near(got, definition(logits)):
        return (f"the temperature is not applied: the policy samples from softmax(logits / "
                f"{temperature:g}), so its entropy is that distribution's")
    if temperature != 1.0 and near(got, definition(logits, 1 / temperature)):
        return "logits are multiplied by the temperature; divide them by it"
    one_token = -torch.log_softmax(logits.double() / temperature, -1)  # (B, T, V)
    if got.shape == want.shape and bool(
            (one_token - got.detach().double()[..., None]).abs().amin(-1).lt(1e-4).all()):
        return ("each value is -log p of a single token; the entropy is the expectation of "
                "-log p over the whole vocabulary, - sum_v p_v log p_v")
    if near(got, want * logits.size(-1)) or near(got, want / logits.size(-1)):
        return "the sum over the vocabulary became a mean (or the other way round)"
    return "H = - sum_v p_v log p_v with p = softmax(logits / temperature) over the last dim"


def check_tokens(ex, logits: torch.Tensor, why: str, temperature: float = 1.0
                 ) -> torch.Tensor:
    B, T, _ = logits.shape
    got = expect_tensor(ex.token_entropy(logits, temperature), "token_entropy", (B, T))
    want = definition(logits, temperature)
    hint = "" if near(got, want) else token_hint(got, logits, temperature)
    expect_close(got, want.float(), "token_entropy", f"{why}; {hint}" if hint else why,
                 atol=1e-4)
    return got


def test_uniform_is_log_v(ex):
    check_tokens(ex, torch.zeros(2, 3, 8),
                 "equal logits over 8 tokens: the uniform distribution has entropy log 8 = 2.0794")


def test_hand_made_distribution(ex):
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    logits = torch.tensor([[p.log().clamp(min=-60).tolist(), [3.0, 0.0, 0.0, 0.0]]])  # (1, 2, 4)
    check_tokens(ex, logits, "position 0 has p = (1/2, 1/4, 1/4, ~0): H = 1.5 log 2 = 1.0397; "
                             "position 1 is softmax(3, 0, 0, 0)")


def test_large_logits_stay_finite(ex):
    logits = torch.tensor([[[1e4, 0.0, -1e4, 5.0], [2e4, 2e4, 0.0, -3e4]]])  # (1, 2, 4)
    check_tokens(ex, logits, "logits of magnitude 1e4: position 0 is sure of token 0 (H = 0), "
                             "position 1 splits evenly between two tokens (H = log 2)")


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature(ex, temperature):
    torch.manual_seed(1)
    check_tokens(ex, 3 * torch.randn(2, 3, 6), f"temperature {temperature:g}: the entropy of "
                 f"softmax(logits / {temperature:g})", temperature)


def test_random_against_the_package(ex):
    torch.manual_seed(0)
    logits = 4 * torch.randn(3, 5, 11)
    got = check_tokens(ex, logits, "random logits")
    expect_close(got, entropy_from_logits(logits), "token_entropy",
                 "random logits, against rlhf_edu.ppo.entropy_from_logits", atol=1e-4)


def masked_hint(got: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor,
                temperature: float) -> str:
    h = definition(logits, temperature)
    if not bool(torch.isfinite(got).all()):
        return ("NaN or inf: padding may hold anything, and log(softmax) of extreme logits is "
                "-inf; use log_softmax, and pick the response entries with torch.where")
    if near(got, h.mean()):
        return ("it looks like the mean over every position, padding included; divide the sum "
                "over response tokens by their number, mask.sum()")
    if near(got, (h * mask).sum() / h.numel()):
        return "padding is zeroed, but the sum is divided by B * T instead of mask.sum()"
    if near(got, (h * mask).sum()):
        return "the sum over response tokens is not divided by their number"
    if near(got, -(h * mask).sum() / mask.sum()):
        return "the sign is flipped: entropy is >= 0"
    if near(got, (h * mask).sum() / mask.sum() / math.log(2)):
        return "it looks like log base 2; use the natural log (nats)"
    if temperature != 1.0 and near(got, (definition(logits) * mask).sum() / mask.sum()):
        return "the temperature is not applied (pass it on to token_entropy)"
    return "sum of the per-position entropies where mask is 1, divided by mask.sum()"


def check_masked(ex, logits: torch.Tensor, mask: torch.Tensor, why: str,
                 temperature: float = 1.0) -> torch.Tensor:
    got = expect_scalar(ex.masked_entropy(logits, mask, temperature), "masked_entropy")
    h = definition(logits, temperature)
    want = (h * mask).sum() / mask.sum()
    hint = "" if near(got, want) else masked_hint(got, logits, mask, temperature)
    expect_close(got, want.float(), "masked_entropy", f"{why}; {hint}" if hint else why,
                 atol=1e-4)
    return got


def test_masked_mean_skips_padding(ex):
    # real tokens: uniform over 4 (log 4); padding: sure of one token (0 entropy), very unlike
    logits = torch.zeros(2, 3, 4)
    logits[0, 2] = torch.tensor([50.0, 0.0, 0.0, 0.0])
    logits[1, 1:] = torch.tensor([50.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    check_masked(ex, logits, mask, "three response tokens, each uniform over 4 (H = log 4 = "
                                   "1.3863); the three padding positions have H ~ 0")


def test_masked_padding_with_extreme_logits(ex):
    logits = torch.zeros(1, 3, 5)
    logits[0, 2] = torch.tensor([1e4, -1e4, 1e4, 0.0, -1e4])  # padding: anything at all
    check_masked(ex, logits, torch.tensor([[1.0, 1.0, 0.0]]),
                 "two uniform response tokens (H = log 5); the padding holds logits of 1e4")


def test_masked_temperature_and_random(ex):
    torch.manual_seed(2)
    logits = 2 * torch.randn(4, 6, 9)
    mask = (torch.arange(6)[None] < torch.tensor([6, 3, 1, 4])[:, None]).float()
    check_masked(ex, logits, mask, "random logits, temperature 0.7, rows of 6, 3, 1 and 4 "
                                   "response tokens", temperature=0.7)


def test_gradient(ex):
    torch.manual_seed(3)
    logits = (3 * torch.randn(2, 4, 7)).requires_grad_()
    logits.data[0, 0] = torch.tensor([1e4, 0.0, 0.0, 0.0, 0.0, 0.0, -1e4])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    got = expect_scalar(ex.masked_entropy(logits, mask), "masked_entropy")
    if not got.requires_grad:
        pytest.fail("masked_entropy should be differentiable in logits (the loss's -c2 * H "
                    "trains the actor through it): no .detach(), .item() or torch.no_grad()",
                    pytrace=False)
    (grad,) = backward(got, logits)
    ref = logits.detach().clone().requires_grad_()
    want = (entropy_from_logits(ref) * mask).sum() / mask.sum()
    want.backward()
    if grad is None:
        pytest.fail("masked_entropy's result has no gradient with respect to logits",
                    pytrace=False)
    if not bool(torch.isfinite(grad).all()):
        pytest.fail("the gradient has NaN or inf: at logits of 1e4 a softmax that underflows to "
                    "0 and then log(0) breaks the backward pass too; use log_softmax",
                    pytrace=False)

    def why(idx: tuple[int, ...]) -> str:
        if mask[idx[0], idx[1]] == 0:
            return f"position ({idx[0]}, {idx[1]}) is padding: it must get no gradient"
        return "the gradient of the masked mean entropy (against rlhf_edu's entropy_from_logits)"
    expect_close(grad, ref.grad, "d masked_entropy / d logits", why, atol=1e-5)
