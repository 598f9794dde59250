"""The grader judges the learner's code, and only it ("Hardening, round two", class 2).

Each test builds a small course in ``tmp_path`` (copies of ``exercises/``, ``solutions/`` and
``tests/exercises/``), writes adversarial ``exNN`` files there and grades them with
``rlhf_edu.grading.grade(root=...)``: a correct solution that mutates its inputs in place, a
wrong one that zeroes them, global side effects (grad mode, default dtype, seeds, patched torch
functions, the working directory), hangs the per-test alarm cannot stop, tampering with the
comparisons (patched ``torch.allclose``/``math.isclose``/``pytest.fail``, swapped function code,
tensor subclasses and Python objects that lie), error messages that would redraw the terminal
(escape sequences, a forged score line), a deleted graded test file or test function, and bad
arguments to ``rlhf-edu grade``; and that each exercise runs in a fresh process of its own. The
real ``exercises/`` and ``solutions/`` are never touched.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rlhf_edu import cli, grading

ROOT = Path(__file__).resolve().parents[1]
COURSE = ", ".join(str(int(p.name[2:4]))  # the exercise numbers, "1, 2, ...", as files
                   for p in sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py")))
GRADED = ROOT / "tests" / "exercises"


def make_course(dest: Path, numbers: tuple[int, ...]) -> Path:
    """A copy of the course with only the exercises ``numbers`` (stubs, solutions, tests)."""
    (dest / "tests" / "exercises").mkdir(parents=True)
    (dest / "pytest.ini").write_text("[pytest]\n")
    shutil.copy(ROOT / "tests" / "conftest.py", dest / "tests" / "conftest.py")
    for name in ("conftest.py", "grading_utils.py"):
        shutil.copy(GRADED / name, dest / "tests" / "exercises" / name)
    if 7 in numbers:
        shutil.copytree(GRADED / "data", dest / "tests" / "exercises" / "data")
    for folder in ("exercises", "solutions"):
        (dest / folder).mkdir()
        (dest / folder / "__init__.py").write_text("")
    for n in numbers:
        for folder in ("exercises", "solutions"):
            (path,) = (ROOT / folder).glob(f"ex{n:02d}_*.py")
            shutil.copy(path, dest / folder / path.name)
        (path,) = GRADED.glob(f"test_ex{n:02d}_*.py")
        shutil.copy(path, dest / "tests" / "exercises" / path.name)
    return dest


def write_exercise(root: Path, number: int, source: str) -> None:
    (path,) = (root / "exercises").glob(f"ex{number:02d}_*.py")
    path.write_text(textwrap.dedent(source).replace("{stem}", path.stem))


def recorded_rows(monkeypatch) -> list[dict]:
    """The rows the next ``grading.grade`` call returns (``rlhf-edu grade`` calls it), kept in
    the list returned here."""
    rows: list[dict] = []
    grade = grading.grade

    def recording(*args, **kwargs):
        rows[:] = grade(*args, **kwargs)
        return list(rows)

    monkeypatch.setattr(grading, "grade", recording)
    return rows


def by_number(rows: list[dict]) -> dict[int, dict]:
    return {row["exercise"]: row for row in rows}


def failing(row: dict) -> set[str]:
    return {f["test"] for f in row["failures"]}


# A correct solution that computes its answer, then scrambles every input it was given.
IN_PLACE = '''
    """Correct answers, but every input tensor is overwritten in place afterwards."""
    import functools
    import inspect

    import torch

    import solutions.{stem} as _solution


    def _scramble(x):
        if isinstance(x, torch.Tensor) and not x.requires_grad:
            with torch.no_grad():
                if x.is_floating_point():
                    x.mul_(-3.0).add_(0.25)
                else:
                    x.zero_()
        elif isinstance(x, (list, tuple)):
            for y in x:
                _scramble(y)


    def _copy(x):
        return x.clone() if isinstance(x, torch.Tensor) else x


    def _in_place(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = fn(*map(_copy, args), **{k: _copy(v) for k, v in kwargs.items()})
            for x in (*args, *kwargs.values()):
                _scramble(x)
            return out
        return wrapper


    for _name, _fn in inspect.getmembers(_solution, inspect.isfunction):
        if _fn.__module__ == _solution.__name__ and not _name.startswith("_"):
            globals()[_name] = _in_place(_fn)
'''

# Appended to a correct module: records the process that imports it (its id, its parent's, its
# session's) next to the module.
PROCESS_PROBE = '''

    import json
    import os
    from pathlib import Path

    Path(__file__).with_suffix(".json").write_text(json.dumps(
        {"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0)}))
'''

# Wrong: returns zeros, after zeroing the inputs the expected values would be computed from.
ZEROING_GAE = '''
    import torch


    def gae(rewards, values, mask, gamma=1.0, lam=0.95):
        rewards.zero_()
        values.zero_()
        return torch.zeros_like(rewards), torch.zeros_like(rewards)
'''

# Correct KL and reward, with global side effects at import and after every call.
SIDE_EFFECTS = '''
    import os

    import torch

    from solutions.{stem} import kl_k1, kl_k2, kl_k3
    from solutions.{stem} import total_reward as _total_reward


    def _side_effects():
        torch.set_grad_enabled(False)
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(1234)
        torch.allclose = lambda *args, **kwargs: False
        torch.isclose = lambda a, b, *args, **kwargs: torch.zeros(a.shape, dtype=torch.bool)
        torch.Tensor.sum = lambda self, *args, **kwargs: torch.tensor(-1.0)
        os.chdir(os.path.dirname(os.getcwd()) or "/")


    def total_reward(*args, **kwargs):
        out = _total_reward(*args, **kwargs)
        _side_effects()
        return out


    _side_effects()
'''

# Wrong answers wrapped in a tensor subclass that says every comparison holds.
LYING_TENSOR = '''
    import torch


    class Liar(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            shapes = [a.shape for a in args[:2] if isinstance(a, torch.Tensor)]
            if name in ("isclose", "eq", "__eq__", "ge", "le", "__ge__", "__le__"):
                return torch.ones(torch.broadcast_shapes(*shapes), dtype=torch.bool)
            if name in ("lt", "gt", "ne", "__lt__", "__gt__", "__ne__", "isnan", "isinf"):
                return torch.zeros(torch.broadcast_shapes(*shapes), dtype=torch.bool)
            if name in ("allclose", "equal"):
                return True
            return super().__torch_function__(func, types, args, kwargs)

        def item(self):
            return 0.5

        def tolist(self):
            return 0.5

        def as_subclass(self, cls):
            return self


    def preference_probability(r_chosen, r_rejected):
        return torch.full_like(r_chosen, 0.9).as_subclass(Liar)


    def bradley_terry_loss(r_chosen, r_rejected):
        return ((r_chosen - r_rejected) * 0.0).mean().as_subclass(Liar)


    def pairwise_accuracy(r_chosen, r_rejected):
        return 0.0
'''

# Wrong answers; meanwhile the comparisons, pytest.fail and the graded test's helpers are
# patched, at import and during every call.
PATCHING = '''
    import math
    import sys

    import grading_utils
    import pytest
    import torch


    def _nothing(*args, **kwargs):
        return None


    def _tamper():
        torch.allclose = lambda *args, **kwargs: True
        torch.equal = lambda *args, **kwargs: True
        torch.isclose = lambda a, b, *args, **kwargs: torch.ones(a.shape, dtype=torch.bool)
        torch.Tensor.__eq__ = lambda self, other: torch.ones(self.shape, dtype=torch.bool)
        math.isclose = lambda *args, **kwargs: True
        grading_utils.expect_close.__code__ = _nothing.__code__
        grading_utils.expect_scalar = lambda x, name: x
        pytest.fail = _nothing
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("test_ex05"):
                module.expect_close = _nothing


    def preference_probability(r_chosen, r_rejected):
        _tamper()
        return torch.zeros_like(r_chosen)


    def bradley_terry_loss(r_chosen, r_rejected):
        _tamper()
        return (r_chosen - r_rejected).mean() * 0.0


    def pairwise_accuracy(r_chosen, r_rejected):
        _tamper()
        return 0.0


    _tamper()
'''

# Shapes and counts of the right length whose entries equal anything.
LYING_INTS = '''
    import solutions.{stem} as _solution


    class Same(int):
        def __eq__(self, other):
            return True

        def __ne__(self, other):
            return False

        __hash__ = int.__hash__


    def step_shapes(*args, **kwargs):
        shapes = _solution.step_shapes(*args, **kwargs)
        return {key: tuple(Same(0) for _ in shape) for key, shape in shapes.items()}


    def forward_passes(*args, **kwargs):
        return {key: Same(0) for key in _solution.forward_passes(*args, **kwargs)}
'''

# A float that, converted with float(), answers with the grader's own expected value.
ECHO_FLOAT = '''
    import sys

    from solutions.{stem} import chapter_memory_gb, fits, plan_70b, rlhf_memory_gb


    class Echo(float):
        def __float__(self):
            frame = sys._getframe(1)
            while frame is not None:
                if "want" in frame.f_locals:
                    return float(frame.f_locals["want"])
                frame = frame.f_back
            return 0.0


    def trained_model_gb(*args, **kwargs):
        return Echo(0.0)
'''

# An answer equal to every verdict.
ALWAYS_EQUAL = '''
    class Verdict:
        def __eq__(self, other):
            return True

        def __ne__(self, other):
            return False

        __hash__ = object.__hash__

        def __repr__(self):
            return "'ok'"


    def diagnose_beta(history):
        return Verdict()
'''

# Hangs the per-test alarm cannot stop, and a thread that never ends.
HANGS = '''
    import signal
    import threading
    import time

    from solutions.{stem} import bradley_terry_loss as _loss

    _THREADS = []


    def preference_probability(r_chosen, r_rejected):
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # the per-test alarm now does nothing
        while True:
            pass


    def pairwise_accuracy(r_chosen, r_rejected):
        return float(sum(range(10**12)))  # one long C call: no signal handler runs meanwhile


    def _forever():
        while True:
            time.sleep(0.05)


    def bradley_terry_loss(r_chosen, r_rejected):
        if not _THREADS:  # a non-daemon thread: the interpreter would wait for it at exit
            _THREADS.append(threading.Thread(target=_forever))
            _THREADS[0].start()
        return _loss(r_chosen, r_rejected)
'''


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    """One course of mostly adversarial exercises, graded once: (root, rows by number). 2 and
    3 also record the process that imports them."""
    root = make_course(tmp_path_factory.mktemp("adversarial"), (1, 2, 3, 4, 5, 6, 7))
    for n in (2, 3, 4):
        write_exercise(root, n, IN_PLACE + (PROCESS_PROBE if n < 4 else ""))
    write_exercise(root, 1, LYING_INTS)
    write_exercise(root, 5, PATCHING)
    write_exercise(root, 6, ECHO_FLOAT)
    write_exercise(root, 7, ALWAYS_EQUAL)
    return root, by_number(grading.grade(root=root, timeout=300))


@pytest.fixture(scope="module")
def side_effects(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Exercise 2 with global side effects, 3 zeroing its inputs, 4 solved, 5 a lying tensor,
    and 6's graded test file deleted: (root, rows)."""
    root = make_course(tmp_path_factory.mktemp("side_effects"), (2, 3, 4, 5, 6))
    write_exercise(root, 2, SIDE_EFFECTS)
    write_exercise(root, 3, ZEROING_GAE)
    write_exercise(root, 4, "from solutions.{stem} import *  # noqa: F403\n")
    write_exercise(root, 5, LYING_TENSOR)
    (root / "tests" / "exercises" / "test_ex06_memory.py").unlink()
    return root, grading.grade(root=root, timeout=300)


