"""Grade the exercises: run their graded tests and report a score per exercise.

``exercises/exNN_topic.py`` holds the learner's code, ``solutions/exNN_topic.py`` the worked
solution, and ``tests/exercises/test_exNN_topic.py`` the graded tests, which import one or the
other through a fixture that reads ``--target``. :func:`grade` returns one row per exercise of
the course (every ``exNN_*.py`` in ``exercises/`` or ``solutions/``):

``{"exercise": 3, "name": "ex03_gae", "file": "tests/exercises/test_ex03_gae.py",
"target": "exercises", "passed": 4, "total": 9, "seconds": 0.8,
"failures": [{"test": "test_padding_is_zero_and_not_bootstrapped", "message": "returns[1, 3]
is 0.3 but should be 0: that position is padding, ..."}, ...], "error": None}``

``error`` is set when the exercise could not be graded at all (its graded test file is
missing, pytest could not collect it, the overall time limit ran out before it started).

How a run is kept honest (the graded tests' harness, ``tests/exercises/conftest.py``, does the
rest: pristine copies of the inputs, plain results, restored global state):

* each exercise runs in its own pytest process, forked from a helper process that has already
  imported torch (a fresh interpreter per exercise where ``fork`` is not available), so one
  exercise's side effects cannot change another's grade;
* each test appends its outcome to a record file as it finishes, so results survive a run that
  has to be stopped;
* a watchdog gives every test its per-test limit (``RLHF_EDU_GRADE_TIMEOUT``, default 20 s)
  plus :func:`stop_margin`: pytest-timeout's alarm is the first line of defence, and a test it
  cannot stop (SIGALRM ignored, a long C call) has its process group killed; the test fails
  with "did not finish within 20 s" and the exercise's remaining tests run in a new process.

``rlhf-edu grade [N] [--target solutions]`` prints :func:`format_scores` of the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections import deque
from pathlib import Path
from typing import Any

TARGETS = ("exercises", "solutions")
GRADED_DIR = Path("tests") / "exercises"
TIMEOUT_ENV = "RLHF_EDU_GRADE_TIMEOUT"
DEFAULT_TEST_LIMIT = 20.0  # seconds per graded test
_TEST_FILE = re.compile(r"^test_(ex(\d+)_\w+)\.py$")
_MODULE_FILE = re.compile(r"^(ex(\d+)_\w+)\.py$")
_IN_NAME = re.compile(r"test_(ex(\d+)_\w+)")
_POLL = 0.05  # seconds between looks at the running exercises
_IDLE_LIMIT = 120.0  # seconds for a pytest process to start and collect (no learner code runs)
_MAX_WORKERS = 4
# fork a process that has imported torch once (Linux); elsewhere start a fresh interpreter
_USE_FORK = hasattr(os, "fork") and sys.platform.startswith("linux")
# Graded runs load only the plugin they use, pytest-timeout, when it is installed: not the
# project's addopts (nbval's options) nor every installed plugin (nbval and hypothesis take
# seconds to import), nor pytest's end-of-run garbage collection.
_PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
                "-o", "addopts="]

__all__ = ["TARGETS", "DEFAULT_TEST_LIMIT", "find_root", "course_exercises", "graded_files",
           "per_test_limit", "stop_margin", "grade", "read_report", "format_scores",
           "add_grade_arguments", "run_grade_cli"]


def find_root(root: str | Path | None = None) -> Path:
    """The repository that holds ``exercises/`` and ``tests/exercises/``.

    ``root`` given: that directory, which must hold both. ``None``: the current directory or
    the nearest parent that does (so grading from ``notebooks/`` works too).
    """
    if root is not None:
        path = Path(root)
        if not path.exists():
            raise ValueError(f"root {str(root)!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"root {str(root)!r} is a file, not a folder")
        candidates = [path]
    else:
        cwd = Path.cwd()
        candidates = [cwd, *cwd.parents]
    for d in candidates:
        if (d / "exercises").is_dir() and (d / GRADED_DIR).is_dir():
            return d.resolve()
    where = (f"{str(root)!r}" if root is not None
             else f"the current directory {str(Path.cwd())!r} or its parents")
    raise ValueError(f"no exercises/ and tests/exercises/ found in {where}; run from the "
                     "rlhf_edu repository (the folder with exercises/) or pass root=")


def graded_files(root: str | Path | None = None) -> dict[int, Path]:
    """Exercise number -> its graded test file, ``tests/exercises/test_exNN_topic.py``."""
    base = find_root(root) / GRADED_DIR
    files = {}
    for path in sorted(base.glob("test_ex*.py")):
        m = _TEST_FILE.match(path.name)
        if m:
            files[int(m.group(2))] = path
    return files


def course_exercises(root: str | Path | None = None) -> dict[int, str]:
    """Exercise number -> name (``ex03_gae``): every ``exNN_*.py`` in ``exercises/`` or
    ``solutions/`` and every graded test file, so a deleted file cannot drop an exercise."""
    root = find_root(root)
    course: dict[int, str] = {}
    for number, path in graded_files(root).items():
        course[number] = _TEST_FILE.match(path.name).group(1)
    for folder in ("solutions", "exercises"):
        for path in sorted((root / folder).glob("ex*.py")):
            m = _MODULE_FILE.match(path.name)
            if m:
                course.setdefault(int(m.group(2)), m.group(1))
    return dict(sorted(course.items()))


def per_test_limit(value: str | float | None = None) -> float:
    """Seconds each graded test may run: ``value``, else ``$RLHF_EDU_GRADE_TIMEOUT``, else 20.

    Unset or blank means the default; 0, negative, non-finite or non-numeric values are
    refused (a limit of 0 would mean no limit at all) with a one-line ``ValueError``.
    """
    if value is None:
        value = os.environ.get(TIMEOUT_ENV)
    if value is None or not str(value).strip():
        return DEFAULT_TEST_LIMIT
    seconds = _seconds(value)
    if seconds is None:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0 (default "
                         f"{DEFAULT_TEST_LIMIT:g}), got {value!r}")
    return seconds


def stop_margin(limit: float) -> float:
    """Seconds the grader waits past a test's limit before it kills the test's process: time
    for pytest-timeout's own failure to arrive."""
    return 2.0 + 0.1 * limit


