"""Graded tests of Exercise 1 (exercises/ex01_shapes.py): shapes and forward passes of one step.

The reference is measured, not recomputed: ``rlhf_edu.trainer.trace_step`` runs one real step
on toy models and records the shape of every tensor and the passes of every model.
"""

from __future__ import annotations

import functools

import pytest
import torch
from grading_utils import _short

EXERCISE = "ex01_shapes"
MODES = ("separate", "shared", "head")
KEYS = ("prompt_ids", "tokens", "mask", "logprobs", "ref_logprobs", "logits", "hidden", "scores",
        "kl", "rewards", "values", "advantages", "returns", "minibatch_logprobs", "loss")
# learner's key -> the name trace_step records it under
TRACE_NAMES = {"prompt_ids": "prompt_ids", "tokens": "tokens", "mask": "mask",
               "logprobs": "old_logprobs", "ref_logprobs": "ref_logprobs", "scores": "scores",
               "kl": "kl", "rewards": "rewards", "values": "old_values",
               "advantages": "advantages", "returns": "returns",
               "minibatch_logprobs": "minibatch_logprobs", "loss": "loss"}
WHY = {
    "prompt_ids": "one row of P prompt ids per prompt",
    "tokens": "the models read the prompt and the response side by side: P + T columns",
    "scores": "the reward model gives one number per response, not per token",
    "minibatch_logprobs": "PPO splits the B responses into `minibatches` equal minibatches",
    "loss": "the loss is a scalar (masked mean over all response tokens)",
    "logits": "one distribution over the V words per response position",
    "hidden": "one C-dimensional hidden state per response position",
}
PER_TOKEN_WHY = "one number per response token; padding is covered by the mask, prompts never"


@functools.cache
def measured(batch: int, response_len: int, critic_mode: str = "separate"):
    """(shapes by name, forward passes by role) of one real step, cached across tests."""
    from rlhf_edu.trainer import trace_step

    trace = trace_step(batch, response_len, critic_mode)
    shapes = {name: shape for _, name, shape, _ in trace.tensors}
    passes = {role: dict(kinds) for role, kinds in trace.forward.items()}
    return shapes, passes


def check_dict(result: object, name: str, keys: tuple[str, ...]) -> dict:
    if not isinstance(result, dict):
        pytest.fail(f"{name} should return a dict, got {type(result).__name__}: "
                    f"{_short(result)}", pytrace=False)
    missing = [k for k in keys if k not in result]
    if missing:
        pytest.fail(f"{name} is missing the key(s) {', '.join(map(repr, missing))}",
                    pytrace=False)
    return result


def check_shapes(ex, batch: int, response_len: int) -> None:
    minibatches = 1 if batch % 2 else 2  # what trace_step uses
    from rlhf_edu.model import GPTConfig

    cfg = GPTConfig()
    shapes, _ = measured(batch, response_len, "separate")
    P = shapes["prompt_ids"][1]  # <bos> + the longest of the sampled prompts
    got = check_dict(ex.step_shapes(batch, P, response_len, cfg.vocab_size, cfg.n_embd,
                                     minibatches=minibatches), "step_shapes", KEYS)
    for key, trace_name in TRACE_NAMES.items():
        want = shapes[trace_name]
        if not isinstance(got[key], tuple) or tuple(got[key]) != want:
            pytest.fail(f"step_shapes(batch={batch}, prompt_len={P}, response_len="
                        f"{response_len}, minibatches={minibatches})[{key!r}] is "
                        f"{_short(got[key])} but a real step makes {key} of shape {want} "
                        f"(measured by trace_step): {WHY.get(key, PER_TOKEN_WHY)}",
                        pytrace=False)


def test_step_shapes_chapter_example(ex):
    """The chapter's Exercise 1: batch 4, responses of 100 tokens."""
    check_shapes(ex, 4, 100)


def test_step_shapes_odd_batch_one_minibatch(ex):
    check_shapes(ex, 3, 7)


