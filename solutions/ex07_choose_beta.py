"""Exercise 7 (solution): was beta too low, too high, or about right?

A run's history is a list of per-step metric dicts, as ``RLHFTrainer.train`` returns them.
Only what a practitioner measures may be read (``ALLOWED``); the gold score, well-formedness
and the sample texts are what a human evaluation would tell, and are hidden.
"""

from __future__ import annotations

ALLOWED = ("step", "beta", "rm_score", "kl", "non_score_reward", "entropy", "response_len",
           "finished", "repetition", "advantage_std", "policy_loss", "value_loss", "clipfrac",
           "vf_clipfrac", "approx_kl")
HIDDEN = ("gold_score", "well_formed", "sample")

WINDOW = 10  # steps averaged: one step's metrics are noisy (64 responses)
KL_HACKING = 6.0  # nats per response; good runs of this task settle at 2-4
REPETITION_HACKING = 0.5  # fraction of responses repeating a content word; SFT: ~0.1
KL_STUCK = 1.0  # below this the policy has hardly left the reference


def _mean(steps: list[dict], key: str) -> float:
    return sum(m[key] for m in steps) / len(steps)


def diagnose_beta(history: list[dict[str, float]]) -> str:
    """"too_low", "too_high" or "ok" for a run of at least a few dozen steps."""
    end = history[-WINDOW:]  # where the run got to, averaged over its last steps
    kl, repetition = _mean(end, "kl"), _mean(end, "repetition")
    # Too low: nothing holds the policy near the reference, so it drifts far (large KL) into
    # text the reward model over-values but nobody wants; repeated words are the tell-tale
    # sign in this task. The RM score alone cannot show it: it keeps rising.
    if kl > KL_HACKING or repetition > REPETITION_HACKING:
        return "too_low"
    # Too high: the penalty outweighs the reward, so the policy stays at the reference and
    # the reward-model score hardly moves.
    if kl < KL_STUCK:
        return "too_high"
    return "ok"  # moved a few nats, RM score up, no degeneration
