"""Exercise 10 (solution): the communication pattern between the models (Exercise 1.3).

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
"""

from __future__ import annotations

INT64, BOOL, FLOAT32, BF16 = 8, 1, 4, 2


def frozen_model_bytes(batch_size: int, prompt_len: int, response_len: int,
                       placement: dict[str, str]) -> dict[str, int]:
    """Ids and mask `(B, P + T)` out to each frozen model not on the actor's device; scores
    `(B,)` and reference log-probs `(B, T)` back, float32."""
    actor = placement.get("actor", "cuda:0")
    B, L, T = batch_size, prompt_len + response_len, response_len
    out = {}
    for role, back in (("reward", B * FLOAT32), ("reference", B * T * FLOAT32)):
        apart = placement.get(role, actor) != actor
        out[f"to_{role}"] = B * L * (INT64 + BOOL) if apart else 0  # ids + valid mask
        out[f"from_{role}"] = back if apart else 0
    return out


def ring_allreduce_bytes(grad_bytes: int, n_gpus: int) -> float:
    """2 (N - 1) rounds, one N-th of the gradients each: 2 (N - 1) / N x grad_bytes."""
    return 2 * (n_gpus - 1) / n_gpus * grad_bytes


def step_bytes(batch_size: int, prompt_len: int, response_len: int, placement: dict[str, str],
               trained_params: int, n_gpus: int = 1, grad_bytes_per_param: int = FLOAT32,
               optimizer_steps: int = 1, sync_params: int = 0,
               sync_bytes_per_param: int = BF16) -> dict[str, float]:
    """One step's bytes per GPU: frozen models, an all-reduce per optimizer step, one sync."""
    frozen = sum(frozen_model_bytes(batch_size, prompt_len, response_len, placement).values())
    grads = optimizer_steps * ring_allreduce_bytes(trained_params * grad_bytes_per_param,
                                                   n_gpus)
    sync = sync_params * sync_bytes_per_param
    return {"frozen_models": frozen, "gradient_allreduce": grads, "weight_sync": sync,
            "total": frozen + grads + sync}
