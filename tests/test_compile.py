"""``PPOConfig.compile`` (``--compile``): the same run up to float reordering, one compiled
graph for every response width, and a one-line error where torch.compile cannot run.

The compiled run is marked slow: inductor's first compile takes seconds even for the one-layer
model used here (the course's models: 25-45 s cold, ~2 s from a warm cache).
"""

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from rlhf_edu.cli import build_parser, config_from_args
from rlhf_edu.model import GPT, GPTConfig
from rlhf_edu.models import RewardModel, build_models, check_compile
from rlhf_edu.task import Tokenizer
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

TINY = dict(block_size=48, n_layer=1, n_head=2, n_embd=16)
RUN = dict(batch_size=8, response_len=8, ppo_epochs=2, minibatches=2, beta=0.05, seed=3)


def _tiny_models():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=len(Tokenizer()), **TINY)
    return build_models("separate", sft=GPT(config), reward=RewardModel(GPT(config)))


def test_compile_is_an_opt_in_flag():
    assert PPOConfig().compile is False
    args = build_parser().parse_args(["train", "--compile"])
    assert config_from_args(args) == PPOConfig(compile=True)
    assert config_from_args(build_parser().parse_args(["train", "--no-compile"])) == PPOConfig()
    with pytest.raises(ValueError, match="compile needs shard='none'"):
        PPOConfig(compile=True, shard="zero2")


def test_no_compiler_is_one_line():
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    cpp_compiler_search.cache_clear()
    try:
        with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
            with pytest.raises(ValueError, match="no C.. compiler found") as info:
                check_compile(torch.device("cpu"))
            assert "\n" not in str(info.value)
            with pytest.raises(ValueError, match="run without --compile"):
                RLHFTrainer(PPOConfig(**RUN, compile=True), models=_tiny_models())
    finally:
        cpp_compiler_search.cache_clear()


def _matches_eager_with_one_graph_for_every_width():
    """Two steps compiled and eager from the same seed agree; then two new response widths
    (a minibatch's rows, contiguous, as update() passes them) add no graph."""
    eager = RLHFTrainer(PPOConfig(**RUN), models=_tiny_models())
    graphs = counters["stats"]["unique_graphs"]
    compiled = RLHFTrainer(PPOConfig(**RUN, compile=True), models=_tiny_models())
    for step in range(2):
        a, b = eager.step(), compiled.step()
        for key in ("rm_score", "kl", "policy_loss", "value_loss", "approx_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (step, key)
    for p, q in zip(eager.policy.parameters(), compiled.policy.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    once = counters["stats"]["unique_graphs"] - graphs
    assert once >= 1
    batch = compiled.rollout()
    compiled.policy.train()  # as update() does: generation left the actor in eval mode
    rows = RUN["batch_size"] // RUN["minibatches"]
    P, L = batch.prompt_len, batch.tokens.size(1)
    assert L - P >= 4
    for width in (L - 1, L - 2):  # responses of 2 tokens or more: the width stays symbolic
        tokens, valid = (t[:rows, :width].contiguous() for t in (batch.tokens, batch.valid))
        logprobs, _, values = compiled.policy(tokens, valid, P)
        assert logprobs.shape == values.shape == (rows, width - P)
        logprobs.sum().backward()
    assert counters["stats"]["unique_graphs"] - graphs == once


def test_traced_run_matches_eager_with_one_graph_for_every_width(monkeypatch):
    """The trainer's side of --compile (which forward, the dynamic width) with TorchDynamo
    and AOTAutograd but no code generation: seconds, not a minute."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    _matches_eager_with_one_graph_for_every_width()
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_run_matches_eager_with_one_graph_for_every_width():
    """The same with inductor's generated code (~50 s from a cold cache, ~5 s warm)."""
    torch._dynamo.reset()
    _matches_eager_with_one_graph_for_every_width()
