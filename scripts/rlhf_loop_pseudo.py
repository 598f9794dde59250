"""One RLHF step, top to bottom, printing every intermediate value.

The chapter's six phases run once on the shipped toy models (the SFT actor and the reward
model), with the default ``PPOConfig`` except for a small batch and 12-token responses. Each
phase prints the tensors it makes (shape, dtype, a few numbers rounded to 3 decimals); phase 2
decodes the prompts and responses, phase 4 prints one response token by token (token, logp,
ref_logp, KL, reward) and phase 6 prints the PPO losses, before and after the update.

Nothing is re-implemented: every number comes from rlhf_edu (``kl_penalty``,
``compute_rewards``, ``gae``, ``whiten``, ``ppo_losses``, ``total_loss``,
``RLHFTrainer.update``), called here in the order ``RLHFTrainer.rollout()`` calls them and on
its random generators. The last line checks that this walk-through produced the very numbers of
``RLHFTrainer.rollout()`` + ``update()`` with the same seed.

On the first step the actor *is* the reference, so every KL is 0 up to float rounding (the
output says so). Two ways to see the penalty at work: ``--warmup N`` trains N ordinary steps
first (beta = 0.05, a progress bar on stderr; Ctrl-C stops it), and ``--actor hacked`` starts
from the shipped actor trained at beta = 0 (``rlhf_edu/weights/hacked.pt``, made by
``scripts/make_hacked_actor.py``), which writes degenerate praise far from the reference: its
KL is large. Phase 4 prints one line saying why the KL is what it is, and, where a response's
k1 sum is negative, why that can happen.

    python scripts/rlhf_loop_pseudo.py                  # 4 prompts, seed 0: a few seconds on CPU
    python scripts/rlhf_loop_pseudo.py --actor hacked   # trained at beta = 0: a large KL
    python scripts/rlhf_loop_pseudo.py --warmup 20      # the actor has drifted: KL > 0
    python scripts/rlhf_loop_pseudo.py --seed 3 --batch 8

A bad argument is a one-line error naming it (exit status 2); Ctrl-C, one line (exit 130).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
from tqdm.auto import tqdm

import rlhf_edu
from rlhf_edu import (
    GPT,
    PPOConfig,
    RLHFTrainer,
    build_models,
    compute_rewards,
    gae,
    kl_penalty,
    load_pretrained,
    ppo_losses,
    total_loss,
    whiten,
)
from rlhf_edu.distributed import configure_threads
from rlhf_edu.interrupt import ctrl_c_raises
from rlhf_edu.plots import rounded
from rlhf_edu.task import sample_prompts
from rlhf_edu.trainer import Rollout

PROG = Path(__file__).name
HACKED = Path(rlhf_edu.__file__).resolve().parent / "weights" / "hacked.pt"
RESPONSE_LEN = 12
SHOWN_ROWS = 8  # decoded responses printed (the rest are counted)
MAX_BATCH = 256  # a walk-through: PPOConfig's default batch is 64
MAX_WARMUP = 1000  # about 0.2 s a step at batch 4 on one CPU core; longer: `rlhf-edu train`


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``--help`` still shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(lo: int, hi: int, shown_hi: str | None = None,
           hint: str = "") -> Callable[[str], int]:
    """An argparse type: an int in ``[lo, hi]``, refused in one line otherwise (``hint`` is
    added to the message of a number above ``hi``)."""
    bounds = f"[{lo}, {shown_hi or hi}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int in {bounds}, got {text!r}") \
                from None
        if not lo <= value <= hi:
            more = f" ({hint})" if hint and value > hi else ""
            raise argparse.ArgumentTypeError(f"must be an int in {bounds}, got {text}{more}")
        return value
    return parse


def num(x: float | torch.Tensor) -> str:
    """``x`` with 3 decimals, never ``-0.000``."""
    return f"{rounded(float(x), 3):.3f}"


def head(t: torch.Tensor, n: int = 6) -> str:
    """The first ``n`` values of a 1-d tensor, e.g. ``[0.1, -2.3, ...]``."""
    values = t.flatten().tolist()
    shown = ", ".join(num(v) if isinstance(v, float) else str(v) for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}]"


def row0(t: torch.Tensor, mask: torch.Tensor) -> str:
    """Row 0 of a ``(B, T)`` tensor at its response tokens (padding left out)."""
    return f"row 0 = {head(t[0][mask[0].bool()])}"


def show(name: str, t: torch.Tensor, note: str = "") -> None:
    """One line per tensor: name, shape, dtype, then what it holds."""
    dtype = str(t.dtype).replace("torch.", "")
    print(f"  {name:<14} {str(tuple(t.shape)):<9} {dtype:<8} {note}")


def print_losses(losses: dict[str, torch.Tensor | float]) -> None:
    """The losses, then PPO's diagnostics, on two lines."""
    items = [f"{k} {num(v)}" for k, v in losses.items()]
    print("    " + ", ".join(items[:3]))
    print("    " + ", ".join(items[3:]))


