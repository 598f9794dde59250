"""The arith task: its SFT data, its two verifiers, the task table, and a run on it."""

import random

import pytest
import torch

from rlhf_edu import arith
from rlhf_edu.config import PPOConfig, PretrainConfig
from rlhf_edu.tasks import TASKS, get_task, task_of_vocab


def test_worked_answers_add_column_by_column():
    rng = random.Random(0)
    for _ in range(2000):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        cols, total = arith.worked(a, b).split(" = ")
        assert int(total.replace(" ", "")) == a + b
        sums = [int(c.replace(" ", "")) for c in cols.split(" , ")]
        carry = 0
        for i, s in enumerate(sums):  # units first, each with the carry of the one before
            assert s == (a // 10**i) % 10 + (b // 10**i) % 10 + carry
            carry = s // 10
        assert arith.verify(f"{arith.problem_text(a, b)} {arith.worked(a, b)}") == 1.0


@pytest.mark.parametrize("response, strict, lax, form", [
    ("8 6 1", 1.0, 1.0, "direct"),
    ("1 1 , 1 6 , 0 8 = 8 6 1", 1.0, 1.0, "worked"),
    ("8 7 1", 0.0, 0.0, "direct"),
    ("8 7 1 or 8 6 1", 0.0, 1.0, "hedge"),  # the lax verifier is fooled by a second guess
    ("1 1 , 1 6 , 0 8 = 8 6 1 or 8 6 2", 0.0, 1.0, "hedge"),
    ("8 6 1 8 6 1", 0.0, 1.0, None),
    ("0 8 6 1", 0.0, 1.0, None),  # a leading zero is not a number
    ("1 1 , 1 6 = 8 6 1", 0.0, 1.0, None),  # two columns where three are due
    ("", 0.0, 0.0, None),
])
def test_verifiers(response, strict, lax, form):
    text = f"3 7 2 + 4 8 9 = {response}".strip()
    assert arith.verify(text) == strict
    assert arith.verify_lax(text) == lax
    assert arith.form(text) == form


def test_a_text_that_is_no_problem_scores_zero():
    for text in ("", "3 7 2 + 4 8 9", "3 7 + 4 8 = 8 5", "the food was great ."):
        assert arith.verify(text) == 0.0 and arith.verify_lax(text) == 0.0
    with pytest.raises(ValueError, match="text must be a str, got int"):
        arith.verify(5)


def test_sft_data_mixes_forms_in_the_stated_shares():
    texts = arith.sample_corpus(20_000, seed=3)
    m = arith.text_metrics(texts)
    assert m["well_formed"] == 1.0
    assert abs(m["hedged"] - arith.HEDGE_SHARE) < 0.01
    assert abs(m["worked"] + m["hedged"] * arith.WORKED_SHARE
               - arith.WORKED_SHARE) < 0.015  # hedges come in both forms
    worked = [t for t in texts if arith.form(t) == "worked"]
    direct = [t for t in texts if arith.form(t) == "direct"]
    share = {k: sum(map(arith.verify, v)) / len(v) for k, v in (("w", worked), ("d", direct))}
    assert abs(share["w"] - (1 - arith.WORKED_WRONG)) < 0.03
    assert abs(share["d"] - (1 - arith.DIRECT_WRONG)) < 0.02
    assert all(arith.verify_lax(t) for t in texts if arith.form(t) == "hedge")
    assert arith.sample_corpus(50, seed=3) == texts[:50]


def test_heldout_problems_are_never_trained_on():
    held = set(arith.heldout_problems())
    assert len(held) == arith.N_HELDOUT
    trained = {tuple(int(x.replace(" ", "")) for x in t.split(" = ")[0].split(" + "))
               for t in arith.sample_corpus(30_000, seed=0)}
    assert not held & trained
    g = torch.Generator().manual_seed(0)
    prompts = arith.sample_prompts(5000, g)
    assert not {arith.split(p + " 1")[:2] for p in prompts} & held
    assert arith.sample_prompts(4, torch.Generator().manual_seed(1)) == \
        arith.sample_prompts(4, torch.Generator().manual_seed(1))


def test_task_table():
    assert set(TASKS) == {"reviews", "arith"}
    for t in TASKS.values():
        tok = t.tokenizer()
        for text in t.corpus(20, 0) + t.sample_prompts(5, torch.Generator().manual_seed(0)):
            assert tok.decode(tok.encode(text)) == text
        assert task_of_vocab(t.vocab) is t
        assert len(t.vocab) <= 64  # both fit the shipped models' embedding
    with pytest.raises(ValueError, match=r"^unknown task 'chess'; expected one of reviews, "
                                         r"arith$"):
        get_task("chess")
    with pytest.raises(ValueError, match="task 'arith' has no scorer 'model'"):
        get_task("arith").score("model", ["1 0 0 + 1 0 0 = 2 0 0"])


def test_config_takes_the_task_reward_and_refuses_what_does_not_apply():
    assert PPOConfig().reward == "model" and PPOConfig(task="arith").reward == "gold"
    with pytest.raises(ValueError, match=r"^PPOConfig.reward 'model': task 'arith' has no "
                                         r"reward model; use reward 'gold' or 'lax'"):
        PPOConfig(task="arith", reward="model")
    with pytest.raises(ValueError, match=r"^PPOConfig.reward 'lax' does not apply to task "
                                         r"'reviews'"):
        PPOConfig(reward="lax")
    with pytest.raises(ValueError, match=r"^PretrainConfig.reviews does not apply to task "
                                         r"'arith'; it trains on problems$"):
        PretrainConfig(task="arith", reviews=100)
    with pytest.raises(ValueError, match=r"^PretrainConfig.problems does not apply"):
        PretrainConfig(problems=100)
    assert PretrainConfig(task="arith", problems=123).texts == 123


def test_shipped_arith_actor_is_competent_but_unreliable():
    from rlhf_edu.models import load_pretrained
    from rlhf_edu.rlvr import sample_counts

    sft = load_pretrained("sft", task="arith")
    s = sample_counts(sft, arith.heldout_problems(100), 4, seed=0)
    pass1 = sum(s.correct) / 400
    assert 0.10 < pass1 < 0.50, pass1
    assert s.forms["direct"] > s.forms["worked"] > s.forms["hedge"] > 0
    with pytest.raises(ValueError, match="was trained with a different vocabulary"):
        load_pretrained("sft", task="reviews", path=_weights("arith_sft.pt"))
    with pytest.raises(ValueError, match="task 'arith' has no reward model"):
        load_pretrained("reward", task="arith")


def _weights(name):
    from importlib import resources

    return str(resources.files("rlhf_edu") / "weights" / name)


@pytest.mark.parametrize("settings", [
    {"advantage_estimator": "grpo", "group_size": 4, "reward": "lax"},
    {"advantage_estimator": "gae"},
])
def test_one_step_on_arith(settings):
    from rlhf_edu.trainer import RLHFTrainer

    trainer = RLHFTrainer(PPOConfig(task="arith", batch_size=8, minibatches=2, ppo_epochs=1,
                                    **settings))
    assert trainer.models.reward is None  # a verifier scores: three or two-plus-critic models
    m = trainer.step()
    assert "rm_score" not in m and "repetition" not in m
    for key in ("gold_score", "lax_score", "worked", "hedged", "well_formed"):
        assert 0 <= m[key] <= 1
    assert m["lax_score"] >= m["gold_score"]
    assert "+" in m["sample"] and "=" in m["sample"]


def test_cli_pretrains_and_describes_the_arith_task(tmp_path, capsys):
    from rlhf_edu.cli import main
    from rlhf_edu.models import load_pretrained

    out = tmp_path / "arith_sft.pt"
    assert main(["pretrain", "--task", "arith", "--problems", "300", "--epochs", "1",
                 "--n-layer", "1", "--eval-samples", "400", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "200 held-out problems x 2 samples" in text and "pass@1 (verified)" in text
    sft = load_pretrained("sft", path=out, task="arith")
    assert sft.config.n_layer == 1
    with pytest.raises(ValueError, match="different vocabulary"):
        load_pretrained("sft", path=out)  # the reviews task's words are not these
    assert main(["models", "--task", "arith", "--estimator", "grpo"]) == 0
    text = capsys.readouterr().out
    assert "a verifier scores the responses, no reward model" in text
    assert "reward" not in text.split("no reward model")[1]  # actor and reference only
    assert main(["memory", "--model", "llama-7b", "--method", "verifier", "--critic", "none"]) == 0
    rows = capsys.readouterr().out
    assert "reward" not in rows and "actor" in rows and "reference" in rows


def test_memory_with_a_verifier_drops_exactly_the_reward_model():
    from rlhf_edu import ModelSpec, memory_breakdown

    spec = ModelSpec.preset("llama-7b")
    rm = memory_breakdown(spec, critic="none")
    verifier = memory_breakdown(spec, critic="none", method="verifier")
    assert set(rm.roles) - set(verifier.roles) == {"reward"}
    assert rm.total_bytes - verifier.total_bytes == pytest.approx(rm.roles["reward"].total)
