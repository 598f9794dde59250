"""Matplotlib figures of training runs, used by the CLI and the notebooks.

Every figure comes from a plain function that returns the :class:`~matplotlib.figure.Figure`
(or, for the functions behind the widgets, the numbers it shows), so tests can check it without
a notebook. The widget builders (:func:`beta_explorer`, :func:`memory_explorer`) import
ipywidgets lazily: it is an optional extra (``pip install rlhf_edu[notebooks]``).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .memory import COUNT_MAX, GB, ITEMS, PRESETS, ModelSpec, memory_breakdown
from .validate import check_float, check_int, shown

PANELS = (("rm_score", "RM score (z)"), ("gold_score", "gold score"), ("kl", "KL per response"),
          ("repetition", "repeats a word"))
ARITH_PANELS = (("gold_score", "verified (pass@1)"), ("lax_score", "lax verifier"),
                ("worked", "worked answers"), ("kl", "KL per response"))
"""the panels of a run on a task judged by verifiers (no reward model, no repetition)"""
LIVE_PANELS = (("rm_score", "RM score (z)"), ("gold_score", "gold score"),
               ("kl", "KL per response"), ("entropy", "entropy per token"),
               ("clipfrac", "clip fraction"))
DEMOS_PATH = Path(__file__).resolve().parent / "data" / "demos.json"
"""The recorded runs shipped with the package (written by ``python benchmarks/demos.py``)."""

# Readable in JupyterLab: a notebook shows a figure at most about 12 inches wide at full size, so
# a multi-panel figure wraps after MAX_COLS panels instead of shrinking its text.
MAX_COLS = 3
MAX_WIDTH = 12.0  # inches
TITLE_SIZE = 11
LEGEND_SIZE = 9
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # one per run where lines may overlap


def grid_shape(n: int, max_cols: int = MAX_COLS) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels: at most ``max_cols`` per row, rows as even as possible
    (4 panels: 2 x 2; 5: 2 x 3)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of panels), got {n!r}")
    check_int("max_cols", max_cols, minimum=1)
    rows = math.ceil(n / max_cols)
    return rows, math.ceil(n / rows)


def _panel_axes(n: int, panel_size: tuple[float, float] = (3.8, 2.8), fig=None):
    """A figure with ``n`` panels in a :func:`grid_shape` grid, no wider than ``MAX_WIDTH``
    (constrained layout); returns the figure and its ``n`` axes in reading order. ``fig`` (a
    bare ``Figure``) is filled instead of a new pyplot figure."""
    rows, cols = grid_shape(n)
    size = (min(MAX_WIDTH, panel_size[0] * cols), panel_size[1] * rows)
    if fig is None:
        fig = plt.figure(figsize=size, layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:  # the unused slots of the last row
        fig.delaxes(ax)
    return fig, axes[:n]


def _legend_below(fig, axes, ncol: int = 4, **kwargs) -> None:
    """One legend for the whole figure, under the panels: every labelled line, once."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    handles, labels = list(entries.values()), list(entries)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, len(handles)),
                   fontsize=LEGEND_SIZE, **kwargs)


def plot_training(history: list[dict], path: str | Path | None = None, title: str = ""):
    """Reward-model score, gold score, KL and repetition over steps (a verifier's run: verified,
    lax, worked share and KL); saved to ``path`` if given.

    Returns the path when saving (the figure is closed), else the figure.
    """
    if not history:
        raise ValueError("history is empty: train at least one step before plotting")
    steps = [m["step"] for m in history]
    panels = PANELS if "rm_score" in history[0] else ARITH_PANELS
    panels = [(k, label) for k, label in panels if k in history[0]]
    fig, axes = _panel_axes(len(panels))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(steps, [m[key] for m in history])
        ax.set_title(label, fontsize=TITLE_SIZE)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1)
    if path is None:
        return fig
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------- recorded runs

