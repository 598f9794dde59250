"""Extreme numbers at the public functions of memory, ppo, model, models, distributed, plots,
sharding, sharding_measure and rundir: each is refused with one line naming the input, its value
and what was expected, or gives a correct finite result. Never a raw ``int()``, ``json`` or
allocator error, and never "diverged" when the weights are fine."""

import json
import math

import pytest
import torch

from rlhf_edu import distributed, memory, plots, ppo, rundir, sharding, sharding_measure, validate
from rlhf_edu.checkpoint import atomic_save
from rlhf_edu.memory import ModelSpec
from rlhf_edu.model import GPT, TEMPERATURE_RANGE, GPTConfig
from rlhf_edu.models import Actor
from rlhf_edu.ppo import AdaptiveKLController, FixedKLController, ppo_losses, total_loss

NAN, INF = float("nan"), float("inf")
SEVEN = ModelSpec.preset("llama-7b")
TINY = GPTConfig(n_layer=1, n_embd=16, n_head=2, vocab_size=10, block_size=8)


def refused(call, *words):
    """``call()`` raises a one-line ValueError containing each of ``words``."""
    with pytest.raises(ValueError) as e:
        call()
    text = str(e.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, text
    return text


def _losses(**kw):
    z = torch.zeros(2, 3)
    return ppo_losses(z, z, torch.ones(2, 3), z + 1, z, z, torch.ones(2, 3),
                      entropy=z + 1, ref_logprobs=z, **kw)


# ---------------------------------------------------------------- ppo

PPO_BAD = [
    ("adaptive init 0", lambda: AdaptiveKLController(0.0, 1.0), ("init_beta", "got 0",
                                                                 "FixedKLController(0)")),
    ("adaptive init -0.0", lambda: AdaptiveKLController(-0.0, 1.0), ("init_beta", "-0")),
    ("adaptive init 1e-45", lambda: AdaptiveKLController(1e-45, 1.0), ("init_beta", "1e-45")),
    ("adaptive init 1e308", lambda: AdaptiveKLController(1e308, 1.0), ("init_beta", "<= 10000")),
    ("adaptive init nan", lambda: AdaptiveKLController(NAN, 1.0), ("init_beta", "nan")),
    ("adaptive horizon 0.5", lambda: AdaptiveKLController(0.1, 1.0, 0.5), ("horizon", ">= 1")),
    ("adaptive horizon 1e-45", lambda: AdaptiveKLController(0.1, 1.0, 1e-45), ("horizon",)),
    ("adaptive target 0", lambda: AdaptiveKLController(0.1, 0.0), ("target", "> 0")),
    ("adaptive state beta 0", lambda: AdaptiveKLController(0.1, 1.0).load_state_dict(
        {"value": 0.0, "target": 1.0, "horizon": 10.0}), ("state['value']", "got 0")),
    ("fixed 1e308", lambda: FixedKLController(1e308), ("beta", "<= 10000", "1e+308")),
    ("fixed 10**30", lambda: FixedKLController(10**30), ("beta", "10000")),
    ("fixed state 1e5", lambda: FixedKLController(0.1).load_state_dict({"value": 1e5}),
     ("state['value']", "<= 10000")),
    ("clip 1e308", lambda: _losses(clip=1e308), ("clip", "<= 1", "1e+308")),
    ("clip 1.5", lambda: _losses(clip=1.5), ("clip", "<= 1", "1.5")),
    ("clip 1e-45", lambda: _losses(clip=1e-45), ("clip", "1e-45")),
    ("vf_clip 1e308", lambda: _losses(vf_clip=1e308), ("vf_clip", "<= 1e+06", "None")),
    ("vf_coef 1e308", lambda: total_loss(_losses(), vf_coef=1e308), ("vf_coef", "<= 10000")),
    ("ent_coef 1e39", lambda: total_loss(_losses(), ent_coef=1e39), ("ent_coef", "<= 10000")),
    ("kl_coef 1e308", lambda: total_loss(_losses(), kl_coef=1e308), ("kl_coef", "<= 10000")),
]


@pytest.mark.parametrize("call, words", [c[1:] for c in PPO_BAD], ids=[c[0] for c in PPO_BAD])
def test_ppo_domains(call, words):
    refused(call, *words)


def test_ppo_edges_give_finite_results():
    assert math.copysign(1.0, FixedKLController(-0.0).value) == 1.0  # -0.0 is stored as 0.0
    assert FixedKLController(ppo.COEF_MAX).value == 1e4
    for kw in (dict(clip=1.0), dict(clip=validate.CLIP_MIN), dict(vf_clip=ppo.VF_CLIP_MAX),
               dict(vf_clip=1e-45)):
        out = _losses(**kw)
        assert all(torch.isfinite(v).all() for v in out.values()), kw
    loss = total_loss(_losses(), vf_coef=ppo.COEF_MAX, ent_coef=ppo.COEF_MAX,
                      kl_coef=ppo.COEF_MAX)
    assert torch.isfinite(loss)
    # the adaptive beta never rounds down to 0 nor grows past COEF_MAX, however long the run
    low, high = AdaptiveKLController(0.05, 1.0, 10), AdaptiveKLController(0.05, 1.0, 10)
    for _ in range(5000):
        low.update(0.0, 10)  # KL under the target: -20 % per update
        high.update(100.0, 10)  # over it: +20 %
    assert low.value == ppo.BETA_FLOOR and high.value == ppo.COEF_MAX
    assert low.update(100.0, 10) == pytest.approx(1.2 * ppo.BETA_FLOOR)  # and climbs back
    AdaptiveKLController(ppo.BETA_FLOOR, 1.0, horizon=1)  # the edges themselves are valid


# ---------------------------------------------------------------- model, models

@pytest.mark.parametrize("t", [1e-45, 1e-3, 1e3, 1e308])
def test_temperature_outside_its_range_is_named(t):
    torch.manual_seed(0)
    gpt = GPT(TINY)
    prompt = torch.ones(2, 2, dtype=torch.long)
    refused(lambda: gpt.generate(prompt, max_new_tokens=2, temperature=t), "temperature",
            "[0.01, 100]")
    tokens, valid = torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)
    refused(lambda: Actor(gpt)(tokens, valid, 2, t), "temperature", "[0.01, 100]")


