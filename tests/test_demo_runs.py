"""The recorded runs (rlhf_edu/data/demos.json, benchmarks/demos.py) and the figures over them:
the β sweep, seed bands, and rejection sampling's optimizer-step count."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from rlhf_edu import plots
from rlhf_edu.models import build_models
from rlhf_edu.sampling import rejection_sampling

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
RS = "rejection sampling (16 x best-of-4)"
RS_EQUAL = "rejection sampling (16 x best-of-4, 4 epochs x 2 minibatches)"


def demos_module():
    spec = importlib.util.spec_from_file_location("_demos", ROOT / "benchmarks" / "demos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(values: list[float], per_step: int = 8) -> list[dict]:
    return [{"step": s, "samples": 64 * s, "optimizer_steps": per_step * s, "gold_score": v,
             "rm_score": 2 * v, "kl": abs(v), "repetition": 0.0}
            for s, v in enumerate(values, 1)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plots.plt.close("all")


def test_seed_band_matches_an_explicit_computation():
    a, b, c = [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 4.0, 0.0], [2.0, 4.0, 0.0, 3.0]
    band = plots.seed_band([fake_run(a), fake_run(b), fake_run(c)], "gold_score")
    y = np.array([a, b, c])
    np.testing.assert_allclose(band["mean"], [1.0, 2.0, 2.0, 2.0])
    np.testing.assert_allclose(band["lo"], [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(band["hi"], [2.0, 4.0, 4.0, 3.0])
    np.testing.assert_allclose(band["std"], [1.0, np.sqrt(3.0), 2.0, np.sqrt(3.0)])
    np.testing.assert_allclose(band["std"], y.std(0, ddof=1))
    np.testing.assert_array_equal(band["x"], [64, 128, 192, 256])
    steps = plots.seed_band([fake_run(a), fake_run(b)], "gold_score", x="optimizer_steps",
                            window=2)
    np.testing.assert_array_equal(steps["x"], [8, 16, 24, 32])
    # window 2: the first point is itself, then means of neighbours, averaged over the seeds
    np.testing.assert_allclose(steps["mean"], [0.5, 0.75, 2.0, 2.25])
    one = plots.seed_band([fake_run(a)], "kl")
    np.testing.assert_array_equal(one["std"], 0.0)


def test_seed_band_rejects_runs_it_cannot_stack():
    with pytest.raises(ValueError, match="differ in length"):
        plots.seed_band([fake_run([1.0, 2.0]), fake_run([1.0])], "gold_score")
    with pytest.raises(ValueError, match="disagree on 'optimizer_steps'"):
        plots.seed_band([fake_run([1.0]), fake_run([1.0], per_step=1)], "gold_score",
                        x="optimizer_steps")
    bare = [{"step": 1, "gold_score": 0.0}]
    with pytest.raises(ValueError, match="run 0 records no 'optimizer_steps'"):
        plots.seed_band([bare], "gold_score", x="optimizer_steps")
    with pytest.raises(ValueError, match="x must be one of"):
        plots.seed_band([bare], "gold_score", x="tokens")
    with pytest.raises(ValueError, match="non-empty"):
        plots.seed_band([], "gold_score")


def test_plot_seed_bands_draws_a_mean_and_a_band_per_group():
    groups = {"a": [fake_run([0.0, 1.0, 2.0]), fake_run([1.0, 2.0, 3.0])],
              "b": [fake_run([0.0, 0.0, 0.0], per_step=1)] * 3}
    fig = plots.plot_seed_bands(groups, x="optimizer_steps", window=1, band="std")
    axes = fig.get_axes()
    assert len(axes) == 3 and [ax.get_title() for ax in axes][0] == "gold score"
    for ax in axes:
        assert len(ax.get_lines()) == 2 and len(ax.collections) == 2  # mean lines, bands
        assert ax.get_xlabel() == "optimizer (gradient) steps"
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), [0.5, 1.5, 2.5])
    np.testing.assert_allclose(axes[0].get_lines()[1].get_xdata(), [1, 2, 3])
    with pytest.raises(ValueError, match="band must be"):
        plots.plot_seed_bands(groups, band="iqr")


def test_beta_runs_skip_other_seeds_and_the_sweep_reads_run_ends():
    runs = {"beta=0.1": fake_run([0.0] * 5 + [1.0] * 5), "beta=0": fake_run([-1.0] * 10),
            "beta=0.1, seed 1": fake_run([9.0] * 10), "rejection sampling": fake_run([0.0])}
    assert list(plots.beta_runs(runs)) == [0.0, 0.1]
    rows = plots.beta_sweep(runs, last=5)
    assert [r["beta"] for r in rows] == [0.0, 0.1]
    assert rows[1]["gold_score"] == 1.0 and rows[1]["rm_score"] == 2.0
    assert plots.beta_sweep(runs, last=10)[1]["gold_score"] == 0.5
    fig = plots.plot_beta_sweep(runs, last=5)
    axes = fig.get_axes()
    assert len(axes) == 3 and all(ax.get_xscale() == "symlog" for ax in axes)
    assert "best gold at β = 0.1" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="last must be a positive int, got 0"):
        plots.end_mean(runs["beta=0"], "kl", last=0)


def test_rejection_sampling_takes_epochs_x_minibatches_steps(monkeypatch):
    calls = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, norm: calls.append(1) or clip(params, norm))
    models = build_models()
    history = rejection_sampling(models, steps=2, prompts_per_step=4, n=2, response_len=6,
                                 epochs=3, minibatches=2, seed=0)
    assert len(calls) == 2 * 3 * 2  # one clipped optimizer step per minibatch
    assert [m["optimizer_steps"] for m in history] == [6, 12]
    assert [m["samples"] for m in history] == [8, 16]
    # step 1 samples from the reference's own weights: its KL is zero up to rounding
    assert abs(history[0]["kl"]) < 1e-3 and abs(history[0]["best_kl"]) < 1e-3
    with pytest.raises(ValueError, match=r"prompts_per_step \(4\) must be divisible by "
                                         r"minibatches \(3\)"):
        rejection_sampling(models, steps=1, prompts_per_step=4, minibatches=3)


def test_demos_script_counts_and_merges():
    demos = demos_module()
    table = demos.run_table(betas=(0.0, 0.3), seeds=(0, 1))
    assert {"beta=0", "beta=0.3", "beta=0.05", "beta=0.05, seed 1", RS, f"{RS_EQUAL}, seed 1",
            "adaptive, target KL 2"} <= set(table)
    assert demos.per_step_counts(table["beta=0.3"]) == (64, 8)  # 4 epochs x 2 minibatches
    assert demos.per_step_counts(table[RS]) == (64, 1)
    assert demos.per_step_counts(table[RS_EQUAL]) == (64, 8)
    old_run = [{"step": s, "kl": 0.0} for s in (1, 2)]
    counted = demos.with_counts(old_run, table["beta=0.3"])
    assert [(m["samples"], m["optimizer_steps"]) for m in counted] == [(64, 8), (128, 16)]
    with pytest.raises(ValueError, match="optimizer_steps=5"):
        demos.with_counts([{"step": 1, "optimizer_steps": 5}], table[RS])
    old = {"steps": 2, "seed": 0, "runs": {"beta=0.3": old_run, "beta=0": old_run}}
    new = {"beta=0": counted}
    data = demos.merged(old, new, {"beta=0": {"seed": 0}}, table, steps=2)
    assert set(data["runs"]) == {"beta=0.3", "beta=0"} and data["runs"]["beta=0"] is counted
    assert data["runs"]["beta=0.3"][1]["optimizer_steps"] == 16  # filled in from its settings
    assert data["meta"]["beta=0.3"]["settings"] == {"beta": 0.3}
    with pytest.raises(ValueError, match="same length"):
        demos.merged(old, new, {}, table, steps=120)


def test_shipped_runs_record_their_seeds_and_counts():
    data = plots.load_demo_runs()
    runs, meta = data["runs"], data["meta"]
    assert {"beta=0", "beta=0.05", "beta=10", "adaptive, target KL 2"} <= set(runs)
    assert len(plots.beta_runs(runs)) >= 8  # the sweep behind notebook 5's slider
    for name, per_step in (("beta=0.05", 8), (RS, 1), (RS_EQUAL, 8)):
        for seed in (0, 1, 2):
            run = name if seed == 0 else f"{name}, seed {seed}"
            h = runs[run]
            assert meta[run]["seed"] == seed, run
            assert len(h) == data["steps"]
            assert [m["optimizer_steps"] for m in h] == [per_step * m["step"] for m in h], run
            assert [m["samples"] for m in h] == [64 * m["step"] for m in h], run
    # the seeds are different runs, not copies
    assert runs["beta=0.05"][-1]["sample"] != runs["beta=0.05, seed 1"][-1]["sample"] or \
        runs["beta=0.05"][-1]["kl"] != runs["beta=0.05, seed 1"][-1]["kl"]


def test_demos_script_records_in_parallel_in_the_tables_order(tmp_path):
    """``--jobs 2``: every run of the table is recorded, written in the table's order whatever
    order the workers finish in, with its counts and seconds."""
    out = tmp_path / "demos.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demos.py"), "--steps", "1",
                           "--betas", "0", "--seeds", "0", "--jobs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    table = demos_module().run_table(betas=(0.0,), seeds=(0,))
    assert list(data["runs"]) == list(table) == list(data["meta"])
    for name, history in data["runs"].items():
        samples, updates = demos_module().per_step_counts(table[name])
        assert [(m["step"], m["samples"], m["optimizer_steps"]) for m in history] == [
            (1, samples, updates)], name
        assert data["meta"][name]["seconds"] > 0
