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

On the first step the actor *is* the reference, so every KL is 0 up to float rounding; pass
``--warmup N`` to train N ordinary steps first and see the penalty at work.

    python scripts/rlhf_loop_pseudo.py                  # 4 prompts, seed 0: a few seconds on CPU
    python scripts/rlhf_loop_pseudo.py --seed 3 --batch 8
    python scripts/rlhf_loop_pseudo.py --warmup 20      # the actor has drifted: KL > 0
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from rlhf_edu import (
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
from rlhf_edu.plots import rounded
from rlhf_edu.task import sample_prompts
from rlhf_edu.trainer import Rollout

RESPONSE_LEN = 12
SHOWN_ROWS = 8  # decoded responses printed (the rest are counted)


def num(x: float) -> str:
    """``x`` with 3 decimals, never ``-0.000``."""
    return f"{rounded(x, 3):.3f}"


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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One RLHF step on the shipped toy models, every intermediate value printed.",
        epilog="Runs in a few seconds on CPU. See the module docstring for what each phase shows.")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="PPOConfig.seed: prompts, sampling and minibatch order "
                             "(default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=4,
                        help="prompts (and responses) in the batch (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=0,
                        help="ordinary RLHF steps to train before the one shown, so that the "
                             "actor differs from the reference (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads()
    cfg = PPOConfig(seed=args.seed, batch_size=args.batch, response_len=RESPONSE_LEN,
                    minibatches=2 if args.batch % 2 == 0 else 1)

    def new_trainer() -> RLHFTrainer:
        models = build_models(cfg.critic_mode, sft=load_pretrained("sft"),
                              reward=load_pretrained("reward"), seed=cfg.seed)
        trainer = RLHFTrainer(cfg, models)
        trainer.train(args.warmup, progress=False)
        return trainer

    trainer = new_trainer()
    m, tok = trainer.models, trainer.tok
    B, beta = cfg.batch_size, trainer.kl_ctl.value
    warm = f" (step {args.warmup + 1}: {args.warmup} trained before it)" if args.warmup else ""
    print(f"One RLHF step on the shipped models{warm}: seed {cfg.seed}, B={B} prompts, "
          f"at most {cfg.response_len} response tokens")
    print(f"PPOConfig defaults otherwise: beta={beta}, {cfg.kl_estimator} KL, gamma={cfg.gamma}, "
          f"lam={cfg.lam}, clip={cfg.clip}, vf_coef={cfg.vf_coef}, ent_coef={cfg.ent_coef}")

    with torch.no_grad():
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
        tokens, valid, P, mask = gen.tokens, gen.valid, gen.prompt_len, gen.mask
        T = gen.response.size(1)
        show("tokens", tokens, f"prompt width P={P} + response width T={T}")
        show("response", gen.response, f"row 0 = {gen.response[0].tolist()}")
        show("logprobs", gen.logprobs, row0(gen.logprobs, mask))
        show("mask", mask, f"response tokens per row = {mask.sum(1).long().tolist()}")
        finished = (gen.response == tok.eos_id).any(1)
        texts = [tok.decode(r) for r in gen.response]
        for b in range(min(B, SHOWN_ROWS)):
            end = "<eos>" if finished[b] else f"(no <eos> in {cfg.response_len} tokens)"
            print(f"  [{b}] {prompts[b]!r} -> {texts[b]!r} {end}")
        if B > SHOWN_ROWS:
            print(f"  ... and {B - SHOWN_ROWS} more")

        phase(3, "REWARD MODEL SCORES each whole response")
        raw = m.reward(tokens, valid)  # (B,) z-normalised, read at the last real token
        scores = raw - cfg.missing_eos_penalty * (~finished).float()
        show("rm_score", raw, f"z-normalised = {head(raw)}")
        show("scores", scores, f"minus {cfg.missing_eos_penalty} without <eos> = {head(scores)}")

        phase(4, "REFERENCE LOG-PROBS -> per-token KL -> R = R_rm - beta*KL")
        ref_logprobs = m.reference(tokens, valid, P, cfg.temperature).logprobs  # (B, T)
        kl = kl_penalty(gen.logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, T)
        rewards = compute_rewards(scores, gen.logprobs, ref_logprobs, mask, beta,
                                  cfg.kl_estimator)  # (B, T)
        show("ref_logprobs", ref_logprobs, row0(ref_logprobs, mask))
        show("kl", kl, f"{cfg.kl_estimator} summed per response = {head(kl.sum(1))}")
        show("rewards", rewards, f"summed per response = {head(rewards.sum(1))}")
        n0 = int(mask[0].sum())
        print(f"  response 0, token by token (the score {num(scores[0])} lands on the last):")
        print(f"    {'t':>2} {'token':<9} {'logp':>7} {'ref_logp':>9} {'KL':>7} {'reward':>7}")
        for t in range(n0):
            word = tok.vocab[int(gen.response[0, t])]
            print(f"    {t:>2} {word:<9} {num(gen.logprobs[0, t]):>7} "
                  f"{num(ref_logprobs[0, t]):>9} {num(kl[0, t]):>7} {num(rewards[0, t]):>7}")
        print(f"    sum: {num(scores[0])} - {beta} x {num(kl[0].sum())} = "
              f"{num(rewards[0].sum())}")

        phase(5, "CRITIC VALUES + GAE -> advantages, returns (= advantages + values)")
        values = m.critic(tokens, valid, P).float() * mask  # (B, T)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        show("values", values, row0(values, mask))
        show("advantages", advantages, row0(advantages, mask))
        show("returns", returns, row0(returns, mask))
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
            show("advantages", advantages, "whitened, " + row0(advantages, mask))

    batch = Rollout(prompts=prompts, tokens=tokens, valid=valid, prompt_len=P,
                    response=gen.response, mask=mask, logprobs=gen.logprobs,
                    ref_logprobs=ref_logprobs, scores=scores, kl=kl, rewards=rewards,
                    values=values, advantages=advantages, returns=returns, beta=beta)

    phase(6, "PPO UPDATE of actor and critic")
    m.actor.train()
    m.critic.train()
    with torch.no_grad():  # the losses on the whole batch, before any Adam step
        logprobs, entropy, new_values = trainer.policy(tokens, valid, P)  # (B, T) each
        losses = ppo_losses(logprobs, gen.logprobs, advantages, new_values, values, returns,
                            mask, clip=cfg.clip, vf_clip=cfg.vf_clip or None, entropy=entropy)
        loss = total_loss(losses, cfg.vf_coef, cfg.ent_coef)
    ratio = torch.exp(logprobs - gen.logprobs) * mask  # (B, T) pi / pi_old
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
        moved = kl_penalty(gen.logprobs, after.logprobs, "k3", mask=mask)  # on pi_old samples
        drift = kl_penalty(after.logits, m.reference(tokens, valid, P, cfg.temperature).logits,
                           "full", mask=mask)  # (B, T) exact KL over the vocabulary
    print(f"  after it: KL(pi_old || pi_new) per token {num(moved.sum() / mask.sum())} (k3); "
          "exact KL(actor || reference)")
    print(f"  over the vocabulary, summed along each response = {head(drift.sum(1), 4)}")

    # the same seed through the trainer itself must give the same numbers
    check = new_trainer()
    ref_batch = check.rollout()
    ref_stats = check.update(ref_batch)
    same = all(torch.allclose(getattr(batch, k), getattr(ref_batch, k), atol=1e-6, rtol=0)
               for k in ("tokens", "logprobs", "ref_logprobs", "scores", "rewards", "values",
                         "advantages", "returns"))
    same = same and all(math.isclose(stats[k], ref_stats[k], abs_tol=1e-6) for k in ref_stats)
    print(f"\ncheck: RLHFTrainer.rollout() + update() with seed {cfg.seed} give the same "
          f"tensors and losses: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