def test_temperature_edges_give_finite_log_probs():
    torch.manual_seed(0)
    gpt = GPT(TINY)
    for t in TEMPERATURE_RANGE:
        g = gpt.generate(torch.ones(2, 2, dtype=torch.long), max_new_tokens=3, temperature=t)
        assert torch.isfinite(g.logprobs).all()


def test_a_config_too_large_to_build_is_refused_before_allocating():
    refused(lambda: GPTConfig(n_embd=2**20, n_head=1, vocab_size=2**20), "GPTConfig(",
            "n_embd=1048576", "2**31")
    refused(lambda: GPTConfig.from_dict({**TINY.__dict__, "n_layer": 10**6}, "x.pt"),
            "x.pt", "2**31")


# ---------------------------------------------------------------- distributed

@pytest.mark.parametrize("text", ["abc", "", "2.5", "1e308", "0", "-1", "10" * 20, "1025"])
def test_threads_variable_is_named(text, monkeypatch):
    monkeypatch.setenv("RLHF_EDU_THREADS", text)
    refused(distributed.configure_threads, "$RLHF_EDU_THREADS", "[1, 1024]", repr(text)[:20])


@pytest.mark.parametrize("n", [0, 2.5, True, 10**6, 10**30])
def test_threads_argument_is_bounded(n):
    refused(lambda: distributed.configure_threads(n), "threads", "[1, 1024]")


def test_threads_variable_and_environment_ints(monkeypatch):
    monkeypatch.setenv("RLHF_EDU_THREADS", " 1 ")
    assert distributed.configure_threads() == 1
    monkeypatch.setenv("WORLD_SIZE", "abc")
    refused(lambda: distributed.init_from_env("cpu"), "$WORLD_SIZE", "'abc'")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env("cpu") == (0, 1)
    assert distributed.env_int("RLHF_EDU_UNSET_FOR_TEST", 7) == 7


