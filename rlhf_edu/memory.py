"""How much GPU memory RLHF needs: the models, their training state, and the rollout.

The chapter ends on "memory is the bottleneck". This module redoes its table and then does the
accounting properly, per model role (actor, critic, reward, reference, and optionally a separate
generation engine) and per item, per GPU. All sizes are bytes; ``GB = 1e9`` bytes (decimal, as
the chapter uses; an "80 GB" card holds 80 GiB = 85.9 GB, part of which CUDA and fragmentation
take).

``assumptions="chapter"`` reproduces the chapter's table: FP16 weights (2 B/param) for all four
models, Adam's two fp32 moments (8 B/param) for the actor only, activations ~20 GB per 7e9
parameters, and the round size in the model's name ("7B" = 7e9 params): 14·4 + 56 + 20 = 132 GB
(~130) for 7B and 140·4 + 560 + 200 = 1320 GB (~1.3 TB) for 70B.

``assumptions="precise"`` (the default), Ψ parameters, N GPUs sharing a model (data parallel):

* trained model, mixed-precision Adam (Rajbhandari et al. 2020, "ZeRO"): 2 B bf16 weights + 2 B
  grads + 4 B fp32 master weights + 4 + 4 B Adam moments = 16 B/param; a frozen model 2 B/param;
  four equal models, two trained: 16 + 16 + 2 + 2 = 36 B/param. ``precision="fp32"``: 4 B weights,
  4 B grads, 8 B Adam, no master copy (a frozen model 4 B/param).
* ZeRO over N GPUs, model states per GPU, in one of three ``accounting`` conventions:

  - ``"deepspeed"`` (the default): DeepSpeed's estimators ``estimate_zero2/3_model_states_mem_
    needs`` for stages 2 and 3, the paper's P_os for stage 1 (L = the largest layer's params):
    ZeRO-0 16Ψ; ZeRO-1 4Ψ + 12Ψ/N; ZeRO-2 4Ψ + 16Ψ/N: the bf16 gradients stay whole (they are
    reduced in buckets as backward produces them) and the optimizer keeps an fp32 copy of its
    gradient partition, 4Ψ/N; ZeRO-3 4L + 18Ψ/N: weights 2Ψ/N, fp32 grads 4Ψ/N, optimizer
    12Ψ/N, and the largest layer's bf16 weights and grads gathered whole, 4L. The two extra
    terms make ZeRO-2 on 8 GPUs cost more than ZeRO-1, and ZeRO-2/3 on one GPU more than ZeRO-0.
  - ``"paper"``: the ZeRO paper's own count, no buffers: 2Ψ + 2Ψ + KΨ with K = 12 (master,
    momentum, variance); stage 1 divides KΨ by N, stage 2 also the gradients, stage 3 also the
    weights. It never rises with the stage or with N.
  - ``"fsdp2"``: PyTorch's ``fully_shard`` with a bf16 ``MixedPrecisionPolicy``. The parameters
    stay fp32 and sharded (4Ψ/N; they are the master copy), the gradients are sharded fp32
    (4Ψ/N), AdamW's states are sharded fp32 (8Ψ/N). bf16 copies exist only gathered: one
    ``fully_shard`` unit (a transformer block, B params) at a time under ZeRO-3
    (``reshard_after_forward=True``): 2B weights and 2B unsharded grads; the whole model
    between forward and backward under "ZeRO-2" (``reshard_after_forward=False``): 2Ψ. FSDP2
    has no ZeRO-1. ZeRO-0 is a plain fp32 model under autocast: 4Ψ + 4Ψ + 8Ψ. Per-rank bytes
    of real parameter shapes (uneven shards): :func:`fsdp2_local_bytes`.

  CPU offload of the optimizer: DeepSpeed keeps 2Ψ on the GPU (stages 1-2) or 4L + 2Ψ/N
  (stage 3) and moves master weights, Adam and the fp32 grads to the CPU; the paper's
  ZeRO-Offload (Ren et al. 2021) moves the gradients, master weights and Adam partitions; FSDP2's
  ``CPUOffloadPolicy`` moves the sharded parameters, gradients and optimizer states, leaving the
  gathered bf16 copies. Frozen models are sharded too under ZeRO-3.
* LoRA: a fraction r of Ψ is trained (adapters, 16 B each); the base stays frozen in bf16.
* tensor parallelism (``tp``, Megatron-LM) and pipeline parallelism (``pp``): every model's
  weights, grads and optimizer states are divided by tp·pp (each of pp stages holds n_layer/pp
  layers, each layer split over tp GPUs); ZeRO shards what is left over the data-parallel
  degree N/(tp·pp). Simplifications: the embedding and head are spread evenly over the stages
  (in practice the first and last stage carry them), the vocabulary is split over tp.
* activations per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", table 2), in 16 bit, s = prompt + response, b = micro-batch, h hidden
  size, a heads, t = tp: s·b·h·(10 + 24/t + 5·a·s/(h·t)) without recomputation. The 10·sbh
  are not split by tensor parallelism: the two layer-norm inputs (2·2sbh), the two dropout
  masks (2·sbh) and the inputs of the attention and MLP blocks (2·2sbh) are replicated on every
  tp GPU unless ``sequence_parallel`` splits them along the sequence: s·b·h·(34/t + 5as/(ht)).
  The 5as/h term is the attention matrix, gone with FlashAttention. With full activation
  checkpointing only each layer's input, 2·s·b·h (/t with sequence parallelism). With 1F1B
  pipelining the first stage holds the activations of min(pp, batch/micro_batch) micro-batches
  in flight, each over n_layer/pp layers: with enough micro-batches as much as without pipeline
  parallelism. A frozen model's no-grad forward holds one layer of them.
* generation KV cache: 2·layers·hidden_kv·(prompt + response)·batch·bytes (hidden_kv = kv heads ×
  head size, for GQA; split over tp, or one kv head per GPU when tp exceeds the kv heads; layers
  over pp); the B·T·V log-softmax logits in fp32 (4 B, V split over tp) for actor and reference.
* ``generation_engine=True``: systems such as OpenRLHF and verl generate with a separate engine
  (vLLM, SGLang): a second copy of the actor's weights (frozen dtype, tp·pp-sharded, never
  ZeRO-sharded) and a KV cache for ``rollout_batch`` sequences of ``kv_dtype_bytes`` per
  element. It becomes a fifth role, "generation", and the actor then holds no KV cache.
* methods: PPO has four models; the critic-free methods (GRPO, RLOO, REINFORCE++) drop the
  critic (``critic="none"``: three); ``method="verifier"`` scores with a program instead of a
  reward model (RL from verifiable rewards: one model fewer); ``method="dpo"`` trains a policy
  (the "actor") against a frozen reference on preference pairs (two models, no generation, 2
  sequences per pair).

Communication (:func:`communication`, ``rlhf-edu memory --nodes 2 --gpus-per-node 8``): the
collectives of one step of data parallelism over nodes × GPUs, per trained model the DDP
all-reduce of the gradients (ZeRO-0), their reduce-scatter and the all-gather of the updated
weights (ZeRO-1/2), or the forward and backward all-gathers and the reduce-scatter (ZeRO-3, with
one all-gather of each frozen model too): bytes each GPU sends (ring), bytes that leave each
node (hierarchical) and the seconds at the given intra- and inter-node bandwidths.

Everything is added up as if resident at once, an upper bound: in a sequential RLHF step the KV
cache is freed before the training forward. ``plan()`` enumerates ZeRO stage, offload, LoRA,
critic sharing, placement ("colocate": all models on every GPU; "split": reward and reference on
their own k GPUs), tensor and pipeline parallel degrees, and checkpointing, and keeps what fits.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace

from .validate import check_bool, check_choice, check_float, check_instance, check_int, shown

GB = 1e9  # decimal gigabyte, as in the chapter
ITEMS = ("weights", "gradients", "optimizer_states", "master_weights", "activations", "kv_cache",
         "logits")
ROLES = ("actor", "critic", "reward", "reference", "generation")
CRITIC_MODES = ("separate", "shared", "head")  # how a critic is built; plan() tries these
CRITICS = (*CRITIC_MODES, "none")  # "none": a critic-free method (GRPO, RLOO, REINFORCE++)
METHODS = ("online", "verifier", "dpo")
"""generate-score-train (PPO, GRPO, ...); the same scored by a verifier (no reward model: RL
from verifiable rewards, the arith task); offline preference pairs (DPO)"""
GENERATES = ("online", "verifier")  # the methods that sample responses (and hold a KV cache)
ACCOUNTINGS = ("deepspeed", "paper", "fsdp2")
PLACEMENTS = ("colocate", "split")
CHAPTER_ACTIVATIONS = (20, 7)  # the chapter's ~20 GB of activations per 7e9 params
_BYTES = {"mixed": (2, 2, 4, 8), "fp32": (4, 4, 0, 8)}  # weights, grads, master, Adam per param
PLAN_MAX_TP = 8  # plan() tries tensor parallelism within one node of 8 GPUs
ZERO_STAGES = (0, 1, 2, 3)


# The one place memory.py checks its numbers: each name's rule. Counts are ints >= 1 (a float
# is refused, even 2.0); sizes in GB are finite floats > 0; None passes where it means a default.
_COUNTS = ("n_layer", "n_embd", "n_head", "vocab_size", "block_size", "n_params", "n_kv_head",
           "nominal_params", "n_gpus", "frozen_gpus", "batch", "micro_batch", "prompt_len",
           "response_len", "dtype_bytes", "tp", "pp", "rollout_batch", "kv_dtype_bytes",
           "nodes", "gpus_per_node", "updates", "--nodes", "--gpus-per-node", "--gpus")
_MAY_BE_NONE = ("n_params", "n_kv_head", "nominal_params", "frozen_gpus", "prompt_len",
                "response_len", "dtype_bytes", "lora_fraction", "cpu_mem_gb", "rollout_batch",
                "kv_dtype_bytes", "--gpu-mem", "--cpu-mem", "--nodes", "--gpus-per-node",
                "--gpus")  # the CLI's: None is "not given"
COUNT_MAX = 2**63 - 1  # what an int64 holds; with every count below it, every byte figure stays
# finite (the largest product, the attention activations s²·b·a·L, is below 1e95), where a count
# of 10**400 made float() overflow ("int too large to convert to float")
BW_RANGE_GBS = (1e-3, 1e6)  # link bandwidths, GB/s: 1 MB/s (a slow WAN) to 1 PB/s, beyond any
# link; outside it the seconds of a step mean nothing (and 1e-320 GB/s would make them inf)
_FLAGS = ("offload", "activation_checkpointing", "generation_engine", "sequence_parallel")


def _check_numbers(**values: object) -> None:
    """Check each named number by its rule (see ``_COUNTS``); ``ValueError`` naming the first
    bad one, its value and what was expected."""
    for name, value in values.items():
        none_ok = name in _MAY_BE_NONE
        if name in _COUNTS:
            check_int(name, value, minimum=1, none_ok=none_ok)
            _check_count_max(name, value)
        elif name in ("gpu_mem_gb", "cpu_mem_gb", "--gpu-mem", "--cpu-mem"):
            check_float(name, value, minimum=0, strict_min=True, none_ok=none_ok)
        elif name in ("intra_bw_gbs", "inter_bw_gbs", "--intra-bw", "--inter-bw"):
            check_float(name, value, minimum=BW_RANGE_GBS[0], maximum=BW_RANGE_GBS[1])
        elif name == "lora_fraction":
            check_float(name, value, minimum=0, maximum=1, strict_min=True, none_ok=True)
        elif name in ("params", "largest_layer"):  # may be fractional (a LoRA share) or 0
            check_float(name, value, minimum=0)
            _check_count_max(name, value)
        elif name in _FLAGS:
            check_bool(name, value)
        elif name == "zero_stage":  # an int (NumPy's too), then one of the stages
            check_choice(name, check_int(name, value), ZERO_STAGES)
        elif name == "limit":
            check_int(name, value, minimum=0)
        else:
            raise AssertionError(f"no rule for {name}")  # a programming error, not bad input


def _check_count_max(name: str, value: object) -> None:
    """A checked count or parameter number must be at most :data:`COUNT_MAX` (2**63 - 1)."""
    if value is not None and value > COUNT_MAX:
        raise ValueError(f"{name} must be below 2**63 (what an int64 counts), got "
                         f"{shown(value)}")


def _check_spec(name: str, spec: object, none_ok: bool = False) -> None:
    check_instance(name, spec, ModelSpec, none_ok=none_ok, hint="e.g. ModelSpec.preset('llama-7b')")


@dataclass(frozen=True)
class ModelSpec:
    """A transformer's shape and size; ``n_params`` defaults to the nanoGPT count of the shape."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    block_size: int = 1024  # context: learned positions, and the longest prompt + response
    n_params: int | None = None  # None: V·C + block·C + L·(12C² + 13C) + 2C (GPT-2, tied head)
    n_kv_head: int | None = None  # grouped-query attention; None: n_head
    nominal_params: int | None = None  # the round size in the name ("7B"), used by the chapter

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"name must be a str, got {type(self.name).__name__}")
        _check_numbers(**{k: getattr(self, k) for k in (
            "n_layer", "n_embd", "n_head", "vocab_size", "block_size", "n_params", "n_kv_head",
            "nominal_params")})
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head must divide n_embd={self.n_embd}, got {self.n_head}")
        kv = self.n_kv_head if self.n_kv_head is not None else self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_kv_head must divide n_head={self.n_head}, got {kv}")
        object.__setattr__(self, "n_kv_head", kv)
        if self.n_params is None:
            C, L = self.n_embd, self.n_layer
            n = self.vocab_size * C + self.block_size * C + L * (12 * C * C + 13 * C) + 2 * C
            object.__setattr__(self, "n_params", n)

    @property
    def largest_layer(self) -> int:
        """Params of the largest single weight (DeepSpeed's L): embedding or MLP up-projection."""
        C = self.n_embd
        return max(self.vocab_size * C, 4 * C * C + 4 * C)

    @property
    def block_params(self) -> float:
        """Params of one transformer block, what one FSDP2 ``fully_shard`` unit gathers: the
        parameters besides one V×C embedding, shared evenly by the layers (12C² + 13C for
        GPT-2 plus its share of the positions; Llama's blocks plus a share of the untied head)."""
        return max(self.n_params - self.vocab_size * self.n_embd, 0) / self.n_layer

    def with_head(self, n_head_params: int | None = None) -> ModelSpec:
        """This model plus a scalar head (value or reward): ``C + 1`` more parameters."""
        check_int("n_head_params", n_head_params, minimum=0, none_ok=True)
        extra = self.n_embd + 1 if n_head_params is None else n_head_params
        return replace(self, name=f"{self.name}+head", n_params=self.n_params + extra)

    @classmethod
    def from_gpt_config(cls, cfg: object, head: bool = False, name: str = "gpt") -> ModelSpec:
        """The spec of ``rlhf_edu.model.GPT(cfg)`` (any object with n_layer, n_head, n_embd,
        vocab_size, block_size); ``head=True`` adds a scalar head of ``C + 1`` parameters."""
        spec = cls(name, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.block_size)
        return spec.with_head() if head else spec

    @classmethod
    def from_n_params(cls, n_params: float) -> ModelSpec:
        """A model of ``n_params`` in [1, COUNT_MAX] parameters, shaped like the preset nearest
        in size."""
        check_float("n_params", n_params, minimum=1)
        _check_count_max("n_params", n_params)
        near = min(PRESETS, key=lambda k: abs(math.log(n_params / cls.preset(k).n_params)))
        return replace(cls.preset(near), name=f"{n_params:.3g} params", n_params=int(n_params),
                       nominal_params=int(n_params))

    @classmethod
    def preset(cls, name: str) -> ModelSpec:
        """One of :data:`PRESETS`: "toy", "gpt2", "gpt2-xl", "llama-7b", "llama-13b",
        "llama-70b"."""
        check_choice("preset", name, tuple(PRESETS))
        return PRESETS[name]