# ------------------------------------------------------------------ inputs mutated in place


@pytest.mark.parametrize("number", [2, 3, 4])
def test_correct_solution_that_mutates_its_inputs_passes(adversarial, number):
    row = adversarial[1][number]
    assert row["error"] is None and row["total"] > 0, row
    assert row["passed"] == row["total"], row["failures"]


def test_wrong_solution_that_zeroes_its_inputs_gains_nothing(side_effects):
    row = by_number(side_effects[1])[3]
    # zeros are right only where every expected value is 0 (no reward, no value)
    assert (row["total"], row["passed"]) == (9, 1), row
    assert "test_returns_advantages_and_returns" not in failing(row)
    messages = {f["test"]: f["message"] for f in row["failures"]}
    assert messages["test_padding_is_zero_and_not_bootstrapped"].startswith(
        "advantages[0, 5] is 0 but should be 0.4: t=5 is the last response token"), messages


# ------------------------------------------------------------------ global side effects


def test_side_effects_of_one_exercise_do_not_change_another_grade(side_effects):
    rows = by_number(side_effects[1])
    for n in (2, 4):  # 2 is correct despite its side effects; 4 is the plain solution
        assert rows[n]["error"] is None and rows[n]["passed"] == rows[n]["total"] > 0, rows[n]


