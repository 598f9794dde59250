"""Grade the exercises: run their graded tests and report a score per exercise.

``exercises/exNN_topic.py`` holds the learner's code, ``solutions/exNN_topic.py`` the worked
solution, ``tests/exercises/test_exNN_topic.py`` the graded tests (a fixture imports one or the
other, per ``--target``). :func:`grade` returns a row per exercise of the course:
``{"exercise": 3, "name": "ex03_gae", "file": "tests/exercises/test_ex03_gae.py", "target":
"exercises", "passed": 4, "total": 9, "seconds": 0.8, "failures": [{"test": "test_padding",
"message": "returns[1, 3] is 0.3 but should be 0: ..."}, ...], "error": None}``, ``error``
saying why an exercise could not be graded (its graded test file is missing, ...).

Besides the harness (``tests/exercises/conftest.py``: pristine inputs, plain results, restored
global state), a run is kept honest thus:

* each exercise runs in a fresh ``python -m pytest`` process in a session (process group) of
  its own, never in the grader's process, and records each test's start and outcome as they
  happen (:mod:`rlhf_edu.grading_plugin`), so results survive a run that has to be stopped;
* a watchdog gives each test its limit (``RLHF_EDU_GRADE_TIMEOUT``, default 20 s, at most 3600)
  plus :func:`stop_margin`: pytest-timeout's alarm comes first; a test it cannot stop (SIGALRM
  ignored, a long C call) has its process group killed and fails ("did not finish within
  20 s"), and the tests left run in a new process;
* the tests that count are the manifest's (``data/graded_tests.json``): one deleted from its
  file fails ("test_x: missing from tests/exercises/test_ex03_gae.py");
* text from the test process is shown with control characters written out (:func:`shown`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .grading_plugin import Record
from .validate import check_float

TARGETS = ("exercises", "solutions")
GRADED_DIR = Path("tests") / "exercises"
TIMEOUT_ENV = "RLHF_EDU_GRADE_TIMEOUT"
DEFAULT_TEST_LIMIT = 20.0  # seconds per graded test
MAX_TEST_LIMIT = 3600.0  # pytest-timeout overflows on huge limits (1e10 s)
MANIFEST = Path(__file__).resolve().parent / "data" / "graded_tests.json"
_TEST_FILE = re.compile(r"^test_(ex(\d+)_\w+)\.py$")
_MODULE_FILE = re.compile(r"^(ex(\d+)_\w+)\.py$")
_POLL = 0.05  # seconds between looks at a running exercise
_IDLE_LIMIT = 120.0  # seconds for a pytest process to start and collect (no learner code runs)
_MAX_WORKERS = 4
# Only the plugins a graded run uses: not the project's addopts (nbval's), nor every installed
# plugin (nbval and hypothesis take seconds to import), nor pytest's end-of-run gc.
_PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
                "-o", "addopts=", "-p", "rlhf_edu.grading_plugin"]
# What a terminal acts on rather than shows: C0 but newline, DEL, C1, bidi and other invisible
# format characters, line separators; lone surrogates, which cannot be printed.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                      "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")
_IN_SETUP = " [while setting the test up: importing the exercise's module]"

__all__ = ["TARGETS", "DEFAULT_TEST_LIMIT", "MAX_TEST_LIMIT", "TIMEOUT_ENV", "find_root",
           "course_exercises", "graded_files", "graded_tests", "per_test_limit", "stop_margin",
           "grade", "shown", "format_scores", "add_grade_arguments", "run_grade_cli"]


def find_root(root: str | Path | None = None) -> Path:
    """The repository that holds ``exercises/`` and ``tests/exercises/``: ``root``, which must
    hold both, or (None) the current directory or its nearest parent that does (notebooks/)."""
    if root is not None and not Path(root).is_dir():
        raise ValueError(f"root {str(root)!r} " + ("is a file, not a folder"
                                                   if Path(root).exists() else "does not exist"))
    candidates = [Path(root)] if root is not None else [Path.cwd(), *Path.cwd().parents]
    for d in candidates:
        if (d / "exercises").is_dir() and (d / GRADED_DIR).is_dir():
            return d.resolve()
    where = (f"{str(root)!r}" if root is not None
             else f"the current directory {str(Path.cwd())!r} or its parents")
    raise ValueError(f"no exercises/ and tests/exercises/ found in {where}; run from the "
                     "rlhf_edu repository (the folder with exercises/) or pass root=")


def graded_files(root: str | Path | None = None) -> dict[int, Path]:
    """Exercise number -> its graded test file, ``tests/exercises/test_exNN_topic.py``."""
    paths = sorted((find_root(root) / GRADED_DIR).glob("test_ex*.py"))
    return {int(m.group(2)): p for p in paths if (m := _TEST_FILE.match(p.name))}


def course_exercises(root: str | Path | None = None) -> dict[int, str]:
    """Exercise number -> name (``ex03_gae``): every ``exNN_*.py`` in ``exercises/`` or
    ``solutions/`` and every graded test file, so a deleted file cannot drop an exercise."""
    root = find_root(root)
    course = {n: _TEST_FILE.match(p.name).group(1) for n, p in graded_files(root).items()}
    for folder in ("solutions", "exercises"):
        for path in sorted((root / folder).glob("ex*.py")):
            if m := _MODULE_FILE.match(path.name):
                course.setdefault(int(m.group(2)), m.group(1))
    return dict(sorted(course.items()))


def graded_tests() -> dict[str, list[str]]:
    """The graded tests the package ships with: exercise name (``ex03_gae``) -> the names of
    its tests as pytest collects them (``test_grpo_random_groups[True]``)."""
    return json.loads(MANIFEST.read_text())


def per_test_limit(value: str | float | None = None) -> float:
    """Seconds each graded test may run: ``value``, else ``$RLHF_EDU_GRADE_TIMEOUT``, else 20.

    Unset or blank means the default; anything but a number in (0, 3600] is refused (0 would
    mean no limit at all) with a one-line ``ValueError`` naming the variable and the range.
    """
    value = os.environ.get(TIMEOUT_ENV) if value is None else value
    if value is None or not str(value).strip():
        return DEFAULT_TEST_LIMIT
    try:  # float() refuses what is not a number, check_float what is out of range
        return check_float(TIMEOUT_ENV, float(str(value).strip()), minimum=0.0,
                           maximum=MAX_TEST_LIMIT, strict_min=True)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds in (0, {MAX_TEST_LIMIT:g}]"
                         f" (default {DEFAULT_TEST_LIMIT:g}), got {value!r}") from None


def stop_margin(limit: float) -> float:
    """Seconds the grader waits past a test's limit before it kills the test's process: time
    for pytest-timeout's own failure to arrive."""
    return 2.0 + 0.1 * limit


