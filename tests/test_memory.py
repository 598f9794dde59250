"""Tests of rlhf_edu.memory: the chapter's table, the precise accounting against real tensors,
ZeRO against DeepSpeed's estimator formulas, the paper's and FSDP2's accountings, tensor and
pipeline parallelism, a generation engine, critic-free methods and DPO, and the
70B-on-8x80GB plan."""

import argparse
import json
import math
import re

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from rlhf_edu.memory import (
    GB,
    ModelSpec,
    add_memory_arguments,
    communication,
    format_communication,
    format_plan,
    fsdp2_chunk_rows,
    fsdp2_local_bytes,
    memory_breakdown,
    model_states_bytes,
    parse_model,
    plan,
    run_memory_cli,
)

try:
    from rlhf_edu.model import GPT, GPTConfig, KVCache
except ImportError:  # the package model is written in parallel; the plain-torch checks stand alone
    GPT = GPTConfig = KVCache = None
needs_model = pytest.mark.skipif(GPT is None, reason="rlhf_edu.model not available")

STATES = ("weights", "gradients", "optimizer_states", "master_weights")


def states(role) -> float:
    return sum(getattr(role, k) for k in STATES)


# ---------------------------------------------------------------- a toy GPT in plain torch


class Block(nn.Module):
    def __init__(self, C: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    """nanoGPT's architecture: biases on, learned positions, head tied to the token embedding."""

    def __init__(self, vocab: int, block: int, C: int, n_layer: int, n_head: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, C), nn.Embedding(block, C)
        self.h = nn.ModuleList(Block(C, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # (B, T, V)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def adamw_step(params, loss):
    opt = torch.optim.AdamW(params, lr=1e-3)
    loss.backward()
    opt.step()
    moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]  # not "step"
    return tensor_bytes(params), tensor_bytes(p.grad for p in params), tensor_bytes(moments)


# ---------------------------------------------------------------- parameter counts


def test_toy_count_matches_formula_and_a_real_model():
    spec = ModelSpec.preset("toy")
    V, block, C, L = 64, 48, 128, 3
    assert (spec.n_layer, spec.n_head, spec.n_embd, spec.vocab_size) == (3, 4, 128, 64)
    assert spec.n_params == V * C + block * C + L * (12 * C * C + 13 * C) + 2 * C == 609_408
    model = TinyGPT(V, block, C, L, spec.n_head)
    assert spec.n_params == sum(p.numel() for p in model.parameters())
    assert ModelSpec.from_gpt_config(spec, head=True).n_params == spec.n_params + C + 1


@needs_model
def test_toy_preset_is_the_package_gpt():
    cfg = GPTConfig()
    assert ModelSpec.from_gpt_config(cfg, name="toy") == ModelSpec.preset("toy")
    assert ModelSpec.from_gpt_config(cfg).n_params == GPT(cfg).num_params()


def test_preset_sizes():
    assert ModelSpec.preset("gpt2").n_params == 124_439_808  # GPT-2 small, tied head
    for name, n in [("llama-7b", 6.74e9), ("llama-13b", 13.0e9), ("llama-70b", 69.0e9)]:
        assert ModelSpec.preset(name).n_params == pytest.approx(n, rel=2e-3)
    assert ModelSpec.preset("llama-70b").n_kv_head == 8
    assert parse_model("7e9").n_params == 7e9 and parse_model("7e9").n_layer == 32


# ---------------------------------------------------------------- the chapter's table


@pytest.mark.parametrize("name, scale", [("llama-7b", 1), ("llama-70b", 10)])
def test_chapter_table(name, scale):
    bd = memory_breakdown(ModelSpec.preset(name), assumptions="chapter")
    for role in ("actor", "critic", "reward", "reference"):
        assert bd.roles[role].weights == 14e9 * scale  # FP16, round 7e9 (70e9) params
    items = bd.item_totals()
    assert items["optimizer_states"] == 56e9 * scale
    assert items["activations"] == 20e9 * scale
    assert bd.total_bytes == 132e9 * scale and bd.total_gb == 132 * scale  # "~130 GB", "~1.3 TB"


def test_precise_is_36_bytes_per_param_for_four_equal_models():
    spec = ModelSpec.preset("llama-7b")
    bd = memory_breakdown(spec)
    psi, head = spec.n_params, spec.n_embd + 1
    assert sum(states(r) for r in bd.roles.values()) == 16 * psi + 16 * (psi + head) + 2 * (
        psi + head) + 2 * psi
    assert bd.roles["actor"].master_weights == 4 * psi and bd.roles["reward"].gradients == 0
    assert bd.total_bytes > memory_breakdown(spec, assumptions="chapter").total_bytes


# ---------------------------------------------------------------- checked against reality


def test_fp32_prediction_equals_real_tensors_after_one_adamw_step():
    torch.manual_seed(0)
    spec = ModelSpec.preset("toy")
    model = TinyGPT(spec.vocab_size, spec.block_size, spec.n_embd, spec.n_layer, spec.n_head)
    idx = torch.randint(0, spec.vocab_size, (2, 16))
    loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    params = list(model.parameters())
    weights, grads, moments = adamw_step(params, loss)
    actor = memory_breakdown(spec, precision="fp32").roles["actor"]
    assert (actor.weights, actor.gradients, actor.optimizer_states) == (weights, grads, moments)
    assert actor.master_weights == 0


@needs_model
@pytest.mark.parametrize("mode", ["separate", "shared", "head"])
def test_fp32_prediction_equals_the_package_roles(mode):
    from rlhf_edu.models import RewardModel, build_models

    torch.manual_seed(0)
    models = build_models(mode, sft=GPT(GPTConfig()), reward=RewardModel(GPT(GPTConfig())),
                          critic_init="sft")
    bd = memory_breakdown(ModelSpec.preset("toy"), critic=mode, precision="fp32")
    trainable = models.trainable_parameters()
    for role, module in models.roles().items():
        assert bd.roles[role].weights == tensor_bytes(module.parameters()), role
    for role in ("actor", "critic"):
        params = trainable[role]
        assert bd.roles[role].trainable_params == sum(p.numel() for p in params)
        _, grads, moments = adamw_step(params, sum((p * p).sum() for p in params))
        assert (bd.roles[role].gradients, bd.roles[role].optimizer_states) == (grads, moments)


@needs_model
def test_kv_cache_equals_the_package_cache():
    cfg = GPTConfig()
    cache = KVCache(cfg, batch=5, max_len=cfg.block_size, device="cpu")
    GPT(cfg).body(torch.zeros(5, 1, dtype=torch.long), cache=cache)  # allocates at first write
    assert cache.k.dtype == torch.float32
    bd = memory_breakdown(ModelSpec.from_gpt_config(cfg), batch=5, prompt_len=16,
                          response_len=cfg.block_size - 16, precision="fp32")
    assert bd.roles["actor"].kv_cache == tensor_bytes([cache.k, cache.v])


def test_kv_cache_uses_kv_heads_and_logits_are_fp32():
    spec = ModelSpec.preset("llama-70b")
    bd = memory_breakdown(spec, batch=4, micro_batch=2, prompt_len=100, response_len=28)
    assert bd.roles["actor"].kv_cache == 2 * 80 * (8 * 128) * 128 * 4 * 2
    assert bd.roles["reference"].logits == 2 * 128 * 32000 * 4
    assert bd.roles["critic"].logits == bd.roles["critic"].kv_cache == 0


def test_activations_follow_korthikanti_and_checkpointing_saves():
    spec = ModelSpec.preset("llama-7b")
    s, b, h, a, L = 1024, 2, 4096, 32, 32
    full = memory_breakdown(spec, micro_batch=b, prompt_len=512, response_len=512)
    ckpt = memory_breakdown(spec, micro_batch=b, prompt_len=512, response_len=512,
                            activation_checkpointing=True)
    assert full.roles["actor"].activations == pytest.approx(L * s * b * h * (34 + 5 * a * s / h))
    assert ckpt.roles["actor"].activations == L * 2 * s * b * h
    assert ckpt.item_totals()["activations"] < full.item_totals()["activations"]


# ---------------------------------------------------------------- ZeRO vs DeepSpeed's estimators


def deepspeed_gpu_bytes(stage: int, psi: float, L: float, n: int, offload: bool) -> float:
    """estimate_zero2_model_states_mem_needs / estimate_zero3_... (zero_init, no param offload),
    and the ZeRO paper's P_os for stage 1; mixed-precision Adam."""
    if stage == 0:
        return 16 * psi
    if offload:
        return 2 * psi if stage < 3 else 4 * L + int(2 * psi / n)
    return {1: 4 * psi + 12 * psi / n, 2: 4 * psi + int(16 * psi / n),
            3: 4 * L + int(18 * psi / n)}[stage]


@pytest.mark.parametrize("n", [1, 2, 8, 64])
@pytest.mark.parametrize("stage, offload", [(0, False), (1, False), (2, False), (3, False),
                                            (1, True), (2, True), (3, True)])
def test_zero_matches_deepspeed(stage, offload, n):
    psi, L = 6_738_415_616, 131_072_000
    got = model_states_bytes(psi, L, stage, n, offload)
    assert sum(got[k] for k in STATES) == pytest.approx(deepspeed_gpu_bytes(stage, psi, L, n,
                                                                            offload), abs=1)
    spec = ModelSpec.preset("llama-7b")
    actor = memory_breakdown(spec, n, stage, offload=offload).roles["actor"]
    assert spec.largest_layer == L and states(actor) == pytest.approx(sum(
        got[k] for k in STATES))
    if offload:
        assert got["cpu"] == pytest.approx(16 * psi / n)  # master + Adam + fp32 grads


def test_more_gpus_means_less_per_gpu_memory_under_zero3():
    spec = ModelSpec.preset("llama-70b")
    per_gpu = [memory_breakdown(spec, n, 3).per_gpu_bytes for n in (1, 2, 4, 8, 16, 64)]
    assert all(a > b for a, b in zip(per_gpu, per_gpu[1:], strict=False))


def test_lora_trains_a_fraction_and_keeps_the_base_frozen():
    spec, r = ModelSpec.preset("llama-7b"), 0.01
    actor = memory_breakdown(spec, lora_fraction=r).roles["actor"]
    n = round(r * spec.n_params)
    assert actor.trainable_params == n
    assert (actor.gradients, actor.optimizer_states, actor.master_weights) == (2 * n, 8 * n, 4 * n)
    assert actor.weights == 2 * spec.n_params + 2 * n


def test_critic_sharing_and_split_placement():
    spec = ModelSpec.preset("llama-7b")
    C = spec.n_embd
    assert memory_breakdown(spec, critic="shared").roles["critic"].trainable_params == C + 1
    head = memory_breakdown(spec, critic="head").roles["critic"]
    assert head.trainable_params == C * C + 2 * C + 1
    small = ModelSpec.preset("gpt2").with_head()
    bd = memory_breakdown(spec, critic_spec=small, reward_spec=small)
    assert bd.roles["critic"].n_params == bd.roles["reward"].n_params == small.n_params
    split = memory_breakdown(spec, 8, 3, placement="split", frozen_gpus=2)
    groups = split.group_bytes()
    assert split.roles["actor"].gpus == 6 and split.roles["reward"].gpus == 2
    assert split.per_gpu_bytes == max(groups.values())
    assert groups["frozen"] == split.roles["reward"].total + split.roles["reference"].total
    best = memory_breakdown(spec, 8, 3, placement="split")
    assert best.per_gpu_bytes == min(memory_breakdown(spec, 8, 3, placement="split",
                                                      frozen_gpus=k).per_gpu_bytes
                                     for k in range(1, 8))


# ---------------------------------------------------------------- three accountings of ZeRO

PSI, LAYER = 6_738_415_616, 131_072_000  # Llama-2-7B: parameters, largest layer (embedding)


def paper_bytes(stage: int, psi: float, n: int) -> float:
    """The ZeRO paper, mixed-precision Adam: 2 + 2 + K with K = 12, no buffers."""
    weights = 2 * psi / (n if stage >= 3 else 1)
    grads = 2 * psi / (n if stage >= 2 else 1)
    return weights + grads + 12 * psi / (n if stage >= 1 else 1)


def fsdp2_bytes(stage: int, psi: float, block: float, n: int) -> float:
    """fully_shard with a bf16 MixedPrecisionPolicy: fp32 params, grads and AdamW sharded,
    the bf16 gathered copies (one block, or the whole model at "ZeRO-2")."""
    if stage == 0:
        return 4 * psi + 4 * psi + 8 * psi
    gathered = 2 * block if stage == 3 else 2 * psi
    return (4 * psi / n + gathered) + (4 * psi / n + 2 * block) + 8 * psi / n


@pytest.mark.parametrize("n", [1, 2, 8, 64])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_accounting_equals_its_formula(stage, n):
    spec = ModelSpec.preset("llama-7b")
    block = (PSI - 32000 * 4096) / 32
    assert spec.block_params == block
    want = {"deepspeed": deepspeed_gpu_bytes(stage, PSI, LAYER, n, False),
            "paper": paper_bytes(stage, PSI, n)}
    if stage != 1:
        want["fsdp2"] = fsdp2_bytes(stage, PSI, block, n)
    for accounting, expected in want.items():
        unit = block if accounting == "fsdp2" else LAYER
        got = model_states_bytes(PSI, unit, stage, n, accounting=accounting)
        assert sum(got[k] for k in STATES) == pytest.approx(expected, abs=1), accounting
        actor = memory_breakdown(spec, n, stage, accounting=accounting).roles["actor"]
        assert states(actor) == pytest.approx(expected, abs=1), accounting
    fsdp = model_states_bytes(PSI, block, stage, n, accounting="fsdp2") if stage != 1 else None
    if fsdp:  # no separate master copy: the sharded fp32 parameters are the master weights
        assert fsdp["master_weights"] == 0 and fsdp["optimizer_states"] == 8 * PSI / (
            n if stage else 1)


def test_paper_never_rises_with_stage_or_gpus_and_deepspeed_buffers_can():
    spec = ModelSpec.preset("llama-7b")
    gpus = (1, 2, 4, 8, 16)
    per_gpu = {(z, n): memory_breakdown(spec, n, z, accounting="paper").per_gpu_bytes
               for z in range(4) for n in gpus}
    for z in range(4):
        for a, b in zip(gpus, gpus[1:]):
            assert per_gpu[z, b] <= per_gpu[z, a] and (z == 0 or per_gpu[z, b] < per_gpu[z, a])
    for n in gpus:
        for z in range(3):
            assert per_gpu[z + 1, n] <= per_gpu[z, n]
    ds = {(z, n): memory_breakdown(spec, n, z).per_gpu_bytes for z, n in
          [(0, 1), (1, 8), (2, 8), (2, 1), (3, 1)]}
    assert ds[2, 8] > ds[1, 8] and ds[2, 1] > ds[0, 1] and ds[3, 1] > ds[0, 1]
    # the default keeps the chapter's ZeRO table (DeepSpeed's estimators)
    assert memory_breakdown(spec, 8, 2).per_gpu_bytes == memory_breakdown(
        spec, 8, 2, accounting="deepspeed").per_gpu_bytes


def test_offload_in_each_accounting():
    p, block, n = 1e9, 1e7, 8
    paper = model_states_bytes(p, 0, 2, n, offload=True, accounting="paper")
    assert (paper["weights"], paper["cpu"]) == (2 * p, 14 * p / n)  # ZeRO-Offload
    fsdp = model_states_bytes(p, block, 3, n, offload=True, accounting="fsdp2")
    assert (fsdp["weights"], fsdp["gradients"], fsdp["cpu"]) == (2 * block, 2 * block, 16 * p / n)


def chunk_numels(shape, world):
    """Per-rank numel of a real tensor split by torch.chunk along dim 0 (FSDP2's Shard(0))."""
    chunks = list(torch.chunk(torch.empty(shape), world, dim=0))
    return [c.numel() for c in chunks] + [0] * (world - len(chunks))


UNEVEN = [(5, 3), (7,), (3, 2, 2), (64, 16), (1, 9), (10, 4), (6, 1)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_fsdp2_local_bytes_follows_torch_chunk(world):
    total = sum(math.prod(s) for s in UNEVEN)
    seen = 0
    for rank in range(world):
        got = fsdp2_local_bytes(UNEVEN, world, rank)
        numel = sum(chunk_numels(s, world)[rank] for s in UNEVEN)
        assert got == {"weights": 4 * numel, "gradients": 4 * numel,
                       "optimizer_states": 8 * numel, "numel": numel}
        padded = fsdp2_local_bytes(UNEVEN, world, rank, padded=True, param_bytes=2)
        rows = sum(-(-s[0] // world) * math.prod(s[1:]) for s in UNEVEN)
        assert (padded["weights"], padded["optimizer_states"]) == (2 * rows, 8 * numel)
        seen += numel
    assert seen == total  # the shards add up to the model, padding excluded
    assert [fsdp2_chunk_rows(5, 4, r) for r in range(4)] == [2, 2, 1, 0]  # the last gets none


def test_fsdp2_local_bytes_of_even_shapes_is_the_calculators_16_psi_over_n():
    shapes = [(64, 128), (48, 128), (384, 128), (384,), (128, 128), (512, 128), (128,)]
    psi = sum(math.prod(s) for s in shapes)
    ranks = [fsdp2_local_bytes(shapes, 4, r) for r in range(4)]
    states = model_states_bytes(psi, 0, 3, 4, accounting="fsdp2")
    assert all(r["weights"] + r["gradients"] == 8 * psi / 4 for r in ranks)
    assert ranks[0]["optimizer_states"] == states["optimizer_states"]


# ---------------------------------------------------------------- tensor and pipeline parallelism


def test_tp_and_pp_divide_the_model_states():
    spec = ModelSpec.preset("llama-70b")
    base = memory_breakdown(spec, 8, 1, lora_fraction=0.01)
    for tp, pp in [(2, 1), (8, 1), (1, 4), (2, 4)]:
        bd = memory_breakdown(spec, 8, 1, lora_fraction=0.01, tp=tp, pp=pp)
        dp = 8 // (tp * pp)
        n = round(0.01 * spec.n_params)
        actor = bd.roles["actor"]
        assert actor.weights == pytest.approx((2 * spec.n_params + 2 * n) / (tp * pp))
        assert actor.gradients == pytest.approx(2 * n / (tp * pp))
        assert actor.optimizer_states == pytest.approx(8 * n / (tp * pp) / dp)  # ZeRO over dp
        assert bd.roles["reference"].weights == pytest.approx(2 * spec.n_params / (tp * pp))
        assert bd.per_gpu_bytes < base.per_gpu_bytes


def test_tp_activations_keep_the_replicated_part_unless_sequence_parallel():
    spec = ModelSpec.preset("llama-7b")
    s, b, h, a, L, t = 1024, 2, 4096, 32, 32, 4
    kw = dict(micro_batch=b, prompt_len=512, response_len=512, tp=t, n_gpus=4)
    tp = memory_breakdown(spec, **kw).roles["actor"].activations
    sp = memory_breakdown(spec, sequence_parallel=True, **kw).roles["actor"].activations
    assert tp == pytest.approx(L * s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    assert sp == pytest.approx(L * s * b * h * (34 + 5 * a * s / h) / t)
    ckpt = memory_breakdown(spec, activation_checkpointing=True, **kw).roles["actor"]
    assert ckpt.activations == L * 2 * s * b * h  # layer inputs: replicated without SP


def test_pp_first_stage_holds_the_micro_batches_in_flight():
    spec = ModelSpec.preset("llama-7b")
    one = memory_breakdown(spec, 8, 1, batch=16, micro_batch=2).roles["actor"].activations
    # 8 micro-batches: 1F1B keeps pp of them, each over n_layer / pp layers: no saving
    for pp in (2, 4, 8):
        bd = memory_breakdown(spec, 8, 1, batch=16, micro_batch=2, pp=pp)
        assert bd.roles["actor"].activations == pytest.approx(one)
        assert bd.roles["actor"].kv_cache == pytest.approx(
            memory_breakdown(spec, 8, 1, batch=16).roles["actor"].kv_cache / pp)
    few = memory_breakdown(spec, 8, 1, batch=4, micro_batch=2, pp=8).roles["actor"]
    assert few.activations == pytest.approx(
        memory_breakdown(spec, 8, 1, batch=4, micro_batch=2).roles["actor"].activations * 2 / 8)


def test_tp_splits_kv_heads_and_vocabulary():
    spec = ModelSpec.preset("llama-70b")  # 8 kv heads of 128
    kw = dict(batch=4, micro_batch=2, prompt_len=100, response_len=28, n_gpus=8)
    for tp, heads in [(1, 8), (4, 2), (8, 1)]:
        bd = memory_breakdown(spec, tp=tp, **kw)
        assert bd.roles["actor"].kv_cache == 2 * 80 * heads * 128 * 128 * 4 * 2
        assert bd.roles["reference"].logits == 2 * 128 * 32000 // tp * 4
    small = ModelSpec("m", 2, 64, 8, 10, n_kv_head=2)  # tp 4 > 2 kv heads: one per GPU
    assert memory_breakdown(small, 4, tp=4, batch=1, prompt_len=4, response_len=4).roles[
        "actor"].kv_cache == 2 * 2 * 1 * 8 * 8 * 1 * 2


# ---------------------------------------------------------------- generation engine, methods


def test_generation_engine_7b_by_hand():
    spec = ModelSpec.preset("llama-7b")
    bd = memory_breakdown(spec, generation_engine=True, rollout_batch=64, prompt_len=256,
                          response_len=256)
    engine = bd.roles["generation"]
    # 2 (K, V) x 32 layers x 64 sequences x 512 tokens x 4096 hidden x 2 bytes = 17.18 GB
    assert engine.kv_cache == 2 * 32 * 64 * 512 * 4096 * 2 == 17_179_869_184
    assert engine.weights == 2 * 6_738_415_616 and engine.gradients == 0
    assert bd.roles["actor"].kv_cache == 0  # the engine generates, the actor only trains
    fp8 = memory_breakdown(spec, generation_engine=True, rollout_batch=64, kv_dtype_bytes=1)
    assert fp8.roles["generation"].kv_cache == 17_179_869_184 / 2
    plain = memory_breakdown(spec)
    assert bd.per_gpu_bytes - plain.per_gpu_bytes == pytest.approx(
        engine.total - plain.roles["actor"].kv_cache)
    gqa = memory_breakdown(ModelSpec.preset("llama-70b"), 8, tp=8, generation_engine=True,
                           rollout_batch=32, prompt_len=512, response_len=512)
    assert gqa.roles["generation"].kv_cache == 2 * 80 * 1 * 128 * 1024 * 32 * 2


def test_critic_free_is_ppo_minus_the_critic_and_dpo_has_two_models():
    spec = ModelSpec.preset("llama-7b")
    ppo, grpo = memory_breakdown(spec), memory_breakdown(spec, critic="none")
    assert list(grpo.roles) == ["actor", "reward", "reference"]
    assert grpo.total_bytes == pytest.approx(ppo.total_bytes - ppo.roles["critic"].total)
    for role in grpo.roles:
        assert grpo.roles[role] == ppo.roles[role], role
    dpo = memory_breakdown(spec, method="dpo")
    assert list(dpo.roles) == ["actor", "reference"] and dpo.critic == "none"
    assert dpo.roles["actor"].kv_cache == 0
    pairs = memory_breakdown(spec, micro_batch=4)  # 2 pairs = 4 sequences per forward
    assert dpo.roles["actor"].activations == pairs.roles["actor"].activations
    assert dpo.roles["reference"].logits == pairs.roles["reference"].logits
    assert dpo.per_gpu_bytes < grpo.per_gpu_bytes < ppo.per_gpu_bytes


def test_plan_tries_tp_and_pp_and_methods():
    spec = ModelSpec.preset("llama-70b")
    rows = plan(spec, n_gpus=8, gpu_mem_gb=80, cpu_mem_gb=1000)
    degrees = {(r.tp, r.pp) for r in rows}
    assert {(1, 1), (8, 1)} <= degrees and any(p > 1 for _, p in degrees)
    assert all(r.per_gpu_bytes <= 80 * GB and r.cpu_bytes <= 1000 * GB for r in rows)
    assert all(8 % (r.tp * r.pp) == 0 and r.tp <= 8 for r in rows)
    assert not any(r.pp > 1 and r.zero_stage >= 2 for r in rows)  # DeepSpeed's pipeline: ZeRO-1
    fixed = plan(spec, n_gpus=8, gpu_mem_gb=80, cpu_mem_gb=1000, tp=8, pp=1)
    assert fixed and all((r.tp, r.pp) == (8, 1) for r in fixed)
    assert " tp " in format_plan(fixed).splitlines()[0]
    grpo = plan(spec, n_gpus=8, gpu_mem_gb=80, cpu_mem_gb=1000, critic_modes=("none",))
    assert len(grpo) > len([r for r in rows if r.critic == "separate"])
    assert all("critic" not in r.roles for r in grpo)
    dpo = plan(ModelSpec.preset("llama-7b"), n_gpus=8, gpu_mem_gb=80, method="dpo",
               accounting="paper")
    assert dpo[0].lora_fraction is None and all(list(r.roles) == ["actor", "reference"]
                                                for r in dpo)
    engine = plan(spec, n_gpus=8, gpu_mem_gb=80, generation_engine=True, rollout_batch=64)
    assert engine and all("generation" in r.roles for r in engine)


# ---------------------------------------------------------------- 70B on 8 x 80 GB


def test_plan_70b_on_8x80():
    spec = ModelSpec.preset("llama-70b")
    rows = plan(spec, n_gpus=8, gpu_mem_gb=80)
    assert rows and all(r.per_gpu_bytes <= 80 * GB for r in rows)
    assert memory_breakdown(spec, 8, 0).per_gpu_bytes > 80 * GB
    assert not any(r.zero_stage == 0 and r.lora_fraction is None and r.placement == "colocate"
                   for r in rows)
    # 36 B/param x 69e9 = 2.5 TB > 640 GB: full fine-tuning fits only with the optimizer offloaded
    assert all(r.offload for r in rows if r.lora_fraction is None)
    assert memory_breakdown(spec, 8, 3, activation_checkpointing=True).per_gpu_bytes > 80 * GB
    with_ram = plan(spec, n_gpus=8, gpu_mem_gb=80, cpu_mem_gb=1000)
    assert with_ram and all(r.cpu_bytes <= 1000 * GB for r in with_ram)
    assert len(plan(spec, n_gpus=8, gpu_mem_gb=1)) == 0


# ---------------------------------------------------------------- CLI


def cli(argv, capsys):
    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    code = run_memory_cli(parser.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli(capsys):
    code, out, _ = cli(["--chapter"], capsys)
    assert code == 0 and "132.00" in out and "56.00" in out
    code, out, _ = cli(["--model", "llama-70b", "--gpus", "8", "--zero", "3", "--json"], capsys)
    assert code == 0 and json.loads(out)["per_gpu_bytes"] > 0
    code, out, _ = cli(["--model", "llama-70b", "--gpus", "8", "--plan"], capsys)
    assert code == 0 and "configurations fit" in out and "GB/GPU" in out
    code, out, _ = cli(["--model", "toy", "--critic", "head", "--checkpointing"], capsys)
    assert code == 0 and "MB" in out
    code, _, err = cli(["--lora", "1.5"], capsys)
    assert code == 2 and "lora_fraction" in err


def test_cli_parallelism_accounting_engine_and_methods(capsys):
    code, out, _ = cli(["--model", "llama-70b", "--gpus", "8", "--tp", "8", "--zero", "1",
                        "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and (d["tp"], d["pp"]) == (8, 1)
    assert d["per_gpu_bytes"] == memory_breakdown(ModelSpec.preset("llama-70b"), 8, 1,
                                                  tp=8).per_gpu_bytes
    code, out, _ = cli(["--gpus", "8", "--pp", "4", "--accounting", "paper"], capsys)
    assert code == 0 and "paper accounting" in out and "pp 4" in out
    code, out, _ = cli(["--critic", "none", "--generation-engine", "--rollout-batch", "64"],
                       capsys)
    assert code == 0 and "generation" in out and "critic " not in out.splitlines()[2]
    assert "17.18" in out  # the engine's KV cache, GB
    code, out, _ = cli(["--method", "dpo", "--json"], capsys)
    assert code == 0 and list(json.loads(out)["roles"]) == ["actor", "reference"]
    code, out, _ = cli(["--model", "llama-70b", "--gpus", "8", "--plan", "--critic", "none",
                        "--tp", "8", "--cpu-mem", "1000"], capsys)
    assert code == 0 and "configurations fit" in out
    assert all(line.split()[2:4] == ["8", "1"] for line in out.splitlines()[2:] if
               line.strip()[0].isdigit())
    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    assert all(a.help for a in parser._actions)


CLI_BAD = [
    (["--tp", "3"], "tp must divide n_head=32 of llama-7b, got 3"),
    (["--tp", "0"], "tp must be a positive int, got 0"),
    (["--pp", "3", "--gpus", "3"], "pp must divide n_layer=32 of llama-7b, got 3"),
    (["--tp", "2", "--gpus", "3"], "tp x pp = 2 must divide n_gpus=3"),
    (["--tp", "4", "--pp", "2", "--gpus", "4"], "tp x pp = 8 must divide n_gpus=4"),
    (["--pp", "2", "--gpus", "2", "--zero", "2"], "pp=2 needs zero_stage <= 1"),
    (["--accounting", "fsdp2", "--zero", "1"], "accounting='fsdp2' has no ZeRO-1"),
    (["--method", "dpo", "--critic", "shared"], "critic must be 'none', got 'shared'"),
    (["--method", "dpo", "--generation-engine"], "generation_engine must be False"),
    (["--generation-engine", "--rollout-batch", "0"], "rollout_batch must be a positive int"),
    (["--gpus", "4", "--tp", "2", "--placement", "split", "--frozen-gpus", "1"],
     "frozen_gpus must be a multiple of tp x pp = 2, got 1"),
    (["--gpus", "2", "--tp", "2", "--placement", "split"], "needs n_gpus >= 4 (2 x tp x pp)"),
    (["--plan", "--critic", "shared"], "--critic cannot be used with --plan"),
    (["--plan", "--tp", "5"], "tp must divide n_head=32"),
]


@pytest.mark.parametrize("argv, message", CLI_BAD, ids=[m[:30] for _, m in CLI_BAD])
def test_cli_bad_parallelism_is_one_line(argv, message, capsys):
    code, out, err = cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("rlhf-edu memory: error: ") and message in lines[0], lines[0]


# ---------------------------------------------------------------- bad input

SEVEN = ModelSpec.preset("llama-7b")
BAD = [
    (lambda: ModelSpec("m", 0, 64, 4, 10), "n_layer must be a positive int, got 0"),
    (lambda: ModelSpec("m", 2, -64, 4, 10), "n_embd must be a positive int"),
    (lambda: ModelSpec("m", 2, 64, 5, 10), "n_head must divide n_embd=64, got 5"),
    (lambda: ModelSpec("m", 2, 64, 4, 10, n_kv_head=3), "n_kv_head must divide n_head=4"),
    (lambda: ModelSpec("m", 2, 64, 4, 10, n_params=-1), "n_params must be a positive int"),
    (lambda: ModelSpec.preset("llama-8b"), "preset must be one of"),
    (lambda: parse_model("big"), "model must be one of"),
    (lambda: memory_breakdown(SEVEN, zero_stage=4), "zero_stage must be one of 0, 1, 2, 3, got 4"),
    (lambda: memory_breakdown(SEVEN, lora_fraction=0.0), "lora_fraction must be in (0, 1]"),
    (lambda: memory_breakdown(SEVEN, lora_fraction=1.5), "lora_fraction must be in (0, 1]"),
    (lambda: memory_breakdown(SEVEN, critic="big"), "critic must be one of"),
    (lambda: memory_breakdown(SEVEN, placement="rack"), "placement must be one of"),
    (lambda: memory_breakdown(SEVEN, assumptions="seed"), "assumptions must be one of"),
    (lambda: memory_breakdown(SEVEN, precision="fp8"), "precision must be one of"),
    (lambda: memory_breakdown(SEVEN, n_gpus=0), "n_gpus must be a positive int, got 0"),
    (lambda: memory_breakdown(SEVEN, batch=-2), "batch must be a positive int, got -2"),
    (lambda: memory_breakdown(SEVEN, micro_batch=0), "micro_batch must be a positive int"),
    (lambda: memory_breakdown(SEVEN, prompt_len=0), "prompt_len must be a positive int"),
    (lambda: memory_breakdown(SEVEN, response_len=-1), "response_len must be a positive int"),
    (lambda: memory_breakdown(SEVEN, prompt_len=4000, response_len=200), "block_size=4096"),
    (lambda: memory_breakdown(SEVEN, dtype_bytes=0), "dtype_bytes must be a positive int"),
    (lambda: memory_breakdown(SEVEN, 1, 0, offload=True), "offload needs zero_stage >= 1"),
    (lambda: memory_breakdown(SEVEN, placement="split"), "needs n_gpus >= 2, got 1"),
    (lambda: memory_breakdown(SEVEN, 4, placement="split", frozen_gpus=4), "frozen_gpus must be"),
    (lambda: memory_breakdown(SEVEN, critic="shared", critic_spec=SEVEN), "critic_spec needs"),
    (lambda: memory_breakdown(SEVEN, 4, frozen_gpus=2), "frozen_gpus needs placement='split'"),
    (lambda: memory_breakdown(SEVEN, 8, assumptions="chapter"), "n_gpus must be 1, got 8"),
    (lambda: plan(SEVEN, gpu_mem_gb=0), "gpu_mem_gb must be > 0"),
    (lambda: memory_breakdown(SEVEN, accounting="megatron"), "accounting must be one of"),
    (lambda: memory_breakdown(SEVEN, method="kto"),
     "method must be one of 'online', 'verifier', 'dpo'"),
    (lambda: memory_breakdown(SEVEN, tp=2.0), "tp must be a positive int, got 2.0 (float)"),
    (lambda: memory_breakdown(SEVEN, 2, tp=2, critic_spec=ModelSpec.preset("gpt2-xl")),
     "tp must divide n_head=25 of gpt2-xl, got 2"),
    (lambda: memory_breakdown(ModelSpec("m", 2, 96, 12, 10, n_kv_head=4), 6, tp=6),
     "tp must divide n_kv_head=4 of m or be a multiple of it, got 6"),
    (lambda: memory_breakdown(SEVEN, generation_engine="yes"), "generation_engine must be True"),
    (lambda: memory_breakdown(SEVEN, method="dpo", reward_spec=SEVEN), "reward_spec must be"),
    (lambda: memory_breakdown(SEVEN, tp=2, assumptions="chapter"), "tp must be 1, got 2"),
    (lambda: memory_breakdown(SEVEN, critic="none", critic_spec=SEVEN), "critic_spec needs"),
    (lambda: model_states_bytes(1e9, 0, 1, 8, accounting="fsdp2"), "no ZeRO-1"),
    (lambda: plan(SEVEN, tp=0), "tp must be a positive int or None, got 0"),
    (lambda: plan(SEVEN, method="dpo", critic_modes=("shared",)), "critic_modes must be"),
    (lambda: plan(SEVEN, critic_modes=("tiny",)), "(or ('none',) for a critic-free method)"),
    (lambda: fsdp2_local_bytes([(4, 2), ()], 2, 0), "shapes[1] must be a non-empty tuple"),
    (lambda: fsdp2_local_bytes([(4, 2)], 2, 2), "rank must be an int in [0, 1], got 2"),
    (lambda: fsdp2_local_bytes([(0, 2)], 2, 0), "shapes[0] must be a non-empty tuple"),
    (lambda: fsdp2_local_bytes((4, 2), 2, 0), "shapes[0] must be a non-empty tuple"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_names_the_field(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_gb_is_decimal():
    assert GB == 1e9 and math.isclose(memory_breakdown(SEVEN).per_gpu_gb * GB,
                                      memory_breakdown(SEVEN).per_gpu_bytes)


@needs_model
@pytest.mark.parametrize("mode", ["separate", "shared", "head"])
def test_mixed_prediction_equals_a_bf16_trainer_after_a_step(mode):
    """What stays resident between steps of a ``precision="bf16"`` run (the GPU's default path,
    run here on CPU) is what the calculator's model states predict, byte for byte: fp32 weights
    (4) + fp32 grads (4) + Adam (8) equal its bf16 weights (2) + grads (2) + master (4) + Adam
    (8) per trained parameter, and the frozen models hold 2 bytes per parameter."""
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    trainer = RLHFTrainer(PPOConfig(batch_size=4, response_len=6, ppo_epochs=1, minibatches=1,
                                    critic_mode=mode, precision="bf16"))
    trainer.step()
    bd = memory_breakdown(ModelSpec.preset("toy"), critic=mode, precision="mixed")
    m = trainer.models
    for role in ("reward", "reference"):
        assert states(bd.roles[role]) == tensor_bytes(getattr(m, role).parameters()), role
    for role, opt in (("actor", trainer.actor_opt), ("critic", trainer.critic_opt)):
        params = [p for g in opt.param_groups for p in g["params"]]
        adam = [opt.state[p][k] for p in params for k in ("exp_avg", "exp_avg_sq")]
        real = tensor_bytes(params) + tensor_bytes(p.grad for p in params) + tensor_bytes(adam)
        assert states(bd.roles[role]) == real, role


# ---------------------------------------------------------------- communication across nodes


def _rows(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_communication_zero3_two_nodes_by_hand():
    psi = SEVEN.n_params  # 6,738,415,616
    rows = communication(SEVEN, nodes=2, gpus_per_node=8, zero_stage=3)
    gathers = _rows(rows, role="actor", collective="all-gather")
    assert [r["phase"] for r in gathers] == ["rollout", "forward", "backward"]
    for r in gathers:  # one gather of bf16 weights: S = 2 B x psi; ring: 15/16 of it per GPU
        assert r["size_bytes"] == 2 * psi
        assert r["sent_per_gpu"] == pytest.approx(15 / 16 * 2 * psi, rel=1e-12)
        assert r["inter_node_per_node"] == pytest.approx(1 / 2 * 2 * psi, rel=1e-12)
        assert r["inter_node_per_gpu"] == pytest.approx(1 / 16 * 2 * psi, rel=1e-12)
        assert r["intra_node_per_gpu"] == pytest.approx(7 / 8 * 2 * psi, rel=1e-12)
        # 6.74 GB over 50 GB/s per node, then 11.79 GB over NVLink at 450 GB/s
        assert r["seconds"] == pytest.approx(psi / 50e9 + 7 / 4 * psi / 450e9, rel=1e-12)
        assert r["inter_node_per_gpu"] + r["intra_node_per_gpu"] == pytest.approx(
            r["sent_per_gpu"], rel=1e-12)  # hierarchical moves what the ring moves
    (rs,) = _rows(rows, role="actor", collective="reduce-scatter")
    assert rs["sent_per_gpu"] == pytest.approx(15 / 16 * 2 * psi, rel=1e-12)
    frozen = [r for r in rows if r["role"] in ("reward", "reference")]
    assert [(r["role"], r["collective"]) for r in frozen] == [("reward", "all-gather"),
                                                             ("reference", "all-gather")]
    critic = SEVEN.n_params + SEVEN.n_embd + 1
    assert all(r["size_bytes"] == 2 * critic for r in _rows(rows, role="critic"))
    assert len(rows) == 10


def test_communication_ddp_and_zero12():
    psi = SEVEN.n_params
    ddp = communication(SEVEN, 2, 8, 0, updates=8)
    assert [(r["role"], r["collective"]) for r in ddp] == [("actor", "all-reduce"),
                                                          ("critic", "all-reduce")]
    a = ddp[0]  # ring all-reduce: 2 (N - 1) / N x S per GPU, hierarchical 2 (n - 1) / n x S
    assert a["times"] == 8
    assert a["sent_per_gpu"] == pytest.approx(8 * 2 * 15 / 16 * 2 * psi, rel=1e-12)
    assert a["inter_node_per_node"] == pytest.approx(8 * 2 * 1 / 2 * 2 * psi, rel=1e-12)
    for stage in (1, 2):  # reduce-scatter + all-gather moves what one all-reduce moves
        rows = _rows(communication(SEVEN, 2, 8, stage), role="actor")
        assert [r["collective"] for r in rows] == ["reduce-scatter", "all-gather"]
        assert sum(r["sent_per_gpu"] for r in rows) == pytest.approx(
            ddp[0]["sent_per_gpu"] / 8, rel=1e-12)
    fp32 = communication(SEVEN, 2, 8, 0, precision="fp32")
    assert fp32[0]["size_bytes"] == 4 * psi


def test_communication_roles_follow_the_method():
    assert {r["role"] for r in communication(SEVEN, 2, 8, 3, critic="none")} == {
        "actor", "reward", "reference"}
    dpo = communication(SEVEN, 2, 8, 3, method="dpo")
    assert [(r["role"], r["phase"]) for r in dpo] == [
        ("actor", "forward"), ("actor", "backward"), ("actor", "gradients"),
        ("reference", "forward")]
    shared = _rows(communication(SEVEN, 2, 8, 0, critic="shared"), role="critic")
    assert shared[0]["size_bytes"] == 2 * (SEVEN.n_embd + 1)


def test_communication_with_lora_reduces_only_the_adapters():
    psi, r = SEVEN.n_params, 0.01
    adapters = round(r * psi)
    rows = communication(SEVEN, 2, 8, 3, lora_fraction=r, critic="shared")
    actor = {x["phase"]: x["size_bytes"] for x in _rows(rows, role="actor")}
    assert actor == {"rollout": 2 * (psi + adapters), "forward": 2 * (psi + adapters),
                     "backward": 2 * (psi + adapters), "gradients": 2 * adapters}
    head = _rows(rows, role="critic", phase="gradients")[0]  # a head trains in full
    assert head["size_bytes"] == 2 * (SEVEN.n_embd + 1)
    ddp = communication(SEVEN, 2, 8, 0, lora_fraction=r)
    assert [x["size_bytes"] for x in ddp] == [2 * adapters, 2 * round(r * (psi + 4097))]
    with pytest.raises(ValueError, match=r"lora_fraction must be in \(0, 1\], got 2"):
        communication(SEVEN, 2, 8, lora_fraction=2)


def test_one_node_has_no_inter_node_traffic_and_more_nodes_send_more():
    for stage in (0, 1, 2, 3):
        one = communication(SEVEN, 1, 8, stage)
        assert all(r["inter_node_per_node"] == 0 for r in one)
        previous = [0.0] * len(one)
        for nodes in (1, 2, 4, 8, 64):
            rows = communication(SEVEN, nodes, 8, stage)
            assert len(rows) == len(one)
            for i, r in enumerate(rows):
                assert r["inter_node_per_node"] >= previous[i]
                assert r["sent_per_gpu"] > 0 and r["seconds"] > 0
                previous[i] = r["inter_node_per_node"]
            assert previous[0] > 0 or nodes == 1
    assert communication(SEVEN, 1, 1, 3)[0]["sent_per_gpu"] == 0  # one GPU: nothing to send
    slow = communication(SEVEN, 2, 8, 3, inter_bw_gbs=5)[0]["seconds"]
    assert slow > communication(SEVEN, 2, 8, 3)[0]["seconds"]


COMM_BAD = [
    (dict(nodes=0), "nodes must be a positive int, got 0"),
    (dict(nodes=2.0), "nodes must be a positive int, got 2.0 (float)"),
    (dict(gpus_per_node=-8), "gpus_per_node must be a positive int, got -8"),
    (dict(zero_stage=4), "zero_stage must be one of 0, 1, 2, 3, got 4"),
    (dict(updates=0), "updates must be a positive int, got 0"),
    (dict(inter_bw_gbs=0.0), "inter_bw_gbs must be in [0.001, 1e+06], got 0.0"),
    (dict(inter_bw_gbs=1e-320), "inter_bw_gbs must be in [0.001, 1e+06], got 1e-320"),
    (dict(intra_bw_gbs=float("nan")), "intra_bw_gbs must be in [0.001, 1e+06], got nan"),
    (dict(intra_bw_gbs=1e308), "intra_bw_gbs must be in [0.001, 1e+06], got 1e+308"),
    (dict(critic="big"), "critic must be one of"),
    (dict(method="dpo", critic="separate"), "method='dpo' trains no critic"),
    (dict(precision="fp8"), "precision must be one of"),
]


@pytest.mark.parametrize("kw, message", COMM_BAD, ids=[m[:30] for _, m in COMM_BAD])
def test_communication_bad_input_is_one_line(kw, message):
    with pytest.raises(ValueError) as e:
        communication(SEVEN, **{"nodes": 2, "gpus_per_node": 8, **kw})
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="spec must be a ModelSpec"):
        communication("llama-7b")


def test_cli_nodes(capsys):
    code, out, _ = cli(["--nodes", "2", "--gpus-per-node", "8", "--zero", "3"], capsys)
    assert code == 0 and "16 GPU(s)" in out and "per node: 286.22 GB (8 GPUs x 35.78 GB)" in out
    assert "inter/node" in out and format_communication(communication(SEVEN, 2, 8, 3)) in out
    code, out2, _ = cli(["--nodes", "2", "--gpus", "16", "--zero", "3"], capsys)
    assert out2 == out  # --gpus-per-node defaults to --gpus / --nodes
    code, out, _ = cli(["--nodes", "2", "--json", "--updates", "8", "--inter-bw", "400"], capsys)
    d = json.loads(out)
    assert code == 0 and d["n_gpus"] == 16 and d["nodes"] == 2 and d["gpus_per_node"] == 8
    assert d["communication"] == communication(SEVEN, 2, 8, 0, updates=8, inter_bw_gbs=400)
    code, out, _ = cli(["--gpus", "16", "--zero", "3"], capsys)
    assert code == 0 and "per node" not in out  # without node flags: the breakdown alone
    code, out, _ = cli(["--model", "llama-70b", "--nodes", "2", "--plan", "--tp", "2"], capsys)
    assert code == 0 and "on 2 nodes x 8 x 80 GB" in out and "per node: GB/GPU x 8" in out
    code, out, _ = cli(["--model", "llama-70b", "--nodes", "2", "--zero", "3", "--lora",
                        "0.01", "--checkpointing", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["communication"] == communication(
        ModelSpec.preset("llama-70b"), 2, 8, 3, lora_fraction=0.01)
    assert d["per_node_bytes"] == 8 * d["per_gpu_bytes"] and d["per_gpu_bytes"] < 80 * GB


CLI_NODES_BAD = [
    (["--nodes", "3", "--gpus", "8"], "--gpus must be a multiple of --nodes=3, got 8"),
    (["--nodes", "2", "--gpus-per-node", "4", "--gpus", "16"],
     "--gpus must be --nodes x --gpus-per-node = 8, got 16"),
    (["--nodes", "0"], "--nodes must be a positive int or None, got 0"),
    (["--nodes", "2", "--gpus-per-node", "-1"], "--gpus-per-node must be a positive int"),
    (["--nodes", "2", "--inter-bw", "0"], "--inter-bw must be in [0.001, 1e+06], got 0.0"),
    (["--nodes", "2", "--intra-bw", "nan"], "--intra-bw must be in [0.001, 1e+06], got nan"),
    (["--nodes", "2", "--updates", "0"], "updates must be a positive int, got 0"),
    (["--nodes", "2", "--tp", "2"], "drop --tp or drop --nodes/--gpus-per-node"),
    (["--nodes", "2", "--generation-engine"], "drop --generation-engine"),
    (["--nodes", "2", "--placement", "split"], "drop --placement split"),
]


@pytest.mark.parametrize("argv, message", CLI_NODES_BAD, ids=[m[:30] for _, m in CLI_NODES_BAD])
def test_cli_nodes_bad_input_is_one_line(argv, message, capsys):
    code, out, err = cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("rlhf-edu memory: error: ") and message in lines[0], lines[0]