def test_side_effects_do_not_leak_within_one_pytest_process(side_effects, tmp_path):
    """A learner's `pytest tests/exercises` runs every exercise in one process."""
    root = side_effects[0]
    report = tmp_path / "report.xml"
    files = sorted(str(p) for p in (root / "tests" / "exercises").glob("test_ex0[2-5]_*.py"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", *files, f"--junitxml={report}", "-q",
                           "-p", "no:cacheprovider", "-p", "pytest_timeout"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcome: dict[str, list[bool]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        stem = case.get("classname", "").split(".")[-1]
        outcome.setdefault(stem, []).append(not any(c.tag in ("failure", "error", "skipped")
                                                    for c in case))
    assert all(outcome["test_ex02_kl_reward"]) and all(outcome["test_ex04_ppo_loss"]), outcome
    assert sum(outcome["test_ex03_gae"]) == 1 and not any(outcome["test_ex05_reward_model_loss"])


# ------------------------------------------------------------------ tampering


def test_a_lying_tensor_subclass_does_not_pass_a_wrong_answer(side_effects):
    row = by_number(side_effects[1])[5]
    assert row["error"] is None and (row["total"], row["passed"]) == (8, 0), row
    messages = {f["test"]: f["message"] for f in row["failures"]}
    assert messages["test_preference_probability"].startswith(
        "preference_probability[0] is 0.9 but should be 0.731059"), messages
    assert messages["test_loss_hand_made"].startswith("bradley_terry_loss is 0 but should be "
                                                      "0.711"), messages


def test_patched_comparisons_do_not_pass_a_wrong_answer(adversarial):
    row = adversarial[1][5]
    assert row["error"] is None and (row["total"], row["passed"]) == (8, 0), row
    messages = {f["test"]: f["message"] for f in row["failures"]}
    assert messages["test_pairwise_accuracy"].startswith("pairwise_accuracy is 0 but should be "
                                                         "0.6"), messages


@pytest.mark.parametrize("number, kind", [(1, "int subclass"), (6, "float subclass"),
                                          (7, "object")])
def test_lying_python_values_do_not_pass_a_wrong_answer(adversarial, number, kind):
    row = adversarial[1][number]
    assert row["error"] is None and row["total"] > 0, row
    if number == 6:  # only trained_model_gb lies; the other functions are the solution's
        assert failing(row) == {f["test"] for f in row["failures"]
                                if f["test"].startswith("test_trained_model[")}
        assert len(row["failures"]) == 9 and row["passed"] == row["total"] - 9, row
    else:
        assert row["passed"] == 0, (kind, row)
    if number == 7:
        assert "diagnose_beta should return one of ('too_low', 'too_high', 'ok'), got 'ok'" in (
            row["failures"][-1]["message"])


# ------------------------------------------------------------------ hangs and crashes

# Correct, except that masked_mean ends the process and the first call of ppo_policy_loss
# interrupts the run (what Ctrl-C would do).
CRASHES = '''
    import os
    from pathlib import Path

    import solutions.{stem} as _solution
    from solutions.{stem} import ppo_value_loss

    _ONCE = Path(__file__).with_name("interrupted")


    def masked_mean(x, mask):
        os._exit(3)


    def ppo_policy_loss(*args, **kwargs):
        if not _ONCE.exists():
            _ONCE.write_text("")
            raise KeyboardInterrupt
        return _solution.ppo_policy_loss(*args, **kwargs)
'''


# Modules whose import never ends: the alarm can stop the first, not the second.
IMPORT_LOOP = '''
    while True:
        pass
'''
IMPORT_HANG = '''
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        pass
'''


def test_hangs_cost_one_time_limit_and_keep_the_other_results(tmp_path, monkeypatch):
    root = make_course(tmp_path, (2, 3, 4, 5))
    write_exercise(root, 5, HANGS)
    write_exercise(root, 4, CRASHES)
    write_exercise(root, 3, IMPORT_HANG)
    write_exercise(root, 2, IMPORT_LOOP)
    monkeypatch.setenv("RLHF_EDU_GRADE_TIMEOUT", "2")
    start = time.perf_counter()
    looped, hung, crashed, row = grading.grade(root=root, timeout=300)
    elapsed = time.perf_counter() - start
    # an import that never ends costs one time limit, not one per test
    assert (looped["passed"], looped["total"], hung["passed"], hung["total"]) == (0, 13, 0, 9)
    assert looped["failures"][0]["message"] == "error: Timeout (>2.0s) from pytest-timeout."
    assert {f["message"] for f in looped["failures"][1:]} == {
        "error: exercises/ex02_kl_reward.py failed to import in an earlier test: Timeout "
        "(>2.0s) from pytest-timeout."}
    assert hung["failures"][0]["message"] == (
        "did not finish within 2 s, so the grader stopped it (an endless loop the per-test "
        "alarm could not interrupt?) [while setting the test up: importing the exercise's "
        "module]")
    assert {f["message"] for f in hung["failures"][1:]} == {
        "did not run: importing the exercise's module did not finish in an earlier test"}
    # a crash or an interruption fails the test it happened in; the others still run
    assert crashed["error"] is None and (crashed["total"], crashed["passed"]) == (16, 14)
    messages = {f["test"]: f["message"] for f in crashed["failures"]}
    assert messages == {
        "test_masked_mean_ignores_padding": "the test process ended during this test (exit "
        "code 3): does the code call sys.exit() or os._exit(), or crash?",
        "test_policy_loss_clipping_regimes[good-high]": "the test run stopped during this test "
        "(pytest.exit or interrupted?)"}
    assert row["error"] is None and (row["total"], row["passed"]) == (8, 6), row
    messages = {f["test"]: f["message"] for f in row["failures"]}
    assert set(messages) == {"test_preference_probability", "test_pairwise_accuracy"}
    for message in messages.values():
        assert message.startswith("did not finish within 2 s, so the grader stopped it"), message
    margin = grading.stop_margin(2.0)
    assert margin <= 3
    # three hangs of (limit + margin) and one limit, on two workers: far from 900 s
    assert elapsed < 3 * (2 + margin) + 2 + 40, elapsed
    text = grading.format_scores([row], failures=5)
    assert "test_preference_probability: did not finish within 2 s" in text


def test_each_exercise_runs_in_a_fresh_process_of_its_own(adversarial):
    """Learner code never runs in the grader's process, nor in a fork of a process shared by
    the exercises: each exercise gets a new interpreter, started by the grader, in a session
    (process group) of its own that the grader can kill as a whole."""
    root, rows = adversarial  # exercises 2 and 3 (correct) recorded their processes
    assert all(rows[n]["error"] is None and rows[n]["passed"] == rows[n]["total"] > 0
               for n in (2, 3)), rows
    seen = [json.loads(p.read_text()) for p in sorted((root / "exercises").glob("*.json"))]
    assert len(seen) == 2 and seen[0]["pid"] != seen[1]["pid"], seen
    for process in seen:
        assert process["ppid"] == os.getpid() != process["pid"], process
        assert process["sid"] == process["pid"] != os.getsid(0), process
    assert not [m for m in sys.modules if m.split(".")[0] == "exercises"]


BAD_LIMIT = "RLHF_EDU_GRADE_TIMEOUT must be a number of seconds in (0, 3600] (default 20), got "


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "1e10", "3600.5", "0x10"])
def test_bad_per_test_limit_is_refused(monkeypatch, capsys, value):
    monkeypatch.setenv("RLHF_EDU_GRADE_TIMEOUT", value)
    message = BAD_LIMIT + repr(value)
    with pytest.raises(ValueError) as info:
        grading.grade(3, root=ROOT)
    assert str(info.value) == message
    assert cli.main(["grade", "3", "--root", str(ROOT)]) == 2  # one line, before any test runs
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines() == [f"error: {message}"]
    # the graded tests' own harness refuses it the same way, as pytest's usage error
    harness = _load_conftest()
    with pytest.raises(pytest.UsageError) as info:
        harness.pytest_configure(None)
    assert str(info.value) == message


def test_unset_per_test_limit_is_the_default(monkeypatch):
    monkeypatch.delenv("RLHF_EDU_GRADE_TIMEOUT", raising=False)
    assert grading.per_test_limit() == 20.0
    monkeypatch.setenv("RLHF_EDU_GRADE_TIMEOUT", " ")
    assert grading.per_test_limit() == 20.0
    assert grading.per_test_limit("0.5") == 0.5
    assert grading.per_test_limit(" 3600 ") == 3600.0 == grading.MAX_TEST_LIMIT
    with pytest.raises(ValueError, match=r"in \(0, 3600\] \(default 20\), got True$"):
        grading.per_test_limit(True)


def _load_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_graded_conftest", GRADED / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ missing graded tests


def test_a_deleted_graded_test_file_is_an_error_row(side_effects):
    root, rows = side_effects
    assert [r["exercise"] for r in rows] == [2, 3, 4, 5, 6]
    row = by_number(rows)[6]
    # its tests still count, as the manifest the package ships lists them: the total holds
    assert (row["passed"], row["total"], row["failures"]) == (0, 27, [])
    assert row["error"] == ("tests/exercises/test_ex06_memory.py is missing, so exercise 6 "
                            "cannot be graded (restore the file)")
    text = grading.format_scores(rows)
    assert re.search(r"6\s+ex06_memory\s+0 / 27\s+error", text)
    assert text.splitlines()[-1].endswith("(not graded: exercise 6)"), text
    (row,) = grading.grade(6, root=root)  # asked for by number: the same row, no exception
    assert row["error"].startswith("tests/exercises/test_ex06_memory.py is missing")


def test_course_exercises_come_from_the_exercise_files(side_effects):
    assert grading.course_exercises(side_effects[0]) == {
        2: "ex02_kl_reward", 3: "ex03_gae", 4: "ex04_ppo_loss", 5: "ex05_reward_model_loss",
        6: "ex06_memory"}


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("argv, message", [
    (["0"], f"no exercise 0; the exercises are {COURSE}"),
    (["99"], f"no exercise 99; the exercises are {COURSE}"),
    (["-1"], f"no exercise -1; the exercises are {COURSE}"),
    (["three"], "the exercise must be a number such as 3, got 'three'"),
    (["--timeout", "0"], "--timeout must be a number of seconds > 0, got '0'"),
    (["--timeout", "-5"], "--timeout must be a number of seconds > 0, got '-5'"),
    (["--timeout", "nan"], "--timeout must be a number of seconds > 0, got 'nan'"),
    (["--timeout", "soon"], "--timeout must be a number of seconds > 0, got 'soon'"),
])
def test_grade_cli_bad_arguments(capsys, argv, message):
    assert cli.main(["grade", *argv, "--root", str(ROOT)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [f"error: {message}"]


def test_grade_cli_bad_root(capsys, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    for root, message in ((a_file, f"root {str(a_file)!r} is a file, not a folder"),
                          (tmp_path / "missing", f"root {str(tmp_path / 'missing')!r} does not "
                                                 "exist")):
        assert cli.main(["grade", "--root", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [f"error: {message}"], err


@pytest.mark.parametrize("kwargs, message", [
    ({"exercise": 0}, f"no exercise 0; the exercises are {COURSE}"),
    ({"exercise": True}, "the exercise must be a number such as 3, got True"),
    ({"exercise": "3"}, "the exercise must be a number such as 3, got '3'"),
    ({"timeout": 0}, "timeout must be a number of seconds > 0, got 0"),
    ({"timeout": float("nan")}, "timeout must be a number of seconds > 0, got nan"),
    ({"timeout": float("inf")}, "timeout must be a number of seconds > 0, got inf"),
])
def test_grade_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        grading.grade(root=ROOT, **kwargs)
    assert str(info.value) == message


def test_grade_cli_parses_the_exercise_number():
    parser = argparse.ArgumentParser()
    grading.add_grade_arguments(parser)
    assert parser.parse_args(["3"]).exercise == ["3"]
    assert parser.parse_args(["2", "3", "4"]).exercise == ["2", "3", "4"]
    assert parser.parse_args([]).exercise in (None, [])


# ------------------------------------------------------------------ what a run leaves behind


def _attempt(tmp_path: Path, events: list[dict]) -> grading._Job:
    """A job whose first attempt wrote ``events`` to its record (no process is started)."""
    row = grading._empty_rows({3: "ex03_gae"}, ROOT, "exercises", grading.graded_tests())[3]
    job = grading._Job(row, ROOT / row["file"], 20.0)
    job.start(tmp_path, 0.0)
    with open(job.record, "a") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")
    return job


COLLECTED = {"event": "collected", "tests": ["t.py::test_a", "t.py::test_b", "t.py::test_c[1]"]}


def _finish(name: str, outcome: str = "passed", message: str = "") -> dict:
    return {"event": "finish", "nodeid": f"t.py::{name}", "kind": outcome,
            "message": message, "seconds": 0.5}


def test_a_run_stopped_by_pytest_between_tests_is_not_rerun(tmp_path):
    job = _attempt(tmp_path, [COLLECTED, {"event": "start", "nodeid": "t.py::test_a"},
                              _finish("test_a", "failure", "wrong"),
                              {"event": "done", "exitstatus": 1}])
    assert job.ended(1, 1.0) is False
    row = job.row
    assert (row["passed"], row["total"], row["error"]) == (0, 3, None)
    assert [f["message"] for f in row["failures"]] == [
        "wrong", "did not run: the run stopped early (pytest -x?)",
        "did not run: the run stopped early (pytest -x?)"]
    assert [f["test"] for f in row["failures"]] == ["test_a", "test_b", "test_c[1]"]


def test_a_run_that_ends_inside_a_test_is_rerun_without_it(tmp_path):
    job = _attempt(tmp_path, [COLLECTED, {"event": "start", "nodeid": "t.py::test_a"},
                              _finish("test_a"), {"event": "start", "nodeid": "t.py::test_b"},
                              {"event": "setup_done", "nodeid": "t.py::test_b"}])
    assert job.ended(-9, 3.0) is True  # killed (SIGKILL) during test_b
    assert job.results["t.py::test_b"]["message"] == (
        "the test process ended during this test (killed by SIGKILL): does the code call "
        "sys.exit() or os._exit(), or crash?")
    options = job.start(tmp_path, 3.0)  # the next attempt skips what is settled
    assert options == [f"--grade-record={job.record}", "--grade-skip=t.py::test_a",
                       "--grade-skip=t.py::test_b"] and job.id == "3.2"


def test_a_test_with_its_own_time_limit_is_given_it(tmp_path):
    """The watchdog reads each test's limit (its timeout marker) from the record."""
    job = _attempt(tmp_path, [COLLECTED, {"event": "start", "nodeid": "t.py::test_a",
                                          "limit": 60.0}])
    job.read_record(1.0)
    assert job.deadline == 1.0 + 60.0 + grading.stop_margin(60.0)
    assert not job.out_of_time(60.0, (1e9, 900.0), threading.Event())
    assert job.out_of_time(70.0, (1e9, 900.0), threading.Event())
    assert job.kill_reason.startswith("did not finish within 60 s, so the grader stopped it")


def test_a_crash_before_any_test_is_not_rerun(tmp_path):
    job = _attempt(tmp_path, [COLLECTED])
    assert job.ended(3, 1.0) is False
    assert {f["message"] for f in job.row["failures"]} == {
        "did not run: the test process ended (exit code 3)"}
    (tmp_path / "nothing").mkdir()
    job = _attempt(tmp_path / "nothing", [])
    assert job.ended(2, 1.0) is False
    assert job.row["error"].startswith("pytest stopped before running any test (exit code 2):")


def test_the_overall_time_limit_keeps_what_finished(tmp_path):
    job = _attempt(tmp_path, [COLLECTED, {"event": "start", "nodeid": "t.py::test_a"},
                              _finish("test_a"), {"event": "start", "nodeid": "t.py::test_b"},
                              {"event": "setup_done", "nodeid": "t.py::test_b"}])
    job.read_record(2.0)
    job.stop_reason = "grading reached its time limit of 5 s"
    job.kill_reason = f"did not finish: {job.stop_reason}"
    assert job.ended(-9, 6.0) is False
    assert (job.row["passed"], job.row["total"]) == (1, 3)
    assert [f["message"] for f in job.row["failures"]] == [
        "did not finish: grading reached its time limit of 5 s",
        "did not run: grading reached its time limit of 5 s"]


def test_a_collection_error_is_an_error_row(tmp_path):
    job = _attempt(tmp_path, [{"event": "collect_error", "nodeid": "t.py",
                               "message": "SyntaxError: invalid syntax"},
                              {"event": "collected", "tests": []},
                              {"event": "done", "exitstatus": 2}])
    assert job.ended(2, 1.0) is False
    assert job.row["error"] == ("pytest could not collect tests/exercises/test_ex03_gae.py: "
                                "SyntaxError: invalid syntax")


# ------------------------------------------------------------------ what the terminal shows

# Exercise 8 solved but for RLOO, whose error message redraws the terminal: up two lines,
# erase them, and write a full score there; then colours, a bell, NUL, CR, a C1 CSI, a bidi
# override, and (after 79 characters) a score line that wrapping would start a line with.
FORGED = '''
    from solutions.{stem} import *  # noqa: F403

    _FORGED = ("\\x1b[2F\\x1b[2K  8  ex08_group_advantages          22 / 22  done\\n"
               "\\x1b[2K     total                          22 / 22\\n\\x1b[31m\\x07\\x00\\r"
               "\\x9b2J\\u202e\\x7f" + "x" * 79 + " 8 ex08_group_advantages 22 / 22 done")


    def rloo_advantages(scores, group_size):
        raise ValueError(_FORGED)
'''
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")  # what must not reach a terminal
_SCORE_LINE = re.compile(r"^\s*\d+\s+ex\d\d_\w+\s+\d+ / \d+")


def test_learner_text_cannot_forge_the_score_table(tmp_path, monkeypatch, capsys):
    root = make_course(tmp_path, (8,))
    write_exercise(root, 8, FORGED)
    monkeypatch.chdir(root)
    monkeypatch.setenv("COLUMNS", "100")  # the table's width, whatever terminal runs the test
    rows = recorded_rows(monkeypatch)
    assert cli.main(["grade", "-v"]) == 1
    out = capsys.readouterr().out
    assert not _RAW.search(out), repr(out)
    lines = out.splitlines()
    assert [line for line in lines if _SCORE_LINE.match(line)] == [
        "  8  ex08_group_advantages          19 / 22"], out
    assert [line for line in lines if line.lstrip().startswith("total")] == [
        "     total                          19 / 22"] == lines[-1:], out
    forged = [line for line in lines if "test_rloo" in line]
    assert len(forged) == 3 and all(line.startswith("     | ") for line in forged), out
    assert r"\x1b[2F\x1b[2K 8 ex08_group_advantages" in out and r"\x07\x00\r\x9b2J\u202e" in out
    # every line the failures fill is marked as theirs: none can pass for a row of the table
    notes = lines[2:-1]
    assert all(line.startswith(("     | ", "     (and")) for line in notes), out
    # the rows carry the escaped text too, for any report made from them
    (row,) = rows
    for failure in row["failures"]:
        assert not _RAW.search(failure["message"] + failure["test"]), failure
        assert failure["message"].startswith(r"ValueError: \x1b[2F\x1b[2K  8  ex08"), failure


def test_shown_writes_control_characters_out():
    assert grading.shown("a\x1b[31mb\x07\x00\r\tc\nd\x9b\u202e\x7f\ud800") == (
        "a\\x1b[31mb\\x07\\x00\\r\\tc\nd\\x9b\\u202e\\x7f\\ud800")
    assert grading.shown(grading.shown("\x1b")) == "\\x1b"
    assert grading.shown("é ü → ✓ 日本") == "é ü → ✓ 日本"


# ------------------------------------------------------------------ tests deleted from a file


def test_a_test_deleted_from_its_file_counts_as_failed(tmp_path, capsys, monkeypatch):
    """The manifest the package ships fixes each exercise's tests: one deleted from the file
    (a function, a parametrized case) fails, named; one added to it does not count."""
    root = make_course(tmp_path, (3,))
    path = root / "tests" / "exercises" / "test_ex03_gae.py"
    source = path.read_text()
    tree = ast.parse(source)
    (node,) = [n for n in tree.body
               if getattr(n, "name", "") == "test_lambda_zero_is_the_td_residual"]
    lines = source.splitlines(keepends=True)
    del lines[node.lineno - 1:node.end_lineno]
    source = "".join(lines).replace(", (0.5, 0.5)])", "])")
    path.write_text(source + "\n\ndef test_a_free_point():\n    pass\n")
    monkeypatch.setenv("COLUMNS", "100")
    rows = recorded_rows(monkeypatch)
    assert cli.main(["grade", "3", "--target", "solutions", "--root", str(root)]) == 1
    (row,) = rows
    missing = "missing from tests/exercises/test_ex03_gae.py"
    assert row["error"] is None and (row["passed"], row["total"]) == (7, 9), row
    assert row["failures"] == [
        {"test": "test_lambda_zero_is_the_td_residual", "message": missing},
        {"test": "test_random_against_the_definition[0.5-0.5]", "message": missing}]
    out = capsys.readouterr().out
    assert f"test_lambda_zero_is_the_td_residual: {missing}" in out
    assert re.search(r"total\s+7 / 9$", out.strip()), out
