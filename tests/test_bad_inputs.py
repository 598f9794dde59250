"""Bad input gets a clear error, raised early, naming the value and what was expected."""

import json
import os
import re
import subprocess
import sys
import time

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
from rlhf_edu.config import DPOConfig
from rlhf_edu.dpo import run_dpo
from rlhf_edu.models import RewardModel, weights_path
from rlhf_edu.reward_model import bradley_terry_loss
from rlhf_edu.trainer import UNDEFINED, defined_metrics, metrics_line

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
     ValueError, r"beta must be in \[0, 10000\], got -0.1"),
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
     ValueError, "clip must be >= 1e-06, got 0"),
    ("unknown critic mode", lambda: PPOConfig(critic_mode="tiny"),
     ValueError, "PPOConfig.critic_mode must be one of 'auto', 'separate', 'shared', 'head', "
                 "'none', got 'tiny'"),
    ("negative beta in the config", lambda: PPOConfig(beta=-1.0),
     ValueError, r"PPOConfig.beta must be in \[0, 10000\], got -1.0"),
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
    (["train", "--beta", "-1", "--run-dir", "{tmp}/a"],
     "argument --beta: must be a finite number in [0, 10000], got '-1'"),
    # numbers are checked as they are read, each naming the value and the range it must be in
    (["train", "--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (["train", "--steps", "2.5"], "argument --steps: must be an integer >= 1, got '2.5'"),
    (["train", "--batch", "-8"], "argument --batch: must be an integer in [1, 10**8], got '-8'"),
    (["train", "--response-len", "0"], "argument --response-len: must be an integer >= 1"),
    (["train", "--ppo-epochs", "x"],
     "argument --ppo-epochs: must be an integer in [1, 10000], got 'x'"),
    (["train", "--minibatches", "0"], "argument --minibatches: must be an integer >= 1"),
    (["train", "--actor-lr", "nan"],
     "argument --actor-lr: must be a finite number in [1e-08, 1], got 'nan'"),
    (["train", "--actor-lr", "0"],
     "argument --actor-lr: must be a finite number in [1e-08, 1], got '0'"),
    (["train", "--beta", "inf"],
     "argument --beta: must be a finite number in [0, 10000], got 'inf'"),
    (["train", "--ent-coef", "-0.1"], "argument --ent-coef: must be a finite number in [0, 10000]"),
    (["train", "--kl-target", "0"], "argument --kl-target: must be a finite number > 0, got '0'"),
    (["train", "--kl-target", "-2"], "argument --kl-target: must be a finite number > 0"),
    (["train", "--seed", "-1"], "argument --seed: must be an integer in [0, 2**63), got '-1'"),
    (["train", "--seed", str(2**64)], f"got '{2**64}'"),
    (["train", "--save-every", "-1"], "argument --save-every: must be an integer >= 0, got '-1'"),
    (["train", "--nproc", "0"], "argument --nproc: must be an integer >= 1, got '0'"),
    (["train", "--nproc", "1000", "--run-dir", "{tmp}/n"], "--nproc 1000 on CPU: at most"),
    (["train", "--run-dir", ""], "argument --run-dir: must name a directory, got ''"),
    (["train", "--run-dir", "{tmp}/file.txt"],
     "must name a directory, got '{tmp}/file.txt' (a file)"),
    (["train", "--beta", "0", "--kl-target", "2", "--run-dir", "{tmp}/k"],
     "PPOConfig.beta must be > 0 with adaptive_kl"),
    (["train", "--batch", "10", "--minibatches", "4", "--run-dir", "{tmp}/m"],
     "batch_size (10) must be divisible by minibatches (4)"),
    (["--threads", "0", "models"], "argument --threads: must be an integer >= 1, got '0'"),
    (["pretrain", "--eval-samples", "0"],
     "argument --eval-samples: must be an integer in [1, 10**8]"),
    (["pretrain", "--reviews", "0"],
     "argument --reviews: must be an integer in [1, 10**8], got '0'"),
    (["train", "--task", "chess"], "argument --task: invalid choice: 'chess'"),
    (["train", "--task", "arith", "--reward", "model", "--run-dir", "{tmp}/a"],
     "PPOConfig.reward 'model': task 'arith' has no reward model; use reward 'gold' or 'lax'"),
    (["train", "--reward", "lax", "--run-dir", "{tmp}/l"],
     "PPOConfig.reward 'lax' does not apply to task 'reviews'"),
    (["pretrain", "--task", "arith", "--reviews", "100"],
     "PretrainConfig.reviews does not apply to task 'arith'; it trains on problems"),
    (["pretrain", "--problems", "100"], "PretrainConfig.problems does not apply to task 'reviews'"),
    (["models", "--task", "maths"], "argument --task: invalid choice: 'maths'"),
    (["pretrain", "--epochs", "-1"],
     "argument --epochs: must be an integer in [1, 10000], got '-1'"),
    (["pretrain", "--n-embd", "0"], "argument --n-embd: must be an integer in [1, 8192], got '0'"),
    (["pretrain", "--out", "{tmp}"], "argument --out: must name a file to write, got '{tmp}' "
                                     "(a directory)"),
    (["pretrain", "--out", ""], "argument --out: must name a file to write, got ''"),
    (["train-rm", "--pairs", "0"], "argument --pairs: must be an integer in [1, 10**8], got '0'"),
    (["train-rm", "--heldout", "-5"],
     "argument --heldout: must be an integer in [1, 10**8], got '-5'"),
    (["train-rm", "--out", "{tmp}"], "argument --out: must name a file to write"),
    (["trace", "--response-len", "0"], "argument --response-len: must be an integer >= 1"),
    (["trace", "--batch", "1e3"], "argument --batch: must be an integer in [1, 10**8], got '1e3'"),
    (["train", "--resume", "--run-dir", "{tmp}/none"], "holds no run to continue"),
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
    (tmp_path / "file.txt").write_text("not a directory")
    argv = [a.format(tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one line, even for argparse's errors
    assert message.format(tmp=tmp_path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before any work


def test_cli_refuses_a_run_directory_holding_another_run(tmp_path):
    run = [sys.executable, "-m", "rlhf_edu.cli", "train", "--steps", "1", "--batch", "8",
           "--response-len", "6", "--ppo-epochs", "1", "--quiet", "--run-dir", str(tmp_path)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    result = subprocess.run(run + ["--resume", "--seed", "9", "--steps", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "holds a different run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_nonfinite_loss_with_finite_weights_names_the_settings_not_divergence(monkeypatch):
    """A loss that overflows while the weights are finite is not a diverged run: the message
    says so and names the settings at the far end of their range."""
    from rlhf_edu import trainer as trainer_module

    real = trainer_module.total_loss
    monkeypatch.setattr(trainer_module, "total_loss",
                        lambda *a, **k: real(*a, **k) * float("inf"))
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1, minibatches=1,
                                    temperature=0.01))
    with pytest.raises(FloatingPointError) as info:
        trainer.step()
    message = str(info.value)
    assert message.startswith("step 1: NaN or inf in PPO loss (the weights are finite"), message
    assert "temperature=0.01 (the logits are multiplied by 100)" in message, message
    assert "diverged" not in message and "\n" not in message, message


def test_divergence_is_said_only_when_the_weights_diverged():
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1))
    with torch.no_grad():
        trainer.models.actor.gpt.ln_f.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"^step 1: generation failed, .*\(training "
                                                 r"diverged: lower the learning rates, "
                                                 r"actor_lr=0.0001, critic_lr=0.0003\)$"):
        trainer.step()


@pytest.mark.parametrize("role", ["actor", "critic"])
def test_weights_that_overflow_in_an_update_stop_training(role):
    """A finite loss can still leave inf in the weights; the update says so at once, instead of
    a later step failing deep inside sampling."""
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1, minibatches=1))
    opt = trainer.actor_opt if role == "actor" else trainer.critic_opt
    step = opt.step

    def overflowing_step(*args, **kwargs):
        out = step(*args, **kwargs)
        with torch.no_grad():
            opt.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    opt.step = overflowing_step
    lr = "0.0001" if role == "actor" else "0.0003"
    message = rf"^step 1: the PPO update made the {role}'s weights NaN or inf .*\(now {lr}\)"
    with pytest.raises(FloatingPointError, match=message):
        trainer.step()


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size="64"), "PPOConfig.batch_size must be an int in [1, 10**8], got '64' (str)"),
    (dict(batch_size=64.0), "PPOConfig.batch_size must be an int in [1, 10**8], got 64.0 (float)"),
    (dict(ppo_epochs=True), "PPOConfig.ppo_epochs must be an int in [1, 10000], got True (bool)"),
    (dict(beta=float("nan")), "PPOConfig.beta must be in [0, 10000], got nan"),
    (dict(actor_lr=float("inf")), "PPOConfig.actor_lr must be in [1e-08, 1], got inf"),
    (dict(clip="0.2"), "PPOConfig.clip must be a number in [1e-06, 1], got '0.2' (str)"),
    (dict(stop_at_eos=1), "PPOConfig.stop_at_eos must be True or False, got 1 (int)"),
    (dict(seed=2**63), "PPOConfig.seed must be an int in [0, 2**63), got 9223372036854775808"),
    (dict(seed=-1), "PPOConfig.seed must be an int in [0, 2**63), got -1"),
    (dict(seed=1.0), "PPOConfig.seed must be an int in [0, 2**63), got 1.0 (float)"),
    (dict(gamma=2), "PPOConfig.gamma must be in [0, 1], got 2"),
    (dict(group_size=0), "PPOConfig.group_size must be an int in [1, 10**8], got 0"),
    (dict(critic_mode=None), "PPOConfig.critic_mode must be one of 'auto', 'separate', "
                             "'shared', 'head', 'none', got None"),
    (dict(kl_estimator="full"), "PPOConfig.kl_estimator must be one of 'k1', 'k2', 'k3', "
                                "got 'full'"),
    (dict(placement=3), "PPOConfig.placement must be a str or dict, got int"),
    (dict(adaptive_kl=True, beta=0.0), "PPOConfig.beta must be > 0 with adaptive_kl"),
    (dict(adaptive_kl=True, kl_horizon=8), "PPOConfig.kl_horizon (8) must be >= batch_size (64)"),
])
def test_ppo_config_names_the_field_and_what_it_must_be(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PPOConfig(**kwargs)


def test_trainer_refuses_unusable_run_arguments(tmp_path):
    with pytest.raises(ValueError, match="run_dir is an empty path"):
        RLHFTrainer(PPOConfig(batch_size=8), run_dir="")
    with pytest.raises(ValueError, match="resume=True needs the run_dir"):
        RLHFTrainer(PPOConfig(batch_size=8), resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        RLHFTrainer(PPOConfig(batch_size=8), run_dir=tmp_path / "file")
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=4, ppo_epochs=1))
    for bad in (-1, 2.5, "3"):
        with pytest.raises(ValueError, match=f"save_every must be an int >= 0.*got {bad!r}"):
            trainer.train(1, save_every=bad, progress=False)
    with pytest.raises(ValueError, match="steps must be an int, got '2'"):
        trainer.train("2", progress=False)


