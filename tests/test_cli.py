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