def _seconds(value: Any) -> float | None:
    """``value`` (a number or its text) as a finite number of seconds > 0, or None."""
    with contextlib.suppress(TypeError, ValueError):
        return check_float("seconds", float(value) if isinstance(value, str) else value,
                           minimum=0.0, strict_min=True)
    return None


def shown(text: object) -> str:
    """``text`` as a terminal shows it literally: control characters (ESC, BEL, NUL, CR, C1,
    bidi overrides, ...) written out as ``\\x1b``, ``\\u202e``; newlines kept. Idempotent."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], str(text))


def grade(exercise: int | list[int] | None = None, target: str = "exercises",
          root: str | Path | None = None, timeout: float = 900.0,
          extra_args: list[str] | None = None) -> list[dict]:
    """Rows (see the module docstring) for some exercises (a number, a list, None: all),
    sorted by number, from their graded tests run against ``target`` ("exercises", the
    learner's code, or "solutions"). ``root``: see :func:`find_root`. ``timeout``: seconds for
    the whole run, what finished before it ran out is kept (each test also has its own limit,
    :func:`per_test_limit`). ``extra_args``: more pytest arguments (``["-x"]``)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if _seconds(timeout) is None:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    limit = per_test_limit()
    root = find_root(root)
    manifest = graded_tests()
    rows = _empty_rows(_select(root, exercise), root, target, manifest)
    jobs = [_Job(row, root / row["file"], limit, manifest.get(row["name"]))
            for row in rows.values() if row["error"] is None]
    if jobs:
        _run(jobs, root, target, limit, float(timeout), list(extra_args or []))
    return [rows[n] for n in sorted(rows)]


def _select(root: Path, exercise: int | list[int] | None) -> dict[int, str]:
    course = course_exercises(root)
    if not course:
        raise ValueError(f"no exercises (exNN_*.py) in {str(root / 'exercises')!r}")
    numbers = list(exercise) if isinstance(exercise, list | tuple) else [exercise]
    if exercise is None or not numbers:
        return course
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"the exercise must be a number such as 3, got {n!r}")
        if n not in course:
            raise ValueError(f"no exercise {n}; the exercises are "
                             f"{', '.join(map(str, course))}")
    return {n: course[n] for n in sorted(set(numbers))}


