"""The shipped weights have the properties the course relies on, and can be rebuilt."""

import pytest
import torch

from rlhf_edu.checkpoint import safe_load
from rlhf_edu.cli import main
from rlhf_edu.models import load_pretrained, weights_path
from rlhf_edu.pretrain import evaluate_lm, pretrain
from rlhf_edu.reward_model import (
    evaluate_reward_model,
    make_preference_pairs,
    train_reward_model,
)


def test_shipped_sft_writes_the_grammar(sft):
    report = evaluate_lm(sft, n=500, seed=123)
    assert report["well_formed"] >= 0.95
    for k in ("positive", "negative", "neutral"):  # the mix of sentiments resembles the corpus
        assert abs(report["mix"][k] - report["corpus_mix"][k]) < 0.1, report


def test_shipped_reward_model_ranks_and_can_be_hacked(sft, reward_model):
    heldout = make_preference_pairs(sft, 600, seed=321)
    report = evaluate_reward_model(reward_model, sft, heldout, n=400, seed=5)
    assert report["accuracy"] >= 0.80
    hack = report["hack_scores"]["the food was great great great amazing amazing !"]
    assert hack > report["median_well_formed"] + 0.5  # the blind spot PPO will find


def test_shipped_checkpoints_record_how_they_were_made():
    for kind in ("sft", "reward"):
        meta = safe_load(weights_path(kind))["meta"]
        assert "seed" in meta and "eval" in meta


@pytest.mark.slow
def test_rebuild_from_scratch_small_budget():
    sft = pretrain(n_reviews=8000, epochs=2, seed=7, progress=False)
    report = evaluate_lm(sft, n=200, seed=1)
    assert report["well_formed"] >= 0.8, report
    pairs = make_preference_pairs(sft, 3400, seed=7)
    train, heldout = pairs.split(3000)
    rm = train_reward_model(sft, train, epochs=2, seed=7, progress=False)
    rm_report = evaluate_reward_model(rm, sft, heldout, n=200, seed=2)
    assert rm_report["accuracy"] >= 0.7, rm_report
    assert abs(rm_report["median_well_formed"]) < 1.0  # z-normalised over SFT samples


def test_cli_pretrain_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "sft.pt"
    assert main(["pretrain", "--out", str(out), "--reviews", "300", "--epochs", "1",
                 "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                 "--eval-samples", "20"]) == 0
    model = load_pretrained("sft", out)
    assert model.config.n_layer == 1
    assert "well-formed" in capsys.readouterr().out
    rm_out = tmp_path / "rm.pt"
    assert main(["train-rm", "--sft", str(out), "--out", str(rm_out), "--pairs", "64",
                 "--heldout", "64", "--epochs", "1"]) == 0
    rm = load_pretrained("reward", rm_out)
    assert torch.isfinite(rm.std) and rm.std > 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"\x00" * 10)
    assert main(["train-rm", "--sft", str(bad), "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt or truncated" in err