def test_a_diverged_actor_fails_in_generation_with_the_step_and_a_hint():
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1))
    with torch.no_grad():
        trainer.models.actor.gpt.ln_f.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"^step 1: generation failed, the next-token "
                                                 r"logits are NaN or inf.*lower the learning"):
        trainer.step()


def test_a_full_disk_loses_nothing_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    from rlhf_edu import checkpoint

    run = tmp_path / "run"
    argv = ["train", "--steps", "2", "--batch", "8", "--response-len", "6", "--ppo-epochs", "1",
            "--quiet", "--save-every", "1", "--run-dir", str(run)]
    assert main(argv) == 0
    before = (run / "checkpoint.pt").read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 5 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    capsys.readouterr()
    assert main(argv[:1] + ["--resume", "--steps", "3"] + argv[3:]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "could not write" in err and "checkpoint.pt" in err and "full disk?" in err
    assert (run / "checkpoint.pt").read_bytes() == before  # the previous checkpoint survived
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ issue 24: late failures


def test_load_of_an_incomplete_run_checkpoint_names_the_file_and_what_is_missing(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"kind": "rlhf-run"}, path)
    trainer = RLHFTrainer(PPOConfig(batch_size=8))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is an incomplete RLHF run "
                                         r"checkpoint: it has no 'step', 'config', .*'actor'"):
        trainer.load(path)


