"""Graded tests of Exercise 6 (exercises/ex06_memory.py): the memory of RLHF.

Reference: ``rlhf_edu.memory.memory_breakdown`` (the chapter's table with
``assumptions="chapter"``, the precise per-GPU accounting otherwise) on the Llama-2 presets.
"""

from __future__ import annotations

import math

import pytest
from grading_utils import _short

from rlhf_edu.memory import GB, ModelSpec, format_breakdown, memory_breakdown

EXERCISE = "ex06_memory"
STATE_ITEMS = ("weights", "gradients", "optimizer_states", "master_weights")
TABLE_KEYS = ("actor", "critic", "reward", "reference", "optimizer_states", "activations",
              "total")
REL = 1e-4  # reward and critic carry a scalar head (C + 1 parameters) the exercise ignores


def number(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        pytest.fail(f"{name} should return a number (float), got {type(x).__name__}: "
                    f"{_short(x)}", pytrace=False)
    return float(x)


def states_gb(role) -> float:
    return sum(getattr(role, k) for k in STATE_ITEMS) / GB


ZERO_WHY = {
    0: "ZeRO-0 shards nothing: 16 bytes per parameter (2 + 2 + 4 + 8)",
    1: "ZeRO-1 splits the 12 B/param of master weights and Adam over the GPUs: 4 Psi + 12 Psi/N",
    2: "ZeRO-2 keeps the bf16 gradients whole and adds an fp32 gradient partition: "
       "4 Psi + 16 Psi/N",
    3: "ZeRO-3 shards everything and gathers one layer: 18 Psi/N + 4 L",
}


@pytest.mark.parametrize("n_params, total", [(7e9, 132.0), (70e9, 1320.0)])
def test_chapter_table(ex, n_params, total):
    got = ex.chapter_memory_gb(n_params)
    if not isinstance(got, dict) or any(k not in got for k in TABLE_KEYS):
        pytest.fail(f"chapter_memory_gb should return a dict with keys {', '.join(TABLE_KEYS)}, "
                    f"got {_short(got)}", pytrace=False)
    bd = memory_breakdown(ModelSpec.from_n_params(n_params), assumptions="chapter")
    items = bd.item_totals()
    want = {role: bd.roles[role].weights / GB for role in ("actor", "critic", "reward",
                                                          "reference")}
    want.update(optimizer_states=items["optimizer_states"] / GB,
                activations=items["activations"] / GB, total=bd.total_gb)
    assert math.isclose(want["total"], total)
    why = {"optimizer_states": "Adam's two fp32 moments (4 + 4 bytes per parameter), for the "
                               "actor only as the chapter counts",
           "activations": "about 20 GB per 7e9 parameters",
           "total": "the sum of the four models, the optimizer states and the activations"}
    for key in TABLE_KEYS:
        value = number(got[key], f"chapter_memory_gb(...)[{key!r}]")
        if not math.isclose(value, want[key], rel_tol=1e-6):
            pytest.fail(f"chapter_memory_gb({n_params:.0e})[{key!r}] is {value:.6g} GB but the "
                        f"chapter's table has {want[key]:.6g} GB: "
                        + why.get(key, "FP16 weights, 2 bytes per parameter"), pytrace=False)


CASES = [  # preset, GPUs, ZeRO stage, LoRA fraction
    ("llama-7b", 1, 0, None), ("llama-7b", 8, 1, None), ("llama-7b", 8, 2, None),
    ("llama-7b", 8, 3, None), ("llama-70b", 64, 3, None), ("llama-13b", 4, 2, None),
    ("llama-7b", 1, 0, 0.01), ("llama-70b", 8, 3, 0.01), ("llama-13b", 8, 1, 0.05),
]


def _describe(preset, gpus, zero, lora) -> str:
    return (f"{preset} on {gpus} GPU(s), ZeRO-{zero}"
            + (f", LoRA {lora}" if lora else ", full fine-tuning"))


@pytest.mark.parametrize("preset, gpus, zero, lora", CASES)
def test_trained_model(ex, preset, gpus, zero, lora):
    spec = ModelSpec.preset(preset)
    bd = memory_breakdown(spec, gpus, zero, lora_fraction=lora)
    want = states_gb(bd.roles["actor"])
    got = number(ex.trained_model_gb(spec.n_params, zero, gpus, spec.largest_layer, lora),
                 "trained_model_gb")
    if not math.isclose(got, want, rel_tol=REL):
        why = ZERO_WHY[zero]
        if lora:
            why = (f"with LoRA the frozen base is 2 bytes per parameter"
                   f"{' (sharded, + 2 L)' if zero == 3 else ''} and only {lora} of the "
                   f"parameters are trained: {why}")
        pytest.fail(f"trained_model_gb for {_describe(preset, gpus, zero, lora)} is "
                    f"{got:.4g} GB but should be {want:.4g} GB "
                    f"(Psi = {spec.n_params:.4g}, L = {spec.largest_layer:.4g}): {why}",
                    pytrace=False)


@pytest.mark.parametrize("preset, gpus, zero, lora", CASES)
def test_four_models(ex, preset, gpus, zero, lora):
    spec = ModelSpec.preset(preset)
    bd = memory_breakdown(spec, gpus, zero, lora_fraction=lora)
    want = sum(states_gb(r) for r in bd.roles.values())
    got = number(ex.rlhf_memory_gb(spec.n_params, zero, gpus, spec.largest_layer, lora),
                 "rlhf_memory_gb")
    if not math.isclose(got, want, rel_tol=REL):
        parts = ", ".join(f"{r.role} {states_gb(r):.4g}" for r in bd.roles.values())
        pytest.fail(f"rlhf_memory_gb for {_describe(preset, gpus, zero, lora)} is {got:.4g} GB "
                    f"but should be {want:.4g} GB per GPU ({parts}): two trained models and "
                    "two frozen bf16 ones" + (", all sharded under ZeRO-3" if zero == 3 else ""),
                    pytrace=False)


@pytest.mark.parametrize("preset, gpus, zero, lora, ckpt", [
    ("llama-7b", 1, 0, None, False), ("llama-7b", 8, 3, None, False),
    ("llama-70b", 8, 3, None, True), ("llama-70b", 8, 3, 0.01, True),
    ("llama-13b", 8, 3, 0.01, False), ("llama-7b", 2, 1, 0.01, False),
])
def test_fits(ex, preset, gpus, zero, lora, ckpt):
    spec = ModelSpec.preset(preset)
    bd = memory_breakdown(spec, gpus, zero, lora_fraction=lora, activation_checkpointing=ckpt)
    rest = sum(r.activations + r.kv_cache + r.logits for r in bd.roles.values()) / GB
    want = bd.per_gpu_bytes <= 80 * GB
    got = ex.fits(spec.n_params, gpus, 80.0, zero, spec.largest_layer, lora, rest)
    if not isinstance(got, bool):
        pytest.fail(f"fits should return True or False, got {_short(got)}", pytrace=False)
    if got != want:
        pytest.fail(f"fits says {got} for {_describe(preset, gpus, zero, lora)} with "
                    f"{rest:.3g} GB of activations, but it needs {bd.per_gpu_gb:.4g} GB per "
                    f"GPU, {'within' if want else 'more than'} 80 GB", pytrace=False)


def test_plan_for_70b_on_8_gpus(ex):
    plan = ex.plan_70b()
    allowed = {"zero_stage", "offload", "lora_fraction", "critic", "placement",
               "activation_checkpointing", "frozen_gpus"}
    if not isinstance(plan, dict) or not set(plan) <= allowed:
        pytest.fail(f"plan_70b should return a dict with keys among {sorted(allowed)}, got "
                    f"{_short(plan)}", pytrace=False)
    try:
        bd = memory_breakdown(ModelSpec.preset("llama-70b"), 8, **plan)
    except (TypeError, ValueError) as e:
        pytest.fail(f"memory_breakdown rejects the plan {plan}: {e}", pytrace=False)
    if bd.per_gpu_gb > 80:
        pytest.fail(f"with the plan {plan} the busiest GPU needs {bd.per_gpu_gb:.1f} GB, more "
                    f"than 80 GB:\n{format_breakdown(bd)}", pytrace=False)
