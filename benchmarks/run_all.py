"""Run every benchmark, each in its own subprocess, and print their tables.

    pip install -e ".[bench]"        # transformers, trl 0.29.1, accelerate (for the comparisons)
    python benchmarks/run_all.py [--skip course] [--only generate step]

Every script gets ``OMP_NUM_THREADS=1`` (see ``_common.py`` for why), ``HF_HUB_OFFLINE=1`` and
``TRL_EXPERIMENTAL_SILENCE=1``; each writes its JSON (and figures) to ``benchmarks/results/``.
``bench_trl1.py`` (GRPO and DPO against TRL 1.x) runs under ``$RLHF_TRL1_PYTHON`` (a venv
with TRL 1.x: see that script's docstring); without it, it stops with a one-line message.
A failing script is reported and the others still run; the exit status is non-zero if any
failed. On the 2-core development machine (shared, 1-min load 2-4) the benchmarks took 4.5
minutes and the course checks (the project's test suite and notebooks) 6 more; under heavier
load (4-8) the benchmarks alone took 9 minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("generate", "step", "trl", "trl1", "flops", "scaling", "course")
# scripts that need another environment: the variable naming its Python (default: this one)
PYTHON_VAR = {"trl1": "RLHF_TRL1_PYTHON"}  # TRL 1.x, beside the 0.29.1 that bench_trl.py pins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    parser.add_argument("--skip", nargs="+", choices=SCRIPTS, default=[])
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    durations, failed = {}, []
    start_all = time.perf_counter()
    for name in (s for s in SCRIPTS if s in args.only and s not in args.skip):
        print(f"\n=== bench_{name}.py " + "=" * 60, flush=True)
        start = time.perf_counter()
        python = os.environ.get(PYTHON_VAR.get(name, ""), sys.executable)
        code = subprocess.run([python, str(HERE / f"bench_{name}.py")], env=env,
                              cwd=HERE.parent).returncode
        durations[name] = time.perf_counter() - start
        if code != 0:
            failed.append(name)
            print(f"!!! bench_{name}.py exited with status {code}", flush=True)
    total = time.perf_counter() - start_all
    print("\n=== run_all summary " + "=" * 60)
    for name, seconds in durations.items():
        status = "FAILED" if name in failed else "ok"
        print(f"  bench_{name + '.py':<12} {seconds:7.1f} s  {status}")
    print(f"  {'total':<18} {total:7.1f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