def _empty_rows(course: dict[int, str], root: Path, target: str,
                manifest: dict[str, list[str]]) -> dict[int, dict]:
    """A row per exercise before grading, its total the manifest's count of its tests."""
    files, rows = graded_files(root), {}
    for n, name in course.items():
        path = files.get(n, root / GRADED_DIR / f"test_{name}.py")
        file = path.relative_to(root).as_posix()
        rows[n] = {"exercise": n, "name": name, "file": file, "target": target, "passed": 0,
                   "total": len(manifest.get(name, [])), "seconds": 0.0, "failures": [],
                   "error": None if path.exists() else
                   f"{file} is missing, so exercise {n} cannot be graded (restore the file)"}
    return rows


# ------------------------------------------------------------------ running the graded tests


class _Job:
    """One exercise's graded tests: a pytest process per attempt, a new one for the tests left
    after a run that ended inside a test (a hang it was stopped for, a crash, an interrupt);
    ``names``: the tests that count (the manifest's), None: all."""

    def __init__(self, row: dict, path: Path, limit: float, names: list | None = None) -> None:
        self.row, self.path, self.limit, self.names = row, path, limit, names
        self.tests: list[str] = []  # node ids, as the first attempt collected them
        self.results: dict[str, dict] = {}  # node id -> {"kind", "message", "seconds"}
        self.attempt, self.finished = 0, False

    def start(self, tmp: Path, now: float) -> list[str]:
        """Begin the next attempt; returns its pytest options (its record, what to skip)."""
        self.attempt += 1
        self.id = f"{self.row['exercise']}.{self.attempt}"
        self.record, self.log = tmp / f"record-{self.id}.jsonl", tmp / f"pytest-{self.id}.log"
        self.record.touch()
        self.run = Record(self.record)
        self.since, self.deadline, self.test_limit = now, now + _IDLE_LIMIT, self.limit
        self.kill_reason = self.stop_reason = None  # why the test running, the tests left fail
        return [f"--grade-record={self.record}", *(f"--grade-skip={t}" for t in self.results)]

    def read_record(self, now: float) -> None:
        """Take in the attempt's new events; the deadline follows them."""
        run = self.run
        for kind in run.read():
            if kind == "collected" and self.attempt == 1:
                self.tests = run.tests
            elif kind == "start":
                self.since, self.test_limit = now, _seconds(run.limit) or self.limit
                self.deadline = now + self.test_limit + stop_margin(self.test_limit)
            elif kind == "finish":
                self.deadline = now + _IDLE_LIMIT
            elif kind == "done":
                self.deadline = now + stop_margin(self.limit)
        self.results.update(run.results)

    def out_of_time(self, now: float, until: tuple[float, float],
                    stop: threading.Event) -> bool:
        """Take in the record; True when the attempt is to be killed now, and why is set."""
        self.read_record(now)
        if self.kill_reason:  # killed already
            return False
        if now > until[0] or stop.is_set():
            self.stop_reason = (f"grading reached its time limit of {until[1]:g} s"
                                if now > until[0] else "grading was interrupted")
            self.kill_reason = f"did not finish: {self.stop_reason}"
        elif now > self.deadline:
            self.kill_reason = (f"did not finish within {self.test_limit:g} s, so the grader "
                                "stopped it (an endless loop the per-test alarm could not "
                                "interrupt?)" if self.run.current else
                                "its pytest process did not go on or exit")
        return self.kill_reason is not None

    def ended(self, exit_code: int, now: float) -> bool:
        """The attempt's process has ended: True if another attempt should run the tests left,
        False when the exercise is settled (and its row filled)."""
        self.read_record(now)
        run = self.run
        current, in_setup = run.current, run.current is not None and run.in_setup
        if current is not None:  # it fails, with the reason
            message = self.kill_reason or (
                "the test run stopped during this test (pytest.exit or interrupted?)"
                if run.done is not None else
                f"the test process ended during this test ({_exit_text(exit_code)}): does the "
                "code call sys.exit() or os._exit(), or crash?")
            self.results[current] = {"kind": "failure", "seconds": now - self.since,
                                     "message": message + (_IN_SETUP if in_setup else "")}
        left = [t for t in self.tests if t not in self.results]
        # a set-up that hangs or crashes (the exercise's import) would do it again every time
        if left and current is not None and not in_setup and not self.stop_reason:
            return True
        why = self.stop_reason or (
            "importing the exercise's module did not finish in an earlier test" if in_setup else
            "the run stopped early (pytest -x?)" if run.done is not None else
            f"the test process ended ({_exit_text(exit_code)})")
        for t in left:
            self.results[t] = {"kind": "failure", "message": f"did not run: {why}",
                               "seconds": 0.0}
        if not self.tests and not run.collect_errors and run.done is None:
            why, log = self.kill_reason or _exit_text(exit_code), self.log
            output = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            self.row["error"] = shown(f"not graded: {self.stop_reason}" if self.stop_reason else
                                      f"pytest stopped before running any test ({why}):\n"
                                      + output)
        self.finish()
        return False

    def finish(self) -> None:
        """Fill the row: each test that counts passed, failed, or is missing from the file."""
        self.finished, row = True, self.row
        if self.run.collect_errors:
            row["error"] = shown(f"pytest could not collect {row['file']}: "
                                 + self.run.collect_errors[0])
        if row["error"] is not None:  # not graded: the total stays the manifest's count
            return
        by_name = {nodeid.split("::")[-1]: nodeid for nodeid in self.tests}
        names = list(by_name) if self.names is None else self.names
        row["total"] = len(names)
        for name in names:
            result = self.results.get(by_name.get(name, ""), {
                "kind": "failure", "message": f"missing from {row['file']}", "seconds": 0.0})
            row["seconds"] += result["seconds"]
            if result["kind"] == "passed":
                row["passed"] += 1
                continue
            prefix = {"error": "error: ", "skipped": "skipped: "}.get(result["kind"], "")
            row["failures"].append({"test": shown(name),
                                    "message": shown(prefix + result["message"])})
        if not names:
            row["error"] = "no graded test ran"


