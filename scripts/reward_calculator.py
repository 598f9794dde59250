"""The RLHF reward of one response, R = R_rm - beta * KL, with every term printed.

For a PROMPT and a RESPONSE written in the toy task's words (``rlhf_edu.task.VOCAB``), this
prints

* the reward model's score, z-normalised as the trainer uses it, beside the gold score (the
  hidden "human" judge the reward model was trained to imitate);
* per response token, its log-prob under the actor and under the reference, and the KL
  estimates k1, k2, k3 of ``rlhf_edu.kl_penalty`` (plus the exact KL over the vocabulary at
  that position), with their sums over the response;
* the total reward for each estimator, from ``rlhf_edu.compute_rewards``, with the penalty
  written out: ``R = score - beta x sum KL``;
* one line saying why the KL is what it is, and, where a k1 sum is negative, why it can be.

``<eos>`` is appended to the response (a finished response, as the trainer samples them), so
the missing-``<eos>`` penalty does not apply. The reference is the shipped SFT model. The actor
is, by ``--actor``:

* ``sft`` (the default): the shipped SFT model, the reference itself, so every KL is exactly 0
  (the output says so and suggests the next run);
* ``hacked``: the shipped actor trained by PPO at beta = 0 (``rlhf_edu/weights/hacked.pt``,
  made by ``scripts/make_hacked_actor.py``). It learned to stack praise the reward model
  over-values; on such degenerate text its log-probs are far above the reference's, and the
  KL is large: the penalty that beta > 0 would have charged;
* a PATH: an SFT checkpoint from ``rlhf-edu pretrain``, or the ``checkpoint.pt`` of an
  ``rlhf-edu train`` run, whose actor is used (a ``--shard zero3`` run's actor is read from
  its ``shards-*`` directory, in this one process).

``--actor-temperature T`` scores the actor's log-probs at temperature T against the reference
at temperature 1: a sharper (T < 1) or flatter (T > 1) copy of the policy, a stand-in for an
actor that RLHF has moved.

    python scripts/reward_calculator.py "the food" "was great ."
    python scripts/reward_calculator.py "the food" "was great great amazing great ." --actor hacked
    python scripts/reward_calculator.py "the food" "was great ." --actor-temperature 0.5
    python scripts/reward_calculator.py "the food" "was great ." --actor runs/latest/checkpoint.pt

A bad input (an unknown word, a number out of range, a file that is not a checkpoint) is a
one-line error naming it (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

import rlhf_edu
from rlhf_edu import (
    Actor,
    Reference,
    Tokenizer,
    compute_rewards,
    gold_score,
    kl_penalty,
    load_pretrained,
)
from rlhf_edu.checkpoint import load_sharded, safe_load
from rlhf_edu.distributed import configure_threads
from rlhf_edu.interrupt import ctrl_c_raises
from rlhf_edu.plots import rounded
from rlhf_edu.task import BOS, EOS, PAD, VOCAB

ESTIMATORS = ("k1", "k2", "k3")
PROG = Path(__file__).name
HACKED = Path(rlhf_edu.__file__).resolve().parent / "weights" / "hacked.pt"
# beta: the course's runs use 0 to 10; from 1000 on, a KL of 0.001 nats already costs a whole
# z-normalised RM score, and beta x KL (float32) must stay finite
BETA_MAX = 1000.0
# the actor's temperature: at 0.05 the log-probs of all but the top token are already hundreds
# of nats below 0 (k3 = exp(-d) overflows float32 beyond 88); above 20 the policy is all but
# uniform
TEMPERATURE_RANGE = (0.05, 20.0)


class UsageError(Exception):
    """Bad input: reported on one line of stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``--help`` still shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def num(x: float | torch.Tensor) -> str:
    """``x`` with 3 decimals, never ``-0.000``."""
    return f"{rounded(float(x), 3):.3f}"


