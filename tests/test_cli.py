"""The ``rlhf-edu`` command documents itself: every subcommand and every flag has help text."""

import argparse

import pytest

from rlhf_edu.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_has_help():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    assert set(helps) == set(_subparsers(parser))
    assert all(h and h.strip() for h in helps.values()), helps


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_every_flag_has_help(command):
    sub = _subparsers(build_parser())[command]
    missing = [a.option_strings or [a.dest] for a in sub._actions
               if not isinstance(a, argparse._HelpAction)
               and (not a.help or a.help == argparse.SUPPRESS)]
    assert missing == [], f"rlhf-edu {command}: no help text for {missing}"
    text = sub.format_help()
    for a in sub._actions:
        for flag in a.option_strings:
            assert flag in text


def test_grade_takes_several_exercise_numbers(capsys):
    from rlhf_edu.cli import main

    assert main(["grade", "2", "4", "--target", "solutions"]) == 0
    table = capsys.readouterr().out
    rows = [line.split()[0] for line in table.splitlines()[1:] if line.split()[0].isdigit()]
    assert rows == ["2", "4"], table
    assert main(["grade", "2", "x"]) == 2
    assert "the exercise must be a number such as 3, got 'x'" in capsys.readouterr().err


def test_the_largest_seed_runs_to_the_end(tmp_path, capsys):
    """A seed the command line accepts is usable throughout: the evaluation's ``seed + 1`` and
    the trainer's sampling seed wrap into [0, 2**63) instead of being refused after training."""
    from rlhf_edu.cli import main

    out = tmp_path / "sft.pt"
    assert main(["pretrain", "--seed", str(2**63 - 1), "--reviews", "16", "--epochs", "1",
                 "--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--eval-samples", "2",
                 "--out", str(out)]) == 0
    assert out.exists() and f"wrote {out}" in capsys.readouterr().out
    assert main(["train", "--seed", str(2**63 - 1), "--steps", "1", "--batch", "4",
                 "--response-len", "4", "--ppo-epochs", "1", "--minibatches", "1", "--quiet",
                 "--run-dir", str(tmp_path / "run")]) == 0


def test_every_config_field_is_a_flag_checked_as_the_api_checks_it(capsys):
    """Flags come from the fields: each field of a command's config has one, with the field's
    bounds (the same refusal as the API's, read from the same metadata)."""
    import dataclasses

    from rlhf_edu.cli import main
    from rlhf_edu.config import DPOConfig, PPOConfig, PretrainConfig, RewardModelConfig

    commands = {"train": PPOConfig, "dpo": DPOConfig, "pretrain": PretrainConfig,
                "train-rm": RewardModelConfig}
    for command, cls in commands.items():
        text = _subparsers(build_parser())[command].format_help()
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            assert flag in text, (command, flag)
    for flag, value, field in (("--gamma", "2", "gamma"), ("--vf-clip", "-1", "vf_clip"),
                               ("--critic-lr", "0", "critic_lr")):
        with pytest.raises(SystemExit):
            main(["train", flag, value])
        err = capsys.readouterr().err
        assert f"argument {flag}: must be a finite number" in err, err
        with pytest.raises(ValueError, match=f"PPOConfig.{field} must be"):
            PPOConfig(**{field: float(value)})


def test_flags_build_the_config_the_api_would():
    from rlhf_edu.cli import config_from_args
    from rlhf_edu.config import PPOConfig

    args = build_parser().parse_args(
        ["train", "--batch", "8", "--estimator", "grpo", "--group-size", "4", "--kl-target",
         "2", "--recompute-logprobs", "--no-whiten-advantages", "--placement",
         '{"reward": "cpu"}', "--vf-clip", "0", "--seed", "7"])
    assert config_from_args(args) == PPOConfig(
        batch_size=8, advantage_estimator="grpo", group_size=4, adaptive_kl=True, kl_target=2.0,
        recompute_logprobs=True, whiten_advantages=False, placement={"reward": "cpu"},
        vf_clip=0.0, seed=7)
    assert config_from_args(build_parser().parse_args(["train"])) == PPOConfig()