@functools.lru_cache(maxsize=32)
def _with_head(spec: ModelSpec) -> ModelSpec:
    """``spec.with_head()``, made once per spec (plan() asks for it thousands of times)."""
    return spec.with_head()


_TOY = SimpleNamespace(n_layer=3, n_head=4, n_embd=128, vocab_size=64, block_size=48)  # GPTConfig()

PRESETS: dict[str, ModelSpec] = {
    "toy": ModelSpec.from_gpt_config(_TOY, name="toy"),
    "gpt2": ModelSpec("gpt2", 12, 768, 12, 50257, 1024, nominal_params=124_000_000),
    "gpt2-xl": ModelSpec("gpt2-xl", 48, 1600, 25, 50257, 1024, nominal_params=1_500_000_000),
    # Llama 2 (Touvron et al. 2023): exact parameter counts of the released checkpoints
    "llama-7b": ModelSpec("llama-7b", 32, 4096, 32, 32000, 4096, 6_738_415_616, None, 7 * 10**9),
    "llama-13b": ModelSpec("llama-13b", 40, 5120, 40, 32000, 4096, 13_015_864_320, None,
                           13 * 10**9),
    "llama-70b": ModelSpec("llama-70b", 80, 8192, 64, 32000, 4096, 68_976_648_192, 8, 70 * 10**9),
}


@dataclass
class RoleMemory:
    """Bytes per GPU of one role on each of the ``gpus`` GPUs that hold it (``n_params`` and
    ``trainable_params`` count the whole model, before any sharding)."""

    role: str
    model: str
    n_params: int
    trainable_params: int
    gpus: int
    group: str  # "all" (colocated), "trained" or "frozen" (split placement)
    weights: float = 0.0
    gradients: float = 0.0
    optimizer_states: float = 0.0
    master_weights: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    logits: float = 0.0
    cpu: float = 0.0  # offloaded to host memory, per GPU; not in ``total``

    def items(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ITEMS}

    @property
    def total(self) -> float:
        return sum(self.items().values())


@dataclass
class MemoryBreakdown:
    """Per-role, per-item memory of one RLHF configuration (bytes; ``*_gb`` in 1e9 bytes)."""

    roles: dict[str, RoleMemory]
    assumptions: str
    n_gpus: int
    zero_stage: int = 0
    offload: bool = False
    lora_fraction: float | None = None
    critic: str = "separate"
    placement: str = "colocate"
    frozen_gpus: int = 0
    activation_checkpointing: bool = False
    settings: dict = field(default_factory=dict)
    accounting: str = "deepspeed"
    tp: int = 1
    pp: int = 1
    method: str = "online"
    generation_engine: bool = False

    def group_bytes(self) -> dict[str, float]:
        """Bytes per GPU in each group of GPUs (one group unless placement is "split")."""
        out: dict[str, float] = {}
        for r in self.roles.values():
            out[r.group] = out.get(r.group, 0.0) + r.total
        return out

    @property
    def per_gpu_bytes(self) -> float:
        return max(self.group_bytes().values())

    @property
    def per_gpu_gb(self) -> float:
        return self.per_gpu_bytes / GB

    @property
    def total_bytes(self) -> float:
        """All GPUs together."""
        return sum(r.total * r.gpus for r in self.roles.values())

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    @property
    def cpu_bytes(self) -> float:
        return sum(r.cpu * r.gpus for r in self.roles.values())

    def item_totals(self) -> dict[str, float]:
        """Each item summed over roles and GPUs (the chapter's "Optimizer states 56")."""
        return {k: sum(getattr(r, k) * r.gpus for r in self.roles.values()) for k in ITEMS}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(per_gpu_bytes=self.per_gpu_bytes, total_bytes=self.total_bytes,
                 cpu_bytes=self.cpu_bytes, item_totals=self.item_totals(), gb=GB)
        return d


