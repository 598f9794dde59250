"""The record of a graded run: written by this pytest plugin in the test process, read by the
grader (:mod:`rlhf_edu.grading`) with :class:`Record`.

``rlhf-edu grade`` starts each exercise's tests as ``python -m pytest -p rlhf_edu.grading_plugin
--grade-record=FILE [--grade-skip=NODEID ...]``. The plugin appends one JSON line per event to
``FILE`` as it happens (collected, start with the test's time limit, setup_done, finish, done),
so the grader keeps the results of a run it has to stop and knows which test is running; it
deselects the tests an earlier attempt settled; and it ends the process as soon as pytest is
done, so a thread the learner's code left running cannot keep it alive. Without
``--grade-record`` it does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any


def pytest_addoption(parser: Any) -> None:
    """``--grade-record`` and ``--grade-skip`` (one node id each, repeatable)."""
    group = parser.getgroup("rlhf-edu grade")
    group.addoption("--grade-record", default=None,
                    help="append each graded test's outcome to this file (JSON lines)")
    group.addoption("--grade-skip", action="append", default=[],
                    help="the node id of a test an earlier attempt settled: do not run it")


def pytest_configure(config: Any) -> None:
    """Record the run when ``--grade-record`` is given."""
    path = config.getoption("--grade-record", None)
    if path:
        config.pluginmanager.register(_Recorder(path, set(config.getoption("--grade-skip"))),
                                      "rlhf-edu-grade-recorder")


class _Recorder:
    """Writes the events of a graded run, each at once (see the module docstring)."""

    def __init__(self, path: str, skip: set[str]) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.skip, self.exitstatus = skip, 3
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
            self._write(event="collect_error", message=clean(_message(report)))

    def pytest_collection_finish(self, session: Any) -> None:
        self._write(event="collected", tests=[item.nodeid for item in session.items])

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> None:
        self._write(event="start", nodeid=item.nodeid, limit=_marker_limit(item))

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.reports.setdefault(report.nodeid, []).append(report)
        if report.when == "setup":
            self._write(event="setup_done", nodeid=report.nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        """The test's outcome: its first failed phase, else skipped, else passed."""
        reports = self.reports.pop(nodeid, [])
        kind, message = "error", "the test did not run"
        failed = next((r for r in reports if r.failed), None)
        skipped = next((r for r in reports if r.skipped), None)
        if failed is not None:
            kind = "failure" if failed.when == "call" else "error"
            message = clean(_message(failed))
        elif skipped is not None:
            kind, message = "skipped", clean(_message(skipped))
            if hasattr(skipped, "wasxfail"):
                message = f"expected to fail {skipped.wasxfail}".strip()
        elif any(r.when == "call" and r.passed for r in reports):
            kind, message = "passed", ""
        self._write(event="finish", nodeid=nodeid, kind=kind, message=message,
                    seconds=sum(r.duration for r in reports))

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        self.exitstatus = int(exitstatus)
        self._write(event="done", exitstatus=self.exitstatus)

    def pytest_unconfigure(self, config: Any) -> None:
        """Registered last, called first: the report is written; end the process now."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(self.exitstatus)


class Record:
    """A record as the grader reads it while it grows: the tests collected, the collection
    errors, the outcomes so far ({"kind", "message", "seconds"} by node id), the test running
    (being set up: ``in_setup``) and its own time limit, pytest's exit status once done."""

    def __init__(self, path: str | Path) -> None:
        self.path, self.offset, self.pending = Path(path), 0, b""
        self.tests: list[str] = []
        self.collect_errors: list[str] = []
        self.results: dict[str, dict] = {}
        self.current: str | None = None
        self.limit: float | None = None
        self.in_setup = False
        self.done: int | None = None

    def read(self) -> list[str]:
        """Take in the events written since the last look; returns their kinds, in order."""
        kinds: list[str] = []
        with contextlib.suppress(OSError), open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
            self.offset += len(data)
            *lines, self.pending = (self.pending + data).split(b"\n")
            for line in lines:  # a line the test process could not finish is left out
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    kinds.append(self._take(json.loads(line)))
        return kinds

    def _take(self, event: dict) -> str:
        kind = str(event["event"])
        if kind == "collected":
            self.tests = [str(t) for t in event["tests"]]
        elif kind == "collect_error":
            self.collect_errors.append(str(event["message"]))
        elif kind == "start":
            self.current, self.in_setup = str(event["nodeid"]), True
            self.limit = event.get("limit")
        elif kind == "setup_done":
            self.in_setup = False
        elif kind == "finish":
            self.results[str(event["nodeid"])] = {"kind": str(event["kind"]), "message": str(
                event["message"]), "seconds": float(event["seconds"])}
            self.current = None
        elif kind == "done":
            self.done = int(event["exitstatus"])
        return kind


def clean(message: str, limit: int = 600) -> str:
    """A failure message as a learner should read it: no "Failed: " prefix, bounded length."""
    message = message.strip()
    m = re.fullmatch(r'failed on (?:setup|teardown) with "(.*)"', message, re.DOTALL)
    if m:  # a fixture failed, e.g. the exercise file does not import
        message = m.group(1)
    for prefix in ("Failed: ", "Skipped: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message if len(message) <= limit else message[:limit] + " ..."


def _message(report: Any) -> str:
    """The crash line of a failed report, or the reason of a skipped one."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    return crash.message if crash is not None else str(longrepr)


def _marker_limit(item: Any) -> float | None:
    """The test's own time limit (its ``timeout`` marker), or None."""
    marker = item.get_closest_marker("timeout")
    value = None if marker is None else (marker.args or [marker.kwargs.get("timeout")])[0]
    try:
        return float(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None
