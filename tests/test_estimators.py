"""Critic-free estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++), group sampling, the KL in the
loss, the gold reward and recomputed log-probs, on the one trainer."""

import math
import re
import statistics

import pytest
import torch

from rlhf_edu.advantages import (
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    token_advantages,
)
from rlhf_edu.cli import main
from rlhf_edu.models import describe
from rlhf_edu.plots import LivePlot, plot_training
from rlhf_edu.ppo import ppo_losses, total_loss
from rlhf_edu.task import gold_score, review_texts, sample_prompts
from rlhf_edu.trainer import PPOConfig, RLHFTrainer, format_trace, trace_step

SMALL = dict(batch_size=16, response_len=12, ppo_epochs=1, minibatches=2)
GRPO = dict(SMALL, advantage_estimator="grpo", group_size=4)


def _trainer(run_dir=None, resume=False, **kw):
    return RLHFTrainer(PPOConfig(**{**GRPO, **kw}), run_dir=run_dir, resume=resume)


def _no_times(history):
    return [{k: v for k, v in m.items() if not k.startswith("time_")} for m in history]


# ------------------------------------------------------------------ the estimators themselves

# three groups of G = 4: spread rewards, rewards that all tie (0.1 does not add up exactly), and
# one outlier
GROUPS = [[1.0, 2.0, 4.0, 7.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 3.0]]


def _flat(groups):
    return torch.tensor([r for g in groups for r in g], dtype=torch.float64)


def test_grpo_is_the_group_z_score_with_bessels_std():
    expected = []
    for g in GROUPS:
        mean, std = statistics.fmean(g), statistics.stdev(g)  # stdev divides by G - 1
        expected += [0.0 if len(set(g)) == 1 else (r - mean) / (std + 1e-4) for r in g]
    got = grpo_advantages(_flat(GROUPS), 4)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_grpo_std_is_bessels_not_the_population_std():
    # G = 2, rewards 0 and 2: Bessel's std is sqrt(2), the population std 1
    got = grpo_advantages(torch.tensor([0.0, 2.0]), 2, eps=0.0)
    torch.testing.assert_close(got, torch.tensor([-1.0, 1.0]) / math.sqrt(2))


def test_dr_grpo_only_subtracts_the_group_mean():
    expected = [r - statistics.fmean(g) if len(set(g)) > 1 else 0.0 for g in GROUPS for r in g]
    got = grpo_advantages(_flat(GROUPS), 4, scale=False)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_rloo_subtracts_the_mean_of_the_others():
    expected = []
    for g in GROUPS:
        for i, r in enumerate(g):
            others = g[:i] + g[i + 1:]
            expected.append(0.0 if len(set(g)) == 1 else r - sum(others) / len(others))
    torch.testing.assert_close(rloo_advantages(_flat(GROUPS), 4),
                               torch.tensor(expected, dtype=torch.float64))
    # G = 2: each response is judged against the other one
    torch.testing.assert_close(rloo_advantages(torch.tensor([1.0, 3.0, 5.0, 2.0]), 2),
                               torch.tensor([-2.0, 2.0, 3.0, -3.0]))


@pytest.mark.parametrize("estimate", [
    lambda s: grpo_advantages(s, 3), lambda s: grpo_advantages(s, 3, eps=0.0),
    lambda s: grpo_advantages(s, 3, scale=False), lambda s: rloo_advantages(s, 3)])
def test_a_group_of_equal_rewards_gets_exactly_zero(estimate):
    scores = torch.tensor([0.1, 0.1, 0.1, -0.7, -0.7, -0.7])
    out = estimate(scores)
    assert torch.equal(out, torch.zeros(6)), out


