"""Graded tests of Exercise 11 (exercises/ex11_moving_reference.py): which actor version the
reference holds under a reset schedule, the exact KL, and the KL a moving reference penalises
beside the drift from the SFT model.

Expected values come from the schedule written out step by step and from the KL's definition
in float64. When a result is wrong, the usual mistakes (the copy taken one step early, a
"reset" back to the SFT model, every=0 not read as frozen, the KL's direction reversed, the
drift measured against the moving reference, the step's version off by one) are computed too,
and a match names the mistake.
"""

from __future__ import annotations

import pytest
import torch
from grading_utils import _short, expect_close, expect_tensor, plain

EXERCISE = "ex11_moving_reference"


def schedule(step: int, every: int) -> int:
    """The reference's version at ``step``, by walking the run: copies after each multiple."""
    version = 0
    for s in range(1, step):  # the copies made after steps 1 .. step - 1
        if every and s % every == 0:
            version = s
    return version


def version_hint(got: object, step: int, every: int) -> str:
    if every == 0:
        return "every = 0 means the reference stays frozen: always version 0, the SFT model"
    if got == step // every * every:
        return (f"the copy made after step {step // every * every} is not there yet when that "
                f"same step is taken: step s sees the copy made after step s - 1 at the latest")
    if got == 0:
        return "a reset copies the actor into the reference; it does not go back to SFT"
    if got == step - 1:
        return f"that is a copy after every step; copies happen only after multiples of {every}"
    return (f"copies happen after steps {every}, {2 * every}, ...; step {step} sees the latest "
            "one made before it")


@pytest.mark.parametrize("every", [0, 1, 3, 10])
def test_reference_version(ex, every):
    for step in range(1, 26):
        got = plain(ex.reference_version(step, every))
        want = schedule(step, every)
        if not isinstance(got, int) or isinstance(got, bool):
            pytest.fail(f"reference_version({step}, {every}) should return an int, got "
                        f"{type(got).__name__}: {_short(got)}", pytrace=False)
        if got != want:
            pytest.fail(f"reference_version({step}, {every}) is {got} but should be {want}: "
                        + version_hint(got, step, every), pytrace=False)


def kl_definition(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    logp, logq = logp.double(), logq.double()
    return (logp.exp() * (logp - logq)).sum(-1)


def near(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.detach().double()
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and bool(
        torch.allclose(a, b.to(a), atol=1e-5, rtol=1e-4))


def kl_hint(got: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> str:
    if near(got, kl_definition(logq, logp)):
        return ("it looks like KL(q || p), the expectation under q; the penalty's KL is "
                "KL(p || q), the expectation under p, the policy that samples")
    if near(got, (logp - logq).double().sum(-1)) or near(got, (logp - logq).double().mean(-1)):
        return "log p - log q must be weighted by p = exp(log p) before the sum"
    if near(got, kl_definition(logp, logq) / logp.size(-1)):
        return "a mean over the vocabulary; the KL is the sum over it"
    return "KL(p || q) = sum_v exp(log p_v) * (log p_v - log q_v) over the last dimension"


def check_kl(ex, logp: torch.Tensor, logq: torch.Tensor, why: str) -> None:
    got = expect_tensor(ex.kl(logp, logq), "kl", tuple(logp.shape[:-1]))
    want = kl_definition(logp, logq)
    hint = "" if near(got, want) else kl_hint(got, logp, logq)
    expect_close(got, want.float(), "kl", f"{why}; {hint}" if hint else why)


def test_kl_hand_made(ex):
    logp = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.25, 0.75]]).log()
    logq = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.75, 0.25]]).log()
    check_kl(ex, logp, logq, "row 0: p = q, KL 0; row 1: p = (0.9, 0.1), q uniform, "
                             "KL = 0.9 log 1.8 + 0.1 log 0.2 = 0.3681; row 2: 0.5 log 3 = 0.5493")


