"""The RLHF reward of one response, R = R_rm - beta * KL, with every term printed.

For a PROMPT and a RESPONSE written in the toy task's words (``rlhf_edu.task.VOCAB``), this
prints

* the reward model's score, z-normalised as the trainer uses it, beside the gold score (the
  hidden "human" judge the reward model was trained to imitate);
* per response token, its log-prob under the actor and under the reference, and the KL
  estimates k1, k2, k3 of ``rlhf_edu.kl_penalty`` (plus the exact KL over the vocabulary at
  that position), with their sums over the response;
* the total reward for each estimator, from ``rlhf_edu.compute_rewards``, with the penalty
  written out: ``R = score - beta x sum KL``.

``<eos>`` is appended to the response (a finished response, as the trainer samples them), so
the missing-``<eos>`` penalty does not apply. The reference is the shipped SFT model. So is the
actor, unless you pass ``--actor PATH`` (an SFT checkpoint from ``rlhf-edu pretrain``, or the
``checkpoint.pt`` of an ``rlhf-edu train`` run, whose actor is then used) or
``--actor-temperature T``, which scores the actor's log-probs at temperature T against the
reference at temperature 1: a sharper (T < 1) or flatter (T > 1) copy of the SFT policy, a
stand-in for an actor that RLHF has moved. With neither, actor and reference are the same
model and every KL is exactly 0; the output says so.

    python scripts/reward_calculator.py "the food" "was great ."
    python scripts/reward_calculator.py "the food" "was great ." --actor-temperature 0.5
    python scripts/reward_calculator.py "the food" "was great great amazing !" --beta 0.2
    python scripts/reward_calculator.py "the food" "was great ." --actor runs/latest/checkpoint.pt

An unknown word is a one-line error naming it (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from rlhf_edu import (
    Actor,
    Reference,
    Tokenizer,
    compute_rewards,
    gold_score,
    kl_penalty,
    load_pretrained,
)
from rlhf_edu.checkpoint import safe_load
from rlhf_edu.distributed import configure_threads
from rlhf_edu.plots import rounded
from rlhf_edu.task import BOS, EOS, PAD, VOCAB

ESTIMATORS = ("k1", "k2", "k3")
PROG = Path(__file__).name


class UsageError(Exception):
    """Bad input: reported on one line of stderr, exit status 2."""


def num(x: float | torch.Tensor) -> str:
    """``x`` with 3 decimals, never ``-0.000``."""
    return f"{rounded(float(x), 3):.3f}"


def signed(x: float | torch.Tensor) -> str:
    """``num(x)``, in parentheses when negative: ``0.05 x (-1.383)``."""
    text = num(x)
    return f"({text})" if text.startswith("-") else text


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    words = " ".join(w for w in VOCAB if w not in (PAD, BOS, EOS))
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The reward of one response: reward-model score, per-token KL (k1, k2, k3) "
                    "between actor and reference, and R = score - beta x sum KL.",
        epilog=f"Words of the task: {words}. A trailing <eos> in RESPONSE is optional.")
    parser.add_argument("prompt", metavar="PROMPT", help='the prompt, e.g. "the food"')
    parser.add_argument("response", metavar="RESPONSE", help='the response, e.g. "was great ."')
    parser.add_argument("--beta", type=non_negative_float, default=0.05,
                        help="KL coefficient beta (default: %(default)s, PPOConfig's)")
    parser.add_argument("--actor", type=Path, default=None,
                        help="actor checkpoint: an SFT model from `rlhf-edu pretrain`, or an "
                             "`rlhf-edu train` run's checkpoint.pt (default: the shipped SFT "
                             "model, the same as the reference)")
    parser.add_argument("--actor-temperature", type=positive_float, default=1.0, metavar="T",
                        help="score the actor's log-probs at temperature T (the reference stays "
                             "at 1), so the two differ without a second checkpoint "
                             "(default: %(default)s)")
    return parser.parse_args(argv)


def encode(tok: Tokenizer, text: str, what: str) -> list[int]:
    """Ids of the words of ``text``; ``UsageError`` naming the first word not in the task."""
    ids = []
    for word in text.split():
        if word not in tok.stoi:
            raise UsageError(f"unknown word {word!r} in {what} {text!r} (the task's words: "
                             f"{PROG} --help)")
        if word in (PAD, BOS, EOS):
            raise UsageError(f"special token {word!r} in {what} {text!r}: write words only "
                             "(<eos> may only end the response)")
        ids.append(tok.stoi[word])
    return ids


def load_actor(path: Path | None) -> tuple[Actor, str]:
    """The actor and a description of it: the shipped SFT model, an SFT checkpoint, or the
    actor of an RLHF run's checkpoint."""
    if path is None:
        return Actor(load_pretrained("sft")), "the shipped SFT model"
    ckpt = safe_load(path)
    if ckpt["kind"] == "rlhf-run":  # `rlhf-edu train` starts from the shipped SFT model
        actor = Actor(load_pretrained("sft"))
        try:
            actor.load_state_dict(ckpt["actor"])
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"{path}: its actor does not fit the shipped SFT model "
                             f"({str(e).splitlines()[0]})") from None
        return actor.eval(), f"the actor of {path} (RLHF step {ckpt.get('step', '?')})"
    return Actor(load_pretrained("sft", path)), f"the SFT model in {path}"


