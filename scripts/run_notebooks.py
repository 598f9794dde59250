"""Re-execute the course notebooks in place, so the outputs they carry are the ones nbval checks.

    python scripts/run_notebooks.py                      # every notebooks/*.ipynb
    python scripts/run_notebooks.py notebooks/04_ppo_training.ipynb

Each notebook runs top to bottom in a fresh kernel of this Python, in its own directory, with one
torch thread (``OMP_NUM_THREADS=1``), and is saved with its outputs and widget state. Prints the
seconds each notebook took. Afterwards ``pytest notebooks`` (nbval) must pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run(path: Path, timeout: int) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: all in notebooks/)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    # the kernels inherit this environment: one thread, and the inline backend (the
    # notebooks say %matplotlib inline, but a global MPLBACKEND=Agg should not matter)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.pop("MPLBACKEND", None)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if not paths:
        print(f"no notebooks in {NOTEBOOKS}", file=sys.stderr)
        return 2
    from nbclient.exceptions import CellExecutionError

    total = 0.0
    for path in paths:
        try:
            seconds = run(path.resolve(), args.timeout)
        except CellExecutionError as e:
            print(f"{path.name}: a cell failed; the notebook was not saved\n{e}", file=sys.stderr)
            return 1
        total += seconds
        print(f"{path.name:<28} {seconds:6.1f} s", flush=True)
    print(f"{'total':<28} {total:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
