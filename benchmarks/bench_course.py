"""How long the course's own checks take: the test suite and executing every notebook.

    python benchmarks/bench_course.py

1. ``pytest -q -p no:cacheprovider`` from the repository root, in a subprocess (the suite's
   own configuration in pyproject.toml applies, notebooks under nbval included if configured);
2. ``python scripts/run_notebooks.py`` if that script exists (skipped with a message if not).
   That script saves the executed notebooks in place, so it runs here on copies of
   ``notebooks/*.ipynb`` in a temporary folder under ``notebooks/`` (removed afterwards): the
   repository's notebooks are never written.

Each runs once with ``OMP_NUM_THREADS=1`` (a suite run takes minutes, so there are no repeats:
read the figure as +-20 % on a shared machine). The interpreter is this one (``sys.executable``),
so run it from the environment the course uses (``pip install -e ".[dev,notebooks]"``).
Writes ``results/course.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common


def timed_run(cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=_common.REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"command": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd),
            "seconds": seconds, "returncode": proc.returncode,
            "summary": lines[-1] if lines else "", "tail": (lines + errors)[-15:]}


def run_notebooks(script: Path) -> dict:
    """Time ``script`` on temporary copies of the notebooks (it writes them back when done).

    The copies live in a hidden folder under ``notebooks/``: a notebook that runs one of the
    course's scripts finds ``scripts/`` above its own folder, as it does in the repository."""
    notebooks = _common.REPO / "notebooks"
    with tempfile.TemporaryDirectory(dir=notebooks, prefix=".bench-copies-") as tmp:
        copies = []
        for nb in sorted(notebooks.glob("*.ipynb")):
            copies.append(shutil.copy(nb, Path(tmp) / nb.name))
        row = timed_run([sys.executable, str(script), *map(str, copies)])
    row["command"] = f"{script.relative_to(_common.REPO)} <copies of notebooks/*.ipynb>"
    return row


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    info = _common.setup()
    rows, notes = [], []
    if importlib.util.find_spec("pytest") is None:
        notes.append('test suite skipped: pytest is not installed (pip install -e ".[dev]")')
    else:
        rows.append({"what": "test suite", **timed_run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"])})
    script = _common.REPO / "scripts" / "run_notebooks.py"
    if script.exists():
        rows.append({"what": "all notebooks", **run_notebooks(script)})
    else:
        notes.append(f"notebooks skipped: {script.relative_to(_common.REPO)} does not exist yet")

    print("\nCourse checks, wall time of one run each")
    print(_common.machine_line(info, timing="one run each, in subprocesses"))
    if rows:
        print(_common.format_table(rows, [("what", "what", "s"), ("command", "command", "s"),
                                          ("seconds", "seconds", ".1f"),
                                          ("returncode", "exit", "d"), ("summary", "result", "s")]))
    for row in rows:
        if row["returncode"] != 0:
            print(f"\n{row['what']} exited with {row['returncode']}; its last lines:")
            print("\n".join(row["tail"]))
    for note in notes:
        print(note)
    path = _common.write_json("course.json", {"machine": info, "rows": rows, "notes": notes})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
