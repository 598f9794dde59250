"""Graded tests of Exercise 8 (exercises/ex08_group_advantages.py): GRPO, Dr. GRPO and RLOO
advantages, spreading them over tokens, and the DPO / IPO loss.

Every expected value is computed here from the formula, written out with Python loops over
groups and pairs. When a result is wrong, the likely mistakes (population std, one batch-wide
group, eps in the wrong place, RLOO counting the response in its own baseline, IPO's target
1/beta, rewards without beta, ...) are computed too, and a match names the mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from grading_utils import _short, backward, expect_close, expect_scalar, expect_tensor, plain

EXERCISE = "ex08_group_advantages"


def expect_triple(x: object, name: str, what: str) -> tuple:
    x = plain(x)
    if not isinstance(x, tuple | list) or len(x) != 3:
        pytest.fail(f"{name} should return a tuple {what}, got {type(x).__name__}: {_short(x)}",
                    pytrace=False)
    return tuple(x)


def allclose(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.detach()
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and bool(
        torch.allclose(a, b.to(a.dtype), atol=1e-5, rtol=1e-4))


# ------------------------------------------------------------------ GRPO and Dr. GRPO


def grpo_formula(scores: torch.Tensor, G: int, scale: bool = True, eps: float = 1e-4, *,
                 bessel: bool = True, per_group: bool = True, eps_in_root: bool = False
                 ) -> torch.Tensor:
    """(r - mean) / (std + eps) per group of G, in Python floats; the keyword-only switches
    make the usual mistakes."""
    values = scores.tolist()
    size = G if per_group else len(values)
    out = []
    for start in range(0, len(values), size):
        group = values[start:start + size]
        mean = sum(group) / len(group)
        var = sum((x - mean) ** 2 for x in group) / (len(group) - 1 if bessel else len(group))
        for x in group:
            if not scale:
                out.append(x - mean)
            elif eps_in_root:
                out.append((x - mean) / math.sqrt(var + eps))
            elif eps == 0 and var == 0:
                out.append(math.nan)
            else:
                out.append((x - mean) / (math.sqrt(var) + eps))
    return torch.tensor(out)


def grpo_hint(got: torch.Tensor, scores: torch.Tensor, G: int, scale: bool, eps: float) -> str:
    """What a wrong GRPO result looks like it did, or what the formula is."""
    if scale and bool(torch.isnan(got).any()):
        return ("a group of equal rewards has std 0, and 0 / 0 is NaN: add eps to the std, "
                "(r - mean) / (std + eps), so such a group gets advantage 0")
    mistakes = [
        ({"bessel": False}, "it looks like the population std (dividing by G); GRPO uses torch's "
                            "default std, with Bessel's correction (dividing by G - 1)"),
        ({"per_group": False}, f"it looks like one mean (and std) over the whole batch; each "
                               f"prompt's {G} responses form their own group: rows g*{G} to "
                               f"g*{G} + {G - 1}"),
        ({"bessel": False, "per_group": False},
         "it looks like the population std over the whole batch; use each group's own mean "
         "and std, with Bessel's correction"),
        ({"eps": 0.0}, "it looks like eps is missing (or lost inside the square root): "
                       "divide by (std + eps)"),
        ({"eps_in_root": True}, "it looks like eps went inside the square root; GRPO adds it "
                                "to the std: (r - mean) / (std + eps)"),
        ({"scale": not scale}, "with scale=False (Dr. GRPO) the advantage is r - group mean, "
                               "not divided by the std" if not scale else
                               "with scale=True divide by the group's std + eps; r - mean alone "
                               "is Dr. GRPO (scale=False)"),
    ]
    for switches, hint in mistakes:
        kwargs = {"scale": scale, "eps": eps, **switches}
        if allclose(got, grpo_formula(scores, G, **kwargs)):
            return hint
    return ("(r - group mean) / (group std + eps) with torch's (Bessel) std" if scale
            else "r - group mean (Dr. GRPO: no division by the std)")


def check_grpo(ex, scores: torch.Tensor, G: int, scale: bool = True, eps: float = 1e-4,
               why: str | Callable[[tuple[int, ...]], str] = "") -> torch.Tensor:
    """Compare ``grpo_advantages`` with the formula; ``why`` explains the case, or (a
    function of the wrong entry's index) the group that entry belongs to."""
    got = expect_tensor(ex.grpo_advantages(scores, G, scale=scale, eps=eps),
                        "grpo_advantages", tuple(scores.shape))
    want = grpo_formula(scores, G, scale, eps)
    hint = "" if allclose(got, want) else grpo_hint(got, scores, G, scale, eps)

    def reason(idx: tuple[int, ...]) -> str:
        text = why(idx) if callable(why) else why
        return (text + ": " if text else "") + hint
    expect_close(got, want, "grpo_advantages", reason)
    return got


def test_grpo_hand_made_groups(ex):
    # group 0: mean 3, Bessel std sqrt(14/3); group 1: mean 2, std sqrt(16/3)
    check_grpo(ex, torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0]), 4,
               why="two prompts with 4 responses each: group 0 has mean 3 and std 2.1602, "
                   "group 1 mean 2 and std 2.3094")


