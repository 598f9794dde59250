"""The machine behind every recorded figure: one table row per ``results/*.json``.

    python benchmarks/machines.py

Each benchmark records the machine it ran on (``_common.setup``); this prints them as the
Markdown table ``benchmarks/README.md`` carries, so a figure is never read without its CPU.
A 1-min load above the machine's cores marks the run "loaded": its ratios of interleaved
variants hold, its absolute times do not.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def rows() -> list[str]:
    """One Markdown row per results file that records its machine."""
    out = ["| results file | CPU | kernels | cores | torch | 1-min load |",
           "|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        machine = json.loads(path.read_text()).get("machine")
        if not isinstance(machine, dict):
            continue
        load = machine.get("load_average_1min")
        loaded = " (loaded)" if load is not None and load > machine.get("cores", 1) else ""
        out.append(f"| `{path.name}` | {machine.get('cpu')} | "
                   f"{machine.get('cpu_capability') or 'not recorded'} | {machine.get('cores')} | "
                   f"{machine.get('torch')} | {load}{loaded} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