def test_kl_random(ex):
    torch.manual_seed(0)
    logp = torch.log_softmax(2 * torch.randn(2, 3, 7), -1)
    logq = torch.log_softmax(2 * torch.randn(2, 3, 7), -1)
    check_kl(ex, logp, logq, "random distributions over 7 tokens, shape (2, 3, 7)")


def drifting(S: int, V: int = 5, speed: float = 0.15) -> torch.Tensor:
    """A policy whose logits move by the same amount every step: versions 0..S, (S + 1, V)."""
    direction = torch.linspace(1.0, -1.0, V)
    return torch.log_softmax(speed * torch.arange(S + 1.0)[:, None] * direction, -1)


def expected_pair(policies: torch.Tensor, every: int) -> tuple[torch.Tensor, torch.Tensor]:
    S = policies.size(0) - 1
    to_ref = [kl_definition(policies[s - 1], policies[schedule(s, every)]) for s in
              range(1, S + 1)]
    to_sft = [kl_definition(policies[s - 1], policies[0]) for s in range(1, S + 1)]
    return torch.stack(to_ref), torch.stack(to_sft)


def pair_hint(got_ref: torch.Tensor, got_sft: torch.Tensor, policies: torch.Tensor,
              every: int) -> str:
    want_ref, want_sft = expected_pair(policies, every)
    if near(got_sft, want_ref) and not near(got_sft, want_sft):
        return ("the drift from SFT is measured against the moving reference; measure it "
                "against version 0 (the SFT model), which never moves")
    S = policies.size(0) - 1
    late = [kl_definition(policies[s], policies[schedule(s, every)]) for s in range(1, S + 1)]
    if near(got_ref, torch.stack(late)):
        return "step s samples with version s - 1 (the actor before that step's update)"
    early = [kl_definition(policies[s - 1], policies[s // every * every if every else 0])
             for s in range(1, S + 1)]
    if near(got_ref, torch.stack(early)):
        return ("the reference is copied one step early: the copy after step s is there "
                "from step s + 1")
    if near(got_ref, want_sft) and every:
        return ("the reference never moves here: with every > 0 it holds the actor copied "
                "at the last reset")
    return "see reference_version and kl; element s - 1 is about step s"


def check_pair(ex, policies: torch.Tensor, every: int, why: str) -> None:
    S = policies.size(0) - 1
    out = plain(ex.kl_to_reference_and_sft(policies, every))
    if not isinstance(out, tuple | list) or len(out) != 2:
        pytest.fail("kl_to_reference_and_sft should return a tuple (kl_to_reference, "
                    f"kl_to_sft), got {type(out).__name__}: {_short(out)}", pytrace=False)
    got_ref = expect_tensor(out[0], "kl_to_reference", (S,))
    got_sft = expect_tensor(out[1], "kl_to_sft", (S,))
    want_ref, want_sft = expected_pair(policies, every)
    ok = near(got_ref, want_ref) and near(got_sft, want_sft)
    hint = "" if ok else pair_hint(got_ref, got_sft, policies, every)
    for name, got, want in (("kl_to_sft", got_sft, want_sft),
                            ("kl_to_reference", got_ref, want_ref)):
        def why_at(idx: tuple[int, ...]) -> str:
            text = f"{why}; element {idx[0]} is step {idx[0] + 1}"
            return f"{text}; {hint}" if hint else text
        expect_close(got, want.float(), name, why_at)


def test_frozen_reference_sees_all_the_drift(ex):
    check_pair(ex, drifting(12), 0, "a frozen reference (every = 0): the penalty's KL is the "
                                    "drift from SFT")


def test_moving_reference_sees_only_the_last_window(ex):
    check_pair(ex, drifting(12), 4, "a policy that drifts steadily, copied into the reference "
                                    "every 4 steps: the penalty's KL drops to 0 after each copy")


def test_random_policies(ex):
    torch.manual_seed(1)
    policies = torch.log_softmax(torch.randn(10, 6).cumsum(0), -1)  # a random walk of logits
    check_pair(ex, policies, 3, "a random walk of the logits, 9 steps, copied every 3")