def test_grpo_group_of_equal_rewards_is_zero(ex):
    def why(idx: tuple[int, ...]) -> str:
        if idx[0] < 4:
            return ("every response to prompt 0 (rows 0 to 3) got 0.7, so none is better than "
                    "another: their advantages are exactly 0 (std 0, and 0 / (0 + eps) = 0)")
        return ("prompt 1 (rows 4 to 7) has rewards [1, 0, 0, 1]: mean 0.5, Bessel std "
                "0.57735, so its advantages are about +-0.866")
    got = check_grpo(ex, torch.tensor([0.7, 0.7, 0.7, 0.7, 1.0, 0.0, 0.0, 1.0]), 4, why=why)
    if bool((got[:4] != 0).any()):
        pytest.fail(f"grpo_advantages of a group of equal rewards is {got[:4].tolist()}, but "
                    "should be exactly 0", pytrace=False)


def test_grpo_two_responses_per_prompt(ex):
    # with G = 2 the Bessel std is |a - b| / sqrt(2): advantages are close to +-1/sqrt(2)
    check_grpo(ex, torch.tensor([1.0, 0.0, 3.0, 5.0, -2.0, 2.0]), 2,
               why="with G = 2, the Bessel std of (a, b) is |a - b| / sqrt(2), so each "
                   "advantage is about +-0.7071 (+-1 would be the population std)")


def test_grpo_eps_is_added_to_the_std(ex):
    # group 0 differs by 2e-4: std 1.414e-4, comparable to eps, so where eps goes shows
    check_grpo(ex, torch.tensor([0.0, 2e-4, 1.0, 3.0]), 2,
               why="group 0's rewards differ by only 2e-4 (std 1.414e-4), so eps = 1e-4 "
                   "matters: 1e-4 / (1.414e-4 + 1e-4) = 0.4142")
    check_grpo(ex, torch.tensor([0.0, 2e-4, 1.0, 3.0]), 2, eps=0.5,
               why="eps is an argument: with eps = 0.5 group 1's advantages are "
                   "+-1 / (1.4142 + 0.5) = +-0.5224")


def test_dr_grpo_does_not_divide_by_the_std(ex):
    check_grpo(ex, torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0]), 4, scale=False,
               why="Dr. GRPO (scale=False) keeps r - group mean: [-2, -1, 0, 3, -2, -2, 2, 2]")


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_random_groups(ex, scale):
    g = torch.Generator().manual_seed(8)
    offsets = torch.arange(6.0).repeat_interleave(5) * 3  # groups far apart: per-group matters
    scores = torch.randn(30, generator=g) + offsets
    check_grpo(ex, scores, 5, scale=scale, why="6 prompts x 5 responses")


# ------------------------------------------------------------------ RLOO


def rloo_formula(scores: torch.Tensor, G: int, *, include_self: bool = False,
                 divide_by_g: bool = False, per_group: bool = True) -> torch.Tensor:
    values = scores.tolist()
    size = G if per_group else len(values)
    out = []
    for start in range(0, len(values), size):
        group = values[start:start + size]
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i or include_self]
            baseline = sum(others) / (len(group) if divide_by_g else len(others))
            out.append(x - baseline)
    return torch.tensor(out)


