"""Measuring a policy on the arith task's held-out problems: many samples per problem, each
checked by the verifier; pass@k from the counts (:func:`rlhf_edu.passk.pass_at_k`).

``sample_counts`` is the one place a model answers held-out problems; ``evaluate_arith``
turns its counts into the figures notebook 10 and ``rlhf-edu pretrain --task arith`` print.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from . import arith
from .model import GPT
from .passk import pass_at_k_curve
from .task import Tokenizer
from .validate import COUNT, TEMPERATURE, check_float, check_instance, check_int, check_seed

N_HELDOUT = arith.N_HELDOUT
RESPONSE_LEN = 20  # PPOConfig.response_len: a worked answer takes 14 tokens with <eos>, a hedge 19
PASS_KS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Samples:
    """``n`` answers to each of ``problems``: ``correct[i]`` of problem i's verified, and over
    all answers the ``forms`` (Counter of "direct", "worked", "hedge", None), the ``lax``
    verifier's passes and the mean ``length`` in tokens (with <eos>)."""

    problems: list[tuple[int, int]]
    n: int
    correct: list[int]
    forms: Counter
    lax: int
    length: float
    examples: list[str]


def _as_gpt(model: torch.nn.Module) -> GPT:
    gpt = getattr(model, "gpt", model)  # an Actor holds its GPT
    check_instance("model", gpt, GPT)
    return gpt


def sample_counts(model: torch.nn.Module, problems: list[tuple[int, int]], n: int,
                  seed: int = 0, temperature: float = 1.0, rows: int = 2048) -> Samples:
    """Sample ``n`` answers per problem (``rows`` sequences per generate call) and verify
    each; the model's mode is left as it was."""
    gpt = _as_gpt(model)
    check_int("n", n, **COUNT)
    check_seed("seed", seed)
    check_float("temperature", temperature, **TEMPERATURE)
    check_int("rows", rows, **COUNT)
    if not problems:
        raise ValueError("problems is empty; expected at least one (a, b) pair")
    tok = Tokenizer(arith.VOCAB)
    prompts = [arith.problem_text(a, b) for a, b in problems for _ in range(n)]
    g = torch.Generator(next(gpt.parameters()).device).manual_seed(seed)
    was_training, texts, lengths = gpt.training, [], []
    gpt.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), rows):
            chunk = prompts[start:start + rows]
            ids, valid = tok.encode_batch(chunk)
            dev = next(gpt.parameters()).device
            out = gpt.generate(ids.to(dev), valid.to(dev), RESPONSE_LEN, temperature=temperature,
                               eos_id=tok.eos_id, pad_id=tok.pad_id, generator=g)
            texts += [f"{p} {tok.decode(r)}" for p, r in zip(chunk, out.response.cpu())]
            lengths += out.mask.sum(1).tolist()
    gpt.train(was_training)
    ok = [arith.verify(t) for t in texts]
    correct = [int(sum(ok[i * n:(i + 1) * n])) for i in range(len(problems))]
    forms = Counter(arith.form(t) for t in texts)
    return Samples(list(problems), n, correct, forms, int(sum(map(arith.verify_lax, texts))),
                   sum(lengths) / len(lengths), texts[::n][:5])


def evaluate_arith(model: torch.nn.Module, n_problems: int = arith.N_HELDOUT, n: int = 64,
                   seed: int = 0, ks: tuple[int, ...] = PASS_KS) -> dict:
    """Held-out figures of a policy: ``pass@1`` (the mean share of verified answers), the
    ``pass@k`` curve for ``ks`` (each k <= n), ``worked``/``hedged`` shares, ``lax`` pass rate,
    mean ``length``, how many problems are ``never`` solved in n samples, and the per-problem
    ``correct`` counts."""
    s = sample_counts(model, arith.heldout_problems(n_problems), n, seed)
    total = n * len(s.problems)
    ks = tuple(k for k in ks if k <= n)
    return {"n": n, "problems": len(s.problems), "pass@1": sum(s.correct) / total,
            "pass_at_k": dict(zip(ks, pass_at_k_curve(s.correct, n, ks))),
            "worked": s.forms["worked"] / total, "hedged": s.forms["hedge"] / total,
            "lax": s.lax / total, "length": s.length,
            "never": sum(c == 0 for c in s.correct), "correct": s.correct,
            "examples": s.examples}


__all__ = ["Samples", "sample_counts", "evaluate_arith", "PASS_KS", "RESPONSE_LEN", "N_HELDOUT"]
