"""The recorded critic-mode runs (rlhf_edu/data/critic_modes.json, benchmarks/critic_modes.py):
each claim notebook 7 makes about them, re-derived from the file, and the recorder itself."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = json.loads((ROOT / "rlhf_edu" / "data" / "critic_modes.json").read_text())
MODES, SEEDS = ("separate", "shared", "head"), (0, 1, 2)


def window(h: list[dict], first: int, last: int, key: str) -> float:
    part = h[first - 1:last]
    return sum(m[key] for m in part) / len(part)


def per_seed(mode: str, first: int, last: int, key: str) -> list[float]:
    return [window(DATA["runs"][f"{mode}, seed {s}"], first, last, key) for s in SEEDS]


def test_every_mode_and_seed_is_recorded():
    assert set(DATA["runs"]) == {f"{m}, seed {s}" for m in MODES for s in SEEDS}
    assert all(len(h) == DATA["steps"] == 20 for h in DATA["runs"].values())
    assert DATA["params"] == {"separate": 609_537, "shared": 129, "head": 16_641}


def test_the_claims_of_notebook_7():
    early = {m: per_seed(m, 1, 2, "value_loss") for m in MODES}
    mid = {m: per_seed(m, 7, 8, "value_loss") for m in MODES}
    for other in ("shared", "head"):
        assert max(early[other]) < min(early["separate"])  # highest at the start
        assert max(mid["separate"]) < min(mid[other])  # lowest after 8 steps
    for key in ("rm_score", "gold_score"):  # at the end the modes' means are close
        ends = {m: sum(per_seed(m, 16, 20, key)) / len(SEEDS) for m in MODES}
        assert all(abs(ends[a] - ends[b]) < 0.05 for a in MODES for b in MODES)
    ppo = {m: per_seed(m, 2, 20, "time_6_ppo") for m in MODES}
    assert all(s > 1.3 * max(a, b) for s, a, b in zip(ppo["separate"], ppo["shared"],
                                                      ppo["head"]))


def test_the_recorder_runs():
    spec = importlib.util.spec_from_file_location("_critic_modes",
                                                  ROOT / "benchmarks" / "critic_modes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params, history = module.record("head", 0, 2)
    assert params == DATA["params"]["head"] and len(history) == 2
    assert set(history[0]) == set(module.KEEP)
    # the recording is deterministic on one machine: its first step is the file's
    first = DATA["runs"]["head, seed 0"][0]
    assert history[0]["value_loss"] == first["value_loss"] or abs(
        history[0]["value_loss"] - first["value_loss"]) < 1e-3