def check_rloo(ex, scores: torch.Tensor, G: int, why: str) -> None:
    got = expect_tensor(ex.rloo_advantages(scores, G), "rloo_advantages", tuple(scores.shape))
    want = rloo_formula(scores, G)
    hint = "r_i - (sum of the group - r_i) / (G - 1)"
    if not allclose(got, want):
        for switches, text in (
                ({"include_self": True}, "it looks like the baseline includes the response "
                                         "itself (r - group mean); RLOO leaves it out: the "
                                         "mean of the OTHER G - 1 rewards"),
                ({"divide_by_g": True}, "it looks like the others' sum was divided by G; there "
                                        "are G - 1 others"),
                ({"per_group": False}, f"it looks like the baseline came from the whole batch; "
                                       f"each prompt's {G} responses form their own group"),
                ({"per_group": False, "include_self": True},
                 "it looks like r minus the batch mean; use the mean of the other G - 1 "
                 "rewards of the same group")):
            if allclose(got, rloo_formula(scores, G, **switches)):
                hint = text
                break
    expect_close(got, want, "rloo_advantages", f"{why}: {hint}")


def test_rloo_hand_made_groups(ex):
    check_rloo(ex, torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0]), 4,
               "response 0 of prompt 0 scored 1 and the other three average (2 + 3 + 6) / 3 "
               "= 11/3, so its advantage is 1 - 11/3 = -2.6667")


def test_rloo_two_responses_per_prompt(ex):
    check_rloo(ex, torch.tensor([1.0, 0.0, 3.0, 5.0, 2.0, 2.0]), 2,
               "with G = 2 the only other response is the baseline: A = [1, -1, -2, 2, 0, 0]")


def test_rloo_random_groups(ex):
    g = torch.Generator().manual_seed(9)
    scores = torch.randn(24, generator=g) + torch.arange(4.0).repeat_interleave(6) * 2
    check_rloo(ex, scores, 6, "4 prompts x 6 responses")


# ------------------------------------------------------------------ advantages on tokens


def test_spread_over_tokens(ex):
    adv = torch.tensor([0.5, -1.0, 2.0])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0],
                         [1.0, 1.0, 1.0, 1.0, 1.0],
                         [1.0, 0.0, 0.0, 0.0, 0.0]])
    got = expect_tensor(ex.spread_over_tokens(adv, mask), "spread_over_tokens", (3, 5))
    want = torch.tensor([[adv[b].item() * mask[b, t].item() for t in range(5)]
                         for b in range(3)])

    def why(idx: tuple[int, ...]) -> str:
        b, t = idx
        if mask[b, t] == 0:
            return (f"position ({b}, {t}) is padding after response {b}'s last token: padding "
                    "gets no advantage (multiply by the mask)")
        return f"every response token of row {b} gets that response's advantage {adv[b]:g}"
    expect_close(got, want, "spread_over_tokens", why)


def test_spread_over_tokens_with_a_bool_mask(ex):
    adv = torch.tensor([1.5, -0.25])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = expect_tensor(ex.spread_over_tokens(adv, mask), "spread_over_tokens", (2, 3))
    want = torch.tensor([[1.5, 1.5, 0.0], [-0.25, 0.0, 0.0]])

    def why(idx: tuple[int, ...]) -> str:
        b, t = idx
        if not mask[b, t]:
            return (f"position ({b}, {t}) is padding (the bool mask is False there): padding "
                    "gets no advantage (multiply by the mask, converted to the advantages' "
                    "dtype)")
        return (f"position ({b}, {t}) is a response token (the bool mask is True there), so it "
                f"gets response {b}'s advantage {adv[b]:g}; a bool mask must work too: "
                "convert it to the advantages' float dtype")
    expect_close(got, want, "spread_over_tokens", why)


# ------------------------------------------------------------------ DPO and IPO


def dpo_formula(pc: list[float], pr: list[float], rc: list[float], rr: list[float],
                beta: float, loss: str, *, beta_in: bool = True, sign: float = 1.0,
                target: float | None = None, mean: bool = True) -> float:
    """The loss with Python floats; the keyword-only switches make the usual mistakes."""
    terms = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        h = sign * ((a - b) - (c - d))
        if loss == "sigmoid":
            z = beta * h if beta_in else h
            terms.append(math.log1p(math.exp(-z)) if z > -30 else -z)  # -log sigmoid(z)
        else:
            terms.append((h - (1 / (2 * beta) if target is None else target)) ** 2)
    return sum(terms) / len(terms) if mean else sum(terms)