@pytest.mark.parametrize("call, match", [
    (lambda: grpo_advantages(torch.zeros(4), 1), "group_size must be >= 2 for GRPO, got 1"),
    (lambda: rloo_advantages(torch.zeros(4), 1), "group_size must be >= 2 for RLOO"),
    (lambda: grpo_advantages(torch.zeros(6), 4), "6 rows, which do not split into groups"),
    (lambda: grpo_advantages(torch.zeros(2, 2), 2), r"scores must have shape \(B,\)"),
    (lambda: grpo_advantages(torch.tensor([0.0, float("nan")]), 2), "NaN or inf"),
    (lambda: token_advantages(torch.zeros(3), torch.ones(2, 4)), r"shape \(B,\) = \(2,\)"),
])
def test_estimator_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_reinforce_pp_is_the_batch_normalised_return_to_go():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0], [0.0, 0.3, -0.1, 2.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # row 0 ends after 3 tokens
    rewards[0, 3] = float("nan")  # padding is ignored
    gamma = 0.9
    togo = []
    for row, m in zip(rewards.tolist(), mask.tolist()):
        n = sum(m)
        togo.append([sum(gamma ** (s - t) * row[s] for s in range(t, n)) for t in range(n)])
    flat = [g for row in togo for g in row]
    mean, std = statistics.fmean(flat), statistics.pstdev(flat)  # over every response token
    expected = torch.zeros(2, 4)
    for b, row in enumerate(togo):
        for t, g in enumerate(row):
            expected[b, t] = (g - mean) / std
    got = reinforce_pp_advantages(rewards, mask, gamma)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got[0, 3] == 0


def test_token_advantages_spread_over_the_response_only():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = token_advantages(torch.tensor([0.5, -2.0]), mask)
    assert torch.equal(got, torch.tensor([[0.5, 0.5, 0.0], [-2.0, -2.0, -2.0]]))


# ------------------------------------------------------------------ the KL in the loss

def test_kl_in_the_loss_adds_exactly_beta_times_the_mean_k3():
    torch.manual_seed(0)
    logp = (torch.randn(3, 5) - 1).requires_grad_()
    ref = logp.detach() + 0.3 * torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    ref[1, 4] = float("nan")  # padding
    adv = torch.randn(3, 5)
    losses = ppo_losses(logp, logp.detach(), adv, None, None, None, mask, ref_logprobs=ref)
    assert "value_loss" not in losses and "vf_clipfrac" not in losses
    n, k3 = 0, 0.0
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                d = logp[b, t].item() - ref[b, t].item()
                k3 += math.exp(-d) - 1 + d
                n += 1
    beta = 0.04
    assert losses["kl_loss"].item() == pytest.approx(k3 / n, rel=1e-5)
    with_kl = total_loss(losses, vf_coef=0.0, kl_coef=beta)
    assert torch.equal(with_kl, losses["policy_loss"] + beta * losses["kl_loss"])
    assert (with_kl - total_loss(losses, vf_coef=0.0)).item() == pytest.approx(beta * k3 / n,
                                                                               rel=1e-4)
    # differentiable: d(beta * mean k3) / d logp = beta * (1 - exp(ref - logp)) / n per token
    grad_kl, = torch.autograd.grad(beta * losses["kl_loss"], logp)
    expected = torch.where(mask.bool(), beta * (1 - torch.exp(ref - logp.detach())) / n, 0.0)
    torch.testing.assert_close(grad_kl, expected)
    with pytest.raises(ValueError, match="kl_coef is 0.04 but losses has no 'kl_loss'"):
        total_loss({"policy_loss": losses["policy_loss"]}, vf_coef=0.0, kl_coef=beta)


def test_grpo_trainer_puts_the_kl_in_the_loss_not_the_reward():
    trainer = _trainer(minibatches=1)
    batch = trainer.rollout()
    m = batch.mask.bool()
    assert torch.equal(batch.rewards.sum(1), batch.scores)  # no KL in the reward
    with torch.no_grad():
        logp = trainer.policy(batch.tokens, batch.valid, batch.prompt_len)[0]
    d = (logp - batch.ref_logprobs)[m]
    expected = (torch.exp(-d) - 1 + d).mean().item()  # k3 of the policy before any step
    stats = trainer.update(batch)
    assert stats["kl_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert "value_loss" not in stats and "vf_clipfrac" not in stats


def test_rloo_puts_the_summed_kl_in_the_reward():
    trainer = _trainer(advantage_estimator="rloo")
    assert (trainer.config.kl_in, trainer.config.kl_estimator, trainer.config.beta) == \
        ("reward", "k1", 0.05)
    batch = trainer.rollout()
    sequence = batch.scores - 0.05 * batch.kl.sum(1)
    torch.testing.assert_close(batch.rewards.sum(1), sequence)
    expected = []
    for g in sequence.view(-1, 4).tolist():
        expected += [r - (sum(g) - r) / 3 for r in g]
    torch.testing.assert_close(batch.advantages,
                               torch.tensor(expected)[:, None] * batch.mask, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ configuration

def test_method_defaults_and_explicit_values():
    ppo = PPOConfig()
    assert (ppo.kl_in, ppo.kl_estimator, ppo.beta, ppo.critic_mode) == \
        ("reward", "k1", 0.05, "separate")
    grpo = PPOConfig(advantage_estimator="grpo", group_size=4)
    assert (grpo.kl_in, grpo.kl_estimator, grpo.beta, grpo.critic_mode) == \
        ("loss", "k3", 0.04, "none")
    mine = PPOConfig(advantage_estimator="dr_grpo", group_size=4, beta=0.1, kl_in="reward",
                     kl_estimator="k2")
    assert (mine.kl_in, mine.kl_estimator, mine.beta) == ("reward", "k2", 0.1)
    rpp = PPOConfig(advantage_estimator="reinforce_pp")
    assert (rpp.kl_in, rpp.kl_estimator, rpp.beta, rpp.group_size) == ("reward", "k1", 0.01, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=10, group_size=4), r"batch_size \(10\) must be divisible by group_size"),
    (dict(advantage_estimator="grpo"), "'grpo' needs group_size >= 2, got 1"),
    (dict(advantage_estimator="rloo", group_size=1), "'rloo' needs group_size >= 2"),
    (dict(advantage_estimator="grpo", group_size=4, critic_mode="separate"),
     "'grpo' trains no critic, but critic mode 'separate' was given"),
    (dict(advantage_estimator="reinforce_pp", critic_mode="head"), "trains no critic"),
    (dict(critic_mode="none"), "'gae' needs a critic, but the critic mode is 'none'"),
    (dict(advantage_estimator="ppo2"), "PPOConfig.advantage_estimator must be one of 'gae', "
                                       "'grpo', 'dr_grpo', 'rloo', 'reinforce_pp', got 'ppo2'"),
    (dict(kl_in="both"), "PPOConfig.kl_in must be one of 'reward', 'loss', got 'both'"),
    (dict(reward="human"), "PPOConfig.reward must be one of 'model', 'gold', 'lax', got 'human'"),
    (dict(group_size=0), r"PPOConfig.group_size must be an int in \[1, 10\*\*8\], got 0"),
    (dict(recompute_logprobs=1), "PPOConfig.recompute_logprobs must be True or False"),
    (dict(beta="0.1"),
     r"PPOConfig.beta must be a number in \[0, 10000\] or None, got '0.1' \(str\)"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PPOConfig(**kwargs)


def test_each_rank_must_hold_whole_groups():
    cfg = PPOConfig(batch_size=8, group_size=8, minibatches=1, advantage_estimator="grpo")
    cfg.check_world(1)
    with pytest.raises(ValueError, match="each holding whole groups of group_size 8"):
        cfg.check_world(2)


@pytest.mark.parametrize("argv, match", [
    (["--batch", "10", "--group-size", "4", "--estimator", "grpo"],
     r"batch_size \(10\) must be divisible by group_size \(4\)"),
    (["--estimator", "grpo"], "'grpo' needs group_size >= 2, got 1"),
    (["--estimator", "rloo", "--group-size", "4", "--critic", "shared"], "trains no critic"),
    (["--estimator", "grpo", "--group-size", "8", "--batch", "8", "--minibatches", "1",
      "--nproc", "2"], "each holding whole groups"),
])
def test_cli_refuses_bad_combinations_before_training(tmp_path, capsys, argv, match):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert not run.exists()  # nothing started


@pytest.mark.parametrize("flag, value", [("--estimator", "ppo2"), ("--kl-in", "both"),
                                         ("--reward", "human"), ("--group-size", "0")])
def test_cli_refuses_unknown_names(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["train", flag, value])
    assert e.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_cli_models_lists_three_models_without_a_critic(capsys):
    assert main(["models", "--estimator", "grpo"]) == 0
    out = capsys.readouterr().out
    roles = [line.split()[0] for line in out.splitlines()[2:]]
    assert roles == ["actor", "reward", "reference"] and "no critic" in out


# ------------------------------------------------------------------ the trainer without a critic

def test_group_rows_share_their_prompt():
    trainer = _trainer(seed=3)
    batch = trainer.rollout()
    G, P = 4, batch.prompt_len
    unique = sample_prompts(4, torch.Generator().manual_seed(3))  # B / G prompts drawn
    assert batch.prompts == [p for p in unique for _ in range(G)]
    for g in range(4):
        rows = batch.tokens[g * G:(g + 1) * G]
        assert (rows[:, :P] == rows[0, :P]).all()
    assert any(len({tuple(r.tolist()) for r in batch.response[g * G:(g + 1) * G]}) > 1
               for g in range(4))  # G samples, not one sample copied
    plain = RLHFTrainer(PPOConfig(**SMALL, seed=3)).rollout()  # G = 1: as before
    assert plain.prompts == sample_prompts(16, torch.Generator().manual_seed(3))


def test_critic_free_trainer_holds_no_critic():
    trainer = _trainer()
    assert trainer.models.critic is None and trainer.critic_opt is None
    n_actor = sum(p.numel() for p in trainer.models.actor.parameters())
    assert sum(p.numel() for p in trainer.policy.parameters()) == n_actor
    assert [r["role"] for r in describe(trainer.models)] == ["actor", "reward", "reference"]
    history = trainer.train(2, progress=False)
    state = trainer.state_dict()
    assert state["critic"] is None and state["critic_opt"] is None
    assert len(state["actor_opt"]["state"]) > 0
    for m in history:
        assert "value_loss" not in m and "vf_clipfrac" not in m and "non_score_reward" not in m
        assert math.isfinite(m["policy_loss"]) and m["kl_loss"] >= 0
    assert plot_training(history) is not None  # the plots read only what a run without a
    live = LivePlot(every=1, display=False)    # critic logs
    for m in history:
        live(m)
    assert live.draws == 2


def test_every_critic_free_estimator_steps():
    for est in ("dr_grpo", "rloo", "reinforce_pp"):
        trainer = _trainer(advantage_estimator=est, group_size=1 if est == "reinforce_pp" else 4)
        before = [p.detach().clone() for p in trainer.models.actor.parameters()]
        m = trainer.step()
        assert math.isfinite(m["policy_loss"]) and m["advantage_std"] > 0, est
        assert any(not torch.equal(a, b) for a, b in
                   zip(before, trainer.models.actor.parameters())), est


def test_trace_shows_groups_and_three_resident_models():
    trace = trace_step(batch_size=8, response_len=10, estimator="grpo", group_size=4)
    shapes = {name: shape for _, name, shape, _ in trace.tensors}
    assert shapes["group_prompt_ids"][0] == 2 and shapes["prompt_ids"][0] == 8
    assert shapes["sequence_advantages"] == (8,) and shapes["advantages"] == (8, 10)
    assert "old_values" not in shapes and "returns" not in shapes
    assert trace.resident == ["actor", "reward", "reference"]
    assert "critic" not in trace.forward and "critic" not in trace.backward
    assert "resident models: actor, reward, reference" in format_trace(trace)


def test_critic_free_resume_is_bit_exact(tmp_path):
    full = _trainer(seed=6).train(3, progress=False)
    first = _trainer(tmp_path / "run", seed=6)
    first.train(2, progress=False)
    first.close()
    resumed = _trainer(tmp_path / "run", resume=True, seed=6)
    assert resumed.step_count == 2
    assert _no_times(resumed.train(3, progress=False)) == _no_times(full)


# ------------------------------------------------------------------ rewards and log-probs

def test_gold_reward_is_the_task_judge_minus_the_eos_penalty():
    trainer = _trainer(reward="gold")
    batch = trainer.rollout()
    texts = review_texts(batch.prompts, batch.response)
    finished = (batch.response == trainer.tok.eos_id).any(1).float()
    expected = torch.tensor([gold_score(t) for t in texts]) - (1 - finished)
    torch.testing.assert_close(batch.scores, expected)
    assert not torch.equal(batch.rm_scores, batch.scores)  # the RM still scores, for metrics


def test_recomputed_logprobs_remove_the_bf16_mismatch():
    dev = {}
    for recompute in (False, True):
        trainer = RLHFTrainer(PPOConfig(**SMALL, precision="bf16", seed=1,
                                        recompute_logprobs=recompute))
        dev[recompute] = trainer.step()["ratio_dev_first"]
    assert dev[False] > 1e-4, dev  # generation and training kernels round differently
    assert dev[True] < 1e-6, dev


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize("reward", ["model", "gold"])
def test_grpo_raises_the_gold_score(reward):
    """GRPO, G = 4, 10 steps from the SFT actor. Measured on one machine over seeds 0-5: the
    last three steps' mean gold was 0.25-0.31 (reward model) and 0.18-0.34 (gold reward),
    against a first step of -0.19 to +0.13 (-0.09 for this seed): asking for a rise of 0.15
    leaves room for the chaos of training on another CPU."""
    trainer = RLHFTrainer(PPOConfig(batch_size=32, response_len=16, advantage_estimator="grpo",
                                    group_size=4, reward=reward, seed=2, actor_lr=3e-4))
    gold = [m["gold_score"] for m in trainer.train(10, progress=False)]
    assert sum(gold[-3:]) / 3 > gold[0] + 0.15, gold
