"""Matplotlib figures of training runs, used by the CLI and the notebooks."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

PANELS = (("rm_score", "RM score (z)"), ("gold_score", "gold score"), ("kl", "KL per response"),
          ("repetition", "repeats a word"))


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