def load_demo_runs(path: str | Path | None = None) -> dict:
    """The runs recorded by ``python benchmarks/demos.py``: ``{"steps", "seed", "runs"}``.

    Without ``path``, reads the copy shipped inside the package (``rlhf_edu/data/demos.json``),
    so it works from an installed wheel as well as from the repository.
    """
    p = Path(path) if path is not None else DEMOS_PATH
    if not p.is_file():
        raise FileNotFoundError(f"no recorded runs at {p}; "
                                "create them with `python benchmarks/demos.py --out PATH`")
    fix = ("reinstall rlhf_edu" if path is None else
           "record them again with `python benchmarks/demos.py --out PATH`")
    try:
        runs = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # truncated or overwritten
        raise ValueError(f"recorded runs {p} are not valid JSON ({_one_line(e)}); {fix}") \
            from None
    if not isinstance(runs, dict) or not isinstance(runs.get("runs"), dict):
        raise ValueError(f"recorded runs {p} hold no dict of runs under 'runs' (keys "
                         f"{shown(sorted(runs) if isinstance(runs, dict) else runs)}); {fix}")
    return runs


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def rounded(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` decimals, with ``-0.0`` written as ``0.0``.

    A value that is zero in exact arithmetic (the KL of a policy against its own copy) comes out
    as +1e-8 on one machine and -1e-8 on another; rounded alone it would print ``-0.000`` on
    half of them. Use it for figures a notebook prints and nbval compares.
    """
    check_int("digits", digits)
    return round(float(x), digits) + 0.0


def smooth(values, window: int = 1) -> np.ndarray:
    """Trailing moving average over ``window`` steps (shorter at the start); 1 = unchanged."""
    window = min(check_int("window", window, minimum=1), 2**62)  # numpy indexes in int64
    x = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(x, 0, 0.0))
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def _beta_of(name: str) -> float | None:
    """β of a run named exactly ``"beta=<number>"``; None for any other name (``"beta=0.05,
    seed 1"`` is another seed of a run, not another β)."""
    if not name.startswith("beta="):
        return None
    try:
        return float(name.split("=", 1)[1])
    except ValueError:
        return None


def beta_runs(runs: dict[str, list[dict]]) -> dict[float, list[dict]]:
    """The fixed-β runs (names exactly ``"beta=<value>"``) keyed by β, smallest first."""
    out = {_beta_of(name): h for name, h in runs.items() if _beta_of(name) is not None}
    if not out:
        raise ValueError(f"no run named 'beta=<value>' among {list(runs)}")
    return dict(sorted(out.items()))


def _x(history: list[dict], x: str, batch_size: int) -> list[float]:
    if x == "step":
        return [m["step"] for m in history]
    if x == "samples":  # rejection sampling records it; PPO generates batch_size per step
        check_int("batch_size", batch_size, minimum=1)
        return [m.get("samples", m["step"] * batch_size) for m in history]
    raise ValueError(f"x must be 'step' or 'samples', got {x!r}")


def plot_runs(runs: dict[str, list[dict]], panels=PANELS, x: str = "step", window: int = 1,
              batch_size: int = 64, title: str = ""):
    """Several runs overlaid, one panel per metric; ``window`` smooths each curve."""
    if not runs:
        raise ValueError("runs is empty")
    fig, axes = _panel_axes(len(panels))
    for ax, (key, label) in zip(axes, panels):
        for i, (name, history) in enumerate(runs.items()):
            if history and key in history[0]:
                ax.plot(_x(history, x, batch_size), smooth([m[key] for m in history], window),
                        color=f"C{i}", label=name)
        ax.set_title(label, fontsize=TITLE_SIZE)
        ax.set_xlabel("generated samples" if x == "samples" else "step")
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1)
    return fig


def plot_beta_runs(runs: dict[str, list[dict]], window: int = 5):
    """The fixed-β runs side by side: RM score, gold score, KL and repetition over steps."""
    return plot_runs({f"β = {b:g}": h for b, h in beta_runs(runs).items()}, window=window,
                     title=f"fixed β (moving average over {window} steps)")


def beta_run_view(runs: dict[str, list[dict]], beta: float, step: int, window: int = 5) -> dict:
    """Draw the run with KL coefficient ``beta`` (others faint) up to a marker at ``step``.

    Returns that step's numbers (smoothed over ``window`` steps) and its recorded sample.
    """
    by_beta = beta_runs(runs)
    if beta not in by_beta:
        raise ValueError(f"no run with beta={beta}; recorded: {list(by_beta)}")
    history = by_beta[beta]
    step = min(max(check_int("step", step), 1), len(history))  # clamped to the recorded steps
    fig, axes = _panel_axes(len(PANELS))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(by_beta)))  # small β dark
    out = {"beta": beta, "step": step}
    for ax, (key, label) in zip(axes, PANELS):
        for color, (b, h) in zip(colors, by_beta.items()):
            y = smooth([m[key] for m in h], window)
            ax.plot([m["step"] for m in h], y, color=color, alpha=1.0 if b == beta else 0.25,
                    lw=2.5 if b == beta else 1, label=f"β = {b:g}", zorder=3 if b == beta else 2)
        ax.axvline(step, color="k", lw=0.8, ls=":")
        ax.set_title(label, fontsize=TITLE_SIZE)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        out[key] = round(float(smooth([m[key] for m in history], window)[step - 1]), 3)
    _legend_below(fig, axes, ncol=min(len(by_beta), 5))
    out["sample"] = history[step - 1]["sample"]
    fig.suptitle(f"β = {beta:g}, step {step}: {out['sample']}", fontsize=TITLE_SIZE)
    return out


def _shows_figures(f):
    """``f``, then ``plt.show()``: in a notebook (inline backend) that displays the figure ``f``
    drew inside the widget's output. ipywidgets' own flush does not recognise the inline backend
    under the name matplotlib >= 3.9 reports after ``%matplotlib inline`` ("inline"), so without
    this a slider would change the numbers but never redraw. With Agg (tests) it does nothing."""
    @functools.wraps(f)
    def shown(*args, **kwargs):
        out = f(*args, **kwargs)
        plt.show()
        return out
    return shown


def beta_explorer(runs: dict[str, list[dict]], window: int = 5):
    """An ``ipywidgets.interactive`` with a β slider (over the recorded fixed-β runs) and a step
    slider; its ``result`` is :func:`beta_run_view`'s dict."""
    import ipywidgets as W

    betas = list(beta_runs(runs))  # every recorded fixed-β run, smallest first
    n = min(len(h) for h in beta_runs(runs).values())
    start = 0.05 if 0.05 in betas else betas[len(betas) // 2]  # the course's "good β"
    return W.interactive(
        _shows_figures(beta_run_view), runs=W.fixed(runs), window=W.fixed(window),
        beta=W.SelectionSlider(options=[(f"{b:g}", b) for b in betas], value=start,
                               description="β"),
        step=W.IntSlider(value=n, min=1, max=n, description="step"))


def plot_adaptive_kl(history: list[dict], target: float):
    """The adaptive controller at work: β over steps, and the KL it steers toward ``target``
    (nats per response, > 0)."""
    check_float("target", target, minimum=0, strict_min=True)
    steps = [m["step"] for m in history]
    fig, (a, b) = _panel_axes(2, panel_size=(4.4, 3.0))
    a.plot(steps, [m["beta"] for m in history])
    a.set_title("β (adaptive)", fontsize=TITLE_SIZE)
    b.plot(steps, [m["kl"] for m in history], label="KL per response")
    b.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
    b.set_title("KL per response (nats)", fontsize=TITLE_SIZE)
    b.legend(fontsize=LEGEND_SIZE)
    for ax in (a, b):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig


def overoptimisation_points(runs: dict[str, list[dict]], window: int = 5) -> dict[str, dict]:
    """Per PPO run: smoothed KL, RM score and gold score at every step (numpy arrays)."""
    out = {}
    for name, h in runs.items():
        if h and all(k in h[0] for k in ("kl", "rm_score", "gold_score")):
            out[name] = {k: smooth([m[k] for m in h], window)
                         for k in ("kl", "rm_score", "gold_score")}
    return out


def kl_bins(runs: dict[str, list[dict]], edges=(0, 1, 2, 4, 8, 16, 32)) -> list[dict]:
    """Every recorded step of every run, binned by its KL: mean RM and gold score per bin.
    ``edges`` are increasing numbers (the last may be ``inf``: an open bin)."""
    if not isinstance(edges, (tuple, list)) or len(edges) < 2 or any(
            isinstance(e, bool) or not isinstance(e, (int, float)) or math.isnan(e)
            or e == -math.inf for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be at least two increasing numbers (the last may be "
                         f"inf), got {shown(edges)}")
    kl = np.array([m["kl"] for h in runs.values() for m in h])
    rm = np.array([m["rm_score"] for h in runs.values() for m in h])
    gold = np.array([m["gold_score"] for h in runs.values() for m in h])
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (kl >= lo) & (kl < hi)
        if sel.any():
            rows.append({"kl_lo": lo, "kl_hi": hi, "n": int(sel.sum()),
                         "rm_score": float(rm[sel].mean()), "gold_score": float(gold[sel].mean())})
    return rows


def plot_overoptimisation(runs: dict[str, list[dict]], window: int = 5):
    """RM and gold score against √KL (Gao et al. 2022's distance from the initial policy),
    every step of every run: the proxy keeps rising while the true score turns down."""
    from matplotlib.lines import Line2D

    points = overoptimisation_points(runs, window)
    fig, ax = plt.subplots(figsize=(9.0, 5.0), layout="constrained")
    # the run that travels furthest is drawn underneath, so the short runs stay visible on top
    reach = sorted(points, key=lambda name: -float(np.nanmax(points[name]["kl"], initial=0.0)))
    handles = []
    for i, (name, p) in enumerate(points.items()):
        d = np.sqrt(np.clip(p["kl"], 0, None))
        style = {"color": f"C{i}", "marker": RUN_MARKERS[i % len(RUN_MARKERS)], "alpha": 0.75,
                 "lw": 1.6, "ms": 5, "markevery": max(1, len(d) // 12),
                 "zorder": 2 + reach.index(name)}
        ax.plot(d, p["rm_score"], ls="-", label=f"{name}: RM", **style)
        ax.plot(d, p["gold_score"], ls="--", mfc="none", label=f"{name}: gold", **style)
        handles.append(Line2D([], [], color=f"C{i}", marker=style["marker"], lw=1.6, label=name))
    handles += [Line2D([], [], color="k", ls="-", label="RM score (proxy)"),
                Line2D([], [], color="k", ls="--", marker="o", mfc="none", label="gold score")]
    ax.set_xlabel("√KL(π ‖ π_ref)  (nats^½ per response)", fontsize=LEGEND_SIZE + 1)
    ax.set_ylabel("score", fontsize=LEGEND_SIZE + 1)
    ax.set_title("overoptimisation: proxy (RM, solid) vs gold (dashed)", fontsize=TITLE_SIZE + 1)
    ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=LEGEND_SIZE + 1)
    return fig


SWEEP_PANELS = (("gold_score", "gold score"), ("rm_score", "RM score (z)"),
                ("kl", "KL per response (nats)"))
X_LABELS = {"step": "step", "samples": "generated samples",
            "optimizer_steps": "optimizer (gradient) steps"}


def end_mean(history: list[dict], key: str, last: int = 10) -> float:
    """Mean of ``key`` over the last ``last`` recorded steps of a run (the run's "end")."""
    if not history:
        raise ValueError("history is empty")
    check_int("last", last, minimum=1)
    tail = history[-last:]
    return sum(m[key] for m in tail) / len(tail)


def beta_sweep(runs: dict[str, list[dict]], last: int = 10) -> list[dict]:
    """Per fixed-β run, smallest β first: ``{"beta", <key>: end mean}`` for gold score, RM
    score, KL and repetition, each the mean of the last ``last`` steps."""
    keys = [k for k, _ in SWEEP_PANELS] + ["repetition"]
    return [{"beta": b, **{k: end_mean(h, k, last) for k in keys}}
            for b, h in beta_runs(runs).items()]


def plot_beta_sweep(runs: dict[str, list[dict]], last: int = 10):
    """The end of every fixed-β run against β (symmetric-log axis, so β = 0 has a place):
    gold score, RM score and KL. The dotted line marks the β with the best gold score."""
    rows = beta_sweep(runs, last)
    betas = [r["beta"] for r in rows]
    positive = [b for b in betas if b > 0]
    best = max(rows, key=lambda r: r["gold_score"])["beta"]
    linthresh = min(positive) if positive else 1.0
    fig, axes = _panel_axes(len(SWEEP_PANELS))
    for ax, (key, label) in zip(axes, SWEEP_PANELS):
        ax.plot(betas, [r[key] for r in rows], "o-")
        ax.axvline(best, color="k", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlim(-0.3 * linthresh, max(betas + [linthresh]) * 2)  # no negative β
        if key == "kl":
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_ylim(bottom=0)  # a KL is >= 0
        ax.set_title(label, fontsize=TITLE_SIZE)
        ax.set_xlabel("β (symmetric log scale)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"end of each fixed-β run (mean of the last {last} steps); "
                 f"best gold at β = {best:g}", fontsize=TITLE_SIZE)
    return fig


def seed_band(histories: list[list[dict]], key: str, x: str = "samples",
              window: int = 1) -> dict[str, np.ndarray]:
    """One setting run with several seeds: ``key`` (smoothed over ``window`` steps) across
    the seeds at each recorded step. Returns ``(S,)`` arrays ``x``, ``mean``, ``std`` (sample
    standard deviation over the seeds; 0 for one seed), ``lo`` and ``hi`` (min and max).

    ``x`` is read from each step (``"step"``, ``"samples"`` or ``"optimizer_steps"``, as
    ``benchmarks/demos.py`` records them) and must agree across the seeds.
    """
    if not histories or any(not h for h in histories):
        raise ValueError("histories must be a non-empty list of non-empty runs")
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {list(X_LABELS)}, got {x!r}")
    if len({len(h) for h in histories}) != 1:
        raise ValueError(f"runs differ in length: {[len(h) for h in histories]} steps")
    for i, h in enumerate(histories):
        for k in (x, key):
            if k not in h[0]:
                raise ValueError(f"run {i} records no {k!r} (it has {sorted(h[0])})")
    xs = np.array([[m[x] for m in h] for h in histories], dtype=float)  # (seeds, S)
    if not (xs == xs[0]).all():
        raise ValueError(f"the runs disagree on {x!r} at the same step")
    y = np.stack([smooth([m[key] for m in h], window) for h in histories])  # (seeds, S)
    std = y.std(0, ddof=1) if len(histories) > 1 else np.zeros(y.shape[1])
    return {"x": xs[0], "mean": y.mean(0), "std": std, "lo": y.min(0), "hi": y.max(0)}


def plot_seed_bands(groups: dict[str, list[list[dict]]], panels=SWEEP_PANELS,
                    x: str = "samples", window: int = 5, band: str = "range", title: str = "",
                    xscale: str = "linear", colors: dict[str, str] | None = None):
    """Each setting's mean over its seeds (line) and a band: ``"range"`` (min to max over the
    seeds) or ``"std"`` (mean ± one standard deviation); one panel per metric. ``xscale="log"``
    shows settings whose x ends far apart (1 vs 8 optimizer steps per batch) side by side.
    ``colors`` (setting -> matplotlib colour) keeps a method's colour across figures; the
    settings it leaves out take ``C0``, ``C1``, ... by position."""
    if not groups:
        raise ValueError("groups is empty")
    if band not in ("range", "std"):
        raise ValueError(f"band must be 'range' or 'std', got {band!r}")
    fig, axes = _panel_axes(len(panels))
    for ax, (key, label) in zip(axes, panels):
        for i, (name, histories) in enumerate(groups.items()):
            b = seed_band(histories, key, x, window)
            lo, hi = ((b["lo"], b["hi"]) if band == "range"
                      else (b["mean"] - b["std"], b["mean"] + b["std"]))
            color = (colors or {}).get(name, f"C{i}")
            ax.plot(b["x"], b["mean"], color=color, label=f"{name} ({len(histories)} seeds)")
            ax.fill_between(b["x"], lo, hi, color=color, alpha=0.2, lw=0)
        ax.set_title(label, fontsize=TITLE_SIZE)
        ax.set_xscale(xscale)
        ax.set_xlabel(X_LABELS[x] + (" (log scale)" if xscale == "log" else ""))
        ax.grid(alpha=0.3)
    _legend_below(fig, axes, ncol=min(len(groups), 3))
    what = "min to max" if band == "range" else "±1 std"
    fig.suptitle(title or f"mean over seeds, band {what} (moving average over {window} steps)",
                 fontsize=TITLE_SIZE)
    return fig


def seed_bars(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, tuple]]:
    """Per setting and metric, the bar and error bar of its seeds: ``values[setting][key]`` is
    a list of per-seed numbers ``(S,)``; returns ``(mean, std)`` with the sample std over the
    seeds (0 for one seed)."""
    out = {}
    for name, by_key in values.items():
        out[name] = {}
        for key, xs in by_key.items():
            xs = np.asarray(xs, dtype=float)
            if xs.size == 0:
                raise ValueError(f"{name!r} has no value of {key!r}")
            sd = float(xs.std(ddof=1)) if xs.size > 1 else 0.0
            out[name][key] = (float(xs.mean()), sd)
    return out


def plot_seed_bars(values: dict[str, dict[str, list[float]]], panels,
                   colors: dict[str, str] | None = None,
                   reference: dict[str, float] | None = None, reference_label: str = "",
                   title: str = ""):
    """One panel per metric of ``panels`` (``(key, label)`` pairs): a bar per setting at the
    mean over its seeds, an error bar of ± one std, and each seed as a dot.
    ``values[setting][key]`` lists the per-seed numbers; ``reference[key]`` (optional) is drawn
    as a dashed line (e.g. the model before any update)."""
    bars = seed_bars(values)
    names = list(values)
    fig, axes = _panel_axes(len(panels), panel_size=(3.8, 3.2))
    for ax, (key, label) in zip(axes, panels):
        for i, name in enumerate(names):
            color = (colors or {}).get(name, f"C{i}")
            mean, sd = bars[name][key]
            ax.bar(i, mean, color=color, alpha=0.75, yerr=sd, capsize=3, label=name)
            ax.plot([i] * len(values[name][key]), values[name][key], "o", color="k", ms=2.5)
        if reference is not None and key in reference:
            ax.axhline(reference[key], color="k", ls="--", lw=1,
                       label=reference_label or "reference")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xticks(range(len(names)), [""] * len(names))
        ax.set_title(label, fontsize=TITLE_SIZE)
        ax.grid(alpha=0.3, axis="y")
    _legend_below(fig, axes, ncol=4)
    fig.suptitle(title or "mean over seeds (bar), ± 1 std (error bar), each seed (dot)",
                 fontsize=TITLE_SIZE)
    return fig


# ---------------------------------------------------------------- a live plot while training

class LivePlot:
    """A ``callback`` for :meth:`RLHFTrainer.train` that redraws ``panels`` every ``every`` steps.

    In a notebook the figure is displayed once and updated in place (a display id), so the
    cell keeps a single output. ``total`` (optional) forces a redraw at the last step.
    """

    def __init__(self, panels=LIVE_PANELS, every: int = 5, total: int | None = None,
                 title: str = "", display: bool = True):
        from matplotlib.figure import Figure

        check_int("every", every, minimum=1)
        check_int("total", total, minimum=1, none_ok=True)
        self.panels, self.every, self.total, self.title = tuple(panels), every, total, title
        self.history: list[dict] = []
        self.draws = 0
        # a bare Figure, not pyplot's: the notebook shows it only through the display handle
        rows, cols = grid_shape(len(self.panels))
        self.fig = Figure(figsize=(min(MAX_WIDTH, 3.8 * cols), 2.6 * rows), layout="constrained")
        self.axes = _panel_axes(len(self.panels), fig=self.fig)[1]
        self._display = display
        self._handle = None

    def __call__(self, metrics: dict) -> None:
        self.history.append(metrics)
        n = len(self.history)
        if n % self.every == 0 or n == self.total:
            self.draw()

    def draw(self):
        steps = [m["step"] for m in self.history]
        for ax, (key, label) in zip(self.axes, self.panels):
            ax.clear()
            ax.plot(steps, [m.get(key, math.nan) for m in self.history])
            ax.set_title(label, fontsize=TITLE_SIZE)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if self.title:
            self.fig.suptitle(f"{self.title} (step {steps[-1] if steps else 0})",
                              fontsize=TITLE_SIZE + 1)
        self.draws += 1
        if self._display:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.fig, display_id=True)
            else:
                self._handle.update(self.fig)
        return self.fig


# ---------------------------------------------------------------- rewards, KL and GAE

def _masked(x, mask) -> np.ndarray:
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool)
    return np.where(m, x, np.nan)


def plot_kl_estimators(estimates: dict, mask, row: int = 0, words: list[str] | None = None):
    """Per-token KL estimates of one response (left) and of every token of the batch (right).

    ``estimates`` maps a name ("k1", "k2", "k3", "full") to a ``(B, T)`` tensor; ``mask`` is
    ``(B, T)``; ``words`` labels the tokens of ``row``.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11.5, 3.8), gridspec_kw={"width_ratios": [3, 2]},
                               layout="constrained")
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool)
    check_int("row", row, minimum=-len(m), maximum=len(m) - 1)
    n = int(m[row].sum())
    width = 0.8 / max(len(estimates), 1)
    values = {name: _masked(est, mask) for name, est in estimates.items()}
    pooled = np.concatenate([x[m] for x in values.values()])
    # the range of most tokens: k2/k3 have rare huge values that would squash the rest
    bins = np.linspace(min(pooled.min(), 0.0), np.percentile(pooled, 99.5), 50)
    for i, (name, x) in enumerate(values.items()):
        a.bar(np.arange(n) + (i - (len(values) - 1) / 2) * width, x[row, :n], width,
              label=name)
        b.hist(np.clip(x[m], None, bins[-1]), bins=bins, histtype="step", lw=1.5, label=name)
    b.axvline(0, color="k", lw=0.6)
    a.axhline(0, color="k", lw=0.6)
    a.set_xticks(np.arange(n))  # one integer tick per token, with its word
    a.set_xticklabels([f"{t} {w}" for t, w in enumerate(words[:n])] if words else range(n),
                      rotation=50, ha="right", rotation_mode="anchor", fontsize=LEGEND_SIZE)
    a.set_xlabel("response token t")
    a.set_title(f"per-token KL estimates, response {row}", fontsize=TITLE_SIZE)
    a.legend(fontsize=LEGEND_SIZE)
    b.set_yscale("log")
    b.set_title("all response tokens of the batch", fontsize=TITLE_SIZE)
    b.set_xlabel("per-token estimate (nats; the top 0.5 % piled in the last bin)")
    b.set_ylabel("tokens")
    b.legend(fontsize=LEGEND_SIZE)
    return fig


def plot_advantage_heatmap(advantages, mask, title: str = "advantages", label: str = ""):
    """A heat map of ``(B, T)`` advantages (padding blank); a dict ``{title: (B, T)}`` gives one
    panel each (at most three per row), sharing a colour scale centred on 0. ``label`` names
    the colour bar. Both axes count tokens and responses: integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    panels = advantages if isinstance(advantages, dict) else {title: advantages}
    if not panels:
        raise ValueError("advantages is an empty dict; expected at least one (B, T) panel")
    data = {k: _masked(v, mask) for k, v in panels.items()}
    vmax = max(float(np.nanmax(np.abs(v))) for v in data.values()) or 1.0
    fig, axes = _panel_axes(len(data), panel_size=(3.9, 3.0))
    for ax, (name, x) in zip(axes, data.items()):
        im = ax.imshow(x, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto",
                       interpolation="nearest")
        ax.set_title(name, fontsize=TITLE_SIZE)
        ax.set_xlabel("response token t")
        ax.set_ylabel("response b")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes, shrink=0.9, label=label)
    return fig


# ---------------------------------------------------------------- one step's data flow

FLOW_COLORS = {"trained": "#f4a261", "frozen": "#8ecae6", "computation": "#e9ecef",
               "data": "white"}
# the traced tensors the diagram draws, and the box each one leaves from and arrives at
FLOW_ARROWS = (
    ("prompt_ids", "prompts", "actor"),
    ("tokens", "actor", "reward"),
    ("tokens", "actor", "reference"),
    ("tokens", "actor", "critic"),
    ("old_logprobs", "actor", "kl_reward"),
    ("scores", "reward", "kl_reward"),
    ("ref_logprobs", "reference", "kl_reward"),
    ("rewards", "kl_reward", "gae"),
    ("old_values", "critic", "gae"),
    ("advantages", "gae", "ppo"),
    ("returns", "gae", "ppo"),
)
# the PPO update reads the rollout's old log-probs (the ratio) and old values (value clipping)
FLOW_INSIDE = {"kl_reward": ("kl",), "ppo": ("old_logprobs", "old_values", "minibatch_logprobs",
                                             "minibatch_values", "loss")}
# box centres on a 12 x 8.4 canvas: the frozen models' column sits between actor and reward
FLOW_BOXES = {  # name: (x, y, width, kind, title)
    "prompts": (1.5, 7.6, 2.0, "data", "prompts"),
    "actor": (1.5, 5.4, 2.6, "trained", r"actor $\pi_\theta$"),
    "reward": (5.4, 7.4, 2.6, "frozen", r"reward model $r_\psi$"),
    "reference": (5.4, 3.8, 2.6, "frozen", r"reference $\pi_{\mathrm{ref}}$"),
    "critic": (5.4, 1.6, 2.6, "trained", r"critic $V_\phi$"),
    "kl_reward": (9.8, 5.4, 3.4, "computation", "reward with KL"),
    "gae": (9.8, 3.75, 2.4, "computation", r"GAE ($\gamma$, $\lambda$)"),
    "ppo": (9.8, 0.95, 3.6, "computation", "PPO update"),
}
FLOW_NOTES = {"kl_reward": r"$R_t = -\beta\,\mathrm{kl}_t$ (+ score on the last token)",
              "ppo": r"ratio to old_logprobs; $V$ clipped around old_values"}


def flow_label(name: str, shape: tuple[int, ...]) -> str:
    """The label of a traced tensor on the diagram, e.g. ``tokens (4, 104)``; ``loss ()``."""
    return f"{name} {tuple(shape)}"


def _traced_shapes(trace) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the first time each tensor was traced (minibatches repeat)."""
    tensors = getattr(trace, "tensors", None)
    if not isinstance(tensors, list):
        raise TypeError(f"trace must be the result of rlhf_edu.trainer.trace_step (with a "
                        f".tensors list), got {type(trace).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    for _phase, name, shape, _dtype in tensors:
        shapes.setdefault(name, tuple(shape))
    needed = {n for n, _, _ in FLOW_ARROWS} | {n for ns in FLOW_INSIDE.values() for n in ns}
    missing = sorted(needed - set(shapes))
    if missing:
        raise ValueError(f"trace lacks the tensors {missing}; expected a full step from "
                         "rlhf_edu.trainer.trace_step")
    return shapes


def _passes(trace, role: str) -> str:
    """``'passes: 100 gen · 8 fwd · 8 bwd'``: one model's passes in the traced step."""
    fw = getattr(trace, "forward", {}).get(role, {})
    parts = [f"{fw.get('generate', 0)} gen"] if fw.get("generate", 0) else []
    parts.append(f"{fw.get('forward', 0)} fwd")
    if getattr(trace, "backward", {}).get(role, 0):
        parts.append(f"{trace.backward[role]} bwd")
    return "passes: " + " · ".join(parts)


def _flow_box(ax, name: str, trace, shapes: dict) -> object:
    """Draw box ``name`` of :data:`FLOW_BOXES` (title, then passes or inner tensors); returns
    the patch, which the arrows are clipped to."""
    from matplotlib.patches import FancyBboxPatch

    x, y, w, kind, title = FLOW_BOXES[name]
    lines = [FLOW_NOTES[name]] if name in FLOW_NOTES else []
    lines += [flow_label(n, shapes[n]) for n in FLOW_INSIDE.get(name, ())]
    if kind in ("trained", "frozen"):
        lines.append(_passes(trace, name))
    h = 0.55 + 0.3 * len(lines)
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.06",
                           fc=FLOW_COLORS[kind], ec="0.3", lw=1.2, zorder=2)
    ax.add_patch(patch)
    ax.text(x, y + h / 2 - 0.28, title, ha="center", va="center", fontsize=TITLE_SIZE,
            weight="bold", zorder=3)
    if lines:
        ax.text(x, y - 0.14, "\n".join(lines), ha="center", va="center",
                fontsize=LEGEND_SIZE - 0.5, zorder=3, linespacing=1.25)
    return patch


def plot_data_flow(trace):
    """The step's data flow drawn from a real trace (:func:`rlhf_edu.trainer.trace_step`):
    prompts, the four models (coloured trained or frozen), the reward with KL, GAE and the PPO
    update, with each arrow labelled by the traced tensor's name and shape, e.g.
    ``tokens (B, P + T)``, ``old_logprobs (B, T)``, ``scores (B,)``.

    Returns the figure; its text artists carry :func:`flow_label` of every tensor drawn.
    """
    shapes = _traced_shapes(trace)
    fig, ax = plt.subplots(figsize=(12, 7.0), layout="constrained")
    ax.set_xlim(0, 12)
    ax.set_ylim(-0.4, 8.6)
    ax.axis("off")
    patches = {name: _flow_box(ax, name, trace, shapes) for name in FLOW_BOXES}
    drawn = set()
    for name, src, dst in FLOW_ARROWS:
        (x0, y0), (x1, y1) = FLOW_BOXES[src][:2], FLOW_BOXES[dst][:2]
        if (src, dst) in drawn:  # a second tensor on the same arrow: label on its right
            x, y, ha = (x0 + x1) / 2 + 0.12, (y0 + y1) / 2, "left"
        else:
            drawn.add((src, dst))
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=1, arrowprops=dict(
                arrowstyle="-|>", lw=1.6, color="0.25", mutation_scale=16,
                patchA=patches[src], patchB=patches[dst], shrinkA=2, shrinkB=2))
            # a little before the middle where arrows fan out or meet, so labels stay apart
            f = 0.42 if src in ("actor", "reference") else 0.5
            x, y, ha = x0 + f * (x1 - x0), y0 + f * (y1 - y0), "center"
            if sum(s == src and d == dst for _, s, d in FLOW_ARROWS) == 2:
                x, ha = x - 0.12, "right"  # the first of two: on the arrow's left
        ax.text(x, y, flow_label(name, shapes[name]), ha=ha, va="center",
                fontsize=LEGEND_SIZE + 0.5, family="monospace", zorder=4,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"))
    # the update writes new weights back (dashed): to the critic straight, to the actor along
    # the bottom and up, clear of the other arrows
    update = dict(arrowstyle="-|>", lw=1.4, ls="--", color="C3", mutation_scale=16)
    ax.annotate("", xy=FLOW_BOXES["critic"][:2], xytext=FLOW_BOXES["ppo"][:2], zorder=1,
                arrowprops=dict(update, patchA=patches["ppo"], patchB=patches["critic"]))
    x_ppo, y_low = FLOW_BOXES["ppo"][0] - FLOW_BOXES["ppo"][2] / 2, 0.1
    x_actor = FLOW_BOXES["actor"][0]
    ax.plot([x_ppo, x_actor], [y_low, y_low], ls="--", lw=1.4, color="C3", zorder=1)
    ax.annotate("", xy=FLOW_BOXES["actor"][:2], xytext=(x_actor, y_low), zorder=1,
                arrowprops=dict(update, patchB=patches["actor"], shrinkA=0))
    ax.text(3.4, y_low, "new weights of actor and critic", color="C3", fontsize=LEGEND_SIZE,
            ha="center", va="center", zorder=4,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(fc=FLOW_COLORS[k], ec="0.3", label=lab) for k, lab in (
        ("trained", "trained (gets gradients)"), ("frozen", "frozen (forward only)"),
        ("computation", "computation, no weights"))], loc="upper right", fontsize=LEGEND_SIZE,
        bbox_to_anchor=(1.0, 1.0))
    b, t = shapes["old_logprobs"]
    ax.set_title(f"one RLHF step as traced: B = {b} responses, P = "
                 f"{shapes['tokens'][1] - t} prompt tokens, T = {t} response tokens",
                 fontsize=TITLE_SIZE + 1)
    return fig


# ---------------------------------------------------------------- memory

ITEM_COLORS = {"weights": "C0", "gradients": "C1", "optimizer_states": "C2",
               "master_weights": "C3", "activations": "C4", "kv_cache": "C5", "logits": "C6"}


def plot_memory_breakdown(bd, gpu_mem_gb: float | None = None, title: str = ""):
    """Stacked bars: GB per GPU of each role by item, then what one GPU of each group holds
    (all its roles together); the GPU's memory, if given, is drawn over those last bars."""
    check_float("gpu_mem_gb", gpu_mem_gb, minimum=0, strict_min=True, none_ok=True)
    roles = list(bd.roles.values())
    groups = list(bd.group_bytes())  # "all", or "trained" and "frozen"
    labels = ([f"{r.role}\n({r.group})" if r.group != "all" else r.role for r in roles]
              + [f"one GPU\n({g})" if g != "all" else "one GPU\n(all roles)" for g in groups])
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    bottom = np.zeros(len(labels))
    for item in ITEMS:
        vals = np.array([getattr(r, item) / GB for r in roles] + [
            sum(getattr(r, item) for r in roles if r.group == g) / GB for g in groups])
        if vals.any():
            ax.bar(labels, vals, bottom=bottom, label=item.replace("_", " "),
                   color=ITEM_COLORS[item])
            bottom += vals
    if gpu_mem_gb is not None:  # against what one GPU holds, not against a single role
        ax.axvline(len(roles) - 0.5, color="0.5", lw=0.8)
        ax.hlines(gpu_mem_gb, len(roles) - 0.5, len(labels) - 0.5, color="k", ls="--", lw=1.2,
                  zorder=3,
                  label=f"{gpu_mem_gb:g} GB GPU")
    ax.set_ylabel("GB per GPU (1e9 B)")
    ax.set_title(title or f"per GPU: {bd.per_gpu_gb:.1f} GB", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def memory_view(model: str | float = "llama-7b", precision: str = "mixed", zero_stage: int = 0,
                n_gpus: int = 1, lora: float | None = None, placement: str = "colocate",
                critic: str = "separate", offload: bool = False, checkpointing: bool = False,
                gpu_mem_gb: float = 80.0, accounting: str = "deepspeed", tp: int = 1,
                pp: int = 1) -> dict:
    """Draw the per-GPU memory of RLHF on ``model`` (a preset name of
    :data:`rlhf_edu.memory.PRESETS`, or a size in billions of parameters) and return the
    figures: GB per GPU, GB over all GPUs, whether it fits (or the reason it is invalid, also
    printed). ``lora`` is the trained fraction of the parameters; None or 0 trains them all."""
    try:
        check_float("gpu_mem_gb", gpu_mem_gb, minimum=0, strict_min=True)
        if not isinstance(model, str):  # billions: one parameter up to what an int64 counts
            check_float("model", model, minimum=1e-9, maximum=COUNT_MAX / 1e9)
        spec = ModelSpec.preset(model) if isinstance(model, str) else \
            ModelSpec.from_n_params(model * 1e9)
        bd = memory_breakdown(spec, n_gpus, zero_stage, offload=offload, lora_fraction=lora or None,
                              critic=critic, placement=placement, precision=precision,
                              activation_checkpointing=checkpointing, accounting=accounting,
                              tp=tp, pp=pp)
    except (TypeError, ValueError) as e:
        print(f"not a valid configuration: {e}")
        return {"error": str(e)}
    fits = bd.per_gpu_gb <= gpu_mem_gb
    parallel = f", tp {tp}, pp {pp}" if tp * pp > 1 else ""
    plot_memory_breakdown(bd, gpu_mem_gb, title=(
        f"{spec.name}, {n_gpus} GPU(s), ZeRO-{zero_stage} ({accounting}){parallel}: "
        f"{bd.per_gpu_gb:.1f} GB per GPU ({'fits' if fits else 'does not fit'})"))
    return {"per_gpu_gb": round(bd.per_gpu_gb, 2), "total_gb": round(bd.total_gb, 2),
            "cpu_gb": round(bd.cpu_bytes / 1e9, 2), "fits": fits,
            "frozen_gpus": bd.frozen_gpus}


def memory_explorer(model: str = "llama-7b"):
    """An ``ipywidgets.interactive`` over :func:`memory_view`: the model (the calculator's
    presets, starting at ``model``), precision, ZeRO stage, GPUs, LoRA, placement, critic,
    offload, checkpointing, GPU memory, ZeRO accounting, tensor and pipeline parallelism."""
    import ipywidgets as W

    sizes = [(f"{name} ({spec.n_params / 1e9:.3g}B)", name) for name, spec in PRESETS.items()
             if spec.n_params >= 1e8]  # the toy model is a few MB: nothing to see in GB
    return W.interactive(
        _shows_figures(memory_view),
        model=W.SelectionSlider(options=sizes, value=model, description="model",
                                style={"description_width": "initial"},
                                layout=W.Layout(width="420px")),
        precision=W.ToggleButtons(options=["mixed", "fp32"], description="precision"),
        zero_stage=W.IntSlider(value=0, min=0, max=3, description="ZeRO stage"),
        n_gpus=W.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=1, description="GPUs"),
        lora=W.SelectionSlider(options=[("off", 0.0), ("0.1%", 0.001), ("1%", 0.01),
                                        ("10%", 0.1)], value=0.0, description="LoRA"),
        placement=W.ToggleButtons(options=["colocate", "split"], description="placement"),
        critic=W.ToggleButtons(options=["separate", "shared", "head", "none"],
                               description="critic"),
        offload=W.Checkbox(value=False, description="offload optimizer"),
        checkpointing=W.Checkbox(value=False, description="activation checkpointing"),
        gpu_mem_gb=W.Dropdown(options=[24.0, 40.0, 48.0, 80.0, 141.0], value=80.0,
                              description="GPU GB"),
        accounting=W.ToggleButtons(options=["deepspeed", "paper", "fsdp2"],
                                   description="accounting"),
        tp=W.SelectionSlider(options=[1, 2, 4, 8], value=1, description="tensor par."),
        pp=W.SelectionSlider(options=[1, 2, 4, 8], value=1, description="pipeline par."))


# ------------------------------------------------------------ the judge's sharpness (notebook 8)

def label_noise_at(gold_a, gold_b, sharpness: float) -> dict:
    """The label noise a Bradley-Terry judge of ``sharpness`` s gives pairs with gold scores
    ``gold_a``, ``gold_b`` ``(N,)``: a pair is labelled against the gold order with probability
    ``sigmoid(-s |gold_a - gold_b|)``. Only pairs whose gold scores differ count (a tie is a fair
    coin either way). Returns ``noise`` (the expected share of those labelled against the gold
    order), ``ceiling`` (``1 - noise``: the accuracy against the labels that the gold score
    itself reaches, which no reward model can beat on average), ``differ`` (the share of pairs
    whose gold differs) and ``by_gap`` (gap in thirds 1, 2, 3+ -> (pairs, expected noise))."""
    if isinstance(sharpness, bool) or not isinstance(sharpness, (int, float)) \
            or not math.isfinite(sharpness) or sharpness < 0:
        raise ValueError(f"sharpness must be a finite number >= 0, got {sharpness!r}")
    gap = np.abs(np.asarray(gold_a, dtype=float) - np.asarray(gold_b, dtype=float))  # (N,)
    if gap.ndim != 1 or gap.size == 0:
        raise ValueError(f"gold_a and gold_b must be (N,) with N >= 1, got shape {gap.shape}")
    differ = gap > 1e-9
    if not differ.any():
        raise ValueError("no pair has different gold scores; the noise is undefined")
    wrong = 1.0 / (1.0 + np.exp(sharpness * gap))  # (N,) sigmoid(-s |gap|)
    thirds = np.round(gap * 3).astype(int)
    by_gap = {}
    for name, rows in (("1/3", thirds == 1), ("2/3", thirds == 2), (">= 1", thirds >= 3)):
        by_gap[name] = (int(rows.sum()), float(wrong[rows].mean()) if rows.any() else 0.0)
    noise = float(wrong[differ].mean())
    return {"sharpness": float(sharpness), "noise": noise, "ceiling": 1.0 - noise,
            "differ": float(differ.mean()), "by_gap": by_gap}


def label_noise_view(gold_a, gold_b, sharpness: float = 5.0) -> dict:
    """Draw :func:`label_noise_at` for one sharpness (the expected noise per gold gap, and the
    ceiling it sets) and return its dict."""
    r = label_noise_at(gold_a, gold_b, sharpness)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    names = list(r["by_gap"])
    a.bar(names, [100 * r["by_gap"][n][1] for n in names], color="C3", alpha=0.8)
    a.set(xlabel="|gold gap| of the pair", ylabel="labelled against gold (%)", ylim=(0, 52))
    a.set_title(f"label noise by gap, s = {sharpness:g}", fontsize=TITLE_SIZE)
    b.bar(["label noise", "ceiling"], [100 * r["noise"], 100 * r["ceiling"]],
          color=["C3", "C2"], alpha=0.8)
    b.set(ylabel="% of pairs whose gold differs", ylim=(0, 100))
    b.set_title(f"noise {r['noise']:.0%}, ceiling on accuracy vs labels {r['ceiling']:.0%}",
                fontsize=TITLE_SIZE)
    for ax in (a, b):
        ax.grid(alpha=0.3, axis="y")
    return r


def sharpness_explorer(gold_a, gold_b, sharpness: float = 5.0):
    """An ``ipywidgets.interactive`` over :func:`label_noise_view`: a slider over the judge's
    sharpness s (0.5 to 20); its ``result`` is :func:`label_noise_at`'s dict."""
    import ipywidgets as W

    return W.interactive(
        _shows_figures(label_noise_view), gold_a=W.fixed(gold_a), gold_b=W.fixed(gold_b),
        sharpness=W.FloatSlider(value=sharpness, min=0.5, max=20.0, step=0.5,
                                description="sharpness s"))
# ---------------------------------------------------------------- a reference that moves

REFERENCE_PATH = Path(__file__).resolve().parent / "data" / "reference.json"
"""Frozen vs moving vs no reference, three seeds (written by ``benchmarks/reference.py``)."""
REFERENCE_COLORS = {"none": "C0", "frozen": "C1", "moving": "C3"}  # none/frozen: β=0 / 0.05's


def load_reference_runs(path: str | Path | None = None) -> dict:
    """``{"steps", "every", "seeds", "variants", "runs"}`` with ``runs[variant][seed]`` a dict
    of per-step series (``gold_score``, ``rm_score``, ``kl``: to the reference the penalty
    used, ``kl_sft``: to the SFT model); the shipped copy without ``path``."""
    p = Path(path) if path is not None else REFERENCE_PATH
    if not p.is_file():
        raise FileNotFoundError(f"no recorded runs at {p}; "
                                "create them with `python benchmarks/reference.py --out PATH`")
    return json.loads(p.read_text())


def reference_histories(data: dict, variant: str) -> list[list[dict]]:
    """The runs of ``variant``, one per seed, as histories (a dict per step, with ``step``)."""
    out = []
    for series in data["runs"][variant].values():
        n = len(series["gold_score"])
        out.append([{"step": i + 1, **{k: v[i] for k, v in series.items()}} for i in range(n)])
    return out


def plot_reference_runs(data: dict, window: int = 5,
                        panels=(("gold_score", "gold score"), ("kl_sft", "KL to the SFT model"),
                                ("kl", "KL the penalty sees"))):
    """Per variant, the mean over seeds (line) and the min-max band over seeds of each panel's
    metric, smoothed over ``window`` steps; one colour per variant."""
    fig, axes = _panel_axes(len(panels))
    for ax, (key, label) in zip(axes, panels):
        for name, histories in ((v, reference_histories(data, v)) for v in data["runs"]):
            b = seed_band(histories, key, "step", window)
            color = REFERENCE_COLORS.get(name)
            ax.plot(b["x"], b["mean"], color=color, label=f"{name} ({len(histories)} seeds)")
            ax.fill_between(b["x"], b["lo"], b["hi"], color=color, alpha=0.2, lw=0)
        if key.startswith("kl"):  # none's tens of nats beside frozen's and moving's few
            ax.set_yscale("symlog", linthresh=1.0)
            label += " (symlog)"
        ax.set_title(label, fontsize=TITLE_SIZE)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _legend_below(fig, axes, ncol=3)
    fig.suptitle(f"reference frozen, moved every {data['every']} steps, or none: mean over seeds, "
                 f"band min to max (moving average over {window} steps)", fontsize=TITLE_SIZE)
    return fig