def test_step_shapes_logits_and_hidden(ex):
    """Logits and hidden states are not in the trace: run the Actor itself and compare."""
    from rlhf_edu.model import GPT, GPTConfig
    from rlhf_edu.models import Actor

    B, P, T, V, C = 3, 5, 7, 50, 32
    got = check_dict(ex.step_shapes(B, P, T, V, C, minibatches=1), "step_shapes", KEYS)
    torch.manual_seed(0)
    actor = Actor(GPT(GPTConfig(block_size=P + T, vocab_size=V, n_layer=1, n_head=4, n_embd=C)))
    tokens = torch.randint(V, (B, P + T))
    with torch.no_grad():
        out = actor(tokens, torch.ones_like(tokens, dtype=torch.bool), P)
    for key, want in (("logits", tuple(out.logits.shape)), ("hidden", tuple(out.hidden.shape))):
        if not isinstance(got[key], tuple) or tuple(got[key]) != want:
            pytest.fail(f"step_shapes(B={B}, P={P}, T={T}, V={V}, C={C})[{key!r}] is "
                        f"{_short(got[key])} but the actor's forward gives {want}: {WHY[key]}",
                        pytrace=False)


def _explain(role: str, mode: str) -> str:
    return {
        "generate": "generation with a KV cache runs one forward per generated token (the "
                    "first over the whole prompt, then one token at a time)",
        "actor": "the actor runs once per PPO minibatch update"
                 + ("" if mode == "separate" else
                    ", plus once before PPO: in this critic mode the old values are computed "
                    "from the actor's hidden states"),
        "critic": "the critic runs once before PPO (old values for GAE) and once per "
                  "minibatch update",
        "reward": "the reward model scores the batch once, in phase 3",
        "reference": "the reference gives its log-probs once, in phase 4; it never changes",
    }[role]


def check_passes(ex, batch: int, response_len: int, mode: str) -> None:
    minibatches = 1 if batch % 2 else 2
    got = check_dict(ex.forward_passes(response_len, 4, minibatches, mode), "forward_passes",
                     ("generate", "actor", "critic", "reward", "reference"))
    _, passes = measured(batch, response_len, mode)
    want = {"generate": passes["actor"]["generate"],
            **{role: passes[role]["forward"] for role in ("actor", "critic", "reward",
                                                         "reference")}}
    for role, n in want.items():
        if got[role] != n:
            pytest.fail(f"forward_passes(response_len={response_len}, ppo_epochs=4, "
                        f"minibatches={minibatches}, critic_mode={mode!r})[{role!r}] is "
                        f"{_short(got[role])} but a real step made {n} (measured by "
                        f"trace_step): {_explain(role, mode)}", pytrace=False)


@pytest.mark.parametrize("mode", MODES)
def test_forward_passes_chapter_example(ex, mode):
    """Batch 4, 100 tokens, 4 PPO epochs of 2 minibatches, each critic mode."""
    check_passes(ex, 4, 100, mode)


def test_forward_passes_one_minibatch(ex):
    check_passes(ex, 3, 7, "shared")


@pytest.mark.parametrize("epochs, minibatches, mode, want", [
    (1, 1, "separate", {"actor": 1, "critic": 2}),
    (2, 8, "head", {"actor": 17, "critic": 17}),
    (3, 4, "separate", {"actor": 12, "critic": 13}),
])
def test_forward_passes_scale_with_ppo_updates(ex, epochs, minibatches, mode, want):
    got = check_dict(ex.forward_passes(5, epochs, minibatches, mode), "forward_passes",
                     ("generate", "actor", "critic", "reward", "reference"))
    for role, n in {**want, "generate": 5, "reward": 1, "reference": 1}.items():
        if got[role] != n:
            pytest.fail(f"forward_passes(5, ppo_epochs={epochs}, minibatches={minibatches}, "
                        f"critic_mode={mode!r})[{role!r}] is {_short(got[role])}, expected "
                        f"{n}: {_explain(role, mode)}", pytrace=False)
