"""Shared test set-up: one thread, the ``--target`` option of the graded exercise tests."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

EXERCISES = Path(__file__).parent / "exercises"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--target", choices=("exercises", "solutions"), default="exercises",
                     help="which implementation the graded tests in tests/exercises grade")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The graded tests run only when asked for by path (learners, `rlhf-edu grade`, and
    tests/test_grader.py, which proves they pass the solutions and fail the stubs)."""
    if collection_path == EXERCISES or EXERCISES in collection_path.parents:
        asked = [Path(a.split("::")[0]).resolve() for a in config.args]
        if not any(a == EXERCISES or EXERCISES in a.parents for a in asked):
            return True
    return None


@pytest.fixture(scope="session")
def sft():
    from rlhf_edu.models import load_pretrained
    return load_pretrained("sft")


@pytest.fixture(scope="session")
def reward_model():
    from rlhf_edu.models import load_pretrained
    return load_pretrained("reward")