def test_seed_everything_takes_every_package_seed():
    for seed in (0, 2**32 - 1, 2**40, 2**63 - 1):
        distributed.seed_everything(seed)
        a = (torch.rand(1).item(), __import__("numpy").random.rand())
        distributed.seed_everything(seed)
        assert (torch.rand(1).item(), __import__("numpy").random.rand()) == a
    refused(lambda: distributed.seed_everything(-1), "seed", "[0, 2**63)")
    refused(lambda: distributed.seed_everything(2.5), "seed", "2.5 (float)")


# ---------------------------------------------------------------- plots

RUN = [{"step": i + 1, "kl": 0.1 * i, "rm_score": 0.1, "gold_score": 0.2, "repetition": 0.0,
        "beta": 0.05, "sample": "x"} for i in range(6)]
RUNS = {"beta=0": RUN, "beta=0.05": RUN}

PLOTS_BAD = [
    ("grid max_cols 0", lambda: plots.grid_shape(3, 0), ("max_cols", "got 0")),
    ("grid max_cols inf", lambda: plots.grid_shape(3, INF), ("max_cols", "inf")),
    ("smooth window nan", lambda: plots.smooth([1, 2], NAN), ("window", "nan")),
    ("smooth window 2.5", lambda: plots.smooth([1, 2], 2.5), ("window", "2.5 (float)")),
    ("smooth window 1e308", lambda: plots.smooth([1, 2], 1e308), ("window",)),
    ("plot_runs window inf", lambda: plots.plot_runs(RUNS, window=INF), ("window", "inf")),
    ("plot_runs batch 0", lambda: plots.plot_runs({"a": RUN}, x="samples", batch_size=0),
     ("batch_size", "got 0")),
    ("end_mean last nan", lambda: plots.end_mean(RUN, "kl", NAN), ("last", "nan")),
    ("beta_sweep last 2.5", lambda: plots.beta_sweep(RUNS, 2.5), ("last", "2.5")),
    ("rounded digits 2.5", lambda: plots.rounded(1.25, 2.5), ("digits", "2.5")),
    ("beta_run_view step nan", lambda: plots.beta_run_view(RUNS, 0.05, NAN), ("step", "nan")),
    ("beta_run_view step inf", lambda: plots.beta_run_view(RUNS, 0.05, INF), ("step", "inf")),
    ("adaptive plot target nan", lambda: plots.plot_adaptive_kl(RUN, NAN), ("target", "nan")),
    ("adaptive plot target 0", lambda: plots.plot_adaptive_kl(RUN, 0), ("target", "> 0")),
    ("memory plot gpu_mem inf", lambda: plots.plot_memory_breakdown(
        memory.memory_breakdown(SEVEN), INF), ("gpu_mem_gb", "inf")),
    ("live every 2.5", lambda: plots.LivePlot(every=2.5, display=False), ("every", "2.5")),
    ("live total 0", lambda: plots.LivePlot(total=0, display=False), ("total", "got 0")),
    ("kl row 5", lambda: plots.plot_kl_estimators({"k1": torch.ones(2, 3)}, torch.ones(2, 3),
                                                  row=5), ("row", "[-2, 1]", "got 5")),
    ("kl row nan", lambda: plots.plot_kl_estimators({"k1": torch.ones(2, 3)}, torch.ones(2, 3),
                                                    row=NAN), ("row", "nan")),
    ("kl_bins nan edge", lambda: plots.kl_bins(RUNS, (0, NAN)), ("edges", "(0, nan)")),
    ("kl_bins decreasing", lambda: plots.kl_bins(RUNS, (0, 2, 1)), ("edges", "increasing")),
]


@pytest.mark.parametrize("call, words", [c[1:] for c in PLOTS_BAD],
                         ids=[c[0] for c in PLOTS_BAD])
def test_plots_domains(call, words):
    try:
        refused(call, *words)
    finally:
        plots.plt.close("all")


def test_plots_edges_give_results():
    assert list(plots.smooth([1, 2, 3], 10**30)) == [1.0, 1.5, 2.0]  # a window past the end
    assert plots.end_mean(RUN, "kl", 10**30) == pytest.approx(0.25)
    assert plots.rounded(1.25, 10**30) == 1.25
    assert plots.beta_run_view(RUNS, 0.05, 10**30)["step"] == 6  # clamped to the run
    assert plots.kl_bins(RUNS, (0, INF))[0]["n"] == 12  # an open last bin
    plots.plt.close("all")
    for model in (1e308, 1e-45, 0.0, NAN):
        out = plots.memory_view(model)
        assert out["error"].startswith("model must be in [1e-09, ")
    assert plots.memory_view(gpu_mem_gb=NAN)["error"] == "gpu_mem_gb must be finite, got nan"
    plots.plt.close("all")


