"""Exercise 7: was beta too low, too high, or about right?

Choosing the KL coefficient is the practical skill of RLHF. Too low, and the policy games the
reward model (reward hacking: the RM score climbs while real quality collapses); too high, and
the policy never leaves the reference. You only see what training measures, never the "human"
judgement: write the diagnosis a practitioner would make from a short run's metrics.

A run's ``history`` is a list with one dict per PPO step, as ``RLHFTrainer.train`` returns.
You may read these keys (``ALLOWED``):

=====================  ====================================================================
key                    meaning (means over the step's 64 responses)
=====================  ====================================================================
``step``, ``beta``     step number; the KL coefficient in use
``rm_score``           reward-model score
``kl``                 KL(policy || reference) per response, in nats (k1 summed over tokens)
``non_score_reward``   ``-beta * kl`` summed per response
``entropy``            the policy's mean entropy per token
``response_len``       tokens per response
``finished``           fraction of responses that ended with ``<eos>``
``repetition``         fraction of responses that repeat a content word
``policy_loss`` ...    PPO diagnostics: ``value_loss``, ``clipfrac``, ``vf_clipfrac``,
                       ``approx_kl``, ``advantage_std``
=====================  ====================================================================

Hidden (reading them fails the test): ``gold_score`` and ``well_formed``, the hidden human's
verdict, and ``sample``, the text itself.

Grade: ``rlhf-edu grade 7`` or ``pytest tests/exercises/test_ex07_choose_beta.py``. The tests
run ``diagnose_beta`` on recorded runs (``rlhf_edu/data/demos.json`` and
``tests/exercises/data/beta_runs.json``) labelled by what the hidden gold score did: it
collapsed after peaking (too_low), barely rose (too_high), or rose and held (ok); see
``tests/exercises/data/record_beta_runs.py``. Solution: ``solutions/ex07_choose_beta.py``.
"""

from __future__ import annotations

ALLOWED = ("step", "beta", "rm_score", "kl", "non_score_reward", "entropy", "response_len",
           "finished", "repetition", "advantage_std", "policy_loss", "value_loss", "clipfrac",
           "vf_clipfrac", "approx_kl")
HIDDEN = ("gold_score", "well_formed", "sample")


def diagnose_beta(history: list[dict[str, float]]) -> str:
    """Return "too_low", "too_high" or "ok" for a run (50 or more steps).

    Hint: look at the runs first, e.g.
    ``json.load(open("rlhf_edu/data/demos.json"))["runs"]["beta=0"]``, and plot ``kl``,
    ``rm_score`` and ``repetition`` per step for beta=0, 0.05 and 10. The RM score rises in
    every run that moves, so it cannot tell "good" from "hacked"; how far the policy moved
    (KL at the end of the run, averaged over the last steps) and signs of degenerate text can.
    """
    # ============================== YOUR CODE HERE ==============================
    raise NotImplementedError("Exercise 7: diagnose the KL coefficient of a run "
                              "(diagnose_beta in exercises/ex07_choose_beta.py)")
    # ============================================================================
