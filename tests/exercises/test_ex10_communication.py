"""Graded tests of Exercise 10 (exercises/ex10_communication.py): the bytes that cross between
devices in one RLHF step.

Hand-made placements (the chapter's batch of 4 prompts and 100 tokens among them), a ring
all-reduce simulated message by message, and real steps of ``RLHFTrainer`` whose copies are
recorded: every ``Tensor.to`` the trainer makes while the reward model and the reference
work (as ``tests/test_devices.py`` records them) and every optimizer step. The runs use the
CPU for every device, so the copies cost nothing here, but they are the calls that move data
between GPUs when ``placement`` names two. When a count is wrong, the likely mistakes (ids
without the prompt, the mask forgotten, log-probs over the prompt too, one all-reduce per
RLHF step, ...) are computed too and a match names the mistake.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from grading_utils import _short, plain
from torch.overrides import TorchFunctionMode

import rlhf_edu
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

EXERCISE = "ex10_communication"
KEYS = ("to_reward", "from_reward", "to_reference", "from_reference")
SPLIT = {"actor": "cuda:0", "critic": "cuda:0", "reward": "cuda:1", "reference": "cuda:1"}


def expect_counts(x: object, name: str, keys: tuple[str, ...]) -> dict[str, float]:
    """``x`` must be a dict with exactly ``keys``, each a number."""
    x = plain(x)
    if not isinstance(x, dict):
        pytest.fail(f"{name} should return a dict with keys {list(keys)}, got "
                    f"{type(x).__name__}: {_short(x)}", pytrace=False)
    if set(x) != set(keys):
        pytest.fail(f"{name} should return the keys {list(keys)}, got {sorted(x, key=str)}",
                    pytrace=False)
    for k in keys:
        v = x[k]
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            pytest.fail(f"{name}[{k!r}] should be a number of bytes, got {_short(v)}",
                        pytrace=False)
        x[k] = float(v)
    return x


def same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


# ------------------------------------------------------------------ the frozen models


def frozen_mistakes(key: str, B: int, P: int, T: int) -> list[tuple[float, str]]:
    L = P + T
    if key.startswith("to_"):
        return [
            (B * T * 9, "the ids and mask were counted over the response only; the frozen "
                        f"models read the prompt too: (B, P + T) = ({B}, {L})"),
            (B * L * 8, "the valid mask is missing: ids (B, P + T) int64 AND the mask "
                        "(B, P + T) bool, 1 B each"),
            (B * L * 16, "the mask was counted as int64; it is bool, 1 B per entry"),
            (B * L * 12, "the mask was counted as float32; it is bool, 1 B per entry"),
            (B * L * 5, "the ids were counted as int32; token ids are int64, 8 B"),
            (B * P * 9, "only the prompt was counted; the models score the whole sequence, "
                        "prompt and response"),
        ]
    if key == "from_reward":
        return [(B * T * 4, "one score per response token; the reward model gives one score "
                            "per response: (B,)"),
                (B * 8, "the scores were counted as float64; they come back float32, 4 B"),
                (B * 2, "the scores were counted as bf16; they come back float32, 4 B")]
    return [(B * L * 4, "log-probs over the prompt too; the reference returns one per "
                        "RESPONSE token: (B, T)"),
            (B * T * 2, "the log-probs were counted as bf16; they come back float32, 4 B"),
            (B * 4, "one number per response; the reference returns a log-prob per response "
                    "token: (B, T)"),
            (B * T * 8, "the log-probs were counted as float64; they come back float32, 4 B")]


def check_frozen(ex, B: int, P: int, T: int, placement: dict[str, str], want: dict[str, float],
                 why: str) -> None:
    got = expect_counts(ex.frozen_model_bytes(B, P, T, placement), "frozen_model_bytes", KEYS)
    for key in KEYS:
        if same(got[key], want[key]):
            continue
        role = key.split("_", 1)[1]
        actor = placement.get("actor", "cuda:0")
        where = placement.get(role, actor)
        if want[key] == 0:
            hint = (f"the {role} model is on {where}, the actor's device ({actor}), so "
                    "nothing crosses" + ("; compare with the actor's device, not cuda:0"
                                         if where != "cuda:0" else ""))
        elif got[key] == 0:
            hint = (f"the {role} model is on {where} and the actor on {actor}: they differ, "
                    "so its tensors cross")
        else:
            hint = next((t for v, t in frozen_mistakes(key, B, P, T) if same(got[key], v)), "")
        pytest.fail(f"frozen_model_bytes(B={B}, P={P}, T={T}, placement={placement})[{key!r}] "
                    f"is {got[key]:,.0f} but should be {want[key]:,.0f}: {why}"
                    + (f"; {hint}" if hint else ""), pytrace=False)


def both_apart(B: int, P: int, T: int) -> dict[str, float]:
    L = P + T
    return {"to_reward": B * L * 9, "from_reward": B * 4, "to_reference": B * L * 9,
            "from_reference": B * T * 4}


def test_the_chapters_batch_split_over_two_gpus(ex):
    check_frozen(ex, 4, 4, 100, {"reward": "cuda:1", "reference": "cuda:1"},
                 both_apart(4, 4, 100),
                 "actor and critic on cuda:0, reward model and reference on cuda:1; each frozen "
                 "model gets ids (4, 104) int64 + mask (4, 104) bool = 3,744 B, and sends back "
                 "scores (4,) float32 = 16 B or log-probs (4, 100) float32 = 1,600 B")


def test_colocated_models_send_nothing(ex):
    zeros = dict.fromkeys(KEYS, 0)
    check_frozen(ex, 4, 4, 100, {}, zeros, "every model on the actor's device")
    check_frozen(ex, 8, 5, 20, {r: "cuda:3" for r in SPLIT}, zeros,
                 "every model on cuda:3, the actor too")


def test_only_the_reference_apart(ex):
    want = {**both_apart(16, 6, 32), "to_reward": 0, "from_reward": 0}
    check_frozen(ex, 16, 6, 32, {"actor": "cuda:1", "critic": "cuda:1", "reward": "cuda:1",
                                 "reference": "cuda:0"}, want,
                 "the actor is on cuda:1 beside the reward model; only the reference (cuda:0) "
                 "is apart")


class MoveRecorder(TorchFunctionMode):
    """Every ``Tensor.to`` made from rlhf_edu/trainer.py: (phase, shape, dtype, bytes)."""

    def __init__(self, trainer: RLHFTrainer) -> None:
        super().__init__()
        self.trainer, self.moves = trainer, []
        self.file = str(Path(rlhf_edu.__file__).parent / "trainer.py")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to and sys._getframe(1).f_code.co_filename == self.file:
            t = args[0]
            self.moves.append((self.trainer.trace.phase, tuple(t.shape), t.dtype,
                               t.numel() * t.element_size()))
        return func(*args, **(kwargs or {}))


def recorded_step(config: PPOConfig, optimizer_steps: list[int] | None = None):
    """One real step with the frozen models "apart" (on the CPU, as everything is here): the
    rollout, the bytes each of phases 3 and 4 moved out (ids, mask) and back (floats)."""
    from rlhf_edu.trainer import _Trace

    trainer = RLHFTrainer(config)
    trainer.trace = _Trace()
    recorder = MoveRecorder(trainer)
    with recorder:
        batch = trainer.rollout(lambda name: setattr(trainer.trace, "phase", name))
    counts = {}
    for phase, role in (("3_score", "reward"), ("4_reference_kl", "reference")):
        moved = [m for m in recorder.moves if m[0] == phase]
        counts[f"to_{role}"] = sum(m[3] for m in moved if not m[2].is_floating_point)
        counts[f"from_{role}"] = sum(m[3] for m in moved if m[2].is_floating_point)
    return trainer, batch, counts


@pytest.mark.parametrize("B, T, eos", [(4, 6, False), (8, 12, True)],
                         ids=["B4-T6", "B8-T12-eos"])
def test_against_the_trainers_copies(ex, B, T, eos):
    _, batch, counts = recorded_step(PPOConfig(
        batch_size=B, response_len=T, stop_at_eos=eos, ppo_epochs=1, minibatches=1,
        placement={"reward": "cpu", "reference": "cpu"}))
    B, P, T = batch.tokens.size(0), batch.prompt_len, batch.mask.size(1)
    check_frozen(ex, B, P, T, SPLIT, counts,
                 f"a real step (B = {B}, P = {P}, T = {T}) moved these bytes between the actor "
                 "and the frozen models (recorded Tensor.to calls of the trainer)")


# ------------------------------------------------------------------ the gradient all-reduce


def simulated_ring(sizes: int, n: int) -> tuple[list[list[float]], list[int]]:
    """A ring all-reduce of n GPUs' vectors of ``sizes`` numbers, message by message: the
    reduced vectors and the numbers each GPU sent."""
    data = [[float((r + 1) * (i + 1)) for i in range(sizes)] for r in range(n)]
    bounds = [sizes * c // n for c in range(n + 1)]  # chunk c: bounds[c]:bounds[c + 1]
    sent = [0] * n
    for phase in ("reduce-scatter", "all-gather"):
        for step in range(n - 1):
            msgs = []
            for r in range(n):  # GPU r sends a chunk to r + 1
                c = (r - step + (0 if phase == "reduce-scatter" else 1)) % n
                lo, hi = bounds[c], bounds[c + 1]
                msgs.append(((r + 1) % n, lo, hi, data[r][lo:hi]))
                sent[r] += hi - lo
            for dst, lo, hi, values in msgs:
                if phase == "reduce-scatter":
                    data[dst][lo:hi] = [a + b for a, b in zip(data[dst][lo:hi], values)]
                else:
                    data[dst][lo:hi] = values
    return data, sent


def ring_mistakes(G: float, n: int) -> list[tuple[float, str]]:
    return [(2 * G, "that is 2 x the gradients: each of the 2 (N - 1) rounds sends only one "
                    "N-th of them, 2 (N - 1) / N in all"),
            ((n - 1) / n * G, "that is the reduce-scatter alone; the all-gather sends as much "
                              "again: 2 (N - 1) / N"),
            (2 * (n - 1) * G, "each round sends one N-th of the gradients, not all of them: "
                              "2 (N - 1) / N"),
            (2 * (n - 1) / n * G * n, "that is the whole ring's traffic; count one GPU's: "
                                      "2 (N - 1) / N x grad_bytes"),
            (2 * n / (n - 1) * G if n > 1 else math.nan, "the fraction is upside down: "
                                                         "2 (N - 1) / N"),
            ((n - 1) * G, "that is a naive all-reduce with the whole gradients passed around "
                          "once; the ring sends 2 (N - 1) / N")]


def check_ring(ex, G: int, n: int, want: float, why: str) -> None:
    got = ex.ring_allreduce_bytes(G, n)
    got = plain(got)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, int | float):
        pytest.fail(f"ring_allreduce_bytes should return a number, got {_short(got)}",
                    pytrace=False)
    if not same(got, want):
        hint = next((t for v, t in ring_mistakes(G, n) if same(got, v)), "")
        pytest.fail(f"ring_allreduce_bytes(grad_bytes={G:,}, n_gpus={n}) is {got:,.6g} but "
                    f"should be {want:,.6g}: {why}" + (f"; {hint}" if hint else ""),
                    pytrace=False)


@pytest.mark.parametrize("n", [1, 2, 8])
def test_ring_allreduce_formula(ex, n):
    G = 4 * 6_738_415_616  # a 7B model's fp32 gradients
    check_ring(ex, G, n, 2 * (n - 1) / n * G,
               "one GPU alone sends nothing" if n == 1 else
               f"with {n} GPUs each sends 2 x {n - 1} chunks of 1/{n} of the gradients")


@pytest.mark.parametrize("n", [3, 5])
def test_ring_allreduce_simulated(ex, n):
    size = 60  # numbers per GPU, 4 B each
    data, sent = simulated_ring(size, n)
    total = [sum(r + 1 for r in range(n)) * (i + 1) for i in range(size)]
    assert all(d == total for d in data), "the simulation itself is wrong"
    check_ring(ex, size * 4, n, sent[0] * 4,
               f"a ring all-reduce of {size} float32 numbers over {n} GPUs, simulated message "
               f"by message: GPU 0 sent {sent[0]} numbers")


# ------------------------------------------------------------------ one step, by cause

STEP_KEYS = ("frozen_models", "gradient_allreduce", "weight_sync", "total")


def check_step(ex, args: dict, want: dict[str, float], why: str) -> None:
    got = expect_counts(ex.step_bytes(**args), "step_bytes", STEP_KEYS)
    for key in STEP_KEYS:
        if same(got[key], want[key]):
            continue
        hint = ""
        if key == "gradient_allreduce":
            one = want[key] / args.get("optimizer_steps", 1)
            n = args.get("n_gpus", 1)
            for value, text in (
                    (one, "that is one all-reduce; there is one per optimizer step "
                          "(backward pass), optimizer_steps of them per RLHF step"),
                    (want[key] / (2 * (n - 1) / n) if n > 1 else math.nan,
                     "that is the gradients' size; each GPU sends 2 (N - 1) / N of it per "
                     "all-reduce"),
                    (want[key] * 2 / args.get("grad_bytes_per_param", 4),
                     "the bytes per gradient entry are grad_bytes_per_param; trained_params "
                     "counts parameters, not bytes")):
                if same(got[key], value):
                    hint = text
                    break
        elif key == "weight_sync" and want[key] and same(
                got[key], want[key] * args.get("optimizer_steps", 1)):
            hint = "the engine gets the weights once per RLHF step, after the last update"
        elif key == "weight_sync" and not want[key] and got[key]:
            hint = "sync_params = 0: there is no generation engine to copy weights to"
        elif key == "total":
            hint = "the total is the sum of the three causes"
        pytest.fail(f"step_bytes(...)[{key!r}] is {got[key]:,.6g} but should be "
                    f"{want[key]:,.6g}: {why}" + (f"; {hint}" if hint else ""), pytrace=False)


def test_a_7b_step_on_eight_gpus(ex):
    B, P, T, psi = 64, 256, 256, 6_738_415_616
    frozen = sum(both_apart(B, P, T).values())
    grads = 8 * 2 * 7 / 8 * (2 * psi) * 2
    sync = psi * 2
    check_step(ex, dict(batch_size=B, prompt_len=P, response_len=T, placement=SPLIT,
                        trained_params=2 * psi, n_gpus=8, grad_bytes_per_param=2,
                        optimizer_steps=8, sync_params=psi, sync_bytes_per_param=2),
               {"frozen_models": frozen, "gradient_allreduce": grads, "weight_sync": sync,
                "total": frozen + grads + sync},
               "7B actor and critic trained on 8 GPUs (bf16 gradients, 4 epochs x 2 "
               "minibatches), frozen models apart, a bf16 generation engine")


def test_one_gpu_without_an_engine(ex):
    frozen = sum(both_apart(4, 4, 100).values())
    check_step(ex, dict(batch_size=4, prompt_len=4, response_len=100, placement=SPLIT,
                        trained_params=1_000_000, optimizer_steps=8),
               {"frozen_models": frozen, "gradient_allreduce": 0, "weight_sync": 0,
                "total": frozen},
               "one GPU for the trained models: no ring (n_gpus = 1), no engine "
               "(sync_params = 0)")


def test_against_a_real_step(ex):
    epochs, minibatches = 2, 2
    trainer, batch, counts = recorded_step(PPOConfig(
        batch_size=8, response_len=6, ppo_epochs=epochs, minibatches=minibatches,
        placement={"reward": "cpu", "reference": "cpu"}))
    updates = []  # one entry per actor update
    torch.optim.Optimizer.register_step_post_hook(trainer.actor_opt,
                                                  lambda *a: updates.append(1))
    trainer.update(batch)
    trained = {id(p): p for m in (trainer.models.actor, trainer.models.critic)
               for p in m.parameters()}
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in trained.values())
    n_params = sum(p.numel() for p in trained.values())
    B, P, T = batch.tokens.size(0), batch.prompt_len, batch.mask.size(1)
    frozen = sum(counts.values())
    grads = len(updates) * ring_allreduce(grad_bytes, 2)
    check_step(ex, dict(batch_size=B, prompt_len=P, response_len=T, placement=SPLIT,
                        trained_params=n_params, n_gpus=2, grad_bytes_per_param=4,
                        optimizer_steps=epochs * minibatches),
               {"frozen_models": frozen, "gradient_allreduce": grads, "weight_sync": 0,
                "total": frozen + grads},
               f"a real step of the trainer (B = {B}, P = {P}, T = {T}): {frozen:,} B recorded "
               f"to and from the frozen models, {len(updates)} optimizer steps over "
               f"{grad_bytes:,} B of fp32 gradients, as 2 data-parallel GPUs would all-reduce "
               "them")


def ring_allreduce(grad_bytes: int, n: int) -> float:
    return 2 * (n - 1) / n * grad_bytes
