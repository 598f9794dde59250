"""Exercise 10: the communication pattern between the models (the chapter's Exercise 1.3).

Put the four models on different GPUs and some tensors must cross between them every step.
Count the bytes: what the frozen models receive and send back, what data parallelism adds
(the gradient all-reduce), and what a separate generation engine adds (the actor's weights).

=====================  ======  ===========================================================
Symbol                 Shape   Description
=====================  ======  ===========================================================
``batch_size``         int     B, responses in this GPU's batch
``prompt_len``         int     P, prompt width (left-padded)
``response_len``       int     T, response width; every model reads ids of width P + T
``placement``          dict    role -> device name, roles "actor", "critic", "reward",
                               "reference"; a role left out sits on the actor's device,
                               and the actor on "cuda:0" if it is left out too
``grad_bytes``         int     bytes of the gradients one GPU holds (one replica's)
``n_gpus``             int     N, data-parallel GPUs in the ring
``trained_params``     int     parameters that get gradients (actor + critic)
``optimizer_steps``    int     optimizer steps per RLHF step (PPO: epochs x minibatches)
``sync_params``        int     parameters copied to a separate generation engine after
                               each step (the actor's); 0 without an engine
=====================  ======  ===========================================================

What crosses, as ``rlhf_edu.trainer.RLHFTrainer`` moves it (``PPOConfig(placement=...)``):

* the reward model and the reference each get their own copy of the token ids ``(B, P + T)``
  int64 (8 B) and the valid mask ``(B, P + T)`` bool (1 B), when they are not on the actor's
  device; nothing crosses for a model beside the actor;
* back come the scores ``(B,)`` float32 from the reward model and the reference's log-probs
  of the sampled tokens ``(B, T)`` float32 (4 B each);
* the critic shares the actor's device (one PPO loss updates both): its values never cross.
* Data parallelism: after each backward pass the N GPUs average their gradients with a ring
  all-reduce, a reduce-scatter then an all-gather; in each of the 2 (N - 1) rounds a GPU
  sends one N-th of its gradients to its neighbour: 2 (N - 1) / N x ``grad_bytes`` sent
  (and as much received) per GPU, per optimizer step.
* A separate generation engine (vLLM, SGLang) must get the updated actor's weights once per
  RLHF step, in its own precision (bf16: 2 B per parameter).

Grade: ``rlhf-edu grade 10`` or ``pytest tests/exercises/test_ex10_communication.py``
(hand-made placements, a ring all-reduce simulated message by message, and a real step of
the trainer whose copies are recorded). Solution: ``solutions/ex10_communication.py``.
"""

from __future__ import annotations

# bytes per element of the dtypes that cross
INT64, BOOL, FLOAT32, BF16 = 8, 1, 4, 2


def frozen_model_bytes(batch_size: int, prompt_len: int, response_len: int,
                       placement: dict[str, str]) -> dict[str, int]:
    """Bytes crossing between devices for the frozen models in one step, as a dict with keys
    `"to_reward"`, `"from_reward"`, `"to_reference"`, `"from_reference"` (0 where that model
    sits on the actor's device).

    Hint: ids and mask are `(B, P + T)`: the frozen models read the prompt too. Scores are one
    number per response, log-probs one per response token. Compare each model's device with
    the ACTOR's device, which need not be "cuda:0".
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 10: count the bytes to and from the frozen models "
                              "(frozen_model_bytes in exercises/ex10_communication.py)")
    # ============================================================================


def ring_allreduce_bytes(grad_bytes: int, n_gpus: int) -> float:
    """Bytes one GPU sends in a ring all-reduce of `grad_bytes` over `n_gpus` GPUs.

    Hint: reduce-scatter then all-gather, each N - 1 rounds of one N-th of the gradients.
    One GPU alone sends nothing.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 10: count the bytes of a ring all-reduce "
                              "(ring_allreduce_bytes in exercises/ex10_communication.py)")
    # ============================================================================


def step_bytes(batch_size: int, prompt_len: int, response_len: int, placement: dict[str, str],
               trained_params: int, n_gpus: int = 1, grad_bytes_per_param: int = FLOAT32,
               optimizer_steps: int = 1, sync_params: int = 0,
               sync_bytes_per_param: int = BF16) -> dict[str, float]:
    """Bytes one GPU sends or receives in one RLHF step, by cause: a dict with keys
    `"frozen_models"` (the four entries of `frozen_model_bytes`, summed),
    `"gradient_allreduce"`, `"weight_sync"` and `"total"` (the sum of the three).

    Hint: the all-reduce runs after every backward pass, so once per optimizer step, over the
    gradients of the trained models only (the frozen ones have none). The engine gets the
    weights once per RLHF step, after the last update.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 10: add up one step's communication "
                              "(step_bytes in exercises/ex10_communication.py)")
    # ============================================================================