PAIRS = {  # summed log-probs of 4 pairs: policy chosen/rejected, reference chosen/rejected
    "pc": [-10.0, -12.0, -8.0, -20.0],
    "pr": [-11.0, -9.0, -8.5, -25.0],
    "rc": [-10.5, -11.0, -9.0, -21.0],
    "rr": [-10.0, -10.0, -8.0, -24.0],
}


def call_dpo(ex, beta: float, loss: str, pairs: dict | None = None, grad: bool = False):
    pairs = pairs or PAIRS
    tensors = [torch.tensor(pairs[k], requires_grad=grad and k in ("pc", "pr"))
               for k in ("pc", "pr", "rc", "rr")]
    out = expect_triple(ex.dpo_loss(*tensors, beta=beta, loss=loss), "dpo_loss",
                        "(loss, chosen_rewards, rejected_rewards)")
    value = expect_scalar(out[0], "dpo_loss(...)[0] (the loss)")
    B = len(pairs["pc"])
    chosen = expect_tensor(out[1], "dpo_loss(...)[1] (chosen_rewards)", (B,))
    rejected = expect_tensor(out[2], "dpo_loss(...)[2] (rejected_rewards)", (B,))
    return value, chosen, rejected, tensors


def check_dpo_value(value: torch.Tensor, beta: float, loss: str, why: str,
                    pairs: dict | None = None) -> None:
    p = pairs or PAIRS
    args = (p["pc"], p["pr"], p["rc"], p["rr"], beta, loss)
    want = dpo_formula(*args)
    got = value.item()
    hint = ""
    if not math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-5):
        mistakes = [({"mean": False}, "it looks like a sum over pairs; take the mean"),
                    ({"sign": -1.0}, "it looks like chosen and rejected are swapped: h = (pi_c - "
                                     "pi_r) - (ref_c - ref_r) must grow when the chosen "
                                     "response gains probability")]
        if loss == "sigmoid":
            mistakes += [
                ({"beta_in": False}, "it looks like beta is missing: the margin is scaled by "
                                     "beta inside the sigmoid, -log sigmoid(beta * h)")]
        else:
            mistakes += [
                ({"target": 1 / beta}, "it looks like the target margin 1/beta; IPO's is "
                                       "1 / (2 beta)"),
                ({"target": beta / 2}, "it looks like the target beta / 2; IPO's is "
                                       "1 / (2 beta)")]
        for switches, text in mistakes:
            if math.isclose(got, dpo_formula(*args, **switches), rel_tol=1e-4, abs_tol=1e-5):
                hint = f" ({text})"
                break
        if not hint and math.isclose(got, -want, rel_tol=1e-4):
            hint = " (a loss to minimise is the NEGATIVE log-likelihood)"
        if not hint and not math.isfinite(got):
            hint = " (log(sigmoid(x)) underflows to log(0) = -inf; use F.logsigmoid)"
    expect_close(value, torch.tensor(want), f"dpo_loss(loss={loss!r}) loss", why + hint)


def test_dpo_sigmoid_hand_made(ex):
    value, *_ = call_dpo(ex, 0.5, "sigmoid")
    check_dpo_value(value, 0.5, "sigmoid",
                    "h = (pi_c - pi_r) - (ref_c - ref_r) = [1.5, -2, 1.5, 2] and the loss is "
                    "the mean of -log sigmoid(0.5 * h)")


def test_dpo_ipo_hand_made(ex):
    value, *_ = call_dpo(ex, 0.25, "ipo")
    check_dpo_value(value, 0.25, "ipo",
                    "h = [1.5, -2, 1.5, 2] and IPO's loss is the mean of (h - 1 / (2 beta))^2 "
                    "= mean of (h - 2)^2 = (0.25 + 16 + 0.25 + 0) / 4 = 4.125")


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_implicit_rewards(ex, loss):
    beta = 0.5
    _, chosen, rejected, _ = call_dpo(ex, beta, loss)
    for name, got, pol, ref in (("chosen_rewards", chosen, PAIRS["pc"], PAIRS["rc"]),
                                ("rejected_rewards", rejected, PAIRS["pr"], PAIRS["rr"])):
        want = torch.tensor([beta * (a - b) for a, b in zip(pol, ref)])
        side = name.split("_")[0]
        if allclose(got, want / beta):
            hint = "it looks like the rewards were not scaled by beta: beta * (policy - ref)"
        elif allclose(got, -want):
            hint = "it looks like ref - policy; the reward is beta * (policy - ref)"
        else:
            hint = f"beta * (policy - ref) of each {side} response"
        expect_close(got, want, f"dpo_loss(loss={loss!r}) {name}", hint)


