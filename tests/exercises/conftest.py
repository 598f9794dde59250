"""The graded tests' harness: which implementation is graded, and how a learner's code is called.

Every test file here sets ``EXERCISE = "exNN_topic"`` and asks for the ``ex`` fixture, which
imports ``exercises.exNN_topic`` (default) or ``solutions.exNN_topic`` (``--target=solutions``)
and wraps each of its functions so that a learner's mistake gives a failing grade with a
readable message instead of a wall of traceback or a stuck run:

* ``NotImplementedError("Exercise N: ...")`` fails the test with exactly that message;
* endless recursion fails with one line instead of a thousand frames;
* what the function prints is kept (first 2,000 characters) and the rest cut, so a print in a
  loop cannot flood the report;
* a function that never returns fails after ``RLHF_EDU_GRADE_TIMEOUT`` seconds (default 20) via
  pytest-timeout's "signal" method, which fails that one test and lets the others run (the
  "thread" method would end the whole session);
* other exceptions propagate unchanged, with their traceback, which is what a learner debugging
  the function wants to see.

Tests call ``ex.gae(...)``; comparison helpers in ``tests/exercises/grading_utils.py`` check
types and shapes before values and name the first position that is wrong.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository (holds exercises/ and solutions/)
# `pytest tests/exercises/...` puts tests/exercises on sys.path, not the repository root, so
# `import exercises` needs this (and so does `import grading_utils` from a test file).
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

TIMEOUT = float(os.environ.get("RLHF_EDU_GRADE_TIMEOUT", "20"))
PRINT_LIMIT = 2000  # characters of a learner's printed output that are kept per call


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A time limit for every graded test that does not set its own."""
    for item in items:
        if HERE in Path(item.path).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT, method="signal"))


class _BoundedText(io.TextIOBase):
    """A write-only text stream that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.kept, self.dropped = limit, [], 0
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = self.limit - self.size
        if room > 0:
            self.kept.append(s[:room])
            self.size += min(room, len(s))
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)


def _guarded(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        out = _BoundedText(PRINT_LIMIT)
        failure = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                return fn(*args, **kwargs)
        except NotImplementedError as e:
            failure = str(e) or f"{name} is not implemented yet"
        except RecursionError:
            failure = (f"{name} recursed without end (RecursionError): it calls itself with no "
                       "base case, or calls a function that calls it back")
        finally:
            if out.kept:
                sys.stdout.write("".join(out.kept))
            if out.dropped:
                sys.stdout.write(f"\n[... {out.dropped:,} more characters printed by {name} "
                                 "were cut]\n")
        # outside the `except` blocks, so the report shows the message without the traceback
        pytest.fail(failure, pytrace=False)

    return call


class Graded:
    """The module under test, with every public function wrapped by :func:`_guarded`."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.__name__ = module.__name__

    def __getattr__(self, attr: str) -> Any:
        if not hasattr(self.module, attr):
            pytest.fail(f"{self.module.__name__} has no function {attr!r}; it should define it "
                        "(did you rename or delete it?)", pytrace=False)
        value = getattr(self.module, attr)
        return _guarded(value, attr) if callable(value) and not isinstance(value, type) else value


def load(target: str, exercise: str) -> ModuleType:
    """Import ``target.exercise`` (e.g. ``exercises.ex03_gae``) with a readable failure."""
    name = f"{target}.{exercise}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name not in (target, name):
            raise
        problem = f"{target}/{exercise}.py not found under {ROOT}"
    except SyntaxError as e:
        problem = f"{target}/{exercise}.py does not compile: {e.msg} (line {e.lineno})"
    pytest.fail(problem, pytrace=False)  # outside `except`: no chained traceback


@pytest.fixture
def ex(request: pytest.FixtureRequest) -> Graded:
    """The module under test: ``exercises.<EXERCISE>`` or ``solutions.<EXERCISE>``."""
    exercise = getattr(request.module, "EXERCISE", None)
    if exercise is None:
        raise RuntimeError(f"{request.module.__name__} must set EXERCISE = 'exNN_topic'")
    return Graded(load(request.config.getoption("--target"), exercise))