# ---------------------------------------------------------------- model states: three accountings


def _deepspeed_states(p: float, L: float, zero_stage: int, n: int, offload: bool,
                      precision: str) -> dict[str, float]:
    """DeepSpeed's estimators (see the module docstring); ``L`` the largest layer's params."""
    w, g, m, a = _BYTES[precision]
    fp32_grads = 4 if m else 0  # mixed precision: the optimizer's fp32 gradient partition
    shard = n if zero_stage else 1
    out = {"master_weights": m * p / shard, "optimizer_states": a * p / shard}
    if zero_stage < 3:
        out["weights"] = w * p
        out["gradients"] = g * p + (fp32_grads * p / n if zero_stage == 2 else 0)
    else:  # everything sharded; the largest layer's weights and grads gathered whole
        out["weights"] = w * p / n + w * L
        out["gradients"] = (fp32_grads or g) * p / n + g * L
    out["cpu"] = 0.0
    if offload:  # DeepSpeed keeps only bf16 weights (and, at stage 3, one gathered layer)
        out["cpu"] = out["master_weights"] + out["optimizer_states"] + fp32_grads * p / n
        out["gradients"] = g * L if zero_stage == 3 else 0.0
        out["master_weights"] = out["optimizer_states"] = 0.0
    return out


def _paper_states(p: float, zero_stage: int, n: int, offload: bool,
                  precision: str) -> dict[str, float]:
    """The ZeRO paper: stage s >= 1 divides the optimizer (K = 12 with master weights), s >= 2
    also the gradients, s = 3 also the weights, by N; no buffers. Offload: ZeRO-Offload."""
    w, g, m, a = _BYTES[precision]

    def part(bytes_per_param: int, from_stage: int) -> float:
        return bytes_per_param * p / (n if zero_stage >= from_stage else 1)

    out = {"weights": part(w, 3), "gradients": part(g, 2), "master_weights": part(m, 1),
           "optimizer_states": part(a, 1), "cpu": 0.0}
    if offload:  # gradients stream to the CPU, which updates its partition of the fp32 state
        out["cpu"] = (g + m + a) * p / n
        out["gradients"] = out["master_weights"] = out["optimizer_states"] = 0.0
    return out


def _fsdp2_states(p: float, unit: float, zero_stage: int, n: int, offload: bool,
                  precision: str) -> dict[str, float]:
    """FSDP2 ``fully_shard``: fp32 sharded parameters, gradients and AdamW states (16Ψ/N, the
    parameters are their own master copy), plus the gathered copies in the compute dtype: one
    ``unit`` (a block) of weights and unsharded grads at stage 3, the whole model's weights
    between forward and backward at stage 2 (``reshard_after_forward=False``)."""
    w = _BYTES[precision][0]  # the compute dtype of the gathered copies (param_dtype)
    if zero_stage == 0:  # no fully_shard: an fp32 model under autocast, on every GPU
        return {"weights": 4 * p, "gradients": 4 * p, "master_weights": 0.0,
                "optimizer_states": 8 * p, "cpu": 0.0}
    gathered = w * unit if zero_stage == 3 else w * p
    out = {"weights": 4 * p / n + gathered, "gradients": 4 * p / n + w * unit,
           "master_weights": 0.0, "optimizer_states": 8 * p / n, "cpu": 0.0}
    if offload:  # CPUOffloadPolicy: the sharded fp32 state lives on the host
        out.update(weights=gathered, gradients=w * unit, optimizer_states=0.0,
                   cpu=16 * p / n)
    return out


def model_states_bytes(n_params: float, largest_layer: float, zero_stage: int, n_gpus: int,
                       offload: bool = False, precision: str = "mixed",
                       accounting: str = "deepspeed") -> dict[str, float]:
    """Weights, gradients, optimizer states and master weights per GPU of one trained model
    sharded by ZeRO over ``n_gpus``, plus ``"cpu"`` (offloaded bytes per GPU), in the given
    ``accounting`` (see the module docstring). ``largest_layer`` is what stage 3 gathers at
    once: DeepSpeed's largest layer, FSDP2's ``fully_shard`` unit (a block); "paper" ignores it.
    """
    _check_numbers(params=n_params, largest_layer=largest_layer, zero_stage=zero_stage,
                   n_gpus=n_gpus, offload=offload)
    check_choice("precision", precision, tuple(_BYTES))
    check_choice("accounting", accounting, ACCOUNTINGS)
    error = _stage_error(zero_stage, accounting, offload)
    if error:
        raise ValueError(error)
    return _model_states(n_params, largest_layer, zero_stage, n_gpus, offload, precision,
                         accounting)


def _model_states(n_params: float, largest_layer: float, zero_stage: int, n_gpus: int,
                  offload: bool, precision: str, accounting: str) -> dict[str, float]:
    """:func:`model_states_bytes` without the checks (its caller has made them)."""
    if accounting == "paper":
        return _paper_states(n_params, zero_stage, n_gpus, offload, precision)
    if accounting == "fsdp2":
        return _fsdp2_states(n_params, largest_layer, zero_stage, n_gpus, offload, precision)
    return _deepspeed_states(n_params, largest_layer, zero_stage, n_gpus, offload, precision)


