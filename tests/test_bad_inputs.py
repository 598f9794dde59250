"""Bad input gets a clear error, raised early, naming the value and what was expected."""

import subprocess
import sys

import pytest
import torch

from rlhf_edu import (
    GPT,
    GPTConfig,
    ModelSpec,
    PPOConfig,
    RLHFTrainer,
    Tokenizer,
    build_models,
    compute_rewards,
    gae,
    kl_penalty,
    load_pretrained,
    memory_breakdown,
    ppo_losses,
    whiten,
)
from rlhf_edu.cli import main
from rlhf_edu.models import RewardModel, weights_path
from rlhf_edu.reward_model import bradley_terry_loss

Z = torch.zeros(2, 4)
ONES = torch.ones(2, 4)
TINY = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16)


def _truncated(tmp_path):
    path = tmp_path / "half.pt"
    data = weights_path("sft").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _no_response_row():
    mask = ONES.clone()
    mask[1] = 0
    return mask


CASES = [
    ("unknown word", lambda: Tokenizer().encode("the pizza was great ."),
     ValueError, "unknown word 'pizza'"),
    ("n_embd not divisible by n_head", lambda: GPTConfig(n_embd=100, n_head=3),
     ValueError, r"n_embd \(100\) must be divisible by n_head \(3\)"),
    ("negative layers", lambda: GPTConfig(n_layer=-1), ValueError, "n_layer must be a positive"),
    ("prompt longer than the context", lambda: GPT(TINY).generate(torch.ones(1, 12).long(),
                                                                  max_new_tokens=8),
     ValueError, "exceeds the model's context block_size=16"),
    ("sequence longer than the context", lambda: GPT(TINY)(torch.ones(1, 17).long()),
     ValueError, "longer than the model's context"),
    ("all-padding prompt row", lambda: GPT(TINY).generate(
        torch.zeros(2, 3).long(), torch.tensor([[1, 1, 1], [0, 0, 0]]).bool()),
     ValueError, "prompt row 1 is all padding"),
    ("KL shapes disagree", lambda: kl_penalty(torch.zeros(2, 4), torch.zeros(2, 5)),
     ValueError, r"shape \(2, 4\) but ref_logprobs has shape \(2, 5\)"),
    ("unknown KL estimator", lambda: kl_penalty(Z, Z, "k4"),
     ValueError, "unknown KL estimator 'k4'"),
    ("integer log-probs", lambda: kl_penalty(Z.long(), Z),
     ValueError, "must be a floating-point tensor, got torch.int64"),
    ("NaN logits", lambda: kl_penalty(torch.full((1, 2, 5), float("nan")), torch.zeros(1, 2, 5),
                                      "full"), ValueError, "NaN or inf"),
    ("negative beta", lambda: compute_rewards(torch.zeros(2), Z, Z, ONES, -0.1),
     ValueError, "beta must be >= 0, got -0.1"),
    ("row without response token", lambda: compute_rewards(torch.zeros(2), Z, Z,
                                                           _no_response_row(), 0.1),
     ValueError, "mask row 1 has no response token"),
    ("NaN score", lambda: compute_rewards(torch.tensor([0.0, float("nan")]), Z, Z, ONES, 0.1),
     ValueError, "scores contains NaN or inf at index 1"),
    ("empty batch", lambda: compute_rewards(torch.zeros(0), torch.zeros(0, 4),
                                            torch.zeros(0, 4), torch.zeros(0, 4), 0.1),
     ValueError, "is empty"),
    ("gamma above 1", lambda: gae(Z, Z, ONES, gamma=1.5),
     ValueError, r"gamma must be in \[0, 1\], got 1.5"),
    ("lambda below 0", lambda: gae(Z, Z, ONES, lam=-0.5), ValueError, r"lam must be in \[0, 1\]"),
    ("mask that is not 0/1", lambda: gae(Z, Z, ONES * 0.5),
     ValueError, "mask must contain only 0 and 1, got 0.5"),
    ("whitening an all-padding batch", lambda: whiten(Z, Z),
     ValueError, "no unmasked entries"),
    ("PPO clip of zero", lambda: ppo_losses(Z, Z, Z, Z, Z, Z, ONES, clip=0.0),
     ValueError, "clip must be > 0, got 0"),
    ("unknown critic mode", lambda: PPOConfig(critic_mode="tiny"),
     ValueError, "unknown critic mode 'tiny'"),
    ("negative beta in the config", lambda: PPOConfig(beta=-1.0),
     ValueError, "PPOConfig.beta must be >= 0, got -1.0"),
    ("mismatched vocabularies", lambda: build_models(
        sft=GPT(TINY), reward=RewardModel(GPT(GPTConfig(block_size=16, vocab_size=128, n_layer=1,
                                                        n_head=2, n_embd=16)))),
     ValueError, "mismatched vocabularies: 64 vs 128"),
    ("Bradley-Terry shapes", lambda: bradley_terry_loss(torch.zeros(3), torch.zeros(4)),
     ValueError, r"r_chosen has shape \(3,\) but r_rejected has shape \(4,\)"),
    ("ZeRO stage 5", lambda: memory_breakdown(ModelSpec.preset("llama-7b"), zero_stage=5),
     ValueError, "zero_stage"),
    ("LoRA fraction above 1", lambda: memory_breakdown(ModelSpec.preset("llama-7b"),
                                                       lora_fraction=1.5),
     ValueError, "lora_fraction"),
    ("zero layers in a model spec", lambda: ModelSpec("x", n_layer=0, n_embd=64, n_head=4,
                                                      vocab_size=10),
     ValueError, "n_layer"),
    ("unknown memory preset", lambda: ModelSpec.preset("gpt-9"), ValueError, "gpt-9"),
]


@pytest.mark.parametrize("name, call, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_checkpoint_files(tmp_path):
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_pretrained("sft", _truncated(tmp_path))
    with pytest.raises(ValueError, match="holds a 'sft' model, expected 'reward'"):
        load_pretrained("reward", weights_path("sft"))


def test_nan_logits_stop_training_with_the_step_number():
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1))
    with torch.no_grad():
        trainer.models.reference.gpt.ln_f.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="step 1: NaN or inf in reference log-probs"):
        trainer.step()


CLI_CASES = [
    (["train", "--beta", "-1", "--run-dir", "{tmp}/a"], "PPOConfig.beta must be >= 0"),
    (["train", "--resume", "--run-dir", "{tmp}/none"], "--resume: no checkpoint.pt"),
    (["train", "--placement", '{{"policy": "cpu"}}', "--run-dir", "{tmp}/b"],
     "unknown role(s) ['policy']"),
    (["train", "--placement", "nowhere", "--run-dir", "{tmp}/c"], "--placement must be"),
    (["train-rm", "--sft", "{tmp}/missing.pt"], "no sft weights at"),
    (["memory", "--lora", "2"], "lora"),
    (["train", "--critic", "tiny"], "invalid choice: 'tiny'"),
    (["memory", "--zero", "7"], "invalid choice: 7"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(c[0][:2]) + " " + c[1][:20]
                                                          for c in CLI_CASES])
def test_cli_bad_input_is_one_readable_line(tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert message in err.strip().splitlines()[-1], err


def test_cli_refuses_a_run_directory_holding_another_run(tmp_path):
    run = [sys.executable, "-m", "rlhf_edu.cli", "train", "--steps", "1", "--batch", "8",
           "--response-len", "6", "--ppo-epochs", "1", "--quiet", "--run-dir", str(tmp_path)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    result = subprocess.run(run + ["--resume", "--seed", "9", "--steps", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "holds a different run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
