"""The RLHF step end to end on the shipped weights."""

import json
import subprocess
import sys

import pytest
import torch

from rlhf_edu.models import build_models
from rlhf_edu.trainer import PPOConfig, RLHFTrainer, format_trace, trace_step

SMALL = dict(batch_size=16, response_len=16, ppo_epochs=2, minibatches=2)


def _trainer(tmp_path=None, models=None, resume=False, **kw):
    return RLHFTrainer(PPOConfig(**{**SMALL, **kw}), models=models, run_dir=tmp_path,
                       resume=resume)


def test_short_run_raises_the_reward_model_score():
    trainer = RLHFTrainer(PPOConfig(batch_size=32, response_len=16, beta=0.05, seed=1))
    history = trainer.train(12, progress=False)
    first = sum(m["rm_score"] for m in history[:3]) / 3
    last = sum(m["rm_score"] for m in history[-3:]) / 3
    assert last > first + 0.3, (first, last)
    assert all(m["kl"] < 5 for m in history)


@pytest.mark.parametrize("mode", ["separate", "shared", "head"])
def test_every_critic_mode_trains(mode):
    trainer = _trainer(critic_mode=mode)
    critic_before = [p.detach().clone() for p in trainer.models.critic.parameters()]
    actor_before = [p.detach().clone() for p in trainer.models.actor.parameters()]
    ref_before = [p.detach().clone() for p in trainer.models.reference.parameters()]
    metrics = trainer.step()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items()
               if isinstance(v, float))
    assert any(not torch.equal(a, b) for a, b in
               zip(critic_before, trainer.models.critic.parameters()))
    assert any(not torch.equal(a, b) for a, b in
               zip(actor_before, trainer.models.actor.parameters()))
    assert all(torch.equal(a, b) for a, b in
               zip(ref_before, trainer.models.reference.parameters()))


def test_step_metrics_and_phases():
    m = _trainer().step()
    for key in ("rm_score", "gold_score", "kl", "entropy", "response_len", "repetition",
                "policy_loss", "value_loss", "clipfrac", "approx_kl", "time_2_generate",
                "time_3_score", "time_4_reference_kl", "time_5_values_gae", "time_6_ppo"):
        assert key in m, key
    assert abs(m["kl"]) < 1e-4  # the first batch is sampled from the reference itself
    assert 0 <= m["clipfrac"] <= 1 and 1 <= m["response_len"] <= 16


def test_beta_ten_barely_moves_the_policy():
    history = _trainer(beta=10.0, seed=3).train(6, progress=False)
    assert all(abs(m["kl"]) < 0.3 for m in history)


def test_adaptive_controller_changes_beta():
    trainer = _trainer(adaptive_kl=True, kl_target=0.01, kl_horizon=100, beta=0.05)
    history = trainer.train(5, progress=False)
    for before, after in zip(history, history[1:]):  # beta moves toward the target KL
        assert (after["beta"] > before["beta"]) == (before["kl"] > 0.01), (before, after)
        assert abs(after["beta"] / before["beta"] - 1) <= 0.2 * 16 / 100 + 1e-9


def test_same_seed_same_run():
    a = _trainer(seed=5).train(2, progress=False)
    b = _trainer(seed=5).train(2, progress=False)
    strip = [{k: v for k, v in m.items() if not k.startswith("time_")} for m in a]
    assert strip == [{k: v for k, v in m.items() if not k.startswith("time_")} for m in b]


def _strip(lines):
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")}
            for line in lines]


def test_resume_in_a_new_process_is_bit_exact(tmp_path):
    args = ["--batch", "16", "--response-len", "12", "--ppo-epochs", "2", "--seed", "4",
            "--quiet"]
    full, part = tmp_path / "full", tmp_path / "part"
    run = [sys.executable, "-m", "rlhf_edu.cli", "train"]
    subprocess.run(run + ["--steps", "4", "--run-dir", str(full)] + args, check=True,
                   capture_output=True)
    subprocess.run(run + ["--steps", "2", "--run-dir", str(part)] + args, check=True,
                   capture_output=True)
    subprocess.run(run + ["--steps", "4", "--run-dir", str(part), "--resume"] + args,
                   check=True, capture_output=True)
    a = _strip((full / "metrics.jsonl").read_text().splitlines())
    b = _strip((part / "metrics.jsonl").read_text().splitlines())
    assert len(a) == 4 and a == b
    assert (part / "training.png").stat().st_size > 10_000


def test_checkpoint_roundtrip_in_process(tmp_path):
    t1 = _trainer(tmp_path / "a", seed=2)
    t1.train(1, progress=False)
    t1.save()
    t1.save(tmp_path / "copy.pt")
    with pytest.raises(ValueError, match="is in use by another run"):
        _trainer(tmp_path / "a", seed=2, resume=True)  # t1 still holds the directory
    t2 = _trainer(seed=2)
    t2.load(tmp_path / "copy.pt")
    assert t2.step_count == 1
    t1.close()
    t3 = _trainer(tmp_path / "a", seed=2, resume=True)  # loads run_dir/checkpoint.pt
    assert t3.step_count == 1 and t3.history == t1.history
    for p, q in zip(t1.models.actor.parameters(), t2.models.actor.parameters()):
        assert torch.equal(p, q)
    m1, m2 = t1.step(), t2.step()
    assert m1["rm_score"] == m2["rm_score"] and m1["value_loss"] == m2["value_loss"]