def signed(x: float | torch.Tensor) -> str:
    """``num(x)``, in parentheses when negative: ``0.05 x (-1.383)``."""
    text = num(x)
    return f"({text})" if text.startswith("-") else text


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[lo, hi]``, refused in one line otherwise."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not lo <= value <= hi:  # NaN and inf fail too
            raise argparse.ArgumentTypeError(f"must be a number in [{lo:g}, {hi:g}], "
                                             f"got {text!r}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    words = " ".join(w for w in VOCAB if w not in (PAD, BOS, EOS))
    parser = Parser(
        prog=PROG,
        description="The reward of one response: reward-model score, per-token KL (k1, k2, k3) "
                    "between actor and reference, and R = score - beta x sum KL. First run: "
                    "the actor is the reference (KL 0); then try --actor hacked.",
        epilog=f"Words of the task: {words}. A trailing <eos> in RESPONSE is optional.")
    parser.add_argument("prompt", metavar="PROMPT", help='the prompt, e.g. "the food"')
    parser.add_argument("response", metavar="RESPONSE", help='the response, e.g. "was great ."')
    parser.add_argument("--beta", type=float_in(0.0, BETA_MAX), default=0.05,
                        help=f"KL coefficient beta in [0, {BETA_MAX:g}] (the course uses 0 to "
                             f"10; at {BETA_MAX:g} a KL of 0.001 nats already costs a whole "
                             "z-normalised RM score, and beta x KL must stay a finite float32) "
                             "(default: %(default)s, PPOConfig's)")
    parser.add_argument("--actor", default="sft", metavar="{sft,hacked,PATH}",
                        help="the actor: sft (the shipped SFT model, the same as the "
                             "reference: KL 0), hacked (the shipped actor trained at beta = 0: "
                             "a large KL on degenerate text), or a checkpoint: an SFT model "
                             "from `rlhf-edu pretrain`, or an `rlhf-edu train` run's "
                             "checkpoint.pt (default: %(default)s)")
    lo, hi = TEMPERATURE_RANGE
    parser.add_argument("--actor-temperature", type=float_in(lo, hi), default=1.0, metavar="T",
                        help=f"score the actor's log-probs at temperature T in [{lo:g}, {hi:g}] "
                             "(the reference stays at 1), so the two differ without a second "
                             "checkpoint; at 0.05 every token but the likeliest is already "
                             "hundreds of nats less likely (default: %(default)s)")
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


def load_hacked() -> tuple[Actor, str]:
    """The shipped actor trained at beta = 0, and a description with its steps."""
    if not HACKED.is_file():
        raise UsageError(f"no hacked actor at {HACKED}; build it with "
                         "`python scripts/make_hacked_actor.py`")
    meta = safe_load(HACKED).get("meta", {})
    return (Actor(load_pretrained("sft", HACKED)),
            f"the hacked actor (the SFT model after {meta.get('steps', '?')} PPO steps at "
            "beta = 0)")


def load_run_actor(path: Path, ckpt: dict) -> Actor:
    """The actor of an ``rlhf-edu train`` checkpoint: whole in the file, or (``--shard``) in
    the DCP directory it names, read here in one process."""
    actor = Actor(load_pretrained("sft"))  # `rlhf-edu train` starts from the shipped SFT model
    if "shards" in ckpt:
        shards = path.parent / str(ckpt["shards"])
        state = {"actor." + k: v.clone() for k, v in actor.state_dict().items()}
        try:  # the run saved {"model": the policy's state (actor.*, critic.*), "optim": ...}
            load_sharded({"model": state}, shards)
        except ValueError as e:
            raise ValueError(f"{path} is a sharded ({ckpt.get('shard', '?')}) checkpoint whose "
                             f"actor is in {shards}, which cannot be read: "
                             f"{str(e).splitlines()[0]}") from None
        except Exception as e:  # DCP: a key missing from the shards, a shape that differs
            raise ValueError(f"{path} is a sharded ({ckpt.get('shard', '?')}) checkpoint: its "
                             f"actor in {shards} does not fit the shipped SFT model "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
                             ) from None
        actor.load_state_dict({k.removeprefix("actor."): v for k, v in state.items()})
        return actor
    try:
        actor.load_state_dict(ckpt["actor"])
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"{path}: its actor does not fit the shipped SFT model "
                         f"({str(e).splitlines()[0]})") from None
    return actor


def load_actor(spec: str) -> tuple[Actor, str]:
    """The actor named by ``--actor`` (sft, hacked or a path) and a description of it."""
    if spec == "sft":
        return Actor(load_pretrained("sft")), "the shipped SFT model"
    if spec == "hacked":
        return load_hacked()
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--actor {spec}: no such file (expected sft, hacked or the path of a "
                         "checkpoint)")
    ckpt = safe_load(path)
    if ckpt["kind"] == "rlhf-run":
        where = f", {ckpt['shard']} shards in {path.parent / str(ckpt['shards'])}" \
            if "shards" in ckpt else ""
        return (load_run_actor(path, ckpt).eval(),
                f"the actor of {path} (RLHF step {ckpt.get('step', '?')}{where})")
    return Actor(load_pretrained("sft", path)), f"the SFT model in {path}"