def _seconds(value: Any) -> float | None:
    """``value`` as a finite number of seconds > 0, or None."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _clean(message: str, limit: int = 600) -> str:
    """A failure message as a learner should read it: no "Failed: " prefix, bounded length."""
    message = message.strip()
    m = re.fullmatch(r'failed on (?:setup|teardown) with "(.*)"', message, re.DOTALL)
    if m:  # a fixture failed, e.g. the exercise file does not import
        message = m.group(1)
    for prefix in ("Failed: ", "Skipped: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message if len(message) <= limit else message[:limit] + " ..."


def _exercise_of(testcase: ET.Element) -> tuple[int, str] | None:
    m = _IN_NAME.search(testcase.get("classname", "") + " " + testcase.get("name", ""))
    return (int(m.group(2)), m.group(1)) if m else None


def _tail(path: Path, n: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n:]


def grade(exercise: int | list[int] | None = None, target: str = "exercises",
          root: str | Path | None = None, timeout: float = 900.0,
          extra_args: list[str] | None = None) -> list[dict]:
    """Run the graded tests of some exercises (or all) against ``target``; a row per exercise.

    Args:
        exercise: an exercise number (3 grades ``tests/exercises/test_ex03_*.py``), a list of
            them ([2, 3, 4]), or None: all.
        target: "exercises" (the learner's code) or "solutions".
        root: the repository (see :func:`find_root`); None: the current directory or a parent.
        timeout: seconds for the whole grading run; what finished before it ran out is kept.
            Each test also has its own limit (:func:`per_test_limit`), so one endless loop
            fails one test, not the run.
        extra_args: more pytest arguments (e.g. ``["-x"]``).

    Returns:
        Rows as described in the module docstring, sorted by exercise number; an exercise
        whose graded test file is missing has a row with ``error`` set.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if _seconds(timeout) is None:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    limit = per_test_limit()
    root = find_root(root)
    rows = _empty_rows(_select(root, exercise), root, target)
    jobs = [_Job(row, root / row["file"], limit) for row in rows.values() if row["error"] is None]
    if jobs:
        _run(jobs, root, target, limit, float(timeout), list(extra_args or []))
    return [rows[n] for n in sorted(rows)]


def read_report(report: str | Path, target: str = "exercises", root: str | Path | None = None,
                exercise: int | None = None) -> list[dict]:
    """The rows of :func:`grade` from a JUnit XML ``report`` of a pytest run of the graded
    tests (``pytest tests/exercises --target=... --junitxml=report.xml``)."""
    root = find_root(root)
    return _fill(report, list(_empty_rows(_select(root, exercise), root, target).values()))


def _select(root: Path, exercise: int | None) -> dict[int, str]:
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


def _fill(report: Path, rows: list[dict]) -> list[dict]:
    """Count passed/total/seconds and collect failures per exercise from the XML report."""
    by_number = {row["exercise"]: row for row in rows}
    for case in ET.parse(report).getroot().iter("testcase"):
        found = _exercise_of(case)
        if found is None or found[0] not in by_number or by_number[found[0]]["error"]:
            continue
        row = by_number[found[0]]
        row["total"] += 1
        row["seconds"] += float(case.get("time") or 0.0)
        problems = [c for c in case if c.tag in ("failure", "error", "skipped")]
        if not problems:
            row["passed"] += 1
            continue
        p = problems[0]
        text = p.get("message") or (p.text or "").strip() or p.tag
        prefix = {"error": "error: ", "skipped": "skipped: "}.get(p.tag, "")
        row["failures"].append({"test": case.get("name", "?"), "message": prefix + _clean(text)})
    for row in rows:
        if row["total"] == 0 and row["error"] is None:
            row["error"] = "no graded test ran"
    return sorted(rows, key=lambda r: r["exercise"])


def _empty_rows(course: dict[int, str], root: Path, target: str) -> dict[int, dict]:
    files = graded_files(root)
    rows = {}
    for n, name in course.items():
        path = files.get(n, root / GRADED_DIR / f"test_{name}.py")
        file = path.relative_to(root).as_posix()
        rows[n] = {"exercise": n, "name": name, "file": file, "target": target, "passed": 0,
                   "total": 0, "seconds": 0.0, "failures": [],
                   "error": None if path.exists() else
                   f"{file} is missing, so exercise {n} cannot be graded (restore the file)"}
    return rows


# ------------------------------------------------------------------ running the graded tests


class _Job:
    """One exercise's graded tests: one pytest process per attempt, a new attempt after a
    hang or a crash, until every collected test has an outcome."""

    def __init__(self, row: dict, path: Path, limit: float) -> None:
        self.row, self.path, self.limit = row, path, limit
        self.number = row["exercise"]
        self.tests: list[str] = []  # node ids, as the first attempt collected them
        self.limits: dict[str, float] = {}
        self.results: dict[str, dict] = {}  # node id -> {"kind", "message", "seconds"}
        self.collect_errors: list[str] = []
        self.attempt = 0
        self.finished = False

    def start(self, tmp: Path, now: float) -> dict:
        """The request for the next attempt (what the runner needs to start it)."""
        self.attempt += 1
        self.id = f"{self.number}.{self.attempt}"
        self.record = tmp / f"record-{self.id}.jsonl"
        self.log = tmp / f"pytest-{self.id}.log"
        self.record.touch()
        self.offset, self.pending = 0, b""
        self.current: str | None = None
        self.current_since = now
        self.in_setup = False  # the current test is being set up (the exercise imported)
        self.deadline = now + _IDLE_LIMIT
        self.done: int | None = None
        self.progress = False
        self.kill_reason: str | None = None  # why the running test failed, if it was stopped
        self.stop_reason: str | None = None  # why the tests left will not run
        return {"op": "run", "job": self.id, "record": str(self.record), "log": str(self.log),
                "skip": list(self.results)}

    def read_record(self, now: float) -> None:
        """Take in the events the running attempt has written since the last look."""
        try:
            with open(self.record, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:  # gone: the process's end settles the attempt
            return
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "collected" and not self.tests and self.attempt == 1:
                self.tests = [nodeid for nodeid, _ in event["tests"]]
                self.limits = {nodeid: lim or self.limit for nodeid, lim in event["tests"]}
            elif kind == "collect_error":
                self.collect_errors.append(event["message"])
            elif kind == "start":
                self.current, self.current_since = event["nodeid"], now
                self.in_setup = True
                limit = self.limits.get(self.current, self.limit)
                self.deadline = now + limit + stop_margin(limit)
            elif kind == "setup_done":
                self.in_setup = False
            elif kind == "finish":
                self.results[event["nodeid"]] = {"kind": event["outcome"],
                                                  "message": event["message"],
                                                  "seconds": event["seconds"]}
                self.current, self.progress = None, True
                self.deadline = now + _IDLE_LIMIT
            elif kind == "done":
                self.done = int(event["exitstatus"])
                self.deadline = now + stop_margin(self.limit)

    def ended(self, exit_code: int, now: float) -> bool:
        """The attempt's process has ended; True if another attempt should run the tests
        left (the run ended inside a test: a hang it was stopped for, a crash, an interrupt,
        ``pytest.exit``), False when the exercise is settled."""
        self.read_record(now)
        in_test, in_setup = self.current is not None, self.current is not None and self.in_setup
        if in_test:  # it fails, with the reason
            if self.kill_reason:
                message = self.kill_reason
            elif self.done is not None:
                message = "the test run stopped during this test (pytest.exit or interrupted?)"
            else:
                message = (f"the test process ended during this test ({_exit_text(exit_code)}):"
                           " does the code call sys.exit() or os._exit(), or crash?")
            if in_setup:
                message += " [while setting the test up: importing the exercise's module]"
            self.results[self.current] = {"kind": "failure", "message": message,
                                          "seconds": now - self.current_since}
            self.current, self.progress = None, True
        left = [t for t in self.tests if t not in self.results]
        # pytest ended the session between tests by itself: -x, --maxfail
        stopped_early = self.done is not None and not in_test and not self.kill_reason
        # a set-up that hangs or crashes (the exercise's import) would do it again every time
        if (left and self.progress and not stopped_early and not in_setup
                and not self.collect_errors and not self.stop_reason):
            return True
        why = self.stop_reason or (
            "the run stopped early (pytest -x?)" if stopped_early else
            "importing the exercise's module did not finish in an earlier test" if in_setup else
            f"the test process ended ({_exit_text(exit_code)})")
        for t in left:
            self.results[t] = {"kind": "failure", "message": f"did not run: {why}",
                               "seconds": 0.0}
        if not self.tests and not self.collect_errors and self.done is None:
            self.row["error"] = (f"not graded: {self.stop_reason}" if self.stop_reason else
                                 f"pytest stopped before running any test "
                                 f"({self.kill_reason or _exit_text(exit_code)}):\n"
                                 f"{_tail(self.log)}")
        self.finish()
        return False

    def finish(self) -> None:
        """Fill the row from the results."""
        self.finished = True
        row = self.row
        if self.collect_errors:
            row["error"] = (f"pytest could not collect {row['file']}: "
                            + _clean(self.collect_errors[0]))
            return
        row["total"] = len(self.tests)
        for nodeid in self.tests:
            result = self.results[nodeid]
            row["seconds"] += result["seconds"]
            if result["kind"] == "passed":
                row["passed"] += 1
                continue
            prefix = {"error": "error: ", "skipped": "skipped: "}.get(result["kind"], "")
            row["failures"].append({"test": nodeid.split("::")[-1],
                                    "message": prefix + result["message"]})
        if row["error"] is None and row["total"] == 0:
            row["error"] = "no graded test ran"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _run(jobs: list[_Job], root: Path, target: str, limit: float, timeout: float,
         extra_args: list[str]) -> None:
    """Run the jobs, a few at a time, through one runner process (see :func:`_serve`)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the learner's folders
    env[TIMEOUT_ENV] = repr(limit)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    workers = max(1, min(len(jobs), os.cpu_count() or 1, _MAX_WORKERS))
    start = time.monotonic()
    end = start + timeout
    with tempfile.TemporaryDirectory(prefix="rlhf-edu-grade-") as tmp_name:
        tmp = Path(tmp_name)
        runner_log = open(tmp / "runner.log", "wb")
        runner = subprocess.Popen(
            [sys.executable, "-c", "from rlhf_edu.grading import _serve; _serve()",
             "fork" if _USE_FORK else "spawn"],
            cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=runner_log, start_new_session=True)
        queue, running = deque(jobs), {}
        pending = b""

        def send(request: dict) -> None:
            try:
                runner.stdin.write((json.dumps(request) + "\n").encode())
                runner.stdin.flush()
            except OSError as e:
                raise RuntimeError(f"the grading runner stopped ({e}):\n"
                                   + _tail(tmp / "runner.log")) from None

        plugins = ["-p", "pytest_timeout"] if importlib.util.find_spec("pytest_timeout") else []

        def args_for(job: _Job) -> list[str]:
            return [str(job.path), f"--target={target}", *_PYTEST_ARGS, *plugins, *extra_args]

        try:
            while queue or running:
                now = time.monotonic()
                while queue and len(running) < workers and now < end:
                    job = queue.popleft()
                    request = job.start(tmp, now)
                    request.update(args=args_for(job), root=str(root))
                    send(request)
                    running[job.id] = job
                if not running:
                    break  # out of time with jobs still queued
                if now > end + 60:  # killed processes are reported within a second
                    raise RuntimeError("the grading runner did not report its processes' end")
                ready, _, _ = select.select([runner.stdout], [], [], _POLL)
                if ready:
                    chunk = os.read(runner.stdout.fileno(), 1 << 16)
                    if not chunk:
                        raise RuntimeError("the grading runner stopped:\n"
                                           + _tail(tmp / "runner.log"))
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        message = json.loads(line)
                        job = running.pop(message["job"])
                        if job.ended(message["exit"], time.monotonic()):
                            queue.appendleft(job)
                now = time.monotonic()
                for job in running.values():
                    job.read_record(now)
                    if job.kill_reason:
                        continue
                    if now > end:
                        job.stop_reason = f"grading reached its time limit of {timeout:g} s"
                        job.kill_reason = f"did not finish: {job.stop_reason}"
                    elif now > job.deadline:
                        lim = job.limits.get(job.current, limit)
                        job.kill_reason = (
                            f"did not finish within {lim:g} s, so the grader stopped it "
                            "(an endless loop the per-test alarm could not interrupt?)"
                            if job.current else "its pytest process did not go on or exit")
                    else:
                        continue
                    send({"op": "kill", "job": job.id})
        except RuntimeError as e:  # the runner is gone: what did not finish is not graded
            for job in jobs:
                if not job.finished and job.row["error"] is None:
                    job.row["error"] = str(e)
        finally:
            with contextlib.suppress(OSError):
                runner.stdin.close()
            try:
                runner.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(runner.pid)
                runner.wait()
            runner.stdout.close()
            runner_log.close()
    for job in jobs:
        if not job.finished and job.row["error"] is None:
            job.row["error"] = f"not graded: grading reached its time limit of {timeout:g} s"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _serve() -> None:
    """The grader's runner process: reads requests (JSON lines) on stdin, starts one pytest
    process per "run" request in its own process group, kills one on "kill", and reports each
    one's exit on stdout. With "fork" it imports torch and pytest once and forks each run."""
    mode = sys.argv[1] if len(sys.argv) > 1 else "spawn"
    if mode == "fork":
        _preload()
    children: dict[str, Any] = {}  # job id -> pid (fork) or Popen (spawn)
    pending, reading, warm = b"", True, mode != "fork"
    try:
        while reading or children:
            if reading:
                ready, _, _ = select.select([0], [], [], _POLL)
                chunk = os.read(0, 1 << 16) if ready else b""
                if ready and not chunk:
                    break  # the grader is done (or gone): stop what still runs
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    request = json.loads(line)
                    if request["op"] == "run":
                        children[request["job"]] = _spawn(request, mode)
                    elif request["job"] in children:
                        child = children[request["job"]]
                        _kill_group(child if isinstance(child, int) else child.pid)
            if children and not warm:  # while the first runs go on, for the runs after them
                _warm_up()
                warm = True
            for job_id, child in list(children.items()):
                code = _poll(child)
                if code is not None:
                    del children[job_id]
                    _kill_group(child if isinstance(child, int) else child.pid)  # leftovers
                    sys.stdout.write(json.dumps({"job": job_id, "exit": code}) + "\n")
                    sys.stdout.flush()
    finally:
        for child in children.values():
            _kill_group(child if isinstance(child, int) else child.pid)


def _preload() -> None:
    """Import what every graded run needs, once, before forking (torch alone takes seconds)."""
    import pytest  # noqa: F401

    import rlhf_edu  # noqa: F401


def _warm_up() -> None:
    """Take torch's lazy imports that graded tests meet (the first optimizer imports
    torch._dynamo, a second or more) once, in the runner, for the processes forked later."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _spawn(request: dict, mode: str) -> Any:
    if mode == "fork":
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                os.setsid()
                _child_main(request)
            finally:
                os._exit(code)
        return pid
    with open(request["log"], "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "import json, sys; from rlhf_edu.grading import "
             "_child_main; _child_main(json.loads(sys.argv[1]))", json.dumps(request)],
            cwd=request["root"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def _poll(child: Any) -> int | None:
    if not isinstance(child, int):
        return child.poll()
    pid, status = os.waitpid(child, os.WNOHANG)
    return None if pid == 0 else os.waitstatus_to_exitcode(status)


def _child_main(request: dict) -> None:
    """One pytest run of one exercise (in its own process); ends the process when done, so a
    thread the learner's code left running cannot keep it alive."""
    code = 70
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(request["root"])
        import pytest

        recorder = _Recorder(request["record"], set(request["skip"]))
        code = int(pytest.main(request["args"], plugins=[recorder]))
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


class _Recorder:
    """pytest plugin of a graded run: one JSON line per event, written as it happens, so the
    grader keeps the results of a run it has to stop. Also deselects the tests an earlier
    attempt already settled."""

    def __init__(self, path: str, skip: set[str]) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.skip = skip
        self.reports: dict[str, list] = {}

    def _write(self, **event: Any) -> None:
        os.write(self.fd, (json.dumps(event) + "\n").encode())

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list) -> None:
        dropped = [item for item in items if item.nodeid in self.skip]
        if dropped:
            items[:] = [item for item in items if item.nodeid not in self.skip]
            config.hook.pytest_deselected(items=dropped)

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self._write(event="collect_error", nodeid=report.nodeid,
                        message=_report_message(report))

    def pytest_collection_finish(self, session: Any) -> None:
        self._write(event="collected",
                    tests=[[item.nodeid, _marker_limit(item)] for item in session.items])

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self._write(event="start", nodeid=nodeid)

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.reports.setdefault(report.nodeid, []).append(report)
        if report.when == "setup":
            self._write(event="setup_done", nodeid=report.nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        reports = self.reports.pop(nodeid, [])
        kind, message = "error", "the test did not run"
        for report in reports:  # setup, call, teardown
            if report.failed:
                kind = "failure" if report.when == "call" else "error"
                message = _clean(_report_message(report))
                break
        else:
            if any(r.skipped for r in reports):
                skipped = next(r for r in reports if r.skipped)
                kind, message = "skipped", _clean(_report_message(skipped))
                if hasattr(skipped, "wasxfail"):
                    message = f"expected to fail {skipped.wasxfail}".strip()
            elif any(r.when == "call" and r.passed for r in reports):
                kind, message = "passed", ""
        self._write(event="finish", nodeid=nodeid, outcome=kind, message=message,
                    seconds=sum(r.duration for r in reports))

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        self._write(event="done", exitstatus=int(exitstatus))


def _report_message(report: Any) -> str:
    """What JUnit XML would give as the message: the crash line, or the skip reason."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    return crash.message if crash is not None else str(longrepr)


def _marker_limit(item: Any) -> float | None:
    marker = item.get_closest_marker("timeout")
    if marker is None:
        return None
    value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    return _seconds(value)


# ------------------------------------------------------------------ the score table and CLI


def format_scores(rows: list[dict], failures: int = 1, width: int = 100) -> str:
    """A score table: passed/total per exercise and a total line, with the first
    ``failures`` failure messages under each exercise that is not complete."""
    target = rows[0]["target"] if rows else "exercises"
    lines = [f"{'#':>3}  {'exercise':<28}{'passed':>10}   grading {target}/"]
    passed = total = 0
    for row in rows:
        passed, total = passed + row["passed"], total + row["total"]
        done = row["error"] is None and row["passed"] == row["total"]
        status = "done" if done else ("error" if row["error"] else "")
        lines.append(f"{row['exercise']:>3}  {row['name']:<28}"
                     f"{row['passed']:>5} / {row['total']:<3} {status}".rstrip())
        notes = ([f"{row['error']}"] if row["error"] else
                 [f"{f['test']}: {f['message']}" for f in row["failures"][:failures]])
        for note in notes:
            wrapped = textwrap.wrap(" ".join(note.split()), width - 5) or [""]
            lines.extend("     " + w for w in wrapped[:6])
        hidden = len(row["failures"]) - failures
        if not row["error"] and hidden > 0:
            lines.append(f"     (and {hidden} more failing test{'s' if hidden > 1 else ''}; "
                         f"pytest {row['file']} shows all)")
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
    parser.add_argument("--timeout", default="900",
                        help="seconds for the whole run (default 900; each test also has a "
                             f"limit, ${TIMEOUT_ENV} or {DEFAULT_TEST_LIMIT:g} s)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every failure message, not only the first")


def run_grade_cli(args: argparse.Namespace) -> int:
    """Grade and print the table: 0 if every graded test passed, 1 if not, 2 on bad input."""
    try:
        timeout = _seconds(args.timeout)
        if timeout is None:
            raise ValueError(f"--timeout must be a number of seconds > 0, got {args.timeout!r}")
        given = args.exercise if isinstance(args.exercise, list) else (
            [] if args.exercise is None else [args.exercise])
        numbers = []
        for item in given:
            text = str(item).strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ValueError(f"the exercise must be a number such as 3, got {item!r}")
            numbers.append(int(text))
        rows = grade(numbers or None, args.target, args.root, timeout)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_scores(rows, failures=10**6 if args.verbose else 1))
    ok = all(r["error"] is None and r["passed"] == r["total"] for r in rows)
    return 0 if ok else 1
