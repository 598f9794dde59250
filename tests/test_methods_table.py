"""A new method is one entry in the method table and its function; a new KL estimator one
entry in rewards' map. Both are registered here, inside the test only, trained for a step,
and removed: no other file knows about them."""

from __future__ import annotations

import argparse

import pytest
import torch

from rlhf_edu.advantages import METHODS, Method, register_method, token_advantages
from rlhf_edu.cli import build_parser
from rlhf_edu.config import PPOConfig, critic_mode_for, method_defaults
from rlhf_edu.rewards import KL_ESTIMATORS, kl_penalty, register_kl_estimator
from rlhf_edu.trainer import RLHFTrainer

TINY = dict(batch_size=4, response_len=4, ppo_epochs=1, minibatches=1)


def mean_baseline(rewards, mask, *, values=None, config, reduce=None, trace=None):
    """Each response's summed reward minus the batch's mean, on every token."""
    sequence = rewards.sum(1)  # (B,)
    return token_advantages(sequence - sequence.mean(), mask), None


def half_k2(logprobs, ref_logprobs):
    """A quarter of the squared log-ratio: k2 / 2."""
    d = logprobs - ref_logprobs
    return 0.25 * d * d


@pytest.fixture
def toy_method():
    register_method(Method("mean_baseline", mean_baseline, needs_critic=False,
                           needs_groups=False, kl_in="reward", kl_estimator="k1", beta=0.02,
                           description="summed reward minus the batch mean"))
    try:
        yield "mean_baseline"
    finally:
        del METHODS["mean_baseline"]


@pytest.fixture
def toy_kl():
    register_kl_estimator("half_k2", half_k2)
    try:
        yield "half_k2"
    finally:
        del KL_ESTIMATORS["half_k2"]


def test_a_registered_method_trains_a_step(toy_method):
    cfg = PPOConfig(advantage_estimator=toy_method, **TINY)
    assert (cfg.critic_mode, cfg.beta, cfg.kl_in) == ("none", 0.02, "reward")
    assert method_defaults()[toy_method]["beta"] == 0.02
    trainer = RLHFTrainer(cfg)
    assert trainer.models.critic is None
    metrics = trainer.step()
    assert metrics["step"] == 1 and torch.isfinite(torch.tensor(metrics["policy_loss"]))
    # the command line offers it, with its description
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["train"].format_help().split())
    assert "mean_baseline: summed reward minus the batch mean" in text


def test_a_registered_kl_estimator_trains_a_step(toy_kl):
    lp, ref = torch.tensor([[0.0, -1.0]]), torch.tensor([[-2.0, -1.0]])
    assert torch.equal(kl_penalty(lp, ref, toy_kl), torch.tensor([[1.0, 0.0]]))
    trainer = RLHFTrainer(PPOConfig(kl_estimator=toy_kl, **TINY))
    batch = trainer.rollout()
    assert torch.equal(batch.kl, half_k2(batch.logprobs, batch.ref_logprobs) * batch.mask)
    assert trainer.step()["step"] == 1


def test_unknown_names_raise_instead_of_running_another_method():
    with pytest.raises(ValueError, match="PPOConfig.advantage_estimator must be one of"):
        PPOConfig(advantage_estimator="mean_baseline")
    with pytest.raises(ValueError, match="unknown advantage estimator 'mean_baseline'"):
        critic_mode_for("mean_baseline")
    with pytest.raises(ValueError, match="unknown KL estimator 'half_k2'"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "half_k2")
    with pytest.raises(ValueError, match="already registered"):
        register_method(METHODS["gae"])
    with pytest.raises(ValueError, match="a new name"):
        register_kl_estimator("k1", half_k2)


def test_the_table_holds_each_papers_defaults():
    assert method_defaults() == {
        "gae": dict(kl_in="reward", kl_estimator="k1", beta=0.05),
        "grpo": dict(kl_in="loss", kl_estimator="k3", beta=0.04),
        "dr_grpo": dict(kl_in="loss", kl_estimator="k3", beta=0.04),
        "rloo": dict(kl_in="reward", kl_estimator="k1", beta=0.05),
        "reinforce_pp": dict(kl_in="reward", kl_estimator="k1", beta=0.01)}
    assert [n for n, m in METHODS.items() if m.needs_groups] == ["grpo", "dr_grpo", "rloo"]
    assert [n for n, m in METHODS.items() if m.needs_critic] == ["gae"]