@dataclass
class Terms:
    """Every number the calculator prints for one response of T tokens."""

    ids: list[int]  # <bos>, prompt, response (with <eos>)
    P: int  # prompt width with <bos>
    logprobs: torch.Tensor  # (1, T) actor
    ref_logprobs: torch.Tensor  # (1, T) reference
    score: torch.Tensor  # (1,) reward model, z-normalised
    kls: dict[str, torch.Tensor]  # estimator -> (1, T)
    exact: torch.Tensor  # (1, T) KL over the vocabulary
    totals: dict[str, torch.Tensor]  # estimator -> R (a 0-d tensor)


def compute(args: argparse.Namespace, actor: Actor, prompt_ids: list[int],
            response_ids: list[int]) -> Terms:
    """Score the response with the reward model, the actor and the reference."""
    tok = Tokenizer()
    ids = [tok.bos_id] + prompt_ids + response_ids
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
        try:
            kls = {k: kl_penalty(act.logprobs, ref.logprobs, k, mask=mask) for k in ESTIMATORS}
            exact = kl_penalty(act.logits, ref.logits, "full", mask=mask)  # (1, T)
            totals = {k: compute_rewards(score, act.logprobs, ref.logprobs, mask, args.beta,
                                         k).sum() for k in ESTIMATORS}
        except ValueError as e:  # a term overflowed: name the token and the input behind it
            if "overflowed" not in str(e):
                raise
            raise overflow_error(args, ids, P, act.logprobs, ref.logprobs) from e
    return Terms(ids, P, act.logprobs, ref.logprobs, score, kls, exact, totals)


def _cause(args: argparse.Namespace) -> tuple[str, str]:
    """The input behind an overflow, and a hint."""
    if args.actor_temperature != 1:
        return f"--actor-temperature {args.actor_temperature:g}", "; choose a value nearer 1"
    return f"--actor {args.actor}", ""


def overflow_error(args: argparse.Namespace, ids: list[int], P: int, logprobs: torch.Tensor,
                   ref_logprobs: torch.Tensor) -> UsageError:
    """The first token whose KL term overflows float32, found by scoring the tokens one at a
    time with ``kl_penalty`` (which refuses an overflowing result), and the input behind it."""
    cause, hint = _cause(args)
    tok = Tokenizer()
    for k in ESTIMATORS:
        for i in range(logprobs.size(1)):
            try:
                kl_penalty(logprobs[:, i:i + 1], ref_logprobs[:, i:i + 1], k)
            except ValueError:
                return UsageError(f"{k} of token {i} {tok.vocab[ids[P + i]]!r} overflows "
                                  f"float32 (logp {float(logprobs[0, i]):.4g} vs ref_logp "
                                  f"{float(ref_logprobs[0, i]):.4g}): caused by {cause}{hint}")
    return UsageError(f"beta x KL overflows float32 at --beta {args.beta:g}: caused by --beta; "
                      "choose a smaller one")