def _exit_text(code: int) -> str:
    names = {s.value: s.name for s in signal.Signals}
    return f"exit code {code}" if code >= 0 else f"killed by {names.get(-code, f'signal {-code}')}"


def _run(jobs: list[_Job], root: Path, target: str, limit: float, timeout: float,
         extra_args: list[str]) -> None:
    """Grade the jobs, a few at a time, each in fresh pytest processes (:func:`_attempts`)."""
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONDONTWRITEBYTECODE": "1",  # no pycache
           TIMEOUT_ENV: repr(limit), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    plugins = ["-p", "pytest_timeout"] if importlib.util.find_spec("pytest_timeout") else []
    args = [f"--target={target}", *_PYTEST_ARGS, *plugins, *extra_args]
    until, stop = (time.monotonic() + timeout, timeout), threading.Event()
    workers = max(1, min(len(jobs), os.cpu_count() or 1, _MAX_WORKERS))
    with (tempfile.TemporaryDirectory(prefix="rlhf-edu-grade-") as tmp,
          ThreadPoolExecutor(workers) as pool):
        futures = [pool.submit(_attempts, job, Path(tmp), root, env, args, until, stop)
                   for job in jobs]
        try:
            for future in futures:
                future.result()
        finally:  # an interrupted grader (Ctrl-C) stops every test process it started
            stop.set()
    for job in jobs:
        if not job.finished and job.row["error"] is None:
            job.row["error"] = f"not graded: grading reached its time limit of {timeout:g} s"