def run(args: argparse.Namespace) -> None:
    tok = Tokenizer()
    response_text = args.response.strip()
    if response_text.split()[-1:] == [EOS]:
        response_text = response_text.rsplit(EOS, 1)[0].strip()
    prompt_ids = encode(tok, args.prompt, "PROMPT")
    response_ids = encode(tok, response_text, "RESPONSE") + [tok.eos_id]
    ids = [tok.bos_id] + prompt_ids + response_ids
    actor, actor_name = load_actor(args.actor)
    reference = Reference(Actor(load_pretrained("sft")))
    reward = load_pretrained("reward")
    limit = min(actor.gpt.config.block_size, reward.gpt.config.block_size)
    if len(ids) > limit:
        raise UsageError(f"PROMPT and RESPONSE are {len(ids)} tokens with <bos> and <eos>; the "
                         f"models read at most {limit}")

    tokens = torch.tensor([ids])  # (1, P + T)
    valid = torch.ones_like(tokens, dtype=torch.bool)
    P, T = 1 + len(prompt_ids), len(response_ids)
    mask = torch.ones(1, T)  # (1, T): every response token counts, <eos> included
    with torch.no_grad():
        act = actor.eval()(tokens, valid, P, args.actor_temperature)  # logprobs (1, T)
        ref = reference(tokens, valid, P)  # temperature 1
        score = reward(tokens, valid)  # (1,) z-normalised
        kls = {k: kl_penalty(act.logprobs, ref.logprobs, k, mask=mask) for k in ESTIMATORS}
        exact = kl_penalty(act.logits, ref.logits, "full", mask=mask)  # (1, T)
        totals = {k: compute_rewards(score, act.logprobs, ref.logprobs, mask, args.beta, k).sum()
                  for k in ESTIMATORS}
    text = f"{args.prompt} {response_text}".strip()

    print(f"prompt {args.prompt!r}, response {response_text!r} + <eos>: P={P} tokens "
          f"(with <bos>), T={T} response tokens")
    temp = f" at temperature {args.actor_temperature:g}" if args.actor_temperature != 1 else ""
    print(f"actor:     {actor_name}{temp}")
    print("reference: the shipped SFT model at temperature 1 (frozen)")
    if torch.equal(act.logprobs, ref.logprobs):
        same = "IS the reference here" if args.actor is None and args.actor_temperature == 1 \
            else "and the reference give identical log-probs"
        print(f"note: the actor {same}, so every KL is 0 and R = R_rm;")
        print("      pass --actor PATH or --actor-temperature T to see a penalty")
    print()
    print(f"reward model score R_rm (z-normalised, as the trainer uses it) = {num(score[0])}")
    print(f"gold score (the hidden human judge, in [-1, 1])                = "
          f"{num(gold_score(text))}")
    print()
    print("per response token (d = logp - ref_logp; k1 = d, k2 = d^2/2, k3 = e^-d - 1 + d;")
    print("exact = the KL over the whole vocabulary at that position):")
    print(f"  {'t':>2} {'token':<10} {'logp':>7} {'ref_logp':>9} {'k1':>7} {'k2':>7} "
          f"{'k3':>7} {'exact':>7}")
    for t in range(T):
        word = tok.vocab[ids[P + t]]
        row = [act.logprobs[0, t], ref.logprobs[0, t], *(kls[k][0, t] for k in ESTIMATORS),
               exact[0, t]]
        print(f"  {t:>2} {word:<10} {num(row[0]):>7} {num(row[1]):>9} "
              + " ".join(f"{num(v):>7}" for v in row[2:]))
    sums = [kls[k].sum() for k in ESTIMATORS] + [exact.sum()]
    print(f"  {'sum':<13} {num(act.logprobs.sum()):>7} {num(ref.logprobs.sum()):>9} "
          + " ".join(f"{num(v):>7}" for v in sums))
    print()
    print(f"total reward R = R_rm - beta x sum KL, beta = {args.beta:g} (compute_rewards):")
    for k in ESTIMATORS:
        total_kl, penalty = kls[k].sum(), args.beta * kls[k].sum()
        print(f"  {k}: R = {num(score[0])} - {args.beta:g} x {signed(total_kl)} = "
              f"{num(score[0])} {'-' if num(penalty)[0] != '-' else '+'} {num(abs(penalty))} = "
              f"{num(totals[k])}")
    print("k1 and k3 are unbiased estimates of the KL when the response is sampled from the")
    print("actor (the exact column is what they estimate); k2 and k3 are >= 0 per token, k1 is "
          "not.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads()
    try:
        run(args)
    except (UsageError, ValueError) as e:
        print(f"{PROG}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