def check_finite(args: argparse.Namespace, t: Terms) -> None:
    """``UsageError`` naming the input whose value made a term overflow (inf or NaN)."""
    tok = Tokenizer()
    cause, hint = _cause(args)
    for k in (*ESTIMATORS, "exact"):
        row = t.exact[0] if k == "exact" else t.kls[k][0]
        bad = (~torch.isfinite(row)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise UsageError(f"{k} of token {i} {tok.vocab[t.ids[t.P + i]]!r} overflows float32 "
                             f"(logp {float(t.logprobs[0, i]):.4g} vs ref_logp "
                             f"{float(t.ref_logprobs[0, i]):.4g}): caused by {cause}{hint}")
    for k in ESTIMATORS:
        if not torch.isfinite(t.kls[k].sum()):
            raise UsageError(f"the sum of {k} over the response overflows float32: caused by "
                             f"{cause}")
        if not torch.isfinite(t.totals[k]):
            raise UsageError(f"beta x sum {k} = {args.beta:g} x {float(t.kls[k].sum()):.4g} "
                             "overflows float32: caused by --beta; choose a smaller one")


def why_kl(args: argparse.Namespace, t: Terms) -> str:
    """One line (or two): why the KL of this actor on this response is what it is."""
    if torch.equal(t.logprobs, t.ref_logprobs):
        if args.actor == "sft" and args.actor_temperature == 1:
            return ("why KL = 0: the actor IS the reference (the shipped SFT model), so R = R_rm;"
                    "\n  see a penalty with --actor hacked (the shipped actor trained at beta = 0)")
        return "why KL = 0: the actor and the reference give identical log-probs here"
    exact = num(t.exact.sum())
    if args.actor == "hacked" and args.actor_temperature == 1:
        return (f"why KL is large (exact {exact} nats along this response): the hacked actor was "
                "trained at\n  beta = 0, nothing held it near the reference")
    if args.actor_temperature != 1:
        how = "sharpened" if args.actor_temperature < 1 else "flattened"
        return (f"why KL > 0 (exact {exact}): the actor is the SFT policy {how} to temperature "
                f"{args.actor_temperature:g}")
    return f"why KL > 0 (exact {exact}): this actor has moved away from the reference"


def print_table(t: Terms) -> None:
    """Per response token: log-probs, k1, k2, k3 and the exact KL; then the sums."""
    tok = Tokenizer()
    print("per response token (d = logp - ref_logp; k1 = d, k2 = d^2/2, k3 = e^-d - 1 + d;")
    print("exact = the KL over the whole vocabulary at that position):")
    print(f"  {'t':>2} {'token':<10} {'logp':>7} {'ref_logp':>9} {'k1':>7} {'k2':>7} "
          f"{'k3':>7} {'exact':>7}")
    for i in range(t.logprobs.size(1)):
        word = tok.vocab[t.ids[t.P + i]]
        row = [t.logprobs[0, i], t.ref_logprobs[0, i], *(t.kls[k][0, i] for k in ESTIMATORS),
               t.exact[0, i]]
        print(f"  {i:>2} {word:<10} {num(row[0]):>7} {num(row[1]):>9} "
              + " ".join(f"{num(v):>7}" for v in row[2:]))
    sums = [t.kls[k].sum() for k in ESTIMATORS] + [t.exact.sum()]
    print(f"  {'sum':<13} {num(t.logprobs.sum()):>7} {num(t.ref_logprobs.sum()):>9} "
          + " ".join(f"{num(v):>7}" for v in sums))


def print_totals(args: argparse.Namespace, t: Terms) -> None:
    """``R = score - beta x sum KL`` for each estimator, and the notes that explain the KL."""
    score = t.score[0]
    print(f"total reward R = R_rm - beta x sum KL, beta = {args.beta:g} (compute_rewards):")
    for k in ESTIMATORS:
        total_kl, penalty = t.kls[k].sum(), args.beta * t.kls[k].sum()
        print(f"  {k}: R = {num(score)} - {args.beta:g} x {signed(total_kl)} = "
              f"{num(score)} {'-' if num(penalty)[0] != '-' else '+'} {num(abs(penalty))} = "
              f"{num(t.totals[k])}")
    print("k1 and k3 are unbiased estimates of the KL when the response is sampled from the")
    print("actor (the exact column is what they estimate); k2 and k3 are >= 0 per token, k1 is "
          "not.")
    print(why_kl(args, t))
    k1 = float(t.kls["k1"].sum())
    if num(k1).startswith("-"):
        print(f"why the k1 sum is negative ({num(k1)}): the reference finds this response "
              "likelier than the actor\n  does; k1 = logp - ref_logp estimates the KL only on "
              "average over responses sampled\n  from the actor, and one response can go below 0 "
              "(k3 and the exact KL never do)")


def run(args: argparse.Namespace) -> None:
    tok = Tokenizer()
    response_text = args.response.strip()
    if response_text.split()[-1:] == [EOS]:
        response_text = response_text.rsplit(EOS, 1)[0].strip()
    prompt_ids = encode(tok, args.prompt, "PROMPT")
    response_ids = encode(tok, response_text, "RESPONSE") + [tok.eos_id]
    actor, actor_name = load_actor(args.actor)
    t = compute(args, actor, prompt_ids, response_ids)
    check_finite(args, t)
    text = f"{args.prompt} {response_text}".strip()

    print(f"prompt {args.prompt!r}, response {response_text!r} + <eos>: P={t.P} tokens "
          f"(with <bos>), T={len(response_ids)} response tokens")
    temp = f" at temperature {args.actor_temperature:g}" if args.actor_temperature != 1 else ""
    print(f"actor:     {actor_name}{temp}")
    print("reference: the shipped SFT model at temperature 1 (frozen)")
    print()
    print(f"reward model score R_rm (z-normalised, as the trainer uses it) = {num(t.score[0])}")
    print(f"gold score (the hidden human judge, in [-1, 1])                = "
          f"{num(gold_score(text))}")
    print()
    print_table(t)
    print()
    print_totals(args, t)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads()
    ctrl_c_raises()
    try:
        run(args)
    except (UsageError, ValueError) as e:
        print(f"{PROG}: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
