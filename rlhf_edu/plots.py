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

PANELS = (("rm_score", "RM score (z)"), ("gold_score", "gold score"), ("kl", "KL per response"),
          ("repetition", "repeats a word"))
LIVE_PANELS = (("rm_score", "RM score (z)"), ("gold_score", "gold score"),
               ("kl", "KL per response"), ("entropy", "entropy per token"),
               ("clipfrac", "clip fraction"))
DEMOS_PATH = Path(__file__).resolve().parent / "data" / "demos.json"
"""The recorded runs shipped with the package (written by ``python benchmarks/demos.py``)."""


def plot_training(history: list[dict], path: str | Path | None = None, title: str = ""):
    """Reward-model score, gold score, KL and repetition over steps; saved to ``path`` if given.

    Returns the path when saving (the figure is closed), else the figure.
    """
    if not history:
        raise ValueError("history is empty: train at least one step before plotting")
    steps = [m["step"] for m in history]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.2 * len(PANELS), 2.8))
    for ax, (key, label) in zip(axes, PANELS):
        ax.plot(steps, [m[key] for m in history])
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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
    return json.loads(p.read_text())


def rounded(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` decimals, with ``-0.0`` written as ``0.0``.

    A value that is zero in exact arithmetic (the KL of a policy against its own copy) comes out
    as +1e-8 on one machine and -1e-8 on another; rounded alone it would print ``-0.000`` on
    half of them. Use it for figures a notebook prints and nbval compares.
    """
    return round(float(x), digits) + 0.0


def smooth(values, window: int = 1) -> np.ndarray:
    """Trailing moving average over ``window`` steps (shorter at the start); 1 = unchanged."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(x, 0, 0.0))
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def beta_runs(runs: dict[str, list[dict]]) -> dict[float, list[dict]]:
    """The fixed-β runs (names ``"beta=<value>"``) keyed by β, smallest first."""
    out = {float(name.split("=", 1)[1]): h for name, h in runs.items()
           if name.startswith("beta=")}
    if not out:
        raise ValueError(f"no run named 'beta=<value>' among {list(runs)}")
    return dict(sorted(out.items()))


def _x(history: list[dict], x: str, batch_size: int) -> list[float]:
    if x == "step":
        return [m["step"] for m in history]
    if x == "samples":  # rejection sampling records it; PPO generates batch_size per step
        return [m.get("samples", m["step"] * batch_size) for m in history]
    raise ValueError(f"x must be 'step' or 'samples', got {x!r}")


def plot_runs(runs: dict[str, list[dict]], panels=PANELS, x: str = "step", window: int = 1,
              batch_size: int = 64, title: str = ""):
    """Several runs overlaid, one panel per metric; ``window`` smooths each curve."""
    if not runs:
        raise ValueError("runs is empty")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.9), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for name, history in runs.items():
            if history and key in history[0]:
                ax.plot(_x(history, x, batch_size), smooth([m[key] for m in history], window),
                        label=name)
        ax.set_title(label)
        ax.set_xlabel("generated samples" if x == "samples" else "step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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
    step = min(max(int(step), 1), len(history))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.2 * len(PANELS), 2.9))
    out = {"beta": beta, "step": step}
    for ax, (key, label) in zip(axes, PANELS):
        for b, h in by_beta.items():
            y = smooth([m[key] for m in h], window)
            ax.plot([m["step"] for m in h], y, alpha=1.0 if b == beta else 0.2,
                    lw=2 if b == beta else 1, label=f"β = {b:g}")
        ax.axvline(step, color="k", lw=0.8, ls=":")
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        out[key] = round(float(smooth([m[key] for m in history], window)[step - 1]), 3)
    axes[0].legend(fontsize=7)
    out["sample"] = history[step - 1]["sample"]
    fig.suptitle(f"β = {beta:g}, step {step}: {out['sample']}", fontsize=9)
    fig.tight_layout()
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

    betas = list(beta_runs(runs))
    n = min(len(h) for h in beta_runs(runs).values())
    return W.interactive(
        _shows_figures(beta_run_view), runs=W.fixed(runs), window=W.fixed(window),
        beta=W.SelectionSlider(options=[(f"{b:g}", b) for b in betas],
                               value=betas[len(betas) // 2], description="β"),
        step=W.IntSlider(value=n, min=1, max=n, description="step"))


def plot_adaptive_kl(history: list[dict], target: float):
    """The adaptive controller at work: β over steps, and the KL it steers toward ``target``."""
    steps = [m["step"] for m in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 2.9))
    a.plot(steps, [m["beta"] for m in history])
    a.set_title("β (adaptive)")
    b.plot(steps, [m["kl"] for m in history], label="KL per response")
    b.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
    b.set_title("KL per response (nats)")
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
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
    """Every recorded step of every run, binned by its KL: mean RM and gold score per bin."""
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
    points = overoptimisation_points(runs, window)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for i, (name, p) in enumerate(points.items()):
        d = np.sqrt(np.clip(p["kl"], 0, None))
        ax.plot(d, p["rm_score"], "-", color=f"C{i}", label=f"{name}: RM")
        ax.plot(d, p["gold_score"], "--", color=f"C{i}", label=f"{name}: gold")
    ax.set_xlabel("√KL(π ‖ π_ref)  (nats^½ per response)")
    ax.set_ylabel("score")
    ax.set_title("overoptimisation: proxy (RM, solid) vs gold (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
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

        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.panels, self.every, self.total, self.title = tuple(panels), every, total, title
        self.history: list[dict] = []
        self.draws = 0
        # a bare Figure, not pyplot's: the notebook shows it only through the display handle
        self.fig = Figure(figsize=(3.0 * len(self.panels), 2.6))
        self.axes = self.fig.subplots(1, len(self.panels), squeeze=False)[0]
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
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if self.title:
            self.fig.suptitle(f"{self.title} (step {steps[-1] if steps else 0})")
        self.fig.tight_layout()
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
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool)
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
    a.set_xticks(np.arange(n))
    a.set_xticklabels(words[:n] if words else range(n), rotation=60, fontsize=7)
    a.set_title(f"per-token KL estimates, response {row}")
    a.legend(fontsize=7)
    b.set_yscale("log")
    b.set_title("all response tokens of the batch")
    b.set_xlabel("per-token estimate (nats; the top 0.5 % piled in the last bin)")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_advantage_heatmap(advantages, mask, title: str = "advantages"):
    """A heat map of ``(B, T)`` advantages (padding blank); a dict ``{title: (B, T)}`` gives one
    panel each, sharing a colour scale centred on 0."""
    panels = advantages if isinstance(advantages, dict) else {title: advantages}
    data = {k: _masked(v, mask) for k, v in panels.items()}
    vmax = max(float(np.nanmax(np.abs(v))) for v in data.values()) or 1.0
    fig, axes = plt.subplots(1, len(data), figsize=(5.2 * len(data), 3.4), squeeze=False)
    for ax, (name, x) in zip(axes[0], data.items()):
        im = ax.imshow(x, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto",
                       interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("response token t")
        ax.set_ylabel("response b")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.9)
    return fig


# ---------------------------------------------------------------- memory

ITEM_COLORS = {"weights": "C0", "gradients": "C1", "optimizer_states": "C2",
               "master_weights": "C3", "activations": "C4", "kv_cache": "C5", "logits": "C6"}


def plot_memory_breakdown(bd, gpu_mem_gb: float | None = None, title: str = ""):
    """Stacked bars: GB per GPU of each role by item; a line at the GPU's memory if given."""
    from .memory import GB, ITEMS

    roles = list(bd.roles.values())
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    bottom = np.zeros(len(roles))
    for item in ITEMS:
        vals = np.array([getattr(r, item) / GB for r in roles])
        if vals.any():
            ax.bar([f"{r.role}\n({r.group})" if r.group != "all" else r.role for r in roles],
                   vals, bottom=bottom, label=item.replace("_", " "), color=ITEM_COLORS[item])
            bottom += vals
    if gpu_mem_gb is not None:
        ax.axhline(gpu_mem_gb, color="k", ls="--", lw=1, label=f"{gpu_mem_gb:g} GB GPU")
    ax.set_ylabel("GB per GPU (1e9 B)")
    ax.set_title(title or f"per GPU: {bd.per_gpu_gb:.1f} GB", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def memory_view(params_b: float = 7.0, precision: str = "mixed", zero_stage: int = 0,
                n_gpus: int = 1, lora: float | None = None, placement: str = "colocate",
                critic: str = "separate", offload: bool = False, checkpointing: bool = False,
                gpu_mem_gb: float = 80.0) -> dict:
    """Draw the per-GPU memory of RLHF on a ``params_b``-billion-parameter model and return
    the figures: GB per GPU, GB over all GPUs, whether it fits (or the reason it is invalid).
    ``lora`` is the trained fraction of the parameters; None or 0 trains them all."""
    from .memory import ModelSpec, memory_breakdown

    spec = ModelSpec.from_n_params(params_b * 1e9)
    try:
        bd = memory_breakdown(spec, n_gpus, zero_stage, offload=offload, lora_fraction=lora or None,
                              critic=critic, placement=placement, precision=precision,
                              activation_checkpointing=checkpointing)
    except ValueError as e:
        return {"error": str(e)}
    fits = bd.per_gpu_gb <= gpu_mem_gb
    plot_memory_breakdown(bd, gpu_mem_gb, title=(
        f"{params_b:.3g}B, {n_gpus} GPU(s), ZeRO-{zero_stage}: {bd.per_gpu_gb:.1f} GB per GPU "
        f"({'fits' if fits else 'does not fit'})"))
    return {"per_gpu_gb": round(bd.per_gpu_gb, 2), "total_gb": round(bd.total_gb, 2),
            "cpu_gb": round(bd.cpu_bytes / 1e9, 2), "fits": fits,
            "frozen_gpus": bd.frozen_gpus}


def memory_explorer():
    """An ``ipywidgets.interactive`` over :func:`memory_view`: model size, precision, ZeRO
    stage, GPUs, LoRA, placement, critic sharing, offload, checkpointing and GPU memory."""
    import ipywidgets as W

    return W.interactive(
        _shows_figures(memory_view),
        params_b=W.FloatLogSlider(value=7.0, base=10, min=-1, max=3, step=0.05,
                                  description="params (B)"),
        precision=W.ToggleButtons(options=["mixed", "fp32"], description="precision"),
        zero_stage=W.IntSlider(value=0, min=0, max=3, description="ZeRO stage"),
        n_gpus=W.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=1, description="GPUs"),
        lora=W.SelectionSlider(options=[("off", 0.0), ("0.1%", 0.001), ("1%", 0.01),
                                        ("10%", 0.1)], value=0.0, description="LoRA"),
        placement=W.ToggleButtons(options=["colocate", "split"], description="placement"),
        critic=W.ToggleButtons(options=["separate", "shared", "head"], description="critic"),
        offload=W.Checkbox(value=False, description="offload optimizer"),
        checkpointing=W.Checkbox(value=False, description="activation checkpointing"),
        gpu_mem_gb=W.Dropdown(options=[24.0, 40.0, 48.0, 80.0, 141.0], value=80.0,
                              description="GPU GB"))