def phase(n: int, title: str) -> None:
    print(f"\n== {n}. {title}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog=PROG,
        description="One RLHF step on the shipped toy models, every intermediate value printed. "
                    "On the first step the actor is the reference (KL 0): add --actor hacked "
                    "(trained at beta = 0) or --warmup N to see the KL penalty at work.",
        epilog="Runs in a few seconds on CPU. See the module docstring for what each phase shows.")
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1, "2**63 - 1"), default=0,
                        help="PPOConfig.seed: prompts, sampling and minibatch order "
                             "(default: %(default)s)")
    parser.add_argument("--batch", type=int_in(1, MAX_BATCH), default=4,
                        help=f"prompts (and responses) in the batch, at most {MAX_BATCH} "
                             "(default: %(default)s)")
    parser.add_argument("--actor", default="sft", metavar="{sft,hacked,PATH}",
                        help="the actor's starting point: sft (the shipped SFT model, the same "
                             "as the reference: KL 0 on the first step), hacked (the shipped "
                             "actor trained at beta = 0: a large KL), or an SFT checkpoint "
                             "from `rlhf-edu pretrain` (default: %(default)s)")
    parser.add_argument("--warmup", default=0,
                        type=int_in(0, MAX_WARMUP, hint="a longer run is `rlhf-edu train`"),
                        help=f"ordinary RLHF steps (beta = 0.05) to train before the one shown, "
                             f"so that the actor differs from the reference; at most "
                             f"{MAX_WARMUP} (about 0.2 s each at --batch 4 on one CPU core; "
                             "a progress bar on stderr, Ctrl-C stops) (default: %(default)s)")
    return parser.parse_args(argv)


def load_actor(spec: str) -> tuple[GPT, str]:
    """The actor's GPT named by ``--actor`` (sft, hacked or an SFT checkpoint) and a name."""
    if spec == "sft":
        return load_pretrained("sft"), "the shipped SFT model (= the reference)"
    if spec == "hacked":
        if not HACKED.is_file():
            raise ValueError(f"no hacked actor at {HACKED}; build it with "
                             "`python scripts/make_hacked_actor.py`")
        return load_pretrained("sft", HACKED), "the hacked actor (trained at beta = 0)"
    if not Path(spec).is_file():
        raise ValueError(f"--actor {spec}: no such file (expected sft, hacked or the path of an "
                         "SFT checkpoint)")
    return load_pretrained("sft", spec), f"the SFT model in {spec}"


def new_trainer(cfg: PPOConfig, actor: GPT) -> RLHFTrainer:
    """A trainer on the shipped reward model and SFT reference, with ``actor`` as the actor."""
    models = build_models(cfg.critic_mode, sft=load_pretrained("sft"),
                          reward=load_pretrained("reward"), seed=cfg.seed)
    models.actor.gpt.load_state_dict(actor.state_dict())
    return RLHFTrainer(cfg, models)


def warm_up(trainer: RLHFTrainer, steps: int) -> None:
    """``steps`` ordinary RLHF steps, with a progress bar on stderr."""
    if not steps:
        return
    with tqdm(total=steps, desc="warm-up", unit="step", file=sys.stderr) as bar:
        for _ in range(steps):
            m = trainer.step()
            bar.set_postfix(rm=f"{m['rm_score']:+.2f}", gold=f"{m['gold_score']:+.2f}",
                            kl=f"{m['kl']:.2f}", refresh=False)
            bar.update()