def test_dpo_rewards_are_detached(ex):
    _, chosen, rejected, _ = call_dpo(ex, 0.1, "sigmoid", grad=True)
    for name, r in (("chosen_rewards", chosen), ("rejected_rewards", rejected)):
        if r.requires_grad:
            pytest.fail(f"dpo_loss's {name} requires grad; the rewards are for monitoring "
                        "only: .detach() them so nothing trains through them", pytrace=False)


@pytest.mark.parametrize("loss, want, formula", [
    ("sigmoid", math.log(2), "log 2 = 0.6931: sigmoid(0) = 1/2"),
    ("ipo", 25.0, "(0 - 1 / (2 * 0.1))^2 = 5^2 = 25"),
], ids=["sigmoid", "ipo"])
def test_dpo_at_the_start_policy_equals_reference(ex, loss, want, formula):
    same = {"pc": [-7.0, -3.0, -12.0], "pr": [-9.0, -4.0, -2.0]}
    same.update(rc=same["pc"], rr=same["pr"])
    value, chosen, rejected, _ = call_dpo(ex, 0.1, loss, same)
    check_dpo_value(value, 0.1, loss, f"the policy is still the reference, so h = 0 and the "
                                      f"loss is {formula}", same)
    assert math.isclose(want, dpo_formula(same["pc"], same["pr"], same["rc"], same["rr"], 0.1,
                                          loss), rel_tol=1e-9)
    expect_close(chosen, torch.zeros(3), "chosen_rewards", "the policy is the reference: 0")


def test_dpo_extreme_margin_is_finite(ex):
    wrong = {"pc": [-2000.0, -5.0], "pr": [0.0, -5.0], "rc": [0.0, -5.0], "rr": [0.0, -5.0]}
    value, *_ = call_dpo(ex, 0.1, "sigmoid", wrong)
    check_dpo_value(value, 0.1, "sigmoid",
                    "pair 0 has beta * h = -200 (loss 200) and pair 1 has h = 0 (loss log 2): "
                    "the mean is (200 + 0.6931) / 2", wrong)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_gradient_raises_chosen_and_lowers_rejected(ex, loss):
    beta = 0.5
    value, _, _, tensors = call_dpo(ex, beta, loss, grad=True)
    check_dpo_value(value, beta, loss, "the loss on the 4 hand-made pairs")
    if not value.requires_grad:
        pytest.fail("dpo_loss's loss is not differentiable (no grad_fn): keep it in torch, "
                    "without .item() or .detach()", pytrace=False)
    g_chosen, g_rejected = backward(value, tensors[0], tensors[1])
    B = len(PAIRS["pc"])
    want = []
    for a, b, c, d in zip(PAIRS["pc"], PAIRS["pr"], PAIRS["rc"], PAIRS["rr"]):
        h = (a - b) - (c - d)
        if loss == "sigmoid":  # d/dh of -log sigmoid(beta h) = -beta * sigmoid(-beta h)
            want.append(-beta / (1 + math.exp(beta * h)) / B)
        else:  # d/dh of (h - 1/(2 beta))^2
            want.append(2 * (h - 1 / (2 * beta)) / B)
    want = torch.tensor(want)
    for name, grad, sign in (("policy_chosen", g_chosen, 1), ("policy_rejected", g_rejected, -1)):
        grad = torch.zeros(B) if grad is None else grad
        expect_close(grad, sign * want, f"d loss / d {name}", lambda i, name=name: (
            "gradient descent must raise the chosen response's log-prob and lower the "
            "rejected one's: d loss / d policy_chosen = -(d loss / d policy_rejected)"
            + (" = -beta * sigmoid(-beta * h) / B" if loss == "sigmoid"
               else " = 2 (h - 1 / (2 beta)) / B")))
    if loss == "sigmoid" and not bool((g_chosen < 0).all() and (g_rejected > 0).all()):
        pytest.fail("the DPO gradient must be negative for every chosen log-prob and positive "
                    "for every rejected one", pytrace=False)
