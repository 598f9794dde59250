"""A reference that moves (PPOConfig.ref_reset_every) and the recorded comparison behind
notebook 5's "Does the reference have to stay frozen?" (rlhf_edu/data/reference.json, written
by benchmarks/reference.py): every claim the notebook makes, re-derived from the file."""

from __future__ import annotations

import matplotlib
import pytest

from rlhf_edu import plots
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

matplotlib.use("Agg")
DATA = plots.load_reference_runs()
SEEDS = DATA["seeds"]
N = DATA["steps"]


def last10(variant: str, seed: int, key: str) -> float:
    return sum(DATA["runs"][variant][str(seed)][key][-10:]) / 10


def first(variant: str, seed: int, key: str) -> float:
    return DATA["runs"][variant][str(seed)][key][0]


def mid10(variant: str, seed: int, key: str) -> float:
    """The mean of the 10 steps ending halfway through the run."""
    return sum(DATA["runs"][variant][str(seed)][key][N // 2 - 10:N // 2]) / 10


def test_the_file_holds_three_variants_by_three_seeds():
    assert DATA["every"] == 10 and SEEDS == [0, 1, 2]
    assert DATA["variants"] == {"frozen": {"beta": 0.05},
                                "moving": {"beta": 0.05, "ref_reset_every": 10},
                                "none": {"beta": 0.0}}
    for variant in DATA["variants"]:
        for seed in SEEDS:
            series = DATA["runs"][variant][str(seed)]
            assert sorted(series) == ["gold_score", "kl", "kl_sft", "rm_score"]
            assert {len(v) for v in series.values()} == {N}
            if variant != "moving":  # the reference is the SFT model
                assert series["kl"] == series["kl_sft"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frozen_rises_with_bounded_kl(seed):
    assert last10("frozen", seed, "gold_score") - first("frozen", seed, "gold_score") > 0.2
    assert last10("frozen", seed, "kl_sft") < 3
    assert 1.5 < mid10("frozen", seed, "kl_sft") < 3 and 1.5 < last10("frozen", seed, "kl_sft")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moving_reference_hides_a_larger_drift(seed):
    assert last10("moving", seed, "kl") < 0.3  # what the penalty sees
    assert last10("moving", seed, "kl_sft") > 1.3 * last10("frozen", seed, "kl_sft")
    assert last10("moving", seed, "gold_score") < last10("frozen", seed, "gold_score") + 0.02
    assert last10("moving", seed, "kl_sft") < last10("none", seed, "kl_sft")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_reference_runs_away(seed):
    assert last10("none", seed, "kl_sft") > 3 * last10("frozen", seed, "kl_sft")
    assert last10("none", seed, "gold_score") < last10("frozen", seed, "gold_score")


def test_no_reference_falls_below_its_start_in_two_seeds_of_three():
    """The third seed's KL (9 nats) had not run away within the 80 steps."""
    fell = [last10("none", s, "gold_score") < first("none", s, "gold_score") for s in SEEDS]
    assert sum(fell) == 2, fell


def test_the_figure_has_a_band_per_variant():
    fig = plots.plot_reference_runs(DATA)
    assert len(fig.axes) == 3
    colors = {line.get_color() for line in fig.axes[0].lines}
    assert colors == set(plots.REFERENCE_COLORS.values())
    plots.plt.close(fig)


def test_ref_reset_every_copies_the_actor_and_measures_kl_to_sft():
    cfg = dict(batch_size=8, response_len=6, minibatches=2, seed=0)
    moving = RLHFTrainer(PPOConfig(ref_reset_every=2, **cfg)).train(3, progress=False)
    frozen = RLHFTrainer(PPOConfig(**cfg)).train(3, progress=False)
    assert all("kl_sft" not in m for m in frozen)  # the default pays for no extra pass
    # steps 1-2 are the frozen run; step 3 samples with the actor just copied into the reference
    for a, b in zip(moving[:2], frozen[:2]):
        assert a["kl"] == b["kl"] == a["kl_sft"]
    assert abs(moving[2]["kl"]) < 1e-5 < moving[2]["kl_sft"]
    assert moving[2]["kl_sft"] == pytest.approx(frozen[2]["kl"], rel=1e-5)


def test_ref_reset_every_is_checked():
    with pytest.raises(ValueError, match="ref_reset_every"):
        PPOConfig(ref_reset_every=-1)


def test_a_moved_reference_is_saved_and_resumed(tmp_path):
    cfg = PPOConfig(batch_size=8, response_len=6, minibatches=2, seed=0, ref_reset_every=2)
    whole = RLHFTrainer(cfg).train(4, progress=False)
    first_part = RLHFTrainer(cfg, run_dir=tmp_path)
    first_part.train(3, progress=False)
    first_part.close()
    resumed = RLHFTrainer(cfg, run_dir=tmp_path, resume=True).train(4, progress=False)
    assert whole[-1]["kl"] != whole[-1]["kl_sft"]  # the reference is no longer the SFT model
    for key in ("kl", "kl_sft", "rm_score"):  # step 4 pays against the copy made after step 2
        assert resumed[-1][key] == whole[-1][key]
