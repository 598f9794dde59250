"""Grade the exercises: run their graded tests and report a score per exercise.

``exercises/exNN_topic.py`` holds the learner's code, ``solutions/exNN_topic.py`` the worked
solution, and ``tests/exercises/test_exNN_topic.py`` the graded tests, which import one or the
other through a fixture that reads ``--target``. :func:`grade` runs those tests with pytest in
a subprocess (so a crashing, hanging or printing exercise cannot take the caller down), reads
the JUnit XML report, and returns one row per exercise:

``{"exercise": 3, "name": "ex03_gae", "file": "tests/exercises/test_ex03_gae.py",
"target": "exercises", "passed": 4, "total": 9, "seconds": 0.8,
"failures": [{"test": "test_padding_is_zero_and_not_bootstrapped", "message": "returns[1, 3]
is 0.3 but should be 0: that position is padding, ..."}, ...], "error": None}``

``error`` is set when the tests could not run at all (time limit, pytest crashed).
``rlhf-edu grade [N] [--target solutions]`` prints :func:`format_scores` of the rows.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

TARGETS = ("exercises", "solutions")
GRADED_DIR = Path("tests") / "exercises"
_TEST_FILE = re.compile(r"^test_(ex(\d+)_\w+)\.py$")
_IN_NAME = re.compile(r"test_(ex(\d+)_\w+)")

__all__ = ["TARGETS", "find_root", "graded_files", "grade", "read_report", "format_scores",
           "add_grade_arguments", "run_grade_cli"]


def find_root(root: str | Path | None = None) -> Path:
    """The repository that holds ``exercises/`` and ``tests/exercises/``.

    ``root`` given: that directory, which must hold both. ``None``: the current directory or
    the nearest parent that does (so grading from ``notebooks/`` works too).
    """
    if root is not None:
        candidates = [Path(root)]
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


def _clean(message: str, limit: int = 600) -> str:
    """A failure message as a learner should read it: no "Failed: " prefix, bounded length."""
    message = message.strip()
    m = re.fullmatch(r'failed on (?:setup|teardown) with "(.*)"', message, re.DOTALL)
    if m:  # a fixture failed, e.g. the exercise file does not import
        message = m.group(1)
    if message.startswith("Failed: "):
        message = message[len("Failed: "):]
    return message if len(message) <= limit else message[:limit] + " ..."


def _exercise_of(testcase: ET.Element) -> tuple[int, str] | None:
    m = _IN_NAME.search(testcase.get("classname", "") + " " + testcase.get("name", ""))
    return (int(m.group(2)), m.group(1)) if m else None


def _tail(path: Path, n: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n:]


def grade(exercise: int | None = None, target: str = "exercises",
          root: str | Path | None = None, timeout: float = 900.0,
          extra_args: list[str] | None = None) -> list[dict]:
    """Run the graded tests of one exercise (or all) against ``target``; one row per exercise.

    Args:
        exercise: the exercise number (3 grades ``tests/exercises/test_ex03_*.py``); None: all.
        target: "exercises" (the learner's code) or "solutions".
        root: the repository (see :func:`find_root`); None: the current directory or a parent.
        timeout: seconds for the whole pytest run. Each test also has its own limit (20 s,
            ``RLHF_EDU_GRADE_TIMEOUT``), so one endless loop fails one test, not the run.
        extra_args: more pytest arguments (e.g. ``["-x"]``).

    Returns:
        Rows as described in the module docstring, sorted by exercise number.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    root = find_root(root)
    files = _select(root, exercise)
    rows = _empty_rows(files, root, target)

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the learner's folders
    with tempfile.TemporaryDirectory(prefix="rlhf-edu-grade-") as tmp:
        report, log = Path(tmp) / "report.xml", Path(tmp) / "pytest.log"
        cmd = [sys.executable, "-m", "pytest", *[str(p) for p in files.values()],
               f"--target={target}", f"--junitxml={report}", "-q", "-p", "no:cacheprovider",
               "-o", "junit_logging=no", *(extra_args or [])]
        start = time.perf_counter()
        try:
            with open(log, "wb") as out:  # a file, not a pipe: output size cannot block us
                subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            for row in rows.values():
                row["error"] = f"the graded tests did not finish within {timeout:g} s"
            return [rows[n] for n in sorted(rows)]
        if not report.exists():
            for row in rows.values():
                row["error"] = ("pytest did not produce a report "
                                f"(ran {time.perf_counter() - start:.0f} s):\n{_tail(log)}")
            return [rows[n] for n in sorted(rows)]
        return _fill(report, list(rows.values()))


def read_report(report: str | Path, target: str = "exercises", root: str | Path | None = None,
                exercise: int | None = None) -> list[dict]:
    """The rows of :func:`grade` from a JUnit XML ``report`` of a pytest run of the graded
    tests (``pytest tests/exercises --target=... --junitxml=report.xml``)."""
    root = find_root(root)
    return _fill(report, list(_empty_rows(_select(root, exercise), root, target).values()))


def _select(root: Path, exercise: int | None) -> dict[int, Path]:
    files = graded_files(root)
    if not files:
        raise ValueError(f"no graded tests (test_exNN_*.py) in {root / GRADED_DIR}")
    if exercise is None:
        return files
    if exercise not in files:
        raise ValueError(f"no graded tests for exercise {exercise}; exercises: "
                         f"{', '.join(map(str, files))}")
    return {exercise: files[exercise]}


def _fill(report: Path, rows: list[dict]) -> list[dict]:
    """Count passed/total/seconds and collect failures per exercise from the XML report."""
    by_number = {row["exercise"]: row for row in rows}
    for case in ET.parse(report).getroot().iter("testcase"):
        found = _exercise_of(case)
        if found is None or found[0] not in by_number:
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


def _empty_rows(files: dict[int, Path], root: Path, target: str) -> dict[int, dict]:
    return {n: {"exercise": n, "name": _TEST_FILE.match(p.name).group(1),
                "file": str(p.relative_to(root)), "target": target, "passed": 0, "total": 0,
                "seconds": 0.0, "failures": [], "error": None} for n, p in files.items()}


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
    lines.append(f"{'':>3}  {'total':<28}{passed:>5} / {total}")
    return "\n".join(lines)


def add_grade_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rlhf-edu grade``."""
    parser.add_argument("exercise", nargs="?", type=int, default=None,
                        help="exercise number (default: all)")
    parser.add_argument("--target", choices=TARGETS, default="exercises",
                        help="grade your exercises/ (default) or the worked solutions/")
    parser.add_argument("--root", type=Path, default=None,
                        help="the repository with exercises/ (default: here or a parent)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds for the whole run (each test also has a 20 s limit)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every failure message, not only the first")


def run_grade_cli(args: argparse.Namespace) -> int:
    """Grade and print the table: 0 if every graded test passed, 1 if not, 2 on bad input."""
    try:
        rows = grade(args.exercise, args.target, args.root, args.timeout)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_scores(rows, failures=10**6 if args.verbose else 1))
    ok = all(r["error"] is None and r["passed"] == r["total"] for r in rows)
    return 0 if ok else 1
