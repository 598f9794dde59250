"""Where the time of one RLHF step goes, phase by phase, on the shipped toy models.

    python benchmarks/bench_step.py [--repeats 5]

Runs ``RLHFTrainer.step()`` on the shipped SFT and reward models (3 layers, 4 heads, width 128)
with batch 64 and reads the trainer's own phase timers: 2. generation, 3. reward scoring,
4. reference forward and KL, 5. critic values and GAE, 6. PPO epochs (4 x 2 minibatches).
Three settings: the course's run (responses of up to 20 tokens that stop at ``<eos>``), and
fixed lengths of 16 and 44 tokens (the longest the 48-token context allows after a prompt).
Steps of the three trainers alternate; each phase's median over the repeats after one warm-up
step is reported. Writes ``results/step.json`` and the stacked bar chart
``results/step_phases.png``.
"""

from __future__ import annotations

import argparse

import _common

from rlhf_edu.trainer import PPOConfig, RLHFTrainer

PHASES = ("2_generate", "3_score", "4_reference_kl", "5_values_gae", "6_ppo")
LABELS = {"2_generate": "2. generate", "3_score": "3. reward score",
          "4_reference_kl": "4. reference + KL", "5_values_gae": "5. values + GAE",
          "6_ppo": "6. PPO epochs"}
SETTINGS = {
    "course run (<=20 tokens, stops at <eos>)": dict(response_len=20, stop_at_eos=True),
    "16 tokens, no stop": dict(response_len=16, stop_at_eos=False),
    "44 tokens, no stop": dict(response_len=44, stop_at_eos=False),
}


def plot(rows: list[dict], info: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [r["setting"].replace(", ", ",\n", 1) for r in rows]
    bottom = [0.0] * len(rows)
    colors = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#1f77b4"]
    for phase, color in zip(PHASES, colors):
        heights = [r[phase] for r in rows]
        ax.bar(names, heights, bottom=bottom, label=LABELS[phase], color=color, width=0.55)
        bottom = [b + h for b, h in zip(bottom, heights)]
    for i, r in enumerate(rows):
        ax.text(i, bottom[i], f"generation {100 * r['generate_share']:.0f} %", ha="center",
                va="bottom", fontsize=9)
    ax.set_ylabel("seconds per step (median)")
    ax.set_ylim(0, max(bottom) * 1.15)
    ax.set_title("One RLHF step by phase: batch 64, toy GPT (3 layers, width 128)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    _common.save_figure(fig, path, info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    info = _common.setup()
    trainers = {name: RLHFTrainer(PPOConfig(batch_size=64, seed=0, **kw))
                for name, kw in SETTINGS.items()}
    metrics: dict[str, list[dict]] = {name: [] for name in trainers}
    _common.interleaved({name: (lambda name=name: metrics[name].append(trainers[name].step()))
                         for name in trainers}, repeats=args.repeats)
    rows = []
    for name, history in metrics.items():
        timed = history[1:]  # the first step is the warm-up
        row = {"setting": name, **{p: _common.median([m[f"time_{p}"] for m in timed])
                                   for p in PHASES}}
        row["step"] = _common.median([m["time_step"] for m in timed])
        row["response_len"] = sum(m["response_len"] for m in timed) / len(timed)
        row["generate_share"] = row["2_generate"] / sum(row[p] for p in PHASES)
        row["episodes_per_s"] = 64 / row["step"]
        rows.append(row)

    print(f"\nOne RLHF step by phase (seconds, median of {args.repeats} steps after a warm-up); "
          "shipped toy models, batch 64, 4 PPO epochs x 2 minibatches")
    print(_common.machine_line(info))
    print(_common.format_table(rows, [
        ("setting", "setting", "s"), ("response_len", "mean tokens", ".1f"),
        *[(p, LABELS[p], ".3f") for p in PHASES], ("step", "step", ".3f"),
        ("generate_share", "gen. share", ".1%"), ("episodes_per_s", "episodes/s", ".1f")]))
    png = _common.RESULTS / "step_phases.png"
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, info, png)
    path = _common.write_json("step.json", {"machine": info, "repeats": args.repeats,
                                            "rows": rows})
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
