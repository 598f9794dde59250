"""Graded tests of Exercise 7 (exercises/ex07_choose_beta.py): diagnosing beta from a run.

Reference: recorded runs labelled by the hidden gold score (see
``tests/exercises/data/record_beta_runs.py`` for the rule): the course's demo runs in
``rlhf_edu/data/demos.json`` and more runs in ``tests/exercises/data/beta_runs.json``.
The learner's function sees only the metrics a practitioner has; reading a hidden one fails.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from grading_utils import _short

EXERCISE = "ex07_choose_beta"
ROOT = Path(__file__).resolve().parents[2]
DEMOS = ROOT / "rlhf_edu" / "data" / "demos.json"
BETA_RUNS = Path(__file__).parent / "data" / "beta_runs.json"
HIDDEN = ("gold_score", "well_formed", "sample")
VERDICTS = ("too_low", "too_high", "ok")
# demos.json's runs and what the gold score says about each (checked by tests/test_grader.py)
DEMO_LABELS = {"beta=0": "too_low", "beta=0.05": "ok", "beta=10": "too_high",
               "adaptive, target KL 2": "ok"}
EXPLAIN = {
    "too_low": "the hidden gold score peaked and then fell while the RM score kept rising: "
               "the policy drifted far from the reference into text the reward model "
               "over-values (watch KL and repetition)",
    "too_high": "the hidden gold score hardly rose: the KL penalty kept the policy at the "
                "reference (watch how little KL and the RM score move)",
    "ok": "the hidden gold score rose and held, with a moderate KL",
}


class HiddenMetric(KeyError):
    pass


class Metrics(dict):
    """One step's metrics without the hidden keys; asking for one says why it is hidden."""

    def __missing__(self, key):
        if key in HIDDEN:
            raise HiddenMetric(key)
        raise KeyError(key)

    def get(self, key, default=None):
        if key in HIDDEN:
            raise HiddenMetric(key)
        return super().get(key, default)


@functools.cache
def labelled_runs() -> dict[str, tuple[tuple[dict, ...], str]]:
    runs = {}
    if DEMOS.exists():
        demos = json.loads(DEMOS.read_text())["runs"]
        for name, label in DEMO_LABELS.items():
            if name in demos:
                runs[f"demos.json: {name}"] = (tuple(demos[name]), label)
    for name, run in json.loads(BETA_RUNS.read_text())["runs"].items():
        runs[f"beta_runs.json: {name}"] = (tuple(run["history"]), run["label"])
    return runs


def run_ids() -> list[str]:
    names = [f"demos.json: {n}" for n in DEMO_LABELS]
    names += [f"beta_runs.json: {n}" for n in json.loads(BETA_RUNS.read_text())["runs"]]
    return names


@pytest.mark.parametrize("run", run_ids())
def test_diagnose_recorded_run(ex, run):
    runs = labelled_runs()
    if run not in runs:
        pytest.fail(f"{run} is not recorded: run `python benchmarks/demos.py` to write "
                    f"{DEMOS.relative_to(ROOT)}", pytrace=False)
    history, label = runs[run]
    visible = [Metrics({k: v for k, v in m.items() if k not in HIDDEN}) for m in history]
    try:
        got = ex.diagnose_beta(visible)
    except HiddenMetric as e:
        pytest.fail(f"diagnose_beta read {e.args[0]!r}, which is hidden: a practitioner does "
                    "not have the human verdict (gold score, well-formedness) or a reader for "
                    "every sample; use the training metrics (kl, rm_score, repetition, "
                    "entropy, ...)", pytrace=False)
    if got not in VERDICTS:
        pytest.fail(f"diagnose_beta should return one of {VERDICTS}, got {_short(got)}",
                    pytrace=False)
    if got != label:
        last = visible[-10:]
        summary = ", ".join(f"{k} {sum(m[k] for m in last) / len(last):.2f}"
                            for k in ("rm_score", "kl", "repetition", "entropy"))
        pytest.fail(f"{run} (beta={history[0]['beta']:g}, {len(history)} steps) is {label!r} "
                    f"but diagnose_beta says {got!r}: {EXPLAIN[label]}. Mean of the last 10 "
                    f"steps: {summary}", pytrace=False)
