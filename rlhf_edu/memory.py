"""How much GPU memory RLHF needs: the four models, their training state, and the rollout.

The chapter ends on "memory is the bottleneck". This module redoes its table and then does the
accounting properly, per model role (actor, critic, reward, reference) and per item, per GPU.
All sizes are bytes; ``GB = 1e9`` bytes (decimal, as the chapter uses; an "80 GB" card holds
80 GiB = 85.9 GB, part of which CUDA and fragmentation take).

``assumptions="chapter"`` reproduces the chapter's table: FP16 weights (2 B/param) for all four
models, Adam's two fp32 moments (8 B/param) for the actor only, activations ~20 GB per 7e9
parameters, and the round size in the model's name ("7B" = 7e9 params): 14·4 + 56 + 20 = 132 GB
(~130) for 7B and 140·4 + 560 + 200 = 1320 GB (~1.3 TB) for 70B.

``assumptions="precise"`` (the default), Ψ parameters, N GPUs sharing a model:

* trained model, mixed-precision Adam (Rajbhandari et al. 2020, "ZeRO"): 2 B bf16 weights + 2 B
  grads + 4 B fp32 master weights + 4 + 4 B Adam moments = 16 B/param; a frozen model 2 B/param;
  four equal models, two trained: 16 + 16 + 2 + 2 = 36 B/param. ``precision="fp32"``: 4 B weights,
  4 B grads, 8 B Adam, no master copy (a frozen model 4 B/param).
* ZeRO over N GPUs, model states per GPU (DeepSpeed's estimators ``estimate_zero2/3_model_states_
  mem_needs`` for stages 2 and 3; the paper's P_os for stage 1; L = largest layer's params):
  ZeRO-0 16Ψ; ZeRO-1 4Ψ + 12Ψ/N (optimizer and master sharded); ZeRO-2 4Ψ + 16Ψ/N (DeepSpeed
  also keeps an fp32 gradient partition, 4Ψ/N, so its ZeRO-2 is never below the paper's ZeRO-1);
  ZeRO-3 4L + 18Ψ/N (weights 2Ψ/N, fp32 grads 4Ψ/N, optimizer 12Ψ/N, one gathered layer 4L).
  CPU offload of the optimizer moves master weights, Adam and fp32 grads to the CPU: per GPU
  2Ψ (stages 1-2) or 4L + 2Ψ/N (stage 3). Frozen models are sharded too under ZeRO-3.
* LoRA: a fraction r of Ψ is trained (adapters, 16 B each); the base stays frozen in bf16.
* activations per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", eq. 2): s·b·h·(34 + 5·a·s/h) bytes in 16 bit without recomputation
  (the 5as/h term is the attention matrix, gone with FlashAttention); with full activation
  checkpointing only each layer's input, 2·s·b·h. s = prompt + response, b = micro-batch,
  h hidden size, a heads. A frozen model's no-grad forward holds at most one layer of them.
* generation KV cache: 2·layers·hidden_kv·(prompt + response)·batch·bytes (hidden_kv = kv heads ×
  head size, for GQA); the B·T·V log-softmax logits in fp32 (4 B) for actor and reference.

Everything is added up as if resident at once, an upper bound: in a sequential RLHF step the KV
cache is freed before the training forward. ``plan()`` enumerates ZeRO stage, offload, LoRA,
critic sharing, placement ("colocate": all four models on every GPU; "split": reward and
reference on their own k GPUs) and checkpointing, and keeps what fits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace

from .validate import check_bool, check_float, check_int, shown

GB = 1e9  # decimal gigabyte, as in the chapter
ITEMS = ("weights", "gradients", "optimizer_states", "master_weights", "activations", "kv_cache",
         "logits")
ROLES = ("actor", "critic", "reward", "reference")
CRITIC_MODES = ("separate", "shared", "head")
PLACEMENTS = ("colocate", "split")
CHAPTER_ACTIVATIONS = (20, 7)  # the chapter's ~20 GB of activations per 7e9 params
_BYTES = {"mixed": (2, 2, 4, 8), "fp32": (4, 4, 0, 8)}  # weights, grads, master, Adam per param


# The one place memory.py checks its numbers: each name's rule. Counts are ints >= 1 (a float
# is refused, even 2.0); sizes in GB are finite floats > 0; None passes where it means a default.
_COUNTS = ("n_layer", "n_embd", "n_head", "vocab_size", "block_size", "n_params", "n_kv_head",
           "nominal_params", "n_gpus", "frozen_gpus", "batch", "micro_batch", "prompt_len",
           "response_len", "dtype_bytes")
_MAY_BE_NONE = ("n_params", "n_kv_head", "nominal_params", "frozen_gpus", "prompt_len",
                "response_len", "dtype_bytes", "lora_fraction", "cpu_mem_gb")


def _check_numbers(**values: object) -> None:
    """Check each named number by its rule (see ``_COUNTS``); ``ValueError`` naming the first
    bad one, its value and what was expected."""
    for name, value in values.items():
        none_ok = name in _MAY_BE_NONE
        if name in ("--gpu-mem", "--cpu-mem"):  # the CLI's names: None is "not given"
            check_float(name, value, minimum=0, strict_min=True, none_ok=True)
        elif name in _COUNTS:
            check_int(name, value, minimum=1, none_ok=none_ok)
        elif name in ("gpu_mem_gb", "cpu_mem_gb"):
            check_float(name, value, minimum=0, strict_min=True, none_ok=none_ok)
        elif name == "lora_fraction":
            check_float(name, value, minimum=0, maximum=1, strict_min=True, none_ok=True)
        elif name in ("params", "largest_layer"):  # may be fractional (a LoRA share) or 0
            check_float(name, value, minimum=0)
        elif name in ("offload", "activation_checkpointing"):
            check_bool(name, value)
        elif name == "zero_stage":  # the type here; the stages are checked by _one_of
            check_int(name, value)
        elif name == "limit":
            check_int(name, value, minimum=0)
        else:
            raise AssertionError(f"no rule for {name}")  # a programming error, not bad input


def _one_of(name: str, value: object, allowed: tuple) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, "
                         f"got {shown(value)}")


def _check_spec(name: str, spec: object, none_ok: bool = False) -> None:
    if not (isinstance(spec, ModelSpec) or (none_ok and spec is None)):
        raise ValueError(f"{name} must be a ModelSpec{' or None' if none_ok else ''} (e.g. "
                         f"ModelSpec.preset('llama-7b')), got {type(spec).__name__}")


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
        """A model of ``n_params`` >= 1 parameters, shaped like the preset nearest in size."""
        check_float("n_params", n_params, minimum=1)
        near = min(PRESETS, key=lambda k: abs(math.log(n_params / cls.preset(k).n_params)))
        return replace(cls.preset(near), name=f"{n_params:.3g} params", n_params=int(n_params),
                       nominal_params=int(n_params))

    @classmethod
    def preset(cls, name: str) -> ModelSpec:
        """One of :data:`PRESETS`: "toy", "gpt2", "llama-7b", "llama-13b", "llama-70b"."""
        _one_of("preset", name, tuple(PRESETS))
        return PRESETS[name]


_TOY = SimpleNamespace(n_layer=3, n_head=4, n_embd=128, vocab_size=64, block_size=48)  # GPTConfig()

PRESETS: dict[str, ModelSpec] = {
    "toy": ModelSpec.from_gpt_config(_TOY, name="toy"),
    "gpt2": ModelSpec("gpt2", 12, 768, 12, 50257, 1024, nominal_params=124_000_000),
    # Llama 2 (Touvron et al. 2023): exact parameter counts of the released checkpoints
    "llama-7b": ModelSpec("llama-7b", 32, 4096, 32, 32000, 4096, 6_738_415_616, None, 7 * 10**9),
    "llama-13b": ModelSpec("llama-13b", 40, 5120, 40, 32000, 4096, 13_015_864_320, None,
                           13 * 10**9),
    "llama-70b": ModelSpec("llama-70b", 80, 8192, 64, 32000, 4096, 68_976_648_192, 8, 70 * 10**9),
}


@dataclass
class RoleMemory:
    """Bytes per GPU of one role on each of the ``gpus`` GPUs that hold it."""

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


def model_states_bytes(n_params: float, largest_layer: float, zero_stage: int, n_gpus: int,
                       offload: bool = False, precision: str = "mixed") -> dict[str, float]:
    """Weights, gradients, optimizer states and master weights per GPU of one trained model
    sharded by ZeRO over ``n_gpus`` (see the module docstring), plus ``"cpu"`` if offloaded."""
    _check_numbers(params=n_params, largest_layer=largest_layer, zero_stage=zero_stage,
                   n_gpus=n_gpus, offload=offload)
    _one_of("zero_stage", zero_stage, (0, 1, 2, 3))
    _one_of("precision", precision, tuple(_BYTES))
    if offload and zero_stage == 0:
        raise ValueError("offload needs zero_stage >= 1, got 0")
    w, g, m, a = _BYTES[precision]
    p, L, n = n_params, largest_layer, n_gpus
    fp32_grads = 4 if m else 0  # mixed precision: the optimizer's fp32 gradient partition
    shard = n if zero_stage else 1
    out = {"master_weights": m * p / shard, "optimizer_states": a * p / shard}
    if zero_stage < 3:
        out["weights"] = w * p
        out["gradients"] = g * p + (fp32_grads * p / n if zero_stage == 2 else 0)
    else:  # everything sharded; one layer's weights and grads gathered at a time
        out["weights"] = w * p / n + w * L
        out["gradients"] = (fp32_grads or g) * p / n + g * L
    out["cpu"] = 0.0
    if offload:  # DeepSpeed keeps only bf16 weights (and, at stage 3, one gathered layer)
        out["cpu"] = out["master_weights"] + out["optimizer_states"] + fp32_grads * p / n
        out["gradients"] = g * L if zero_stage == 3 else 0.0
        out["master_weights"] = out["optimizer_states"] = 0.0
    return out


def _frozen_bytes(n_params: float, largest_layer: float, zero_stage: int, n: int, w: int) -> float:
    if zero_stage < 3 or n_params == 0:
        return w * n_params
    return w * n_params / n + w * largest_layer  # sharded, one layer gathered at a time


def _activations(spec: ModelSpec, seq: int, micro_batch: int, checkpointing: bool,
                 dtype_bytes: int, layers: int) -> float:
    s, b, h, a = seq, micro_batch, spec.n_embd, spec.n_head
    per_layer = 2 * s * b * h if checkpointing else s * b * h * (34 + 5 * a * s / h)
    return per_layer * layers * dtype_bytes / 2  # Korthikanti et al. count 16-bit activations


def _chapter(spec: ModelSpec) -> dict[str, RoleMemory]:
    n = spec.nominal_params or spec.n_params
    roles = {r: RoleMemory(r, spec.name, n, 0, 1, "all", weights=2 * n) for r in ROLES}
    actor = roles["actor"]
    actor.trainable_params, actor.optimizer_states = n, 8 * n
    actor.activations = n * CHAPTER_ACTIVATIONS[0] // CHAPTER_ACTIVATIONS[1]
    return roles


def memory_breakdown(spec: ModelSpec, n_gpus: int = 1, zero_stage: int = 0, *,
                     assumptions: str = "precise", offload: bool = False,
                     lora_fraction: float | None = None, critic: str = "separate",
                     placement: str = "colocate", frozen_gpus: int | None = None,
                     critic_spec: ModelSpec | None = None, reward_spec: ModelSpec | None = None,
                     batch: int = 8, micro_batch: int = 2, prompt_len: int | None = None,
                     response_len: int | None = None, activation_checkpointing: bool = False,
                     precision: str = "mixed", dtype_bytes: int | None = None) -> MemoryBreakdown:
    """Memory of one RLHF step with actor ``spec`` (reference = a copy of it).

    ``batch`` rollouts per GPU are generated (KV cache); training and scoring run ``micro_batch``
    sequences of ``prompt_len + response_len`` tokens (None: min(256, block_size // 2) each).
    ``critic``: "separate" (its own model, ``critic_spec``, default the actor's shape plus a value
    head), "shared" (the actor's backbone, a linear head extra) or "head" (an MLP head on the
    actor's detached hidden states).
    ``placement="split"`` puts reward and reference on ``frozen_gpus`` GPUs (None: the split
    that minimises per-GPU memory) and the trained models on the rest. ``dtype_bytes`` of
    activations and KV cache defaults to 2 (mixed) or 4 (fp32).
    """
    _check_spec("spec", spec)
    prompt_len = min(256, spec.block_size // 2) if prompt_len is None else prompt_len
    response_len = min(256, spec.block_size // 2) if response_len is None else response_len
    args = dict(locals())
    _check_spec("critic_spec", critic_spec, none_ok=True)
    _check_spec("reward_spec", reward_spec, none_ok=True)
    _check_numbers(n_gpus=n_gpus, zero_stage=zero_stage, offload=offload,
                   lora_fraction=lora_fraction, frozen_gpus=frozen_gpus, batch=batch,
                   micro_batch=micro_batch, prompt_len=prompt_len, response_len=response_len,
                   activation_checkpointing=activation_checkpointing, dtype_bytes=dtype_bytes)
    _one_of("assumptions", assumptions, ("precise", "chapter"))
    _one_of("zero_stage", zero_stage, (0, 1, 2, 3))
    _one_of("critic", critic, CRITIC_MODES)
    _one_of("placement", placement, PLACEMENTS)
    _one_of("precision", precision, tuple(_BYTES))
    if prompt_len + response_len > spec.block_size:
        raise ValueError(f"prompt_len + response_len must be <= block_size={spec.block_size}, "
                         f"got {prompt_len + response_len}")
    if assumptions == "chapter":
        seed = dict(n_gpus=1, zero_stage=0, offload=False, critic="separate", lora_fraction=None,
                    placement="colocate", critic_spec=None, reward_spec=None, precision="mixed")
        for k, v in seed.items():
            if args[k] != v:
                raise ValueError(f"assumptions='chapter' is the chapter's single-GPU table; "
                                 f"{k} must be {v!r}, got {args[k]!r}")
        return MemoryBreakdown(_chapter(spec), "chapter", 1)
    if frozen_gpus is not None and placement != "split":
        raise ValueError(f"frozen_gpus needs placement='split', got placement={placement!r}")
    if placement == "split":
        if n_gpus < 2:
            raise ValueError(f"placement='split' needs n_gpus >= 2, got {n_gpus}")
        if frozen_gpus is None:  # the split that balances the two groups best
            return _best_split(lambda k: memory_breakdown(**{**args, "frozen_gpus": k}), n_gpus)
        if not 0 < frozen_gpus < n_gpus:
            raise ValueError(f"frozen_gpus must be in 1..{n_gpus - 1}, got {frozen_gpus}")
    if critic != "separate" and critic_spec is not None:
        raise ValueError(f"critic_spec needs critic='separate', got critic={critic!r}")
    if dtype_bytes is None:
        dtype_bytes = 2 if precision == "mixed" else 4

    k = frozen_gpus if placement == "split" else 0
    n_train, n_frozen = n_gpus - k, k or n_gpus
    group_t, group_f = ("trained", "frozen") if k else ("all", "all")
    seq = prompt_len + response_len
    w_frozen = _BYTES[precision][0]

    def trained(role: str, s: ModelSpec, lora: float | None, head: int = 0) -> RoleMemory:
        """A trained model ``s`` (with LoRA: a frozen base plus ``lora``·Ψ adapters), or, with
        ``head`` > 0, only a head of that many parameters on the actor's hidden states."""
        n_base = s.n_params if lora else 0
        n_trained = head or (round(lora * s.n_params) if lora else s.n_params)
        largest = head or (lora * s.largest_layer if lora else s.largest_layer)
        states = model_states_bytes(n_trained, largest, zero_stage, n_train, offload, precision)
        states["weights"] += _frozen_bytes(n_base, s.largest_layer, zero_stage, n_train, w_frozen)
        act = _activations(s, seq, micro_batch, activation_checkpointing, dtype_bytes,
                           0 if head else s.n_layer)
        return RoleMemory(role, s.name if not head else f"{critic} head", n_base + n_trained,
                          n_trained, n_train, group_t, activations=act, **states)

    def frozen(role: str, s: ModelSpec) -> RoleMemory:
        act = _activations(s, seq, micro_batch, False, dtype_bytes, 1)  # one layer at a time
        return RoleMemory(role, s.name, s.n_params, 0, n_frozen, group_f, activations=act,
                          weights=_frozen_bytes(s.n_params, s.largest_layer, zero_stage,
                                                n_frozen, w_frozen))

    C = spec.n_embd
    roles = {"actor": trained("actor", spec, lora_fraction)}
    if critic == "separate":
        roles["critic"] = trained("critic", critic_spec or spec.with_head(), lora_fraction)
    else:  # a linear head ("shared") or a C→C→1 MLP ("head"), trained in full
        roles["critic"] = trained("critic", spec, None, C + 1 if critic == "shared"
                                  else C * C + 2 * C + 1)
    roles["reward"] = frozen("reward", reward_spec or spec.with_head())
    roles["reference"] = frozen("reference", spec)

    kv_hidden = C * spec.n_kv_head // spec.n_head
    roles["actor"].kv_cache = 2 * spec.n_layer * kv_hidden * seq * batch * dtype_bytes
    for r in ("actor", "reference"):
        roles[r].logits = micro_batch * seq * spec.vocab_size * 4  # fp32 log-softmax
    settings = dict(batch=batch, micro_batch=micro_batch, prompt_len=prompt_len,
                    response_len=response_len, precision=precision, dtype_bytes=dtype_bytes)
    return MemoryBreakdown(roles, "precise", n_gpus, zero_stage, offload, lora_fraction, critic,
                           placement, k, activation_checkpointing, settings)


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


def plan(spec: ModelSpec, n_gpus: int = 8, gpu_mem_gb: float = 80.0, *,
         lora_fraction: float = 0.01, critic_modes: tuple[str, ...] = ("separate", "shared"),
         critic_spec: ModelSpec | None = None, reward_spec: ModelSpec | None = None,
         cpu_mem_gb: float | None = None, **workload: int | str) -> list[MemoryBreakdown]:
    """Every configuration whose busiest GPU needs at most ``gpu_mem_gb`` (1e9 bytes) and,
    if ``cpu_mem_gb`` is given, whose offloaded optimizer fits in that much host memory.

    Enumerates ZeRO stage 0-3, optimizer offload (stage >= 1), full fine-tuning or LoRA with
    ``lora_fraction``, the ``critic_modes`` (default without "head", which trains a C×C MLP
    where "shared" trains a C-vector), colocated or split placement, and activation
    checkpointing. ``workload`` (batch, micro_batch, prompt_len, response_len, precision,
    dtype_bytes) goes to :func:`memory_breakdown`.
    Sorted fewest compromises first: full fine-tuning, a separate critic, no offload, a lower
    ZeRO stage (less communication), no recomputation, colocation; then by per-GPU memory.
    """
    _check_spec("spec", spec)
    _check_numbers(n_gpus=n_gpus, gpu_mem_gb=gpu_mem_gb, cpu_mem_gb=cpu_mem_gb,
                   lora_fraction=lora_fraction)
    if lora_fraction is None:
        raise ValueError("lora_fraction must be a number in (0, 1], got None")
    if isinstance(critic_modes, str) or not isinstance(critic_modes, (tuple, list)) \
            or not critic_modes or any(c not in CRITIC_MODES for c in critic_modes):
        raise ValueError(f"critic_modes must be a non-empty tuple of {', '.join(CRITIC_MODES)}, "
                         f"got {shown(critic_modes)}")
    unknown = sorted(set(workload) - {"batch", "micro_batch", "prompt_len", "response_len",
                                      "precision", "dtype_bytes"})
    if unknown:
        raise ValueError(f"unknown workload setting(s) {unknown}; expected batch, micro_batch, "
                         "prompt_len, response_len, precision, dtype_bytes")
    fits = []
    for zero, offload, lora, critic, placement, ckpt in itertools.product(
            (0, 1, 2, 3), (False, True), (None, lora_fraction), critic_modes, PLACEMENTS,
            (False, True)):
        if (offload and zero == 0) or (placement == "split" and n_gpus < 2):
            continue
        bd = memory_breakdown(spec, n_gpus, zero, offload=offload, lora_fraction=lora,
                              critic=critic, placement=placement, reward_spec=reward_spec,
                              critic_spec=critic_spec if critic == "separate" else None,
                              activation_checkpointing=ckpt, **workload)
        if bd.per_gpu_bytes <= gpu_mem_gb * GB and bd.cpu_bytes <= (cpu_mem_gb or math.inf) * GB:
            fits.append(bd)
    return sorted(fits, key=lambda b: (b.lora_fraction is not None, CRITIC_MODES.index(b.critic),
                                       b.offload, b.zero_stage, b.activation_checkpointing,
                                       b.placement == "split", b.per_gpu_bytes))


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
    lines = [f"{'#':>3} {'ZeRO':>4} {'offload':>7} {'LoRA':>6} {'critic':>8} {'placement':>10} "
             f"{'ckpt':>5} {'GB/GPU':>8} {'CPU GB':>8}"]
    for i, b in enumerate(rows[:limit], 1):
        place = b.placement + (f" {b.frozen_gpus}" if b.frozen_gpus else "")
        lora = f"{b.lora_fraction:g}" if b.lora_fraction else "-"
        lines.append(f"{i:>3} {b.zero_stage:>4} {'yes' if b.offload else 'no':>7} {lora:>6} "
                     f"{b.critic:>8} {place:>10} {'yes' if b.activation_checkpointing else 'no':>5}"
                     f" {b.per_gpu_gb:>8.2f} {b.cpu_bytes / GB:>8.1f}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    return "\n".join(lines)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rlhf-edu memory``."""
    add = parser.add_argument
    add("--model", default="llama-7b", help=f"{', '.join(PRESETS)} or a parameter count (7e9)")
    add("--gpus", type=int, default=1, help="number of GPUs")
    add("--gpu-mem", type=float, default=None,
        help="memory per GPU in GB (1e9 bytes): the limit of --plan (default 80); without "
             "--plan, say whether the breakdown fits in it")
    add("--cpu-mem", type=float, default=None,
        help="host memory for offload in GB: a limit of --plan; without --plan, say whether "
             "the offloaded optimizer fits in it")
    add("--zero", type=int, choices=(0, 1, 2, 3), default=0, help="ZeRO stage")
    add("--lora", type=float, default=None, metavar="FRACTION", help="train this fraction (LoRA)")
    add("--offload", action="store_true", help="optimizer states on the CPU")
    add("--critic", choices=CRITIC_MODES, default="separate", help="critic sharing")
    add("--placement", choices=PLACEMENTS, default="colocate", help="where the models live")
    add("--frozen-gpus", type=int, default=None, help="GPUs for reward+reference (split)")
    add("--batch", type=int, default=8, help="rollouts generated per GPU")
    add("--micro-batch", type=int, default=2, help="sequences per training forward")
    add("--prompt-len", type=int, default=None, help="prompt tokens (min(256, ctx/2))")
    add("--response-len", type=int, default=None, help="response tokens (min(256, ctx/2))")
    add("--checkpointing", action="store_true", help="activation checkpointing")
    add("--chapter", action="store_true", help="the chapter's assumptions (its 7B table)")
    add("--json", action="store_true", help="print JSON")
    add("--plan", action="store_true",
        help="list the configurations that fit (it tries every ZeRO stage, offload, critic, "
             "placement and checkpointing itself)")


# options that --plan enumerates itself, with their defaults: given with --plan, they are refused
_PLAN_TRIES = {"zero": 0, "offload": False, "critic": "separate", "placement": "colocate",
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


def run_memory_cli(args: argparse.Namespace) -> int:
    """Print the breakdown (or the plan) the parsed ``args`` ask for; 2 on bad input.

    ``--gpu-mem``/``--cpu-mem`` are the limits of ``--plan``; without it they add a line that
    says whether the breakdown fits. Options ``--plan`` tries itself (``--zero``, ``--offload``,
    ``--critic``, ``--placement``, ``--frozen-gpus``, ``--checkpointing``) and ``--chapter``
    are refused with ``--plan`` rather than silently ignored.
    """
    workload = dict(batch=args.batch, micro_batch=args.micro_batch, prompt_len=args.prompt_len,
                    response_len=args.response_len)
    try:
        _check_numbers(**{"--gpu-mem": args.gpu_mem, "--cpu-mem": args.cpu_mem})
        spec = parse_model(args.model)
        if args.plan:
            given = [k for k, default in _PLAN_TRIES.items() if getattr(args, k) != default]
            if given:
                flags = ", ".join("--" + k.replace("_", "-") for k in given)
                raise ValueError(f"{flags} cannot be used with --plan, which tries every "
                                 "setting itself; drop them or drop --plan")
            rows = plan(spec, args.gpus, 80.0 if args.gpu_mem is None else args.gpu_mem,
                        cpu_mem_gb=args.cpu_mem, **workload,
                        **({"lora_fraction": args.lora} if args.lora is not None else {}))
        else:
            bd = memory_breakdown(spec, args.gpus, args.zero, offload=args.offload,
                                  lora_fraction=args.lora, critic=args.critic,
                                  placement=args.placement, frozen_gpus=args.frozen_gpus,
                                  activation_checkpointing=args.checkpointing,
                                  assumptions="chapter" if args.chapter else "precise",
                                  **workload)
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
            print(json.dumps(d, indent=1))
    elif args.plan:
        gpu_mem = 80.0 if args.gpu_mem is None else args.gpu_mem
        print(f"{spec.name} ({spec.n_params / 1e9:.2f}B params) on {args.gpus} x "
              f"{gpu_mem:g} GB: {len(rows)} configurations fit")
        print(format_plan(rows))
    else:
        print(f"{spec.name}, {bd.assumptions} accounting, {bd.n_gpus} GPU(s), ZeRO-{bd.zero_stage}"
              f", critic {bd.critic}, {bd.placement}")
        print(format_breakdown(bd))
        for line in _fit_lines(bd, args.gpu_mem, args.cpu_mem):
            print(line)
    return 0


__all__ = ["GB", "ITEMS", "PRESETS", "ModelSpec", "RoleMemory", "MemoryBreakdown",
           "model_states_bytes", "memory_breakdown", "plan", "parse_model", "format_breakdown",
           "format_plan", "add_memory_arguments", "run_memory_cli"]