@dataclass
class Generated:
    """Phases 1 and 2: the prompts and what the actor wrote, with its log-probs."""

    prompts: list[str]
    tokens: torch.Tensor  # (B, P + T)
    valid: torch.Tensor  # (B, P + T)
    P: int
    response: torch.Tensor  # (B, T)
    logprobs: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T)
    finished: torch.Tensor  # (B,) reached <eos>


def generate(trainer: RLHFTrainer) -> Generated:
    """Phases 1-2: sample prompts; the actor answers them, keeping each token's log-prob."""
    cfg, m, tok, B = trainer.config, trainer.models, trainer.tok, trainer.config.batch_size
    phase(1, "SAMPLE PROMPTS")
    prompts = sample_prompts(B, trainer.generator)
    prompt_ids, prompt_valid = tok.encode_batch(prompts)  # (B, P) left-padded, <bos> first
    show("prompt_ids", prompt_ids, f"row 0 = {prompt_ids[0].tolist()}")
    show("prompt_valid", prompt_valid, "True on real tokens (left padding is False)")

    phase(2, "ACTOR GENERATES, keeping each token's log-prob")
    m.actor.eval()
    gen = m.actor.generate(prompt_ids, prompt_valid, cfg.response_len,
                           temperature=cfg.temperature, pad_id=tok.pad_id,
                           eos_id=tok.eos_id if cfg.stop_at_eos else None,
                           generator=trainer.sample_generator)
    show("tokens", gen.tokens, f"prompt width P={gen.prompt_len} + response width "
         f"T={gen.response.size(1)}")
    show("response", gen.response, f"row 0 = {gen.response[0].tolist()}")
    show("logprobs", gen.logprobs, row0(gen.logprobs, gen.mask))
    show("mask", gen.mask, f"response tokens per row = {gen.mask.sum(1).long().tolist()}")
    finished = (gen.response == tok.eos_id).any(1)
    for b in range(min(B, SHOWN_ROWS)):
        end = "<eos>" if finished[b] else f"(no <eos> in {cfg.response_len} tokens)"
        print(f"  [{b}] {prompts[b]!r} -> {tok.decode(gen.response[b])!r} {end}")
    if B > SHOWN_ROWS:
        print(f"  ... and {B - SHOWN_ROWS} more")
    return Generated(prompts, gen.tokens, gen.valid, gen.prompt_len, gen.response,
                     gen.logprobs, gen.mask, finished)


def why_kl(args: argparse.Namespace, kl_sums: torch.Tensor) -> str:
    """One line: why the KL of this step is what it is."""
    mean = num(kl_sums.mean())
    if args.actor == "hacked":
        return (f"  why KL is large (mean {mean}): this actor was trained at beta = 0, far from "
                "the reference")
    if args.warmup:
        return (f"  why KL > 0 (mean {mean}): {args.warmup} warm-up steps moved the actor from "
                "the reference")
    if args.actor == "sft":
        return ("  why KL = 0: on the first step the actor IS the reference; see a penalty with "
                "--actor hacked\n    (the shipped actor trained at beta = 0) or --warmup N "
                "(N ordinary steps first)")
    return f"  why KL: the actor starts from {args.actor}; mean {mean} per response"


