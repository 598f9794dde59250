"""Exercise 6 (solution): how much GPU memory RLHF needs, and a plan for 70B on 8 x 80 GB.

================  =============================================================================
Symbol            Meaning
================  =============================================================================
Psi               parameters of one model (all four models have the actor's size here)
N                 GPUs the models are sharded over (ZeRO)
L                 parameters of the largest single layer (what ZeRO-3 gathers at once)
r                 LoRA fraction: the share of Psi that is trained (adapters)
GB                1e9 bytes, as in the chapter
================  =============================================================================
"""

from __future__ import annotations

GB = 1e9


def chapter_memory_gb(n_params: float) -> dict[str, float]:
    """The chapter's table, in GB: FP16 weights of the four models, Adam for the actor only,
    ~20 GB of activations per 7e9 parameters."""
    weights = 2 * n_params / GB  # FP16: 2 bytes per parameter, for each of the four models
    table = {
        "actor": weights,
        "critic": weights,
        "reward": weights,
        "reference": weights,
        "optimizer_states": 8 * n_params / GB,  # Adam's m and v in fp32, 4 + 4 bytes
        "activations": 20 * n_params / 7e9,  # the chapter's ~20 GB for a 7B model, scaled
    }
    table["total"] = sum(table.values())  # 7B: 4 * 14 + 56 + 20 = 132 GB ("~130 GB")
    return table


def trained_model_gb(n_params: float, zero_stage: int, n_gpus: int, largest_layer: float = 0.0,
                     lora_fraction: float | None = None) -> float:
    """GB per GPU of one trained model's weights, gradients, fp32 master weights and Adam
    moments, in mixed precision, with ZeRO ``zero_stage`` over ``n_gpus`` GPUs."""
    if lora_fraction is None:
        return _states_bytes(n_params, largest_layer, zero_stage, n_gpus) / GB
    # LoRA: only r * Psi adapter parameters are trained (their largest "layer" shrinks by r
    # too); the base model is frozen in bf16 and needs only its weights.
    adapters = _states_bytes(lora_fraction * n_params, lora_fraction * largest_layer,
                             zero_stage, n_gpus)
    base = _frozen_bytes(n_params, largest_layer, zero_stage, n_gpus)
    return (adapters + base) / GB


def _states_bytes(p: float, L: float, zero_stage: int, n: int) -> float:
    """Bytes per GPU of a fully trained model of ``p`` parameters (mixed-precision Adam)."""
    optimizer = 12 * p  # fp32 master weights (4 B) + Adam m and v (4 + 4 B)
    if zero_stage == 0:
        return 2 * p + 2 * p + optimizer  # bf16 weights + bf16 grads + optimizer: 16 B/param
    if zero_stage == 1:
        return 2 * p + 2 * p + optimizer / n  # the optimizer is sharded
    if zero_stage == 2:
        # bf16 gradients stay whole (reduced in buckets); an fp32 gradient partition is added
        return 2 * p + 2 * p + 4 * p / n + optimizer / n
    if zero_stage == 3:
        # everything sharded; one layer's bf16 weights and gradients gathered at a time
        return 2 * p / n + 2 * L + 4 * p / n + 2 * L + optimizer / n
    raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")


def _frozen_bytes(p: float, L: float, zero_stage: int, n: int) -> float:
    """Bytes per GPU of a frozen model's bf16 weights (sharded, too, under ZeRO-3)."""
    return 2 * p / n + 2 * L if zero_stage == 3 else 2 * p


def rlhf_memory_gb(n_params: float, zero_stage: int, n_gpus: int, largest_layer: float = 0.0,
                   lora_fraction: float | None = None) -> float:
    """GB per GPU of the four models of RLHF, colocated: actor and critic trained, reward
    model and reference frozen (activations, KV cache and logits not counted)."""
    trained = trained_model_gb(n_params, zero_stage, n_gpus, largest_layer, lora_fraction)
    frozen = _frozen_bytes(n_params, largest_layer, zero_stage, n_gpus) / GB
    return 2 * trained + 2 * frozen  # actor + critic, reward + reference


def fits(n_params: float, n_gpus: int, gpu_mem_gb: float, zero_stage: int,
         largest_layer: float = 0.0, lora_fraction: float | None = None,
         activations_gb: float = 0.0) -> bool:
    """Whether the four models plus ``activations_gb`` per GPU fit in ``gpu_mem_gb``."""
    need = rlhf_memory_gb(n_params, zero_stage, n_gpus, largest_layer, lora_fraction)
    return need + activations_gb <= gpu_mem_gb


def plan_70b() -> dict[str, object]:
    """Keyword arguments of ``rlhf_edu.memory.memory_breakdown`` that fit Llama-2-70B RLHF on
    8 GPUs of 80 GB with the default workload."""
    # Psi = 69e9. Full fine-tuning needs 36 B/param for the four models (16 + 16 + 2 + 2):
    # 2.5 TB, and even ZeRO-3 over 8 GPUs leaves 36 * 69e9 / 8 = 310 GB per GPU. So:
    # - LoRA (1 %): the trained models become frozen bf16 bases plus small adapters;
    # - ZeRO-3: the four bases are sharded, 4 * 2 * 69e9 / 8 = 69 GB per GPU, plus one
    #   gathered layer per model (4 * 2 * 0.27e9 = 2.1 GB) and the adapters' states;
    # - that leaves ~8 GB for activations, too tight: a critic sharing the actor's backbone
    #   drops one 70B copy (-17 GB per GPU), and activation checkpointing keeps only each
    #   layer's input. Result: about 59 GB per GPU (rlhf-edu memory --model llama-70b
    #   --gpus 8 --zero 3 --lora 0.01 --critic shared --checkpointing).
    return {"zero_stage": 3, "lora_fraction": 0.01, "critic": "shared",
            "activation_checkpointing": True}