def _attempts(job: _Job, tmp: Path, root: Path, env: dict, args: list[str],
              until: tuple[float, float], stop: threading.Event) -> None:
    """Grade one exercise: a new ``python -m pytest`` process per attempt, in a session of its
    own, killed with all it started when its test or the run (``until``: end, timeout) is late."""
    try:
        while time.monotonic() < until[0] and not stop.is_set():
            options = job.start(tmp, time.monotonic())
            with open(job.log, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", str(job.path), *args, *options], cwd=root,
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            try:
                while proc.poll() is None:
                    time.sleep(_POLL)
                    if job.out_of_time(time.monotonic(), until, stop):
                        _kill_group(proc.pid)
            finally:
                _kill_group(proc.pid)  # what its tests left running
                proc.wait()
            if not job.ended(proc.returncode, time.monotonic()):
                return
        if job.attempt and not stop.is_set():  # out of time between attempts: keep results
            job.stop_reason = f"grading reached its time limit of {until[1]:g} s"
            job.ended(0, time.monotonic())
    except Exception as e:  # e.g. a process that cannot be started: not graded, and why
        job.row["error"] = shown(f"not graded: {type(e).__name__}: {e}")


def _kill_group(pid: int) -> None:
    kill = getattr(os, "killpg", os.kill)  # the process and all it started, where there are groups
    with contextlib.suppress(ProcessLookupError, PermissionError):
        kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows has no SIGKILL


# ------------------------------------------------------------------ the score table and CLI


def format_scores(rows: list[dict], failures: int = 1, width: int = 100) -> str:
    """A score table: passed/total per exercise and a total line, with the first ``failures``
    failure messages under each exercise that is not complete, escaped (:func:`shown`) and
    wrapped to ``width`` on lines marked ``|``: no message can pass for a line of the table."""
    target = rows[0]["target"] if rows else "exercises"
    lines = [f"{'#':>3}  {'exercise':<28}{'passed':>10}   grading {shown(target)}/"]
    passed = total = 0
    for row in rows:
        passed, total = passed + row["passed"], total + row["total"]
        done = row["error"] is None and row["passed"] == row["total"]
        status = "done" if done else ("error" if row["error"] else "")
        lines.append(f"{row['exercise']:>3}  {shown(row['name']):<28}"
                     f"{row['passed']:>5} / {row['total']:<3} {status}".rstrip())
        notes = ([row["error"]] if row["error"] else
                 [f"{f['test']}: {f['message']}" for f in row["failures"][:failures]])
        for note in notes:
            wrapped = textwrap.wrap(" ".join(shown(note).split()), max(width - 7, 20)) or [""]
            lines.extend("     | " + w for w in wrapped[:6])
        hidden = len(row["failures"]) - failures
        if not row["error"] and hidden > 0:
            lines.append(f"     (and {hidden} more failing test{'s' if hidden > 1 else ''}; "
                         f"pytest {shown(row['file'])} shows all)")
    ungraded = [str(r["exercise"]) for r in rows if r["error"]]
    note = (f"   (not graded: exercise{'s' if len(ungraded) > 1 else ''} "
            f"{', '.join(ungraded)})" if ungraded else "")
    lines.append(f"{'':>3}  {'total':<28}{passed:>5} / {total}{note}")
    return "\n".join(lines)


def add_grade_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rlhf-edu grade`` (checked by :func:`run_grade_cli`, one line each)."""
    parser.add_argument("exercise", nargs="*", default=None,
                        help="exercise numbers, e.g. 3 or 2 3 4 (default: all)")
    parser.add_argument("--target", choices=TARGETS, default="exercises",
                        help="grade your exercises/ (default) or the worked solutions/")
    parser.add_argument("--root", type=Path, default=None,
                        help="the repository with exercises/ (default: here or a parent)")
    parser.add_argument("--timeout", default="900", help="seconds for the whole run (default "
                        f"900; each test also has a limit, ${TIMEOUT_ENV} or 20 s)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every failure message, not only the first")


def run_grade_cli(args: argparse.Namespace) -> int:
    """Grade and print the table: 0 if every graded test passed, 1 if not, 2 on bad input."""
    try:
        timeout = _seconds(args.timeout)
        if timeout is None:
            raise ValueError(f"--timeout must be a number of seconds > 0, got {args.timeout!r}")
        given = [g for g in (args.exercise if isinstance(args.exercise, list)
                             else [args.exercise]) if g is not None]
        for item in given:
            if not re.fullmatch(r"[+-]?\d+", str(item).strip()):
                raise ValueError(f"the exercise must be a number such as 3, got {item!r}")
        numbers = [int(str(item).strip()) for item in given]
        rows = grade(numbers or None, args.target, args.root, timeout)
    except ValueError as e:
        print(f"error: {shown(e)}", file=sys.stderr)
        return 2
    width = min(100, shutil.get_terminal_size((100, 24)).columns)
    print(format_scores(rows, failures=10**6 if args.verbose else 1, width=width))
    return 0 if all(r["error"] is None and r["passed"] == r["total"] for r in rows) else 1
