"""The graded tests' harness: which implementation is graded, and how a learner's code is called.

Every test file here sets ``EXERCISE = "exNN_topic"`` and asks for the ``ex`` fixture, which
imports ``exercises.exNN_topic`` (default) or ``solutions.exNN_topic`` (``--target=solutions``)
and wraps each of its functions so that a learner's mistake gives a failing grade with a
readable message instead of a wall of traceback or a stuck run, and is graded as a mistake of
that function only (the mechanisms are in ``grading_utils.py``):

* the function gets copies of its arguments (:func:`grading_utils.pristine_call`): writing
  into them cannot change the values the test computes its expectations from;
* what the function changes in the process (a patched ``torch.allclose``, the grad mode, the
  default dtype, the working directory, ...) is undone when it returns or raises
  (:class:`grading_utils.learner_code`), and again after each test with the random state
  (:func:`grading_utils.isolated_test`, an autouse fixture);
* its result is read as plain values (:func:`grading_utils.plain`): a tensor subclass or an
  object whose ``__eq__`` says yes to everything cannot pass a comparison it fails;

* ``NotImplementedError("Exercise N: ...")`` fails the test with exactly that message;
* endless recursion fails with one line instead of a thousand frames;
* what the function prints is kept (first 2,000 characters) and the rest cut, so a print in a
  loop cannot flood the report;
* a function that never returns fails after ``RLHF_EDU_GRADE_TIMEOUT`` seconds (default 20;
  anything but a number in (0, 3600] is refused) via pytest-timeout's "signal" method, which
  fails that one test and lets the others run (the "thread" method would end the whole
  session); ``rlhf-edu grade`` also stops a test this alarm cannot (see rlhf_edu.grading);
* other exceptions propagate unchanged, with their traceback, which is what a learner debugging
  the function wants to see.

Tests call ``ex.gae(...)``; comparison helpers in ``tests/exercises/grading_utils.py`` check
types and shapes before values and name the first position that is wrong.
"""

from __future__ import annotations

import contextlib
import importlib
import io
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

from grading_utils import isolated_test, learner_code, plain, pristine_call, protect  # noqa: E402

from rlhf_edu.grading import DEFAULT_TEST_LIMIT, per_test_limit  # noqa: E402

if __name__ in sys.modules:  # as pytest imports it (not when a test loads it by path)
    protect(sys.modules[__name__])
TIMEOUT = DEFAULT_TEST_LIMIT  # seconds per graded test; pytest_configure reads the variable
PRINT_LIMIT = 2000  # characters of a learner's printed output that are kept per call
_MISSING = object()


def pytest_configure(config: pytest.Config | None) -> None:
    """The per-test limit: ``RLHF_EDU_GRADE_TIMEOUT`` seconds, 20 when unset; anything but a
    number in (0, 3600] (0 would mean no limit) stops pytest with one line."""
    global TIMEOUT
    try:
        TIMEOUT = per_test_limit()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A time limit for every graded test that does not set its own; torch's first optimizer
    imports torch._dynamo (a second or more), so a test file that uses one gets it before its
    tests' time limits start, and the limits measure the learner's code."""
    graded = [item for item in items if HERE in Path(item.path).resolve().parents]
    for item in graded:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT, method="signal"))
    if any("torch.optim." in path.read_text() for path in {Path(i.path) for i in graded}):
        import torch

        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


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


@pytest.fixture(autouse=True)
def _isolated() -> Any:
    """What one test's learner code changed in the process does not reach the next test."""
    with isolated_test():
        yield


def _guarded(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = pristine_call(args, kwargs)
        out = _BoundedText(PRINT_LIMIT)
        failure = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), learner_code():
                result = fn(*args, **kwargs)
            return plain(result)
        except NotImplementedError as e:
            with learner_code():  # str() of the learner's exception runs its code
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

    call.__name__ = call.__qualname__ = name
    return call


class Graded:
    """The module under test, with every public function wrapped by :func:`_guarded`."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.__name__ = module.__name__

    def __getattr__(self, attr: str) -> Any:
        value = vars(self.module).get(attr, _MISSING)
        if value is _MISSING:
            with learner_code():  # a module-level __getattr__ is the learner's code
                value = getattr(self.module, attr, _MISSING)
        if value is _MISSING:
            pytest.fail(f"{self.module.__name__} has no function {attr!r}; it should define it "
                        "(did you rename or delete it?)", pytrace=False)
        if isinstance(value, type):
            return value
        return _guarded(value, attr) if callable(value) else plain(value)


_FAILED_IMPORTS: dict[str, str] = {}  # module -> why its import failed (in an earlier test)


def load(target: str, exercise: str) -> ModuleType:
    """Import ``target.exercise`` (e.g. ``exercises.ex03_gae``) with a readable failure.

    An import that failed otherwise (an exception, or the time limit) is not tried again by
    the tests after it: they fail at once with the reason, instead of each waiting out the
    time limit of an import that loops."""
    name = f"{target}.{exercise}"
    if name in _FAILED_IMPORTS:
        pytest.fail(f"{target}/{exercise}.py failed to import in an earlier test: "
                    f"{_FAILED_IMPORTS[name]}", pytrace=False)
    try:
        with learner_code():  # what the module does at import is undone after it
            return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name not in (target, name):
            raise
        problem = f"{target}/{exercise}.py not found under {ROOT}"
    except SyntaxError as e:
        problem = f"{target}/{exercise}.py does not compile: {e.msg} (line {e.lineno})"
    except BaseException as e:  # its traceback goes to this test's report
        if not isinstance(e, KeyboardInterrupt | SystemExit):
            with learner_code():  # str() of the learner's exception runs its code
                text = f"{type(e).__name__}: {e}".splitlines()[0]
            _FAILED_IMPORTS[name] = text.replace("Failed: ", "", 1)
        raise
    pytest.fail(problem, pytrace=False)  # outside `except`: no chained traceback


@pytest.fixture
def ex(request: pytest.FixtureRequest) -> Graded:
    """The module under test: ``exercises.<EXERCISE>`` or ``solutions.<EXERCISE>``."""
    exercise = getattr(request.module, "EXERCISE", None)
    if exercise is None:
        raise RuntimeError(f"{request.module.__name__} must set EXERCISE = 'exNN_topic'")
    return Graded(load(request.config.getoption("--target"), exercise))