def fsdp2_chunk_rows(dim0: int, world: int, rank: int) -> int:
    """Rows of a dimension-0 size ``dim0`` that rank ``rank`` of ``world`` holds under FSDP2's
    ``Shard(0)``: ``torch.chunk`` gives every rank ceil(dim0 / world) rows until they run out,
    so the last ranks may get fewer, or none (5 rows over 4 ranks: 2, 2, 1, 0)."""
    check_int("dim0", dim0, minimum=1)
    check_int("world", world, minimum=1)
    check_int("rank", rank, minimum=0, maximum=world - 1)
    per_rank = -(-dim0 // world)  # ceil
    return max(0, min(per_rank, dim0 - rank * per_rank))


def fsdp2_local_bytes(shapes: list[tuple[int, ...]], world: int, rank: int, *,
                      param_bytes: int = 4, grad_bytes: int = 4, adam_bytes: int = 8,
                      padded: bool = False) -> dict[str, int]:
    """Exact bytes of one rank's shards of parameters with the given ``shapes`` (each a tuple
    ``(d0, d1, ...)``, d0 >= 1) under FSDP2 ``fully_shard`` over ``world`` ranks: what
    ``DTensor.to_local()`` of each parameter, of its ``.grad`` and of AdamW's ``exp_avg`` and
    ``exp_avg_sq`` holds on ``rank`` (AdamW's 0-d ``step`` counters are not counted).

    Each parameter is split along dim 0 as ``torch.chunk`` splits it (see
    :func:`fsdp2_chunk_rows`). ``padded=True`` counts the storage FSDP2 allocates for
    parameters and gradients instead: every rank's shard padded to ceil(d0 / world) rows (the
    shard and its gradient are views into it); AdamW's states follow the unpadded shard either
    way. Returns ``{"weights", "gradients", "optimizer_states", "numel"}`` (numel unpadded).
    """
    check_int("world", world, minimum=1)
    check_int("rank", rank, minimum=0, maximum=world - 1)
    for name, value in (("param_bytes", param_bytes), ("grad_bytes", grad_bytes),
                        ("adam_bytes", adam_bytes)):
        check_int(name, value, minimum=0)
    check_bool("padded", padded)
    if not isinstance(shapes, (list, tuple)):
        raise ValueError(f"shapes must be a list of shape tuples, got {type(shapes).__name__}")
    numel = storage = 0
    for i, shape in enumerate(shapes):
        if not isinstance(shape, (tuple, list)) or not shape or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ValueError(f"shapes[{i}] must be a non-empty tuple of positive ints (FSDP2 "
                             f"cannot shard a 0-d parameter on dim 0), got {shown(shape)}")
        row = math.prod(shape[1:])
        numel += fsdp2_chunk_rows(shape[0], world, rank) * row
        storage += -(-shape[0] // world) * row
    held = storage if padded else numel
    return {"weights": param_bytes * held, "gradients": grad_bytes * held,
            "optimizer_states": adam_bytes * numel, "numel": numel}


def _frozen_bytes(n_params: float, gathered: float, zero_stage: int, n: int, w: int) -> float:
    """A frozen model's weights per GPU: whole, or sharded under ZeRO-3 with ``gathered``
    params (a layer or block; 0 in the paper's count) gathered at a time."""
    if zero_stage < 3 or n_params == 0:
        return w * n_params
    return w * n_params / n + w * gathered


def _activations(spec: ModelSpec, seq: int, micro_batch: int, checkpointing: bool,
                 dtype_bytes: int, layers: float, tp: int = 1,
                 sequence_parallel: bool = False) -> float:
    """Activation bytes of ``layers`` layers (Korthikanti et al. 2022, table 2)."""
    s, b, h, a = seq, micro_batch, spec.n_embd, spec.n_head
    split = tp if sequence_parallel else 1  # what tensor parallelism leaves whole, SP splits
    if checkpointing:
        per_layer = 2 * s * b * h / split
    else:
        attention = 5 * a * s / h / tp  # scores and softmax: heads are split over tp
        per_layer = s * b * h * (10 / split + 24 / tp + attention)
    return per_layer * layers * dtype_bytes / 2  # Korthikanti et al. count 16-bit activations


def _kv_bytes(spec: ModelSpec, seq: int, batch: int, dtype_bytes: int, tp: int, pp: int) -> float:
    """K and V of every layer of one pipeline stage for ``batch`` sequences of ``seq`` tokens,
    with the kv heads split over tp (one per GPU when tp exceeds them)."""
    head_dim = spec.n_embd // spec.n_head
    kv_heads = -(-spec.n_kv_head // tp)
    return 2 * (spec.n_layer // pp) * kv_heads * head_dim * seq * batch * dtype_bytes


def _chapter(spec: ModelSpec) -> dict[str, RoleMemory]:
    n = spec.nominal_params or spec.n_params
    roles = {r: RoleMemory(r, spec.name, n, 0, 1, "all", weights=2 * n) for r in ROLES[:4]}
    actor = roles["actor"]
    actor.trainable_params, actor.optimizer_states = n, 8 * n
    actor.activations = n * CHAPTER_ACTIVATIONS[0] // CHAPTER_ACTIVATIONS[1]
    return roles


def _parallel_error(spec: ModelSpec, n_gpus: int, tp: int, pp: int, zero_stage: int,
                    accounting: str) -> str | None:
    """Why ``tp``/``pp`` cannot shard ``spec`` on ``n_gpus`` GPUs, or None."""
    kv = spec.n_kv_head
    if spec.n_head % tp:
        return f"tp must divide n_head={spec.n_head} of {spec.name}, got {tp}"
    if kv % tp and tp % kv:
        return f"tp must divide n_kv_head={kv} of {spec.name} or be a multiple of it, got {tp}"
    if spec.n_layer % pp:
        return f"pp must divide n_layer={spec.n_layer} of {spec.name}, got {pp}"
    if n_gpus % (tp * pp):
        return f"tp x pp = {tp * pp} must divide n_gpus={n_gpus} (tp={tp}, pp={pp})"
    if pp > 1 and zero_stage >= 2 and accounting == "deepspeed":
        return (f"pp={pp} needs zero_stage <= 1 under accounting='deepspeed' (its pipeline "
                f"engine shards only the optimizer), got zero_stage={zero_stage}")
    return None


def _stage_error(zero_stage: int, accounting: str, offload: bool) -> str | None:
    """Why ``zero_stage`` cannot be counted with ``accounting`` and ``offload``, or None."""
    if offload and zero_stage == 0:
        return "offload needs zero_stage >= 1, got 0"
    if accounting == "fsdp2" and zero_stage == 1:
        return ("accounting='fsdp2' has no ZeRO-1 (fully_shard shards parameters, gradients and "
                "optimizer states together): use zero_stage 0, 2 (reshard_after_forward=False) "
                "or 3, got 1")
    return None


def memory_breakdown(spec: ModelSpec, n_gpus: int = 1, zero_stage: int = 0, *,
                     assumptions: str = "precise", offload: bool = False,
                     lora_fraction: float | None = None, critic: str | None = None,
                     placement: str = "colocate", frozen_gpus: int | None = None,
                     critic_spec: ModelSpec | None = None, reward_spec: ModelSpec | None = None,
                     batch: int = 8, micro_batch: int = 2, prompt_len: int | None = None,
                     response_len: int | None = None, activation_checkpointing: bool = False,
                     precision: str = "mixed", dtype_bytes: int | None = None,
                     accounting: str = "deepspeed", tp: int = 1, pp: int = 1,
                     sequence_parallel: bool = False, method: str = "online",
                     generation_engine: bool = False, rollout_batch: int | None = None,
                     kv_dtype_bytes: int | None = None) -> MemoryBreakdown:
    """Memory of one RLHF step with actor ``spec`` (reference = a copy of it).

    ``batch`` rollouts per GPU are generated (KV cache); training and scoring run ``micro_batch``
    sequences of ``prompt_len + response_len`` tokens (None: min(256, block_size // 2) each).
    ``critic``: "separate" (its own model, ``critic_spec``, default the actor's shape plus a value
    head), "shared" (the actor's backbone, a linear head extra), "head" (an MLP head on the
    actor's detached hidden states) or "none" (GRPO, RLOO, REINFORCE++: three models); None is
    "separate", or "none" for DPO. ``method="dpo"``: the actor (DPO's policy) and a frozen
    reference only, ``micro_batch`` preference pairs (2 sequences each) per forward, nothing
    generated.
    ``placement="split"`` puts reward and reference on ``frozen_gpus`` GPUs (None: the split
    that minimises per-GPU memory) and the trained models on the rest. ``dtype_bytes`` of
    activations and KV cache defaults to 2 (mixed) or 4 (fp32).
    ``accounting``: "deepspeed", "paper" or "fsdp2" model states (the module docstring).
    ``tp``, ``pp``: tensor- and pipeline-parallel degrees; the data-parallel degree that ZeRO
    shards over is the GPUs of a group / (tp·pp). ``sequence_parallel`` splits the activations
    tensor parallelism leaves whole. ``generation_engine=True`` adds a "generation" role (a
    second copy of the actor's weights and a KV cache for ``rollout_batch`` sequences, default
    ``batch``, of ``kv_dtype_bytes`` per element, default ``dtype_bytes``), placed with the
    trained models.
    """
    _check_spec("spec", spec)
    check_choice("method", method, METHODS)
    if critic is None:
        critic = "none" if method == "dpo" else "separate"
    prompt_len = min(256, spec.block_size // 2) if prompt_len is None else prompt_len
    response_len = min(256, spec.block_size // 2) if response_len is None else response_len
    args = dict(locals())
    _check_inputs(args)
    if assumptions == "chapter":
        _check_chapter_settings(args)
        return MemoryBreakdown(_chapter(spec), "chapter", 1)
    _check_combination(args)
    mp = tp * pp  # GPUs that share one copy of a model (model parallel)
    if placement == "split" and frozen_gpus is None:  # the split that balances the groups best
        return _best_split(lambda j: memory_breakdown(**{**args, "frozen_gpus": j * mp}),
                           n_gpus // mp)
    return _precise(SimpleNamespace(**args))


def _check_inputs(a: dict) -> None:
    """Each of :func:`memory_breakdown`'s arguments (``a``, by name) on its own."""
    _check_spec("critic_spec", a["critic_spec"], none_ok=True)
    _check_spec("reward_spec", a["reward_spec"], none_ok=True)
    _check_numbers(**{k: a[k] for k in (
        "n_gpus", "zero_stage", "offload", "lora_fraction", "frozen_gpus", "batch", "micro_batch",
        "prompt_len", "response_len", "activation_checkpointing", "dtype_bytes", "tp", "pp",
        "sequence_parallel", "generation_engine", "rollout_batch", "kv_dtype_bytes")})
    for name, choices in (("assumptions", ("precise", "chapter")), ("critic", CRITICS),
                          ("placement", PLACEMENTS), ("precision", tuple(_BYTES)),
                          ("accounting", ACCOUNTINGS)):
        check_choice(name, a[name], choices)
    block = a["spec"].block_size
    if a["prompt_len"] + a["response_len"] > block:
        raise ValueError(f"prompt_len + response_len must be <= block_size={block}, "
                         f"got {a['prompt_len'] + a['response_len']}")


def _check_chapter_settings(a: dict) -> None:
    """assumptions="chapter" is the chapter's single-GPU table: every other setting its own."""
    seed = dict(n_gpus=1, zero_stage=0, offload=False, critic="separate", lora_fraction=None,
                placement="colocate", critic_spec=None, reward_spec=None, precision="mixed",
                accounting="deepspeed", tp=1, pp=1, sequence_parallel=False, method="online",
                generation_engine=False)
    for k, v in seed.items():
        if a[k] != v:
            raise ValueError(f"assumptions='chapter' is the chapter's single-GPU table; "
                             f"{k} must be {v!r}, got {a[k]!r}")


def _check_combination(a: dict) -> None:
    """How :func:`memory_breakdown`'s arguments (``a``, each checked) go together."""
    if a["method"] == "dpo":
        for name, want in (("critic", "none"), ("reward_spec", None),
                           ("generation_engine", False)):
            if a[name] != want:
                raise ValueError(f"method='dpo' trains a policy against a frozen reference "
                                 f"only; {name} must be {want!r}, got {shown(a[name])}")
    if a["critic"] != "separate" and a["critic_spec"] is not None:
        raise ValueError(f"critic_spec needs critic='separate', got critic={a['critic']!r}")
    n_gpus, tp, pp, zero_stage = a["n_gpus"], a["tp"], a["pp"], a["zero_stage"]
    error = _stage_error(zero_stage, a["accounting"], a["offload"])
    for s in (a["spec"], a["critic_spec"], a["reward_spec"]):
        error = error or (s and _parallel_error(s, n_gpus, tp, pp, zero_stage, a["accounting"]))
    if error:
        raise ValueError(error)
    mp, frozen_gpus = tp * pp, a["frozen_gpus"]
    if frozen_gpus is not None and a["placement"] != "split":
        raise ValueError(f"frozen_gpus needs placement='split', got placement={a['placement']!r}")
    if a["placement"] == "split" and n_gpus < 2 * mp:
        raise ValueError(f"placement='split' needs n_gpus >= {2 * mp}"
                         f"{' (2 x tp x pp)' if mp > 1 else ''}, got {n_gpus}")
    if frozen_gpus is not None and not 0 < frozen_gpus < n_gpus:
        raise ValueError(f"frozen_gpus must be in 1..{n_gpus - 1}, got {frozen_gpus}")
    if frozen_gpus is not None and frozen_gpus % mp:
        raise ValueError(f"frozen_gpus must be a multiple of tp x pp = {mp}, got {frozen_gpus}")


def _precise(a: SimpleNamespace) -> MemoryBreakdown:
    """The precise accounting of :func:`memory_breakdown`'s checked arguments ``a``, to which
    it adds the figures every role shares (GPUs per group, tokens per forward)."""
    if a.dtype_bytes is None:
        a.dtype_bytes = 2 if a.precision == "mixed" else 4
    a.rollout_batch = a.batch if a.rollout_batch is None else a.rollout_batch
    a.kv_dtype_bytes = a.dtype_bytes if a.kv_dtype_bytes is None else a.kv_dtype_bytes
    k = a.frozen_gpus if a.placement == "split" else 0
    a.mp = a.tp * a.pp  # GPUs that share one copy of a model (model parallel)
    a.n_train, a.n_frozen = a.n_gpus - k, k or a.n_gpus
    a.group_t, a.group_f = ("trained", "frozen") if k else ("all", "all")
    a.seq = a.prompt_len + a.response_len
    a.rows = a.micro_batch * (2 if a.method == "dpo" else 1)  # sequences per forward
    a.in_flight = min(a.pp, -(-a.batch // a.micro_batch))  # 1F1B: micro-batches on stage 1
    a.w_frozen = _BYTES[a.precision][0]
    settings = {k: getattr(a, k) for k in (
        "batch", "micro_batch", "prompt_len", "response_len", "precision", "dtype_bytes",
        "rollout_batch", "kv_dtype_bytes", "sequence_parallel")}
    return MemoryBreakdown(_roles(a), "precise", a.n_gpus, a.zero_stage, a.offload,
                           a.lora_fraction, a.critic, a.placement, k,
                           a.activation_checkpointing, settings, a.accounting, a.tp, a.pp,
                           a.method, a.generation_engine)


def _roles(a: SimpleNamespace) -> dict[str, RoleMemory]:
    """Each role's bytes per GPU, in the order of :data:`ROLES` (see :func:`_precise`)."""
    spec, critic, C = a.spec, a.critic, a.spec.n_embd
    roles = {"actor": _trained(a, "actor", spec, a.lora_fraction)}
    if critic == "separate":
        roles["critic"] = _trained(a, "critic", a.critic_spec or _with_head(spec),
                                   a.lora_fraction)
    elif critic != "none":  # a linear head ("shared") or a C→C→1 MLP ("head"), trained in full
        roles["critic"] = _trained(a, "critic", spec, None, C + 1 if critic == "shared"
                                   else C * C + 2 * C + 1)
    if a.method == "online":
        roles["reward"] = _frozen(a, "reward", a.reward_spec or _with_head(spec))
    roles["reference"] = _frozen(a, "reference", spec)
    if a.generation_engine:  # a second copy of the actor, serving only, with its own KV cache
        roles["generation"] = RoleMemory(
            "generation", spec.name, spec.n_params, 0, a.n_train, a.group_t,
            weights=a.w_frozen * spec.n_params / a.mp,
            kv_cache=_kv_bytes(spec, a.seq, a.rollout_batch, a.kv_dtype_bytes, a.tp, a.pp))
    elif a.method in GENERATES:
        roles["actor"].kv_cache = _kv_bytes(spec, a.seq, a.batch, a.dtype_bytes, a.tp, a.pp)
    for r in ("actor", "reference"):
        roles[r].logits = a.rows * a.seq * -(-spec.vocab_size // a.tp) * 4  # fp32 log-softmax
    return roles


def _gathered(a: SimpleNamespace, s: ModelSpec) -> float:
    """Params of ``s`` that ZeRO-3 gathers at once on one GPU (split over tp)."""
    if a.accounting == "paper":
        return 0.0
    return (s.block_params if a.accounting == "fsdp2" else s.largest_layer) / a.tp


def _trained(a: SimpleNamespace, role: str, s: ModelSpec, lora: float | None,
             head: int = 0) -> RoleMemory:
    """A trained model ``s`` (with LoRA: a frozen base plus ``lora``·Ψ adapters), or, with
    ``head`` > 0, only a head of that many parameters on the actor's hidden states."""
    n_base = s.n_params if lora else 0
    n_trained = head or (round(lora * s.n_params) if lora else s.n_params)
    per_gpu = head or n_trained / a.mp
    unit = head or _gathered(a, s) * (lora or 1)
    dp = a.n_train // a.mp  # the data-parallel degree ZeRO shards over
    states = _model_states(per_gpu, unit, a.zero_stage, dp, a.offload, a.precision, a.accounting)
    states["weights"] += _frozen_bytes(n_base / a.mp, _gathered(a, s), a.zero_stage, dp,
                                       a.w_frozen)
    layers = 0 if head else s.n_layer // a.pp * a.in_flight
    act = _activations(s, a.seq, a.rows, a.activation_checkpointing, a.dtype_bytes, layers,
                       a.tp, a.sequence_parallel)
    return RoleMemory(role, s.name if not head else f"{a.critic} head", n_base + n_trained,
                      n_trained, a.n_train, a.group_t, activations=act, **states)


def _frozen(a: SimpleNamespace, role: str, s: ModelSpec) -> RoleMemory:
    """A frozen model ``s``: its weights, and one layer's activations of a no-grad forward."""
    act = _activations(s, a.seq, a.rows, False, a.dtype_bytes, 1, a.tp, a.sequence_parallel)
    return RoleMemory(role, s.name, s.n_params, 0, a.n_frozen, a.group_f, activations=act,
                      weights=_frozen_bytes(s.n_params / a.mp, _gathered(a, s), a.zero_stage,
                                            a.n_frozen // a.mp, a.w_frozen))


def _best_split(breakdown, n_gpus: int) -> MemoryBreakdown:
    """The split placement with the least per-GPU memory: ``breakdown(k)`` with k frozen GPUs,
    the smallest such k on a tie, as ``min`` over k = 1 .. n_gpus - 1 would pick it.

    A binary search, O(log n_gpus) breakdowns: the trained group's bytes per GPU, F(k), never
    fall as k grows (its n - k GPUs shrink) and the frozen group's, G(k), never rise, exactly so
    in floating point (every term is a sum of products and quotients monotone in the count).
    The per-GPU figure max(F, G) thus falls while G > F and rises once F >= G.
    """
    def groups(k: int) -> tuple[float, float]:
        g = breakdown(k).group_bytes()
        return g["trained"], g["frozen"]

    lo, hi = 1, n_gpus  # the first k with F(k) >= G(k), or n_gpus if there is none
    while lo < hi:
        mid = (lo + hi) // 2
        f, g = groups(mid)
        if f >= g:
            hi = mid
        else:
            lo = mid + 1
    cross = lo
    best = max(groups(cross)) if cross < n_gpus else math.inf
    if cross > 1 and groups(cross - 1)[1] <= best:  # the minimum lies where G > F: the first
        best = groups(cross - 1)[1]  # k whose G(k) already equals it (G falls with k)
        lo, hi = 1, cross - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if groups(mid)[1] <= best:
                hi = mid
            else:
                lo = mid + 1
        return breakdown(lo)
    return breakdown(cross)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


_WORKLOAD = ("batch", "micro_batch", "prompt_len", "response_len", "precision", "dtype_bytes",
             "rollout_batch", "kv_dtype_bytes")


def plan(spec: ModelSpec, n_gpus: int = 8, gpu_mem_gb: float = 80.0, *,
         lora_fraction: float = 0.01, critic_modes: tuple[str, ...] | None = None,
         critic_spec: ModelSpec | None = None, reward_spec: ModelSpec | None = None,
         cpu_mem_gb: float | None = None, accounting: str = "deepspeed", tp: int | None = None,
         pp: int | None = None, sequence_parallel: bool = False, method: str = "online",
         generation_engine: bool = False, **workload: int | str) -> list[MemoryBreakdown]:
    """Every configuration whose busiest GPU needs at most ``gpu_mem_gb`` (1e9 bytes) and,
    if ``cpu_mem_gb`` is given, whose offloaded optimizer fits in that much host memory.

    Enumerates ZeRO stage 0-3, optimizer offload (stage >= 1), full fine-tuning or LoRA with
    ``lora_fraction``, the ``critic_modes`` (default "separate" and "shared": "head" trains a C×C
    MLP where "shared" trains a C-vector; ``("none",)`` plans a critic-free method; DPO has no
    critic), colocated or split placement, activation checkpointing, and the tensor- and
    pipeline-parallel degrees ``tp`` and ``pp`` (None: every degree that divides ``n_gpus`` and
    the model's heads or layers, tp at most 8, one node; an int: only that degree).
    ``accounting``, ``sequence_parallel``, ``method``, ``generation_engine`` and ``workload``
    (batch, micro_batch, prompt_len, response_len, precision, dtype_bytes, rollout_batch,
    kv_dtype_bytes) go to :func:`memory_breakdown` unchanged.
    Sorted fewest compromises first: full fine-tuning, a separate critic, no offload, the least
    model parallelism (tp·pp, then pipelines before tensor splits), a lower ZeRO stage (less
    communication), no recomputation, colocation; then by per-GPU memory.
    """
    _check_spec("spec", spec)
    _check_numbers(n_gpus=n_gpus, gpu_mem_gb=gpu_mem_gb, cpu_mem_gb=cpu_mem_gb,
                   lora_fraction=lora_fraction)
    if lora_fraction is None:
        raise ValueError("lora_fraction must be a number in (0, 1], got None")
    check_choice("method", method, METHODS)
    check_choice("accounting", accounting, ACCOUNTINGS)
    if critic_modes is None:
        critic_modes = ("none",) if method == "dpo" else ("separate", "shared")
    if isinstance(critic_modes, str) or not isinstance(critic_modes, (tuple, list)) \
            or not critic_modes or any(c not in CRITICS for c in critic_modes):
        raise ValueError(f"critic_modes must be a non-empty tuple of {', '.join(CRITIC_MODES)}, "
                         f"got {shown(critic_modes)} (or ('none',) for a critic-free method)")
    if method == "dpo" and tuple(critic_modes) != ("none",):
        raise ValueError(f"method='dpo' trains no critic: critic_modes must be ('none',) or "
                         f"None, got {shown(critic_modes)}")
    for name, value in (("tp", tp), ("pp", pp)):
        check_int(name, value, minimum=1, none_ok=True)
    unknown = sorted(set(workload) - set(_WORKLOAD))
    if unknown:
        raise ValueError(f"unknown workload setting(s) {unknown}; expected "
                         f"{', '.join(_WORKLOAD)}")
    specs = [s for s in (spec, critic_spec, reward_spec) if s is not None]
    if tp is not None or pp is not None:  # a degree that no ZeRO stage can use is refused
        for s in specs:
            error = _parallel_error(s, n_gpus, tp or 1, pp or 1, 0, accounting)
            if error:
                raise ValueError(error)
    tps = [tp] if tp is not None else [t for t in _divisors(n_gpus) if t <= PLAN_MAX_TP]
    pps = [pp] if pp is not None else _divisors(n_gpus)
    fits = []
    for zero, offload, lora, critic, placement, ckpt, t, p in itertools.product(
            ZERO_STAGES, (False, True), (None, lora_fraction), critic_modes, PLACEMENTS,
            (False, True), tps, pps):
        if (placement == "split" and n_gpus < 2 * t * p) \
                or _stage_error(zero, accounting, offload) \
                or any(_parallel_error(s, n_gpus, t, p, zero, accounting) for s in specs):
            continue
        bd = memory_breakdown(spec, n_gpus, zero, offload=offload, lora_fraction=lora,
                              critic=critic, placement=placement, reward_spec=reward_spec,
                              critic_spec=critic_spec if critic == "separate" else None,
                              activation_checkpointing=ckpt, accounting=accounting, tp=t, pp=p,
                              sequence_parallel=sequence_parallel, method=method,
                              generation_engine=generation_engine, **workload)
        if bd.per_gpu_bytes <= gpu_mem_gb * GB and bd.cpu_bytes <= (cpu_mem_gb or math.inf) * GB:
            fits.append(bd)
    return sorted(fits, key=lambda b: (b.lora_fraction is not None, CRITICS.index(b.critic),
                                       b.offload, b.tp * b.pp, b.tp, b.zero_stage,
                                       b.activation_checkpointing, b.placement == "split",
                                       b.per_gpu_bytes))


# ---------------------------------------------------------------- communication across nodes

# Default link speeds, GB/s (1e9 bytes) in one direction. Intra-node: NVLink 4 of an H100 SXM,
# 900 GB/s per GPU in both directions together (NVIDIA's H100 datasheet), 450 each way.
# Inter-node: one 400 Gb/s NIC per node (InfiniBand NDR or 400 GbE), 400 / 8 = 50 GB/s; a DGX
# H100 has eight of them, one per GPU (400 GB/s per node): pass inter_bw_gbs=400 for that.
INTRA_BW_GBS = 450.0
INTER_BW_GBS = 50.0
_RING = {"all-reduce": 2, "all-gather": 1, "reduce-scatter": 1}  # ring: f·(N−1)/N·S per GPU


def _collective(role: str, kind: str, phase: str, times: int, size: float, nodes: int,
                per_node: int, intra_bw: float, inter_bw: float) -> dict:
    """One collective of ``size`` bytes (the whole tensor, S), run ``times`` per step over
    ``nodes`` × ``per_node`` GPUs: bytes per GPU and per node, and seconds at the bandwidths.

    Ring: each GPU sends f·(N−1)/N·S (f = 2 for all-reduce, 1 for all-gather or reduce-scatter).
    Hierarchical (how NCCL spreads it over a node's links): the GPUs of one local rank run the
    collective across nodes on their S/g share, f·(n−1)/n·S/g each, f·(n−1)/n·S per node over
    its NIC(s); the rest, f·(g−1)/g·S per GPU, stays on NVLink. The two add up to the ring's
    figure; seconds = per-node inter bytes / inter_bw + per-GPU intra bytes / intra_bw.
    """
    f, n, g = _RING[kind], nodes, per_node
    inter_node = times * f * (n - 1) / n * size  # bytes leaving one node per step
    intra_gpu = times * f * (g - 1) / g * size  # bytes one GPU sends over NVLink per step
    return {"role": role, "collective": kind, "phase": phase, "times": times, "size_bytes": size,
            "sent_per_gpu": times * f * (n * g - 1) / (n * g) * size,
            "inter_node_per_gpu": inter_node / g, "inter_node_per_node": inter_node,
            "intra_node_per_gpu": intra_gpu,
            "seconds": inter_node / (inter_bw * GB) + intra_gpu / (intra_bw * GB)}


def _comm_models(spec: ModelSpec, critic: str, method: str) -> list[tuple[str, int, str]]:
    """(role, parameters, "trained" | "head" | "frozen") of each model of one step, as
    :func:`memory_breakdown` builds them: a critic head ("shared", "head") trains only its own
    parameters, in full (never LoRA)."""
    C = spec.n_embd
    models = [("actor", spec.n_params, "trained")]
    if critic == "separate":
        models.append(("critic", _with_head(spec).n_params, "trained"))
    elif critic != "none":
        models.append(("critic", C + 1 if critic == "shared" else C * C + 2 * C + 1, "head"))
    if method == "online":
        models.append(("reward", _with_head(spec).n_params, "frozen"))
    return models + [("reference", spec.n_params, "frozen")]


def communication(spec: ModelSpec, nodes: int = 1, gpus_per_node: int = 8, zero_stage: int = 3,
                  *, critic: str | None = None, method: str = "online",
                  precision: str = "mixed", updates: int = 1,
                  lora_fraction: float | None = None,
                  intra_bw_gbs: float = INTRA_BW_GBS,
                  inter_bw_gbs: float = INTER_BW_GBS) -> list[dict]:
    """The collectives of one RLHF step, data parallel over ``nodes`` × ``gpus_per_node`` GPUs
    (N = nodes·gpus_per_node; every model on every GPU, no tp/pp), one dict per collective.

    Per trained model (actor, critic) and optimizer step (``updates`` per RLHF step: PPO epochs
    × minibatches): ZeRO-0 (DDP) all-reduces the gradients; ZeRO-1/2 reduce-scatter them and
    all-gather the updated weights after the step; ZeRO-3 (FSDP2) all-gathers the weights in the
    forward and again in the backward and reduce-scatters the gradients, plus one all-gather for
    the rollout (the weights kept gathered through generation and scoring). A frozen model
    (reward, reference) communicates only under ZeRO-3: one all-gather for its forward. Weights
    travel in the compute dtype (2 B/param mixed, 4 fp32), gradients too (bf16 reduction).
    With LoRA (``lora_fraction`` r of a model trained, as :func:`memory_breakdown` counts it)
    only the adapters' gradients and updated weights travel, r·Ψ; ZeRO-3 still gathers the
    frozen base with them, (1 + r)·Ψ.

    Each dict: ``role``, ``collective``, ``phase``, ``times`` per step, ``size_bytes`` S (one
    whole tensor), bytes per step ``sent_per_gpu`` (ring), ``inter_node_per_gpu``,
    ``inter_node_per_node`` (hierarchical: what crosses the node boundary), ``intra_node_per_gpu``
    and ``seconds`` at ``intra_bw_gbs`` (GB/s per GPU, one direction) and ``inter_bw_gbs``
    (GB/s per node); see :func:`_collective`. One node: no inter-node bytes.
    """
    _check_spec("spec", spec)
    _check_numbers(nodes=nodes, gpus_per_node=gpus_per_node, zero_stage=zero_stage,
                   updates=updates, intra_bw_gbs=intra_bw_gbs, inter_bw_gbs=inter_bw_gbs,
                   lora_fraction=lora_fraction)
    check_choice("method", method, METHODS)
    critic = ("none" if method == "dpo" else "separate") if critic is None else critic
    check_choice("critic", critic, CRITICS)
    check_choice("precision", precision, tuple(_BYTES))
    if method == "dpo" and critic != "none":
        raise ValueError(f"method='dpo' trains no critic: critic must be 'none', got {critic!r}")
    w = _BYTES[precision][0]  # weights and gradients on the wire, bytes per param
    kw = dict(nodes=nodes, per_node=gpus_per_node, intra_bw=intra_bw_gbs, inter_bw=inter_bw_gbs)
    rows = []
    for role, params, kind in _comm_models(spec, critic, method):
        if kind == "frozen":
            if zero_stage == 3:
                rows.append(_collective(role, "all-gather", "forward", 1, w * params, **kw))
            continue
        lora = lora_fraction if kind == "trained" else None
        tuned = w * (round(lora * params) if lora else params)  # bytes of what is trained
        gathered = w * params + (tuned if lora else 0)  # base and adapters
        if zero_stage == 0:
            rows.append(_collective(role, "all-reduce", "gradients", updates, tuned, **kw))
            continue
        if zero_stage == 3:
            if method in GENERATES:
                rows.append(_collective(role, "all-gather", "rollout", 1, gathered, **kw))
            rows.append(_collective(role, "all-gather", "forward", updates, gathered, **kw))
            rows.append(_collective(role, "all-gather", "backward", updates, gathered, **kw))
        rows.append(_collective(role, "reduce-scatter", "gradients", updates, tuned, **kw))
        if zero_stage < 3:
            rows.append(_collective(role, "all-gather", "updated weights", updates, tuned, **kw))
    return rows


def format_communication(rows: list[dict]) -> str:
    """:func:`communication`'s rows as a table (GB = 1e9 bytes, seconds), and their total."""
    lines = [f"{'role':<10} {'collective':<15} {'phase':<16} {'x':>3} {'S GB':>8} "
             f"{'sent/GPU':>9} {'inter/node':>10} {'seconds':>8}"]
    for r in rows:
        lines.append(f"{r['role']:<10} {r['collective']:<15} {r['phase']:<16} {r['times']:>3} "
                     f"{r['size_bytes'] / GB:>8.2f} {r['sent_per_gpu'] / GB:>9.2f} "
                     f"{r['inter_node_per_node'] / GB:>10.2f} {r['seconds']:>8.3f}")
    total = {k: sum(r[k] for r in rows) for k in ("sent_per_gpu", "inter_node_per_node",
                                                   "seconds")}
    lines.append(f"{'per step':<50} {total['sent_per_gpu'] / GB:>9.2f} "
                 f"{total['inter_node_per_node'] / GB:>10.2f} {total['seconds']:>8.3f}")
    return "\n".join(lines)


def parse_model(text: str) -> ModelSpec:
    """A preset name ("llama-7b") or a parameter count ("7e9")."""
    if isinstance(text, str) and text in PRESETS:
        return ModelSpec.preset(text)
    try:
        n = float(text) if isinstance(text, str) else math.nan
    except ValueError:
        n = math.nan
    if not 1 <= n < math.inf:
        raise ValueError(f"model must be one of {', '.join(PRESETS)} or a finite parameter "
                         f"count >= 1 (such as 7e9), got {shown(text)}")
    if n > COUNT_MAX:
        raise ValueError(f"model must be a parameter count below 2**63 (what an int64 counts), "
                         f"got {shown(text)}")
    return ModelSpec.from_n_params(n)


def format_breakdown(bd: MemoryBreakdown) -> str:
    """A table in GB (MB for small models): one row per role, one column per item, per GPU."""
    unit, size, label = ("GB", GB, "GB (1e9 B)") if bd.per_gpu_bytes >= GB else ("MB", 1e6,
                                                                                "MB (1e6 B)")
    heads = ("weights", "grads", "optim", "master", "activ", "kv", "logits", "total", "GPUs")
    lines = [f"{label:<11}{'model':>16}" + "".join(f"{h:>9}" for h in heads)]
    for r in bd.roles.values():
        cells = [*r.items().values(), r.total]
        lines.append(f"{r.role:<11}{r.model:>16}" + "".join(f"{v / size:>9.2f}" for v in cells)
                     + f"{r.gpus:>9}")
    totals = [*bd.item_totals().values(), bd.total_bytes]
    lines.append(f"{'all GPUs':<27}" + "".join(f"{v / size:>9.2f}" for v in totals))
    groups = ", ".join(f"{g} {b / size:.2f}" for g, b in bd.group_bytes().items())
    lines.append(f"per GPU: {bd.per_gpu_bytes / size:.2f} {unit} ({groups})"
                 + (f"; offloaded to CPU: {bd.cpu_bytes / size:.2f} {unit}" if bd.offload else ""))
    return "\n".join(lines)


def format_plan(rows: list[MemoryBreakdown], limit: int = 20) -> str:
    """The plan as a table, ``limit`` rows at most."""
    _check_numbers(limit=limit)
    lines = [f"{'#':>3} {'ZeRO':>4} {'tp':>2} {'pp':>2} {'offload':>7} {'LoRA':>6} {'critic':>8} "
             f"{'placement':>10} {'ckpt':>5} {'GB/GPU':>8} {'CPU GB':>8}"]
    for i, b in enumerate(rows[:limit], 1):
        place = b.placement + (f" {b.frozen_gpus}" if b.frozen_gpus else "")
        lora = f"{b.lora_fraction:g}" if b.lora_fraction else "-"
        lines.append(f"{i:>3} {b.zero_stage:>4} {b.tp:>2} {b.pp:>2} "
                     f"{'yes' if b.offload else 'no':>7} {lora:>6} {b.critic:>8} {place:>10} "
                     f"{'yes' if b.activation_checkpointing else 'no':>5}"
                     f" {b.per_gpu_gb:>8.2f} {b.cpu_bytes / GB:>8.1f}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    return "\n".join(lines)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rlhf-edu memory``."""
    add = parser.add_argument
    add("--model", default="llama-7b", help=f"{', '.join(PRESETS)} or a parameter count (7e9)")
    add("--gpus", type=int, default=None,
        help="number of GPUs in all (default: nodes x gpus-per-node, or 1)")
    add("--nodes", type=int, default=None,
        help="nodes: with it (or --gpus-per-node) also print each node's memory and the "
             "collectives of one step, the bytes that cross the node boundary and their time "
             "(data parallel: no --tp/--pp/--placement split/--generation-engine)")
    add("--gpus-per-node", type=int, default=None,
        help="GPUs per node (default: --gpus / --nodes, or 8)")
    add("--intra-bw", type=float, default=INTRA_BW_GBS, metavar="GB/S",
        help="intra-node bandwidth per GPU, one direction, GB/s (default %(default)g: NVLink 4 "
             "of an H100 SXM, 900 GB/s both ways, NVIDIA's datasheet)")
    add("--inter-bw", type=float, default=INTER_BW_GBS, metavar="GB/S",
        help="inter-node bandwidth per node, one direction, GB/s (default %(default)g: one "
             "400 Gb/s InfiniBand NDR NIC; a DGX H100 has eight, 400)")
    add("--updates", type=int, default=1,
        help="optimizer steps per RLHF step (PPO epochs x minibatches) for the collectives "
             "(default 1)")
    add("--gpu-mem", type=float, default=None,
        help="memory per GPU in GB (1e9 bytes): the limit of --plan (default 80); without "
             "--plan, say whether the breakdown fits in it")
    add("--cpu-mem", type=float, default=None,
        help="host memory for offload in GB: a limit of --plan; without --plan, say whether "
             "the offloaded optimizer fits in it")
    add("--zero", type=int, choices=ZERO_STAGES, default=0, help="ZeRO stage")
    add("--accounting", choices=ACCOUNTINGS, default="deepspeed",
        help="how ZeRO's model states are counted: deepspeed (its estimators, with their "
             "buffers), paper (the ZeRO paper, no buffers) or fsdp2 (PyTorch fully_shard)")
    add("--tp", type=int, default=None,
        help="tensor-parallel degree: must divide the model's heads, and tp x pp the GPUs "
             "(default 1; with --plan, try every degree up to 8)")
    add("--pp", type=int, default=None,
        help="pipeline stages: must divide the model's layers, and tp x pp the GPUs (default 1; "
             "with --plan, try every degree)")
    add("--sequence-parallel", action="store_true",
        help="split the activations tensor parallelism leaves whole (layer-norm inputs, "
             "dropout masks) along the sequence")
    add("--lora", type=float, default=None, metavar="FRACTION", help="train this fraction (LoRA)")
    add("--offload", action="store_true", help="optimizer states on the CPU")
    add("--method", choices=METHODS, default="online",
        help="online: generate, score, train (PPO, or GRPO/RLOO/REINFORCE++ with --critic none); "
             "verifier: the same scored by a program, no reward model (the arith task); "
             "dpo: a policy and a frozen reference on preference pairs (two models)")
    add("--critic", choices=CRITICS, default=None,
        help="separate, shared (a linear head on the actor's backbone), head (an MLP on its "
             "hidden states), or none (GRPO, RLOO, REINFORCE++: three models; also with "
             "--plan); default separate, none for dpo")
    add("--placement", choices=PLACEMENTS, default="colocate", help="where the models live")
    add("--frozen-gpus", type=int, default=None, help="GPUs for reward+reference (split)")
    add("--generation-engine", action="store_true",
        help="generate with a separate engine (vLLM, SGLang): a second copy of the actor's "
             "weights plus its KV cache")
    add("--rollout-batch", type=int, default=None,
        help="sequences the generation engine holds in its KV cache (default --batch)")
    add("--kv-bytes", type=int, default=None,
        help="bytes per KV-cache element of the generation engine (default 2, fp32: 4)")
    add("--batch", type=int, default=8, help="rollouts generated per GPU")
    add("--micro-batch", type=int, default=2,
        help="sequences (DPO: pairs) per training forward")
    add("--prompt-len", type=int, default=None, help="prompt tokens (min(256, ctx/2))")
    add("--response-len", type=int, default=None, help="response tokens (min(256, ctx/2))")
    add("--checkpointing", action="store_true", help="activation checkpointing")
    add("--chapter", action="store_true", help="the chapter's assumptions (its 7B table)")
    add("--json", action="store_true", help="print JSON")
    add("--plan", action="store_true",
        help="list the configurations that fit (it tries every ZeRO stage, offload, critic, "
             "placement, checkpointing and, unless given, tp and pp itself)")


# options that --plan enumerates itself, with their defaults: given with --plan, they are refused
_PLAN_TRIES = {"zero": 0, "offload": False, "critic": None, "placement": "colocate",
               "frozen_gpus": None, "checkpointing": False, "chapter": False}


def _fit_lines(bd: MemoryBreakdown, gpu_mem: float | None, cpu_mem: float | None) -> list[str]:
    """Whether ``bd`` fits the given GPU and host memory (GB), one line each."""
    lines = []
    if gpu_mem is not None:
        fits = bd.per_gpu_bytes <= gpu_mem * GB
        lines.append(f"fits in {gpu_mem:g} GB per GPU: {'yes' if fits else 'no'} "
                     f"({bd.per_gpu_gb:.2f} GB needed on the busiest GPU)")
    if cpu_mem is not None:
        fits = bd.cpu_bytes <= cpu_mem * GB
        lines.append(f"fits in {cpu_mem:g} GB of host memory: {'yes' if fits else 'no'} "
                     f"({bd.cpu_bytes / GB:.2f} GB offloaded)")
    return lines


def _describe(bd: MemoryBreakdown, name: str) -> str:
    """One line naming what ``bd`` assumes."""
    if bd.assumptions == "chapter":
        return f"{name}, the chapter's assumptions, 1 GPU"
    what = "DPO" if bd.method == "dpo" else f"critic {bd.critic}"
    return (f"{name}, {bd.accounting} accounting, {bd.n_gpus} GPU(s), ZeRO-{bd.zero_stage}, "
            f"tp {bd.tp}, pp {bd.pp}, {what}, {bd.placement}"
            + (", generation engine" if bd.generation_engine else ""))


def _resolve_gpus(args: argparse.Namespace) -> tuple[int, int | None]:
    """(GPUs in all, GPUs per node or None) from ``--gpus``, ``--nodes``, ``--gpus-per-node``;
    ``ValueError`` when they disagree or ask for communication the table cannot count."""
    if args.nodes is None and args.gpus_per_node is None:  # memory_breakdown checks n_gpus
        return (1 if args.gpus is None else args.gpus), None
    _check_numbers(**{"--gpus": args.gpus, "--nodes": args.nodes,
                      "--gpus-per-node": args.gpus_per_node})
    nodes = args.nodes or 1
    per_node = args.gpus_per_node or (8 if args.gpus is None else max(args.gpus // nodes, 1))
    if args.gpus is not None and args.gpus != nodes * per_node:
        raise ValueError(f"--gpus must be --nodes x --gpus-per-node = {nodes * per_node}, got "
                         f"{args.gpus}" if args.gpus_per_node else f"--gpus must be a "
                         f"multiple of --nodes={nodes}, got {args.gpus}")
    refused = [flag for flag, on in (("--tp", (args.tp or 1) > 1), ("--pp", (args.pp or 1) > 1),
                                     ("--placement split", args.placement == "split"),
                                     ("--generation-engine", args.generation_engine),
                                     ("--chapter", args.chapter)) if on]
    if refused and not args.plan:  # with --plan, --nodes only sets the GPUs
        raise ValueError(f"--nodes counts the collectives of data parallelism over every GPU; "
                         f"drop {', '.join(refused)} or drop --nodes/--gpus-per-node")
    _check_numbers(updates=args.updates, **{"--intra-bw": args.intra_bw,
                                           "--inter-bw": args.inter_bw})
    return nodes * per_node, per_node


def _node_report(bd: MemoryBreakdown, spec: ModelSpec, args: argparse.Namespace,
                 per_node: int) -> tuple[dict, str]:
    """Each node's memory and :func:`communication`'s rows for ``bd``: as a dict for
    ``--json`` and as text."""
    nodes = bd.n_gpus // per_node
    rows = communication(spec, nodes, per_node, bd.zero_stage, critic=bd.critic,
                         method=bd.method, updates=args.updates, intra_bw_gbs=args.intra_bw,
                         inter_bw_gbs=args.inter_bw, lora_fraction=bd.lora_fraction)
    node_bytes, host = bd.per_gpu_bytes * per_node, bd.cpu_bytes / nodes
    text = (f"per node: {node_bytes / GB:.2f} GB ({per_node} GPUs x {bd.per_gpu_gb:.2f} GB)"
            + (f" and {host / GB:.2f} GB of host memory (offload)" if bd.offload else "")
            + f"; {nodes} node(s), intra-node {args.intra_bw:g} GB/s per GPU, inter-node "
            f"{args.inter_bw:g} GB/s per node, {args.updates} update(s) per step\n"
            + (format_communication(rows) if rows else "no collectives (one GPU)"))
    return {"nodes": nodes, "gpus_per_node": per_node, "per_node_bytes": node_bytes,
            "per_node_cpu_bytes": host, "communication": rows}, text


def run_memory_cli(args: argparse.Namespace) -> int:
    """Print the breakdown (or the plan) the parsed ``args`` ask for; 2 on bad input.

    ``--gpu-mem``/``--cpu-mem`` are the limits of ``--plan``; without it they add a line that
    says whether the breakdown fits. Options ``--plan`` tries itself (``--zero``, ``--offload``,
    ``--critic`` other than none, ``--placement``, ``--frozen-gpus``, ``--checkpointing``) and
    ``--chapter`` are refused with ``--plan`` rather than silently ignored; ``--tp`` and
    ``--pp`` fix the degree ``--plan`` would otherwise try.
    """
    workload = dict(batch=args.batch, micro_batch=args.micro_batch, prompt_len=args.prompt_len,
                    response_len=args.response_len, rollout_batch=args.rollout_batch,
                    kv_dtype_bytes=args.kv_bytes)
    options = dict(accounting=args.accounting, sequence_parallel=args.sequence_parallel,
                   method=args.method, generation_engine=args.generation_engine)
    try:
        _check_numbers(**{"--gpu-mem": args.gpu_mem, "--cpu-mem": args.cpu_mem})
        n_gpus, per_node = _resolve_gpus(args)
        spec = parse_model(args.model)
        if args.plan:
            given = [k for k, default in _PLAN_TRIES.items() if getattr(args, k) != default
                     and not (k == "critic" and args.critic == "none")]
            if given:
                flags = ", ".join("--" + k.replace("_", "-") for k in given)
                raise ValueError(f"{flags} cannot be used with --plan, which tries every "
                                 "setting itself; drop them or drop --plan")
            rows = plan(spec, n_gpus, 80.0 if args.gpu_mem is None else args.gpu_mem,
                        cpu_mem_gb=args.cpu_mem, tp=args.tp, pp=args.pp,
                        critic_modes=("none",) if args.critic == "none" else None,
                        **options, **workload,
                        **({"lora_fraction": args.lora} if args.lora is not None else {}))
        else:
            bd = memory_breakdown(spec, n_gpus, args.zero, offload=args.offload,
                                  lora_fraction=args.lora, critic=args.critic,
                                  placement=args.placement, frozen_gpus=args.frozen_gpus,
                                  activation_checkpointing=args.checkpointing,
                                  assumptions="chapter" if args.chapter else "precise",
                                  tp=1 if args.tp is None else args.tp,
                                  pp=1 if args.pp is None else args.pp, **options, **workload)
        nodes = _node_report(bd, spec, args, per_node) if per_node and not args.plan else None
    except ValueError as e:
        print(f"rlhf-edu memory: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        if args.plan:
            print(json.dumps([b.to_dict() for b in rows], indent=1))
        else:
            d = bd.to_dict()
            if args.gpu_mem is not None:
                d.update(gpu_mem_gb=args.gpu_mem, fits=bd.per_gpu_bytes <= args.gpu_mem * GB)
            if args.cpu_mem is not None:
                d.update(cpu_mem_gb=args.cpu_mem, cpu_fits=bd.cpu_bytes <= args.cpu_mem * GB)
            print(json.dumps({**d, **(nodes[0] if nodes else {})}, indent=1))
    elif args.plan:
        gpu_mem = 80.0 if args.gpu_mem is None else args.gpu_mem
        where = f"{n_gpus // per_node} nodes x {per_node}" if per_node else f"{n_gpus}"
        print(f"{spec.name} ({spec.n_params / 1e9:.2f}B params) on {where} x "
              f"{gpu_mem:g} GB, {args.accounting} accounting: {len(rows)} configurations fit")
        print(format_plan(rows))
        if per_node:
            print(f"per node: GB/GPU x {per_node}; for a row's collectives across the nodes, run "
                  "it without --plan (--zero, --offload, --checkpointing, ...) and --nodes")
    else:
        print(_describe(bd, spec.name))
        print(format_breakdown(bd))
        for line in _fit_lines(bd, args.gpu_mem, args.cpu_mem):
            print(line)
        if nodes:
            print(nodes[1])
    return 0


__all__ = ["GB", "ITEMS", "ROLES", "CRITIC_MODES", "CRITICS", "METHODS", "ACCOUNTINGS",
           "PRESETS", "ModelSpec", "RoleMemory", "MemoryBreakdown", "model_states_bytes",
           "fsdp2_chunk_rows", "fsdp2_local_bytes", "memory_breakdown", "plan", "parse_model",
           "format_breakdown", "format_plan", "add_memory_arguments", "run_memory_cli",
           "communication", "format_communication", "INTRA_BW_GBS", "INTER_BW_GBS",
           "COUNT_MAX"]
