"""What every benchmark script shares: one thread policy, the machine line, interleaved timing.

Thread policy: one intra-op thread (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``
through :func:`rlhf_edu.distributed.configure_threads`). On a 2-core machine shared with other
work, OpenMP's spin-waiting makes multi-threaded timings 10-50x slower and erratic; one thread
makes them repeatable, and the toy models gain nothing from a second one.

Timing policy: the compared variants run *interleaved* (A, B, C, then B, C, A, ...) after one
warm-up round, and tables report the median of the repeats, so a burst of load from another
process falls on every variant alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its OpenMP pool
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub: every model is built from a config
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

from rlhf_edu.distributed import configure_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def setup() -> dict:
    """Apply the thread policy and describe the machine (printed above every table)."""
    threads = configure_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch picked
        "cores": cores,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def load_note(info: dict) -> str:
    """"; loaded, 1-min load X" when the machine was busier than its cores when the run began
    (ratios of interleaved variants hold there, absolute times do not), else ""."""
    load = info.get("load_average_1min")
    return f"; loaded, 1-min load {load:g}" if load is not None and load > info["cores"] else ""


INTERLEAVED = "variants interleaved, median of the repeats after a warm-up"


def machine_line(info: dict, timing: str = INTERLEAVED) -> str:
    return (f"machine: {info['platform']}, {info['cpu']} ({info.get('cpu_capability')}), "
            f"{info['cores']} cores "
            f"(1-min load {info['load_average_1min']}); Python {info['python']}, "
            f"torch {info['torch']}\nthreads: torch.set_num_threads({info['torch_threads']}), "
            f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']}; {timing}")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each function, rotating the order: ``repeats`` rounds, and more
    (up to 10x) while the rounds so far took less than ``min_seconds`` (cheap calls get more
    samples, which steadies their medians on a loaded machine)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    r, start_all = 0, time.perf_counter()
    while r < repeats or (time.perf_counter() - start_all < min_seconds and r < 10 * repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
        r += 1
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec). Right-aligned, widths from the content."""
    cells = [[format(row[k], spec) if row.get(k) is not None else "-"
              for k, _, spec in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def save_figure(fig, path: Path, info: dict) -> None:
    """Stamp the machine on a benchmark figure, save it to ``path`` and close it."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, f"{info['cpu']}, {info['torch_threads']} thread, torch {info['torch']}",
             fontsize=7, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
