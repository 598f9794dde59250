"""Tests of rlhf_edu.plots: the figures' data, the live plot, and the widgets driven as a user
would (set a slider, read the result)."""

import json
import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from rlhf_edu import plots
from rlhf_edu.memory import ModelSpec, memory_breakdown


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fake_run(n: int, beta: float, kl_rate: float) -> list[dict]:
    return [{"step": s, "beta": beta, "rm_score": 0.01 * s, "gold_score": 0.5 - kl_rate * s / 100,
             "kl": kl_rate * s, "repetition": 0.1, "entropy": 1.0, "clipfrac": 0.01,
             "sample": f"sample {s} at beta {beta}"} for s in range(1, n + 1)]


@pytest.fixture
def runs():
    return {"beta=0": fake_run(20, 0.0, 1.0), "beta=10": fake_run(20, 10.0, 0.0),
            "beta=0.05": fake_run(20, 0.05, 0.2),
            "rejection sampling": [{"step": s, "samples": 64 * s, "rm_score": 0.1, "kl": 0.5,
                                    "gold_score": 0.1, "repetition": 0.0, "sample": "x"}
                                   for s in range(1, 21)]}


def line_data(ax) -> list[np.ndarray]:
    return [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]


def test_plot_training_unchanged():
    history = fake_run(5, 0.05, 0.2)
    fig = plots.plot_training(history)
    assert len(fig.axes) == len(plots.PANELS) == 4
    np.testing.assert_allclose(line_data(fig.axes[2])[0], [m["kl"] for m in history])


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(plots.smooth([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(plots.smooth([1, 2, 3], 1), [1, 2, 3])
    with pytest.raises(ValueError, match="window"):
        plots.smooth([1.0], 0)


def test_beta_runs_sorted_by_beta(runs):
    assert list(plots.beta_runs(runs)) == [0.0, 0.05, 10.0]
    with pytest.raises(ValueError, match="beta="):
        plots.beta_runs({"rejection": []})


def test_plot_runs_and_beta_runs(runs):
    fig = plots.plot_beta_runs(runs, window=1)
    rm = line_data(fig.axes[0])
    assert len(rm) == 3  # only the fixed-beta runs
    np.testing.assert_allclose(rm[0], [0.01 * s for s in range(1, 21)])
    fig = plots.plot_runs(runs, x="samples", panels=(("gold_score", "gold"),))
    xs = [np.asarray(line.get_xdata()) for line in fig.axes[0].get_lines()]
    assert all(x[-1] == 64 * 20 for x in xs)  # PPO: step * batch; rejection: recorded
    with pytest.raises(ValueError, match="x must be"):
        plots.plot_runs(runs, x="time")


def test_beta_run_view_returns_the_step(runs):
    out = plots.beta_run_view(runs, 0.0, 10, window=1)
    assert out == {"beta": 0.0, "step": 10, "rm_score": 0.1, "gold_score": 0.4, "kl": 10.0,
                   "repetition": 0.1, "sample": "sample 10 at beta 0.0"}
    assert plots.beta_run_view(runs, 10.0, 999)["step"] == 20  # clamped to the run
    with pytest.raises(ValueError, match="no run with beta"):
        plots.beta_run_view(runs, 3.0, 1)


def test_beta_explorer_slider_drives_the_result(runs):
    pytest.importorskip("ipywidgets")
    w = plots.beta_explorer(runs, window=1)
    beta, step = w.children[0], w.children[1]
    assert w.result["beta"] == 0.05 and w.result["step"] == 20  # the middle beta, last step
    beta.value = 0.0
    assert w.result["kl"] == 20.0
    step.value = 5  # continuous_update: setting a value re-runs the function
    assert w.result == plots.beta_run_view(runs, 0.0, 5, window=1)
    beta.value = 10.0
    w.update()
    assert w.result["kl"] == 0.0 and w.result["step"] == 5


def test_widgets_show_their_figure_on_every_update(runs, monkeypatch):
    """A slider must redraw: the widget's function ends with plt.show(), which the inline
    backend turns into a display inside the widget's output (ipywidgets' own flush misses the
    backend name that matplotlib reports after %matplotlib inline)."""
    pytest.importorskip("ipywidgets")
    shown = []
    monkeypatch.setattr(plots.plt, "show", lambda: shown.append(len(plt.get_fignums())))
    w = plots.beta_explorer(runs, window=1)
    w.children[1].value = 3
    m = plots.memory_explorer()
    m.children[2].value = 3  # ZeRO stage
    assert len(shown) == 4 and all(n >= 1 for n in shown)  # each call drew a figure first


def test_adaptive_and_overoptimisation(runs):
    fig = plots.plot_adaptive_kl(runs["beta=0.05"], target=2.0)
    assert line_data(fig.axes[1])[1].tolist() == [2.0, 2.0]  # the target line
    pts = plots.overoptimisation_points(runs, window=1)
    assert set(pts) == set(runs)
    np.testing.assert_allclose(pts["beta=0"]["kl"], np.arange(1, 21))
    fig = plots.plot_overoptimisation(runs, window=1)
    x = np.asarray(fig.axes[0].get_lines()[0].get_xdata())
    np.testing.assert_allclose(x, np.sqrt(np.arange(1, 21)))  # against sqrt(KL)
    rows = plots.kl_bins({"a": runs["beta=0"]}, edges=(0, 10, 100))
    assert [r["n"] for r in rows] == [9, 11]
    assert rows[0]["gold_score"] == pytest.approx(np.mean([0.5 - s / 100 for s in range(1, 10)]))


def test_live_plot_redraws_every_k_steps():
    live = plots.LivePlot(every=3, total=7, display=False)
    for m in fake_run(7, 0.05, 0.2):
        live(m)
    assert live.draws == 3  # steps 3, 6 and the last (7)
    assert len(live.axes) == len(plots.LIVE_PANELS)
    np.testing.assert_allclose(line_data(live.axes[4])[0], [0.01] * 7)  # clipfrac
    with pytest.raises(ValueError, match="every"):
        plots.LivePlot(every=0, display=False)


def test_live_plot_as_trainer_callback():
    from rlhf_edu.models import build_models
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    cfg = PPOConfig(batch_size=8, response_len=6, ppo_epochs=1, minibatches=1)
    trainer = RLHFTrainer(cfg, build_models(cfg.critic_mode))
    live = plots.LivePlot(every=1, display=False)
    history = trainer.train(2, progress=False, callback=live)
    assert live.history == history and live.draws == 2
    assert all(len(line_data(ax)[0]) == 2 for ax in live.axes)


def test_kl_estimators_and_heatmap():
    from rlhf_edu.rewards import kl_penalty

    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(3, 5, generator=g), -torch.rand(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    est = {k: kl_penalty(logp, ref, k) for k in ("k1", "k3")}
    fig = plots.plot_kl_estimators(est, mask, row=0, words=["a", "b", "c"])
    bars = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(bars, torch.cat([est["k1"][0, :3], est["k3"][0, :3]]), rtol=1e-6)
    adv = torch.arange(15.0).view(3, 5) - 7
    fig = plots.plot_advantage_heatmap({"raw": adv, "half": adv / 2}, mask)
    img = fig.axes[0].get_images()[0].get_array()
    assert np.ma.is_masked(img[0, 3]) and img[1, 4] == 2  # padding blank, values kept
    assert fig.axes[0].get_images()[0].get_clim() == (-7.0, 7.0)  # shared, centred on 0


def test_memory_plot_and_view_match_the_calculator():
    bd = memory_breakdown(ModelSpec.preset("llama-7b"), assumptions="chapter")
    fig = plots.plot_memory_breakdown(bd, gpu_mem_gb=80)
    heights = {}
    for p in fig.axes[0].patches:  # stacked bars: sum each bar's segments
        x = round(p.get_x(), 3)
        heights[x] = heights.get(x, 0) + p.get_height()
    bars = [heights[x] for x in sorted(heights)]  # the four roles, then one GPU
    assert sum(bars[:4]) == pytest.approx(bd.total_gb)
    assert bars[4:] == pytest.approx([bd.per_gpu_gb])
    # the GPU's line spans only the per-GPU bar, the one it is to be compared with
    (line,) = [c for c in fig.axes[0].collections if c.get_label() == "80 GB GPU"]
    (segment,) = line.get_segments()
    assert segment[0][0] > 3 and segment[:, 1].tolist() == [80, 80]
    split = memory_breakdown(ModelSpec.preset("llama-7b"), 8, 3, placement="split")
    fig = plots.plot_memory_breakdown(split, gpu_mem_gb=80)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[-2:] == ["one GPU\n(trained)", "one GPU\n(frozen)"]
    out = plots.memory_view(7.0, n_gpus=8, zero_stage=3, gpu_mem_gb=80)
    ref = memory_breakdown(ModelSpec.from_n_params(7e9), 8, 3)
    assert out["per_gpu_gb"] == round(ref.per_gpu_gb, 2) and out["fits"]
    assert "error" in plots.memory_view(7.0, n_gpus=1, placement="split")


def test_memory_explorer_sliders():
    pytest.importorskip("ipywidgets")
    w = plots.memory_explorer()
    sliders = {c.description: c for c in w.children if hasattr(c, "description")}
    first = w.result["per_gpu_gb"]
    sliders["GPUs"].value = 8
    sliders["ZeRO stage"].value = 3
    assert w.result["per_gpu_gb"] < first / 4  # sharded over 8 GPUs
    sliders["LoRA"].value = 0.01
    lora = w.result["per_gpu_gb"]
    expected = memory_breakdown(ModelSpec.preset("llama-7b"), 8, 3, lora_fraction=0.01)
    assert lora == round(expected.per_gpu_gb, 2)
    assert first == round(memory_breakdown(ModelSpec.preset("llama-7b")).per_gpu_gb, 2)
    sliders["model"].value = "llama-70b"
    assert w.result["fits"] is False


def test_load_demo_runs(tmp_path):
    path = tmp_path / "demos.json"
    path.write_text(json.dumps({"steps": 1, "seed": 0, "runs": {"beta=0": []}}))
    assert plots.load_demo_runs(path)["runs"] == {"beta=0": []}
    with pytest.raises(FileNotFoundError, match="benchmarks/demos.py"):
        plots.load_demo_runs(tmp_path / "missing.json")
    shipped = plots.load_demo_runs()  # the package's own copy, wherever it is installed
    assert plots.DEMOS_PATH.is_relative_to(Path(plots.__file__).parent)
    assert {"beta=0", "beta=0.05", "beta=10"} <= set(shipped["runs"])
    assert all(len(h) == shipped["steps"] for h in shipped["runs"].values())


# ---------------------------------------------------------------- the step's data flow

def drawn_labels(fig) -> dict[str, list[str]]:
    """Every ``name (shape)`` line in the figure's text: ``{name: [shape as drawn, ...]}``."""
    import re

    from matplotlib.text import Text

    out: dict[str, list[str]] = {}
    for text in fig.findobj(Text):
        for line in text.get_text().splitlines():
            m = re.fullmatch(r"(\w+) (\((?:\d+(?:, )?)*,?\))", line.strip())
            if m:
                out.setdefault(m.group(1), []).append(m.group(2))
    return out


@pytest.mark.parametrize("batch_size, response_len", [(2, 6), (3, 9)])
def test_data_flow_labels_are_the_traced_shapes(batch_size, response_len):
    from matplotlib.colors import to_hex
    from matplotlib.patches import FancyBboxPatch

    from rlhf_edu.trainer import trace_step

    trace = trace_step(batch_size=batch_size, response_len=response_len)
    fig = plots.plot_data_flow(trace)
    labels = drawn_labels(fig)
    B, T = batch_size, response_len
    P = trace.tensors[0][2][1]  # the prompt width, (B, P)
    per_token = f"({B}, {T})"
    expected = {"prompt_ids": f"({B}, {P})", "tokens": f"({B}, {P + T})",
                "old_logprobs": per_token, "scores": f"({B},)", "ref_logprobs": per_token,
                "kl": per_token, "rewards": per_token, "old_values": per_token,
                "advantages": per_token, "returns": per_token, "loss": "()"}
    for name, shape in expected.items():
        assert labels.get(name) and set(labels[name]) == {shape}, (name, labels.get(name))
    assert len(labels["tokens"]) == 3  # to the reward model, the reference and the critic
    traced = {name: str(shape) for _, name, shape, _ in reversed(trace.tensors)}
    assert all(traced[name] == shape for name, shapes in labels.items() for shape in shapes)
    colours = [to_hex(p.get_facecolor()) for p in fig.axes[0].patches
               if isinstance(p, FancyBboxPatch)]
    assert colours.count(plots.FLOW_COLORS["trained"]) == 2  # actor, critic
    assert colours.count(plots.FLOW_COLORS["frozen"]) == 2  # reward model, reference
    assert fig.get_size_inches()[0] <= plots.MAX_WIDTH


def test_data_flow_rejects_what_is_not_a_trace():
    with pytest.raises(TypeError, match="trace_step"):
        plots.plot_data_flow({"tokens": (4, 104)})
    partial = type("T", (), {"tensors": [("2_generate", "tokens", (4, 104), "int64")]})()
    with pytest.raises(ValueError, match="lacks the tensors"):
        plots.plot_data_flow(partial)


# ---------------------------------------------------------------- readable figures

def grid_of(fig) -> tuple[int, int]:
    """(rows, cols) of the subplot grid the figure's panels sit in (colour bars excluded)."""
    shapes = {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes
              if ax.get_subplotspec() is not None}
    assert len(shapes) == 1
    return shapes.pop()


def test_grid_shape_wraps_after_three_panels():
    assert [plots.grid_shape(n) for n in range(1, 8)] == [
        (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="n must be"):
        plots.grid_shape(0)


def test_multi_panel_figures_are_readable(runs):
    history = fake_run(6, 0.05, 0.2)
    mask = torch.ones(3, 5)
    figures = {
        "training": plots.plot_training(history),
        "five panels": plots.plot_runs(runs, panels=plots.LIVE_PANELS),
        "heat maps": plots.plot_advantage_heatmap({str(k): torch.randn(3, 5) for k in range(4)},
                                                  mask),
        "live": plots.LivePlot(display=False, total=6),
    }
    for m in history:
        figures["live"](m)
    figures["live"] = figures["live"].fig
    plots.beta_run_view(runs, 0.05, 3)
    figures["beta view"] = plt.gcf()
    for name, fig in figures.items():
        rows, cols = grid_of(fig)
        panels = [ax for ax in fig.axes if ax.get_subplotspec() is not None]
        assert cols <= 3 and rows * cols >= len(panels) > (rows - 1) * cols, name
        assert fig.get_size_inches()[0] <= plots.MAX_WIDTH, name
        assert all(ax.title.get_fontsize() >= 10 for ax in panels), name
    assert grid_of(figures["five panels"]) == (2, 3)
    assert grid_of(figures["training"]) == (2, 2)


def test_heatmap_token_axes_have_integer_ticks():
    fig = plots.plot_advantage_heatmap({"a": torch.randn(5, 15), "b": torch.randn(5, 15)},
                                       torch.ones(5, 15))
    for ax in fig.axes[:2]:
        for ticks in (ax.get_xticks(), ax.get_yticks()):
            assert len(ticks) >= 2 and np.allclose(ticks, np.round(ticks))


def test_overoptimisation_legend_and_runs_stay_visible(runs):
    fig = plots.plot_overoptimisation(runs, window=1)
    lines = fig.axes[0].get_lines()
    markers = {line.get_color(): line.get_marker() for line in lines}
    assert len(set(markers.values())) == len(markers) == len(runs)  # one marker per run
    assert all(line.get_alpha() is not None and line.get_alpha() < 1 for line in lines)
    assert {line.get_linestyle() for line in lines} == {"-", "--"}  # RM solid, gold dashed
    legend = fig.legends[0]
    assert all(t.get_fontsize() >= 9 for t in legend.get_texts())
    assert {t.get_text() for t in legend.get_texts()} >= set(runs)
    # the legend sits below the axes, not on the curves
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 <= fig.axes[0].get_window_extent(renderer).y0


def test_label_noise_at_follows_the_bradley_terry_link():
    a, b = [1 / 3, 2 / 3, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]  # gaps 1/3, 2/3, 1 and a tie
    r = plots.label_noise_at(a, b, 5.0)
    expect = [1 / (1 + math.exp(5.0 * g)) for g in (1 / 3, 2 / 3, 1.0)]
    assert r["noise"] == pytest.approx(sum(expect) / 3)  # the tie does not count
    assert r["ceiling"] == pytest.approx(1 - r["noise"])
    assert r["differ"] == pytest.approx(0.75)
    assert r["by_gap"]["1/3"] == (1, pytest.approx(expect[0]))
    # a sharper judge is less noisy; s = 0 is a fair coin on every pair
    assert plots.label_noise_at(a, b, 20.0)["noise"] < r["noise"]
    assert plots.label_noise_at(a, b, 0.0)["noise"] == pytest.approx(0.5)
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="sharpness"):
            plots.label_noise_at(a, b, bad)
    with pytest.raises(ValueError, match="no pair"):
        plots.label_noise_at([0.0], [0.0], 5.0)


def test_sharpness_explorer_slider_drives_the_result():
    pytest.importorskip("ipywidgets")
    a, b = [1 / 3, 2 / 3, 1.0], [0.0, 0.0, 0.0]
    w = plots.sharpness_explorer(a, b)
    assert w.result == plots.label_noise_at(a, b, 5.0)
    w.children[0].value = 1.0
    assert w.result["noise"] == pytest.approx(plots.label_noise_at(a, b, 1.0)["noise"])
    plt.close("all")


def test_seed_bars_and_colors():
    bars = plots.seed_bars({"a": {"x": [1.0, 3.0]}, "b": {"x": [2.0]}})
    assert bars["a"]["x"] == (2.0, pytest.approx(math.sqrt(2))) and bars["b"]["x"] == (2.0, 0.0)
    fig = plots.plot_seed_bars({"a": {"x": [1.0, 3.0]}, "b": {"x": [2.0]}}, [("x", "x")],
                               colors={"a": "red"}, reference={"x": 0.5})
    patches = fig.axes[0].patches
    assert matplotlib.colors.same_color(patches[0].get_facecolor()[:3], "red")
    plt.close(fig)
