"""Exercise 6: how much GPU memory RLHF needs, and a plan for 70B on 8 x 80 GB.

The chapter ends on "memory is the bottleneck": RLHF holds four models at once. First redo the
chapter's table, then count properly with mixed-precision Adam and ZeRO sharding, and finally
plan the chapter's Exercise 3: RLHF of a 70B model on 8 GPUs of 80 GB.

================  =============================================================================
Symbol            Meaning
================  =============================================================================
Psi               parameters of one model (all four models have the actor's size here)
N                 GPUs the models are sharded over (ZeRO)
L                 parameters of the largest single layer (what ZeRO-3 gathers at once)
r                 LoRA fraction: the share of Psi that is trained (adapters)
GB                1e9 bytes, as in the chapter
================  =============================================================================

Bytes per parameter in mixed precision (Rajbhandari et al. 2020, "ZeRO",
https://arxiv.org/abs/1910.02054): bf16 weights 2, bf16 gradients 2, fp32 master weights 4,
Adam's two fp32 moments 4 + 4: 16 bytes for a trained model, 2 for a frozen one.

Grade: ``rlhf-edu grade 6`` or ``pytest tests/exercises/test_ex06_memory.py`` (against
``rlhf_edu.memory.memory_breakdown``; try ``rlhf-edu memory --help`` to explore).
Solution: ``solutions/ex06_memory.py``.
"""

from __future__ import annotations

GB = 1e9


def chapter_memory_gb(n_params: float) -> dict[str, float]:
    """The chapter's memory table for a model of ``n_params`` parameters, in GB.

    Task: return ``{"actor", "critic", "reward", "reference", "optimizer_states",
    "activations", "total"}`` under the chapter's assumptions: each of the four models holds
    its weights in FP16; the optimizer states are Adam's two fp32 moments, counted for the
    actor only; activations take about 20 GB per 7e9 parameters (scale linearly); ``total`` is
    the sum of the other six.

    Hint: for 7e9 parameters the chapter gets 14 GB per model, 56 GB of optimizer states,
    20 GB of activations, ~130 GB in total; for 70e9, ~1.3 TB.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 6: redo the chapter's memory table "
                              "(chapter_memory_gb in exercises/ex06_memory.py)")
    # ============================================================================


def trained_model_gb(n_params: float, zero_stage: int, n_gpus: int, largest_layer: float = 0.0,
                     lora_fraction: float | None = None) -> float:
    """GB per GPU of ONE trained model's weights, gradients, master weights and Adam moments.

    ZeRO stages over N GPUs (DeepSpeed's accounting):

    * 0: nothing is sharded: 16 Psi bytes per GPU.
    * 1: the fp32 master weights and Adam moments (12 B/param) are split over the N GPUs.
    * 2: as 1, and gradients are sharded too; DeepSpeed still holds the bf16 gradients whole
      (they are reduced in buckets) and adds an fp32 gradient partition of 4 Psi / N.
    * 3: everything is sharded: bf16 weights 2 Psi / N, gradients only as the fp32 partition
      4 Psi / N, master and Adam 12 Psi / N; and one layer at a time is gathered in full,
      which adds 2 L bytes of bf16 weights and 2 L of bf16 gradients.

    With LoRA (``lora_fraction`` r): the base model is frozen in bf16 (2 Psi bytes; under
    ZeRO-3 2 Psi / N + 2 L), and only r * Psi adapter parameters are trained, as above, with
    a largest layer of r * L.

    Hint: write one helper for a fully trained model of p parameters and one for a frozen one;
    LoRA is the sum of both.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 6: per-GPU memory of one trained model under ZeRO "
                              "(trained_model_gb in exercises/ex06_memory.py)")
    # ============================================================================


def rlhf_memory_gb(n_params: float, zero_stage: int, n_gpus: int, largest_layer: float = 0.0,
                   lora_fraction: float | None = None) -> float:
    """GB per GPU of the four models of RLHF on the same GPUs: actor and critic trained (as in
    ``trained_model_gb``), reward model and reference frozen in bf16 (sharded too under
    ZeRO-3). Activations, KV cache and logits are not counted here.

    Hint: 7B, ZeRO-0, one GPU: 16 + 16 + 2 + 2 = 36 bytes per parameter.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 6: per-GPU memory of the four RLHF models "
                              "(rlhf_memory_gb in exercises/ex06_memory.py)")
    # ============================================================================


def fits(n_params: float, n_gpus: int, gpu_mem_gb: float, zero_stage: int,
         largest_layer: float = 0.0, lora_fraction: float | None = None,
         activations_gb: float = 0.0) -> bool:
    """True if the four models (``rlhf_memory_gb``) plus ``activations_gb`` per GPU (the
    activations, KV cache and logits) fit in ``gpu_mem_gb`` per GPU."""
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 6: does the configuration fit? "
                              "(fits in exercises/ex06_memory.py)")
    # ============================================================================


def plan_70b() -> dict[str, object]:
    """The chapter's Exercise 3: a plan for RLHF of Llama-2-70B on 8 GPUs of 80 GB.

    Task: return keyword arguments for ``rlhf_edu.memory.memory_breakdown(spec, n_gpus=8,
    **plan)`` (spec = ``ModelSpec.preset("llama-70b")``, default workload) under which the
    busiest GPU needs at most 80 GB. Allowed keys: ``zero_stage`` (0-3), ``offload`` (bool,
    optimizer states in CPU memory, needs ZeRO >= 1), ``lora_fraction`` (e.g. 0.01),
    ``critic`` ("separate", "shared": a value head on the actor's backbone, "head"),
    ``placement`` ("colocate", "split": reward and reference on their own GPUs),
    ``activation_checkpointing`` (bool).

    Hint: start from full fine-tuning and ask what is too big (``rlhf_memory_gb`` helps), then
    add the fewest compromises. ``rlhf-edu memory --model llama-70b --gpus 8 --zero 3 ...``
    prints the breakdown of a configuration; the graded test prints it when yours does not fit.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 6: plan RLHF of a 70B model on 8 x 80 GB "
                              "(plan_70b in exercises/ex06_memory.py)")
    # ============================================================================
