"""Exercise 1: the tensors and forward passes of one RLHF step.

The chapter's Exercise 1 asks for the shapes and the number of forward passes of one step
with a batch of 4 prompts and responses of 100 tokens. Nothing needs to run: each shape follows
from what a tensor holds, and each pass count from the order of the six phases
(1 prompts, 2 generate, 3 score, 4 reference + KL, 5 values + GAE, 6 PPO epochs).

=========  ======================  =====================================================
Symbol     Meaning                 Example (chapter)
=========  ======================  =====================================================
B          batch: prompts/step     4
P          prompt width (padded)   4 (``<bos>`` + up to 3 words)
T          response length         100
V          vocabulary size         64
C          hidden size (n_embd)    128
=========  ======================  =====================================================

Grade: ``rlhf-edu grade 1`` or ``pytest tests/exercises/test_ex01_shapes.py``. The tests compare
with ``rlhf_edu.trainer.trace_step``, which runs a real step on toy models and records every
tensor and every forward pass. Solution: ``solutions/ex01_shapes.py``.
"""

from __future__ import annotations

CRITIC_MODES = ("separate", "shared", "head")


def step_shapes(batch: int, prompt_len: int, response_len: int, vocab_size: int, n_embd: int,
                minibatches: int = 2) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors one RLHF step makes.

    Task: return a dict from tensor name to its shape as a tuple of ints, with these keys:

    ======================  ==========================================================
    key                     what it holds
    ======================  ==========================================================
    ``prompt_ids``          the padded prompts' token ids
    ``tokens``              prompt and response token ids, as the models read them
    ``mask``                1 on response tokens, 0 on padding after ``<eos>``
    ``logprobs``            log pi_old(token) of each response token, kept from generation
    ``ref_logprobs``        the reference model's log-probs of the same tokens
    ``logits``              the actor's next-token logits at the response positions
    ``hidden``              the hidden states those logits are computed from
    ``scores``              the reward model's score of each response
    ``kl``                  the per-token KL estimate
    ``rewards``             per-token rewards: -beta * KL, plus the score on the last token
    ``values``              the critic's value predictions
    ``advantages``          GAE advantages
    ``returns``             the critic's targets
    ``minibatch_logprobs``  the actor's log-probs on one PPO minibatch
    ``loss``                the PPO loss that ``backward()`` is called on
    ======================  ==========================================================

    Args:
        batch: B, prompts (and responses) in the step.
        prompt_len: P, width of the padded prompts.
        response_len: T, tokens generated per response.
        vocab_size: V.
        n_embd: C, the models' hidden size.
        minibatches: PPO minibatches per epoch (B is divisible by it).

    Hint: everything the RL part computes (phases 4-6) has one number per response token;
    only the models see the prompt. The reward model gives one number per response.
    Example: ``step_shapes(4, 4, 100, 64, 128)["rewards"] == (4, 100)``.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 1: return the shape of each tensor of one RLHF step "
                              "(step_shapes in exercises/ex01_shapes.py)")
    # ============================================================================


def forward_passes(response_len: int, ppo_epochs: int = 4, minibatches: int = 2,
                   critic_mode: str = "separate") -> dict[str, int]:
    """Forward passes of each model in one RLHF step.

    Task: return ``{"generate": ..., "actor": ..., "critic": ..., "reward": ..., "reference":
    ...}``, where ``generate`` counts the actor's forward calls while it generates the
    responses, and the other four count full forward passes over the batch or a minibatch of
    it (one pass over a minibatch counts as one) in phases 3-6.

    Args:
        response_len: T, tokens generated per response.
        ppo_epochs: passes of PPO over the batch.
        minibatches: minibatches per epoch; every minibatch update runs the actor and the
            critic once.
        critic_mode: "separate" (the critic is its own network), "shared" (a value head on the
            actor's backbone) or "head" (a value MLP on the actor's detached hidden states).

    Hint: generation uses a KV cache: one forward over the prompt gives the first token, then
    one single-token forward per further token. The critic also runs once before PPO, to get
    the old values for GAE; think about what it needs from the actor for that in "shared" and
    "head" modes.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 1: count the forward passes of each model in one RLHF "
                              "step (forward_passes in exercises/ex01_shapes.py)")
    # ============================================================================