def test_trace_shapes_and_pass_counts():
    trace = trace_step(batch_size=4, response_len=100)
    shapes = {name: shape for _, name, shape, _ in trace.tensors}
    assert shapes["response"] == (4, 100) and shapes["tokens"] == (4, 104)
    for name in ("old_logprobs", "ref_logprobs", "kl", "rewards", "old_values", "advantages",
                 "returns", "mask"):
        assert shapes[name] == (4, 100), name
    assert shapes["scores"] == (4,)
    epochs, minibatches = PPOConfig.ppo_epochs, 2
    assert trace.forward["actor"]["generate"] == 100  # 1 prefill + 99 cached decode steps
    assert trace.forward["actor"]["forward"] == epochs * minibatches
    assert trace.forward["critic"]["forward"] == 1 + epochs * minibatches
    assert trace.forward["reward"]["forward"] == 1
    assert trace.forward["reference"]["forward"] == 1
    assert trace.backward["actor"] == trace.backward["critic"] == epochs * minibatches
    assert "reference" in format_trace(trace)


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=-0.1), r"beta must be in \[0, 10000\], got -0.1"),
    (dict(gamma=1.5), r"gamma must be in \[0, 1\], got 1.5"),
    (dict(lam=-0.1), r"lam must be in \[0, 1\]"),
    (dict(kl_estimator="k4"), "PPOConfig.kl_estimator must be one of 'k1', 'k2', 'k3', got 'k4'"),
    (dict(critic_mode="tiny"), "PPOConfig.critic_mode must be one of .*, got 'tiny'"),
    (dict(batch_size=10, minibatches=4), r"batch_size \(10\) must be divisible"),
    (dict(batch_size=0), r"PPOConfig.batch_size must be an int in \[1, 10\*\*8\], got 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PPOConfig(**kwargs)


def test_nan_scores_stop_with_the_step_number():
    trainer = _trainer()
    trainer.step()
    with torch.no_grad():
        trainer.models.reward.score_head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="step 2: NaN or inf in reward model scores"):
        trainer.step()


def test_run_dir_with_a_different_run_is_refused(tmp_path):
    _trainer(tmp_path, seed=1).close()
    config = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"already holds a run \(config.json\); pass --resume"):
        _trainer(tmp_path, seed=1)
    with pytest.raises(ValueError, match=r"holds a different run \(config differs in "
                                         r"\{'seed': \(1, 2\)\}\)"):
        _trainer(tmp_path, seed=2, resume=True)
    assert (tmp_path / "config.json").read_text() == config  # nothing was rewritten


def test_models_and_config_must_agree():
    with pytest.raises(ValueError, match="critic mode 'head' but the config asks for"):
        RLHFTrainer(PPOConfig(critic_mode="separate"), models=build_models("head"))


@pytest.mark.parametrize("mode", ["shared", "head"])
def test_the_seed_alone_decides_the_run(mode):
    """The critic's new value head is initialised from the config's seed, not the global RNG."""
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(_trainer(critic_mode=mode, seed=4).train(2, progress=False))
    strip = [[{k: v for k, v in m.items() if not k.startswith("time_")} for m in h] for h in runs]
    assert strip[0] == strip[1]


def test_preflight_checks_the_run_as_a_whole(tmp_path):
    """One function holds the checks of a run as a whole; the command line calls it before
    any rank starts, the trainer when it is built."""
    from rlhf_edu.config import preflight

    cfg = PPOConfig(batch_size=8, minibatches=2)
    assert preflight(cfg, 1) is None and preflight(cfg, 2) is None
    with pytest.raises(ValueError, match="must split into 3 ranks x 2 minibatches"):
        preflight(cfg, 3)
    with pytest.raises(ValueError, match="--nproc 1000 on CPU"):
        preflight(cfg, 1, nproc=1000)
    with pytest.raises(ValueError, match="splits the models over processes"):
        preflight(PPOConfig(batch_size=8, shard="zero2"), 1)
    with pytest.raises(ValueError, match=r"unknown role\(s\) \['policy'\]"):
        preflight(PPOConfig(batch_size=8, placement={"policy": "cpu"}), 1)
    with pytest.raises(ValueError, match="holds no run to continue"):
        preflight(cfg, 1, run_dir=tmp_path / "none", resume=True)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="splits the models over processes"):
        RLHFTrainer(PPOConfig(batch_size=8, shard="zero2"))


def test_advantage_scale_metrics():
    """group_std is the mean over groups of the G scores' std (what GRPO divides by);
    adv_abs_mean the mean over responses of each one's mean |advantage|."""
    t = RLHFTrainer(PPOConfig(advantage_estimator="grpo", group_size=4, batch_size=8,
                              response_len=8, seed=0))
    batch = t.rollout()
    got = t._advantage_scale(batch)
    assert got["group_std"] == pytest.approx(float(batch.scores.view(2, 4).std(1).mean()))
    # GRPO gives every token of a response the same advantage: its first token's
    assert got["adv_abs_mean"] == pytest.approx(float(batch.advantages[:, 0].abs().mean()),
                                                rel=1e-5)
    m = t.step()
    assert {"group_std", "adv_abs_mean"} <= set(m)
    ppo = RLHFTrainer(PPOConfig(batch_size=4, response_len=8, seed=0)).step()
    assert "adv_abs_mean" in ppo and "group_std" not in ppo