@pytest.mark.parametrize("shipped", [True, False])
def test_a_damaged_runs_file_names_itself(shipped, tmp_path, monkeypatch):
    path = tmp_path / "demos.json"
    path.write_text(plots.DEMOS_PATH.read_text()[:1000])  # truncated mid-record
    if shipped:
        monkeypatch.setattr(plots, "DEMOS_PATH", path)
    text = refused(lambda: plots.load_demo_runs(None if shipped else path), str(path),
                   "not valid JSON")
    assert ("reinstall rlhf_edu" in text) == shipped and ("benchmarks/demos.py" in text) != shipped
    path.write_text("[1, 2]")
    refused(lambda: plots.load_demo_runs(path), str(path), "no dict of runs")
    path.write_bytes(b"\xff\xfe{")
    refused(lambda: plots.load_demo_runs(path), str(path), "not valid JSON")


# ---------------------------------------------------------------- sharding, rundir

@pytest.mark.parametrize("world", [2.5, NAN, 0, True])
def test_world_is_an_int(world):
    refused(lambda: sharding.check_world("zero3", world), "world")


@pytest.mark.parametrize("timeout", [1e308, INF, 0, 1e-45, NAN])
def test_measure_timeout_is_bounded(timeout):
    refused(lambda: sharding_measure.measure_ranks(("none",), 2, timeout=timeout), "timeout")


@pytest.mark.parametrize("step", [NAN, 1e308, -5, "3"])
def test_a_damaged_checkpoint_step_names_the_file(step, tmp_path):
    config = {"seed": 0}
    atomic_save({"kind": "rlhf-run", "config": config, "step": step},
                tmp_path / rundir.CHECKPOINT)
    refused(lambda: rundir.check(tmp_path, config, resume=True), "checkpoint.pt", "step")


def test_a_config_file_holding_a_list_is_named(tmp_path):
    (tmp_path / rundir.CONFIG).write_text(json.dumps([1, 2]))
    refused(lambda: rundir.check(tmp_path, {"seed": 0}, resume=True), "config.json", "list")


# ---------------------------------------------------------------- memory

MEMORY_BAD = [
    ("layers 10**400", lambda: ModelSpec("m", 10**400, 64, 4, 10), ("n_layer", "below 2**63")),
    ("params 10**400", lambda: ModelSpec("m", 2, 64, 4, 10, n_params=10**400),
     ("n_params", "below 2**63")),
    ("batch 10**400", lambda: memory.memory_breakdown(SEVEN, batch=10**400),
     ("batch", "below 2**63")),
    ("gpus 10**400", lambda: memory.memory_breakdown(SEVEN, 10**400), ("n_gpus", "2**63")),
    ("updates 10**400", lambda: memory.communication(SEVEN, 2, 8, updates=10**400),
     ("updates", "2**63")),
    ("from_n_params 1e308", lambda: ModelSpec.from_n_params(1e308), ("n_params", "2**63")),
    ("parse_model 1e300", lambda: memory.parse_model("1e300"), ("model", "below 2**63")),
    ("states 1e308", lambda: memory.model_states_bytes(1e308, 1, 3, 8), ("params", "2**63")),
]


@pytest.mark.parametrize("call, words", [c[1:] for c in MEMORY_BAD],
                         ids=[c[0] for c in MEMORY_BAD])
def test_memory_counts_stay_finite(call, words):
    refused(call, *words)


def test_memory_at_the_largest_counts_is_finite():
    big = memory.COUNT_MAX  # (the critic adds a head to the model: half of it, then)
    bd = memory.memory_breakdown(ModelSpec("m", 2, 64, 4, 10, n_params=big // 2), batch=big,
                                 micro_batch=big)
    assert math.isfinite(bd.per_gpu_bytes) and bd.per_gpu_bytes > 0
    rows = memory.communication(SEVEN, big, 8, updates=big)
    assert all(math.isfinite(r["seconds"]) for r in rows)
