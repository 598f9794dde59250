"""Exercise 11: what a moving reference penalises, and what it lets through.

The KL penalty holds the actor near the reference. The chapter keeps the reference frozen at
the SFT model. Suppose instead that the actor were copied into the reference every ``every``
steps (``PPOConfig.ref_reset_every``): each step's penalty would then measure only the drift
since the last copy, while the drift from the SFT model, which the penalty was meant to bound,
could add up window after window. Here you compute both, for a toy policy over V tokens.

Versions of the actor: version 0 is the SFT model; version s is the actor after s updates.
Step s (s = 1, 2, ...) samples with version s - 1 and pays the penalty against the reference
the trainer holds at that moment; after step s, if ``every`` > 0 and s is a multiple of
``every``, the trainer copies the actor (now version s) into the reference.

==============  ==========  ================================================================
Symbol          Shape       Description
==============  ==========  ================================================================
``every``       int >= 0    0: the reference stays frozen (version 0); k: copy every k steps
``logp``        (..., V)    log-probabilities of a distribution p over V tokens
``logq``        (..., V)    log-probabilities of q
``policies``    (S + 1, V)  log-probabilities of versions 0..S of a one-token policy
==============  ==========  ================================================================

Grade: ``rlhf-edu grade 11`` or ``pytest tests/exercises/test_ex11_moving_reference.py``.
The recorded runs behind it (a moving reference vs a frozen one vs none, three seeds) are in
``rlhf_edu/data/reference.json`` and notebook 5. Solution: ``solutions/ex11_moving_reference.py``.
"""

from __future__ import annotations

import torch  # noqa: F401  (you will need it)
from torch import Tensor


def reference_version(step: int, every: int) -> int:
    """The actor version the reference holds when step `step` (1, 2, ...) is taken.

    Hint: with `every` = 0 it is always 0 (the SFT model). With `every` = 3, steps 1-3 see
    version 0, steps 4-6 version 3 (copied after step 3), steps 7-9 version 6, and so on.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 11: which version is the reference at a step "
                              "(reference_version in exercises/ex11_moving_reference.py)")
    # ============================================================================


def kl(logp: Tensor, logq: Tensor) -> Tensor:
    """The exact KL(p || q) = sum_v p_v (log p_v - log q_v), over the last dimension:
    `(..., V)`, `(..., V)` → `(...)`, in nats.

    Hint: the expectation is under p, the policy that samples (the actor); q is the anchor.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 11: the exact KL of two categorical distributions "
                              "(kl in exercises/ex11_moving_reference.py)")
    # ============================================================================


def kl_to_reference_and_sft(policies: Tensor, every: int) -> tuple[Tensor, Tensor]:
    """Per step s = 1..S: (KL the penalty sees, KL from the SFT model), two `(S,)` tensors.

    Element s - 1 of the first is KL(version s - 1 || the reference at step s); of the second
    KL(version s - 1 || version 0). `policies` is `(S + 1, V)`, row s the log-probs of
    version s (the last row, the actor after the last update, samples no step).

    Hint: use `reference_version` and `kl`. With `every` = 0 both are the same tensor.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 11: the penalty's KL and the drift from SFT per step "
                              "(kl_to_reference_and_sft in exercises/ex11_moving_reference.py)")
    # ============================================================================