def _strict(line: str) -> dict:
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name} in {line!r}")
    return json.loads(line, parse_constant=refuse)


def test_metrics_jsonl_is_strict_json_and_an_undefined_std_is_null_with_its_reason(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--batch", "1", "--response-len", "1", "--steps", "2",
                 "--minibatches", "1", "--ppo-epochs", "1", "--quiet", "--run-dir",
                 str(run)]) == 0
    lines = [_strict(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for m in lines:
        assert m["advantage_std"] is None
        assert m["undefined"] == {"advantage_std": UNDEFINED["advantage_std"]}
        assert "one value" in m["undefined"]["advantage_std"]
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        metrics_line({"loss": float("nan")})  # a NaN that slipped through is never written
    assert _strict(metrics_line(defined_metrics({"loss": float("inf")}))) == {
        "loss": None, "undefined": {"loss": "not finite (inf)"}}


def _unwritable(path, monkeypatch):
    """Make the folder ``path`` unwritable: by its mode, or (root writes anywhere) by what
    os.access reports for it."""
    path.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False
                            if os.path.abspath(p) == str(path) else real(p, mode, *a, **k))


OUT_COMMANDS = {
    "pretrain": ["pretrain", "--reviews", "50", "--epochs", "1"],
    "train-rm": ["train-rm", "--pairs", "8", "--heldout", "4", "--epochs", "1"],
    "dpo": ["dpo", "--pairs", "8", "--epochs", "1", "--quiet"],
}
OUT_CASES = {
    "file as parent": ("{tmp}/file.txt/model.pt", "'{tmp}/file.txt' in '{tmp}/file.txt/model.pt' "
                                                  "is a file, not a folder"),
    "missing parent": ("{tmp}/missing/model.pt", "the folder '{tmp}/missing' of "
                                                 "'{tmp}/missing/model.pt' does not exist"),
    "read-only folder": ("{tmp}/locked/model.pt", "the folder '{tmp}/locked' is not writable"),
    "existing folder": ("{tmp}/folder", "must name a file to write, got '{tmp}/folder' "
                                        "(a directory)"),
}


@pytest.mark.parametrize("case", OUT_CASES)
@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_every_training_command_checks_its_out_path_before_any_work(tmp_path, capsys,
                                                                    monkeypatch, command, case):
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "locked").mkdir()
    _unwritable(tmp_path / "locked", monkeypatch)
    out, message = (x.format(tmp=tmp_path) for x in OUT_CASES[case])
    start = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main([*OUT_COMMANDS[command], "--out", out])
    assert time.perf_counter() - start < 2.0  # refused before any work
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"argument --out: {message}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder", "locked"]
    assert list((tmp_path / "locked").iterdir()) == []


def test_run_dpo_checks_out_before_loading_anything(tmp_path):
    (tmp_path / "f").write_text("a file")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^out: '.*/f' in '.*/f/dpo.pt' is a file, not a "
                                         r"folder$"):
        run_dpo(DPOConfig(pairs=8), tmp_path / "f" / "dpo.pt")
    assert time.perf_counter() - start < 2.0


def test_an_overflowing_gradient_norm_stops_ppo_instead_of_a_zero_update(monkeypatch):
    """Clipping an inf gradient norm scales the update to 0 or, inf x 0, to NaN weights that
    would be blamed on the learning rate; the step stops instead, naming the gradient."""
    from rlhf_edu import trainer as trainer_module

    real = trainer_module.total_loss
    monkeypatch.setattr(trainer_module, "total_loss", lambda *a, **k: real(*a, **k) * 3e38)
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1, minibatches=1))
    with pytest.raises(FloatingPointError, match=r"^step 1: the (actor|critic)'s gradient norm "
                                                 r"is (inf|nan) while the loss is finite: its "
                                                 r"gradient overflows float32"):
        trainer.step()