def reference_kl(trainer: RLHFTrainer, g: Generated, scores: torch.Tensor,
                 args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """Phase 4: the reference's log-probs, the per-token KL and rewards, explained."""
    cfg, m, tok, beta = trainer.config, trainer.models, trainer.tok, trainer.kl_ctl.value
    phase(4, "REFERENCE LOG-PROBS -> per-token KL -> R = R_rm - beta*KL")
    ref_logprobs = m.reference(g.tokens, g.valid, g.P, cfg.temperature).logprobs  # (B, T)
    kl = kl_penalty(g.logprobs, ref_logprobs, cfg.kl_estimator) * g.mask  # (B, T)
    rewards = compute_rewards(scores, g.logprobs, ref_logprobs, g.mask, beta,
                              cfg.kl_estimator)  # (B, T)
    show("ref_logprobs", ref_logprobs, row0(ref_logprobs, g.mask))
    show("kl", kl, f"{cfg.kl_estimator} summed per response = {head(kl.sum(1))}")
    show("rewards", rewards, f"summed per response = {head(rewards.sum(1))}")
    print(why_kl(args, kl.sum(1)))
    negative = [b for b, v in enumerate(kl.sum(1).tolist()) if num(v).startswith("-")]
    if negative and cfg.kl_estimator == "k1":
        print(f"  why a k1 sum is negative (row {negative[0]}): k1 = logp - ref_logp estimates "
              "the KL only on average over\n    responses sampled from the actor; one response "
              "the reference finds likelier goes below 0 (k3 never does)")
    n0 = int(g.mask[0].sum())
    print(f"  response 0, token by token (the score {num(scores[0])} lands on the last):")
    print(f"    {'t':>2} {'token':<9} {'logp':>7} {'ref_logp':>9} {'KL':>7} {'reward':>7}")
    for t in range(n0):
        word = tok.vocab[int(g.response[0, t])]
        print(f"    {t:>2} {word:<9} {num(g.logprobs[0, t]):>7} "
              f"{num(ref_logprobs[0, t]):>9} {num(kl[0, t]):>7} {num(rewards[0, t]):>7}")
    print(f"    sum: {num(scores[0])} - {beta} x {num(kl[0].sum())} = "
          f"{num(rewards[0].sum())}")
    return ref_logprobs, kl, rewards


def experience(trainer: RLHFTrainer, args: argparse.Namespace) -> Rollout:
    """Phases 1-5, printed: the batch PPO trains on."""
    cfg, m = trainer.config, trainer.models
    with torch.no_grad():
        g = generate(trainer)

        phase(3, "REWARD MODEL SCORES each whole response")
        raw = m.reward(g.tokens, g.valid)  # (B,) z-normalised, read at the last real token
        scores = raw - cfg.missing_eos_penalty * (~g.finished).float()
        show("rm_score", raw, f"z-normalised = {head(raw)}")
        show("scores", scores, f"minus {cfg.missing_eos_penalty} without <eos> = "
             f"{head(scores)}")

        ref_logprobs, kl, rewards = reference_kl(trainer, g, scores, args)

        phase(5, "CRITIC VALUES + GAE -> advantages, returns (= advantages + values)")
        values = m.critic(g.tokens, g.valid, g.P).float() * g.mask  # (B, T)
        advantages, returns = gae(rewards, values, g.mask, cfg.gamma, cfg.lam)
        show("values", values, row0(values, g.mask))
        show("advantages", advantages, row0(advantages, g.mask))
        show("returns", returns, row0(returns, g.mask))
        if cfg.whiten_advantages:
            advantages = whiten(advantages, g.mask)
            show("advantages", advantages, "whitened, " + row0(advantages, g.mask))
    return Rollout(prompts=g.prompts, tokens=g.tokens, valid=g.valid, prompt_len=g.P,
                   response=g.response, mask=g.mask, logprobs=g.logprobs,
                   ref_logprobs=ref_logprobs, scores=scores, kl=kl, rewards=rewards,
                   values=values, advantages=advantages, returns=returns,
                   beta=trainer.kl_ctl.value)


def update(trainer: RLHFTrainer, batch: Rollout) -> dict[str, float]:
    """Phase 6, printed: the losses before any Adam step, then ``RLHFTrainer.update``."""
    cfg, m = trainer.config, trainer.models
    tokens, valid, P, mask = batch.tokens, batch.valid, batch.prompt_len, batch.mask
    phase(6, "PPO UPDATE of actor and critic")
    m.actor.train()
    m.critic.train()
    with torch.no_grad():  # the losses on the whole batch, before any Adam step
        logprobs, entropy, new_values = trainer.policy(tokens, valid, P)  # (B, T) each
        losses = ppo_losses(logprobs, batch.logprobs, batch.advantages, new_values, batch.values,
                            batch.returns, mask, clip=cfg.clip, vf_clip=cfg.vf_clip or None,
                            entropy=entropy)
        loss = total_loss(losses, cfg.vf_coef, cfg.ent_coef)
    ratio = torch.exp(logprobs - batch.logprobs) * mask  # (B, T) pi / pi_old
    print("  before any Adam step the actor is pi_old: ratio = 1, policy loss = -mean(A)"
          + (" (0: A is whitened)" if cfg.whiten_advantages else ""))
    show("ratio", ratio, row0(ratio, mask))
    print_losses(losses)
    print(f"  total loss = policy_loss + {cfg.vf_coef} x value_loss - {cfg.ent_coef} x entropy")
    print(f"             = {num(losses['policy_loss'])} + {cfg.vf_coef} x "
          f"{num(losses['value_loss'])} - {cfg.ent_coef} x {num(losses['entropy'])} = {num(loss)}")
    stats = trainer.update(batch)
    print(f"  RLHFTrainer.update: {cfg.ppo_epochs} epochs x {cfg.minibatches} minibatches = "
          f"{cfg.ppo_epochs * cfg.minibatches} Adam steps; the mean losses over them:")
    print_losses(stats)
    with torch.no_grad():
        after = m.actor(tokens, valid, P, cfg.temperature)
        moved = kl_penalty(batch.logprobs, after.logprobs, "k3", mask=mask)  # on pi_old samples
        drift = kl_penalty(after.logits, m.reference(tokens, valid, P, cfg.temperature).logits,
                           "full", mask=mask)  # (B, T) exact KL over the vocabulary
    print(f"  after it: KL(pi_old || pi_new) per token {num(moved.sum() / mask.sum())} (k3); "
          "exact KL(actor || reference)")
    print(f"  over the vocabulary, summed along each response = {head(drift.sum(1), 4)}")
    return stats


def same_as_trainer(check: RLHFTrainer, batch: Rollout, stats: dict[str, float]) -> bool:
    """``check.rollout()`` + ``update()`` give this walk-through's tensors and losses."""
    ref_batch = check.rollout()
    ref_stats = check.update(ref_batch)
    same = all(torch.allclose(getattr(batch, k), getattr(ref_batch, k), atol=1e-6, rtol=0)
               for k in ("tokens", "logprobs", "ref_logprobs", "scores", "rewards", "values",
                         "advantages", "returns"))
    return same and all(math.isclose(stats[k], ref_stats[k], abs_tol=1e-6) for k in ref_stats)


def run(args: argparse.Namespace) -> int:
    cfg = PPOConfig(seed=args.seed, batch_size=args.batch, response_len=RESPONSE_LEN,
                    minibatches=2 if args.batch % 2 == 0 else 1)
    actor, actor_name = load_actor(args.actor)
    trainer = new_trainer(cfg, actor)
    warm_up(trainer, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:  # the state to check against, after the warm-up
        saved = trainer.save(Path(tmp) / "start.pt")
        check = new_trainer(cfg, actor)
        check.load(saved)
    B, beta = cfg.batch_size, trainer.kl_ctl.value
    warm = f" (step {args.warmup + 1}: {args.warmup} trained before it)" if args.warmup else ""
    print(f"One RLHF step on the shipped models{warm}: seed {cfg.seed}, B={B} prompts, "
          f"at most {cfg.response_len} response tokens")
    print(f"actor: {actor_name}; reference: the shipped SFT model (frozen)")
    print(f"PPOConfig defaults otherwise: beta={beta}, {cfg.kl_estimator} KL, gamma={cfg.gamma}, "
          f"lam={cfg.lam}, clip={cfg.clip}, vf_coef={cfg.vf_coef}, ent_coef={cfg.ent_coef}")
    batch = experience(trainer, args)
    stats = update(trainer, batch)
    same = same_as_trainer(check, batch, stats)
    print(f"\ncheck: RLHFTrainer.rollout() + update() with seed {cfg.seed} give the same "
          f"tensors and losses: {'yes' if same else 'NO'}")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads()
    ctrl_c_raises()
    try:
        return run(args)
    except ValueError as e:  # a checkpoint that is not an SFT model, ...
        print(f"{PROG}: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (Ctrl-C); nothing was saved", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
