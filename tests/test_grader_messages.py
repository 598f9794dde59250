"""The graded tests name the learner's actual mistake, not a neighbouring one.

Typical wrong answers are written here as plain functions and passed, as the ``ex`` object, to
the graded test functions themselves; each must fail with the message meant for its mistake.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GRADED = ROOT / "tests" / "exercises"


def graded(name: str, folder: Path = GRADED):
    sys.path.insert(0, str(GRADED))
    try:
        spec = importlib.util.spec_from_file_location(f"_messages_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GRADED))


def failure(test, ex, *args) -> str:
    with pytest.raises(pytest.fail.Exception) as info:
        test(ex, *args)
    return str(info.value)


def gae_loop(rewards, values, mask, gamma=1.0, lam=0.95, *, bootstrap_padding=False,
             carry_padding=False):
    """GAE backwards in time; the two flags make the two classic padding mistakes."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(B)
    for t in reversed(range(T)):
        nxt = values[:, t + 1] if t + 1 < T else torch.zeros(B)
        if not bootstrap_padding and t + 1 < T:
            nxt = nxt * mask[:, t + 1]
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        running = delta + gamma * lam * running
        if not carry_padding:
            running = running * mask[:, t]
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask


ex03_gae = graded("ex03_gae", ROOT / "solutions")
ex04_ppo_loss = graded("ex04_ppo_loss", ROOT / "solutions")


@pytest.fixture(scope="module")
def ex03():
    return graded("test_ex03_gae")


@pytest.fixture(scope="module")
def ex04():
    return graded("test_ex04_ppo_loss")


def test_the_loop_without_mistakes_passes(ex03):
    ex03.test_padding_is_zero_and_not_bootstrapped(SimpleNamespace(gae=gae_loop))
    ex03.test_padding_is_zero_and_not_bootstrapped(ex03_gae)


def test_value_bootstrapped_from_padding_is_named(ex03):
    wrong = SimpleNamespace(gae=lambda *a, **k: gae_loop(*a, **k, bootstrap_padding=True))
    text = failure(ex03.test_padding_is_zero_and_not_bootstrapped, wrong)
    assert "no value is bootstrapped from the padding" in text, text
    assert "carried over" not in text, text


def test_advantage_carried_over_from_padding_is_named(ex03):
    wrong = SimpleNamespace(gae=lambda *a, **k: gae_loop(*a, **k, carry_padding=True))
    text = failure(ex03.test_padding_is_zero_and_not_bootstrapped, wrong)
    assert "A_(t+1) was carried over from the padding" in text, text
    assert "bootstrapped" not in text, text
    text = failure(ex03.test_random_against_the_definition, wrong, 0.99, 0.9)
    assert "carried over from the padding" in text, text


def value_loss_clamping_the_value(values, old_values, returns, mask, vf_clip=0.2):
    clipped = torch.clamp(values, -vf_clip, vf_clip)
    loss = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (loss * mask).sum() / mask.sum()


@pytest.mark.parametrize("case", ["inside-old-1", "clipped-old-1", "clipped-down-old-1"])
def test_clipping_the_value_instead_of_its_change_fails_by_hand(ex04, case):
    ids = ["inside", "clipped", "unclipped-larger", "inside-old-1", "clipped-old-1",
           "clipped-down-old-1"]
    args = ex04.VALUE_CASES[ids.index(case)]
    wrong = SimpleNamespace(ppo_value_loss=value_loss_clamping_the_value)
    text = failure(ex04.test_value_loss_clipping_regimes, wrong, *args)
    assert "the value itself was clipped" in text, text
    ex04.test_value_loss_clipping_regimes(ex04_ppo_loss, *args)  # the solution passes


def test_clipping_the_value_instead_of_its_change_is_named_on_random_batches(ex04):
    wrong = SimpleNamespace(ppo_value_loss=value_loss_clamping_the_value)
    text = failure(ex04.test_value_loss_random_against_package, wrong, 0.2)
    assert "the value itself was clipped" in text, text
