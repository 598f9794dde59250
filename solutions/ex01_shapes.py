"""Exercise 1 (solution): the tensors and forward passes of one RLHF step.

The chapter's Exercise 1 asks for the shapes and the number of forward passes of one step
with a batch of 4 prompts and responses of 100 tokens. Nothing needs to run: each shape follows
from what a tensor holds, and each pass count from the order of the six phases.

=========  ======================  =====================================================
Symbol     Meaning                 Example (chapter)
=========  ======================  =====================================================
B          batch: prompts/step     4
P          prompt width (padded)   4 (``<bos>`` + up to 3 words)
T          response length         100
V          vocabulary size         64
C          hidden size (n_embd)    128
=========  ======================  =====================================================

Graded by ``tests/exercises/test_ex01_shapes.py`` against ``rlhf_edu.trainer.trace_step``,
which runs a real step on toy models and records every tensor and every forward pass.
"""

from __future__ import annotations

CRITIC_MODES = ("separate", "shared", "head")


def step_shapes(batch: int, prompt_len: int, response_len: int, vocab_size: int, n_embd: int,
                minibatches: int = 2) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors one RLHF step makes.

    Args:
        batch: B, prompts (and responses) in the step.
        prompt_len: P, width of the padded prompts.
        response_len: T, tokens generated per response.
        vocab_size: V.
        n_embd: C, the models' hidden size.
        minibatches: PPO minibatches per epoch (B is divisible by it).

    Returns:
        A dict from tensor name to shape tuple, with the keys
        ``prompt_ids, tokens, mask, logprobs, ref_logprobs, logits, hidden, scores, kl, rewards,
        values, advantages, returns, minibatch_logprobs, loss``.
    """
    B, P, T, V, C = batch, prompt_len, response_len, vocab_size, n_embd
    per_token = (B, T)  # one number per response token: everything the RL part works with
    return {
        "prompt_ids": (B, P),
        "tokens": (B, P + T),  # prompt and response side by side; the models read both
        "mask": per_token,  # 1 on response tokens, 0 on padding after <eos>
        "logprobs": per_token,  # log pi_old(token) kept from generation
        "ref_logprobs": per_token,  # the reference's log-probs of the same tokens
        "logits": (B, T, V),  # a distribution over the vocabulary per response position
        "hidden": (B, T, C),  # the hidden states those logits (and a "head" critic) read
        "scores": (B,),  # the reward model reads the whole response: one number each
        "kl": per_token,
        "rewards": per_token,  # -beta * KL per token, the score added on the last one
        "values": per_token,  # the critic predicts the return at every response token
        "advantages": per_token,
        "returns": per_token,
        "minibatch_logprobs": (B // minibatches, T),  # PPO splits the batch in minibatches
        "loss": (),  # a scalar: masked means over all response tokens
    }


def forward_passes(response_len: int, ppo_epochs: int = 4, minibatches: int = 2,
                   critic_mode: str = "separate") -> dict[str, int]:
    """Forward passes of each model in one RLHF step.

    Args:
        response_len: T, tokens generated per response.
        ppo_epochs: passes of PPO over the batch.
        minibatches: minibatches per epoch.
        critic_mode: "separate" (the critic is its own network), "shared" (a value head on the
            actor's backbone) or "head" (a value MLP on the actor's detached hidden states).

    Returns:
        ``{"generate": ..., "actor": ..., "critic": ..., "reward": ..., "reference": ...}``:
        ``generate`` counts the actor's forward calls while it generates; the others count
        full forward passes over the batch or a minibatch of it (a pass over a minibatch
        counts as one).
    """
    if critic_mode not in CRITIC_MODES:
        raise ValueError(f"critic_mode must be one of {CRITIC_MODES}, got {critic_mode!r}")
    updates = ppo_epochs * minibatches  # each minibatch update runs actor and critic once
    # Old values (phase 5) come from a critic pass over the whole batch. In "shared" and "head"
    # modes that pass reads the actor's hidden states, so the actor runs once more for it.
    extra_actor = 0 if critic_mode == "separate" else 1
    return {
        # With a KV cache: one pass over the prompt that yields the first token, then one
        # single-token pass for each of the other T - 1 tokens.
        "generate": response_len,
        "actor": updates + extra_actor,
        "critic": 1 + updates,
        "reward": 1,  # phase 3: one score per response, no gradient
        "reference": 1,  # phase 4: ref log-probs once; the reference never changes
    }
