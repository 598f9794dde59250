"""DPO and IPO: learn from preference pairs directly, without a reward model or generation.

Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) trains
the policy on the same Bradley-Terry labelled pairs the reward model learns from. Two models
take part: the policy (a copy of the SFT actor, trained) and the reference (the SFT actor,
frozen). With sequence log-probs ``pi`` of the policy and ``ref`` of the reference,

    h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)          (B,)
    sigmoid (DPO):  loss = mean -log sigmoid(beta * h)
    ipo (IPO):      loss = mean (h - 1 / (2 beta))^2   (Azar et al. 2023, arXiv:2310.12036)

``beta * (pi - ref)`` plays the reward: DPO is the Bradley-Terry loss of a reward model whose
score is that log-ratio, so "reward accuracy" is the share of pairs where the chosen response's
implicit reward beats the rejected one's. The KL leash of PPO is implicit in ``beta``: the
loss only sees log-ratios to the reference. IPO regresses the margin to a fixed target instead
of pushing it to infinity, which keeps the policy nearer the reference on noisy labels.

Training is offline (no sampling); the evaluation samples fresh responses of the trained policy
and measures them with :class:`~rlhf_edu.trainer.RLHFTrainer`'s own rollout, so the figures (gold,
RM score, KL to the reference, well-formed, repetition) mean what they mean for a PPO run.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checkpoint import atomic_save, model_checkpoint
from .config import DPO_LOSSES, DPOConfig, PPOConfig
from .distributed import adam
from .interrupt import DeferredInterrupt, TrainingInterrupted, save_interrupted
from .model import GPT, token_logprobs
from .models import Actor, Reference, RewardModel, build_models, load_pretrained
from .reward_model import PreferencePairs, make_preference_pairs
from .sharding import all_finite
from .task import review_texts, sample_prompts, text_metrics
from .trainer import RLHFTrainer
from .validate import (
    COUNT,
    check_arguments,
    check_bool,
    check_finite,
    check_instance,
    check_int,
    check_output_file,
    check_result,
    check_same_device,
    check_seed,
    check_tensor,
    shown,
)

LOSSES = DPO_LOSSES


# ------------------------------------------------------------------ the loss


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, beta: float = 0.1, loss: str = "sigmoid"
             ) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO ("sigmoid") or IPO ("ipo") loss of a batch of pairs, and the implicit rewards.

    ===================  =====  ==========================================================
    Symbol               Shape  Description
    ===================  =====  ==========================================================
    ``policy_chosen``    (B,)   summed log-prob of the chosen response under the policy
    ``policy_rejected``  (B,)   the same for the rejected response
    ``ref_chosen``       (B,)   summed log-prob of the chosen response under the reference
    ``ref_rejected``     (B,)   the same for the rejected response
    ===================  =====  ==========================================================

    Returns ``(loss, chosen_rewards, rejected_rewards)``: a scalar, and ``beta * (policy -
    ref)`` ``(B,)`` for each side, detached (they are for monitoring, as in TRL).
    """
    check_arguments(DPOConfig, beta=beta)
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown DPO loss {shown(loss)}; expected one of {', '.join(LOSSES)}")
    inputs = {"policy_chosen": policy_chosen, "policy_rejected": policy_rejected,
              "ref_chosen": ref_chosen, "ref_rejected": ref_rejected}
    for name, x in inputs.items():
        check_tensor(name, x, ndim=1, shape="(B,)")
        if x.shape != policy_chosen.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but policy_chosen has shape "
                             f"{tuple(policy_chosen.shape)}; all four must be (B,) alike")
    if policy_chosen.numel() == 0:
        raise ValueError("the log-probs are empty (B = 0); the mean loss needs at least one pair")
    check_finite(inputs)
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,)
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * h)  # log(sigmoid) would round to log(0) for large -h
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    value = check_result("the DPO loss", losses.mean(), lambda: (
        f"the log-prob margins (largest |h| = {h.detach().abs().max().item():g}) are too large "
        f"for beta {beta:g} and loss {loss!r} in {h.dtype}"))
    return value, chosen_rewards, rejected_rewards


# ------------------------------------------------------------------ log-probs of responses


def sequence_logprobs(model: GPT | Actor, tokens: Tensor, valid: Tensor,
                      prompt_len: int | Tensor) -> Tensor:
    """Summed log-probs ``(B,)`` of the response tokens of right-padded sequences.

    ``tokens`` and ``valid`` are ``(B, L)`` (``<bos> prompt response [<eos>] <pad>...``);
    ``prompt_len`` (an int, or ``(B,)`` per row) counts ``<bos>`` and the prompt, so it is the
    column of each row's first response token. Prompt and padding contribute nothing.
    """
    check_instance("model", model, (GPT, Actor))
    gpt = model.gpt if isinstance(model, Actor) else model
    check_tensor("tokens", tokens, ndim=2, shape="(B, L)")
    check_tensor("valid", valid)
    if valid.shape != tokens.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)} but tokens has shape "
                         f"{tuple(tokens.shape)}; they must match")
    check_same_device({"model": next(gpt.parameters()), "tokens": tokens,
                       "valid": valid})
    B, L = tokens.shape
    if isinstance(prompt_len, Tensor):
        check_tensor("prompt_len", prompt_len, ndim=1, shape="(B,)")
        if prompt_len.numel() != B or prompt_len.is_floating_point():
            raise ValueError(f"prompt_len must be an int or an integer tensor of shape ({B},), "
                             f"got {shown(prompt_len)}")
        starts = prompt_len.to(tokens.device)
    else:
        check_int("prompt_len", prompt_len, minimum=1, maximum=max(L - 1, 1))
        starts = torch.full((B,), prompt_len, device=tokens.device)
    if bool(((starts < 1) | (starts >= L)).any()):
        raise ValueError(f"prompt_len must be in [1, {L - 1}] for sequences of length {L} (a "
                         f"prompt with <bos> and room for a response), got {shown(prompt_len)}")
    logits = gpt(tokens[:, :-1], valid[:, :-1])  # (B, L - 1, V): column j predicts token j + 1
    logp = token_logprobs(logits, tokens[:, 1:])  # (B, L - 1)
    column = torch.arange(1, L, device=tokens.device)  # the column of each predicted token
    response = valid[:, 1:].bool() & (column[None, :] >= starts[:, None])  # (B, L - 1)
    return (logp * response).sum(1)


@dataclass
class DPOPairs:
    """Preference pairs with the column where each pair's responses start.

    Chosen and rejected answer the same prompt, so one ``prompt_len`` ``(N,)`` (``<bos>`` plus
    the prompt's words) serves both sequences of a pair.
    """

    pairs: PreferencePairs
    prompt_len: Tensor  # (N,) long

    def __len__(self) -> int:
        return len(self.pairs)


def dpo_pairs(pairs: PreferencePairs, prompts: list[str]) -> DPOPairs:
    """``pairs`` with the prompt lengths of ``prompts`` (one prompt per pair, in order); each
    pair's chosen and rejected text must start with its prompt."""
    check_instance("pairs", pairs, PreferencePairs)
    if not isinstance(prompts, list | tuple) or len(prompts) != len(pairs):
        raise ValueError(f"prompts must be a list of {len(pairs)} strings (one per pair), got "
                         f"{shown(prompts)}")
    for i, (p, (chosen, rejected)) in enumerate(zip(prompts, pairs.texts)):
        if not isinstance(p, str) or not all(t == p or t.startswith(p + " ")
                                             for t in (chosen, rejected)):
            raise ValueError(f"pair {i} does not answer prompt {shown(p)}: its texts are "
                             f"{chosen!r} and {rejected!r}")
    prompt_len = torch.tensor([1 + len(p.split()) for p in prompts], dtype=torch.long)
    return DPOPairs(pairs, prompt_len)


def make_dpo_pairs(sft: GPT, n_pairs: int, seed: int = 0, sharpness: float = 5.0) -> DPOPairs:
    """The reward model's training data, :func:`~rlhf_edu.reward_model.make_preference_pairs`,
    with each pair's prompt length.

    ``make_preference_pairs`` draws its prompts first, from a generator seeded with ``seed``;
    drawing them again the same way gives the prompts, and :func:`dpo_pairs` checks that every
    pair's texts start with its prompt.
    """
    pairs = make_preference_pairs(sft, n_pairs, seed=seed, sharpness=sharpness)
    return dpo_pairs(pairs, sample_prompts(n_pairs, torch.Generator().manual_seed(seed)))


def pair_logprobs(model: GPT | Actor, data: DPOPairs, idx: Tensor | slice = slice(None)
                  ) -> tuple[Tensor, Tensor]:
    """Summed response log-probs ``(n,)`` of the chosen and of the rejected sequences of the
    pairs ``idx``, from one forward pass over both, padded only to their own longest
    sequence ``(2n, L)``, not to the longest of all the pairs."""
    p = data.pairs
    tokens, valid = _stack(p.chosen[idx], p.rejected[idx]), _stack(p.chosen_valid[idx],
                                                                   p.rejected_valid[idx])
    start = data.prompt_len[idx]
    L = _width(valid, start)
    tokens, valid = tokens[:, :L], valid[:, :L]  # (2n, L)
    dev = next(model.parameters()).device  # the pairs stay on the CPU; the model may not
    both = sequence_logprobs(model, tokens.to(dev), valid.to(dev),
                             torch.cat([start, start]).to(dev))  # (2n,)
    return both.chunk(2)


@torch.no_grad()
def reference_logprobs(reference: GPT | Actor, data: DPOPairs, batch_size: int = 32
                       ) -> tuple[Tensor, Tensor]:
    """:func:`pair_logprobs` of every pair under the frozen ``reference``, ``(N,)`` each,
    from one forward pass per ``batch_size`` pairs in order: the training's shapes, and
    memory that does not grow with ``N``. One forward over all the pairs gives the same
    log-probs up to float rounding, but its activations (``N`` times the minibatch's) no
    longer stay in cache and each new one page-faults. On CPU that took 1.6x as long for 512
    pairs; a 500-step run on 8,000 pairs (``benchmarks/methods.py``) took 63 s, and 40 s in
    minibatches."""
    check_int("batch_size", batch_size, minimum=1)
    if len(data) == 0:
        raise ValueError("data is empty (0 pairs); expected at least one pair to score")
    parts = [pair_logprobs(reference, data, idx)
             for idx in torch.arange(len(data), device="cpu").split(batch_size)]  # pairs: CPU
    return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])


def _width(valid: Tensor, start: Tensor) -> int:
    """How many leading columns of the right-padded ``valid`` ``(m, L)`` a forward pass needs:
    up to the last real token of any row, and at least one past the longest prompt (``start``
    ``(m / 2,)``), as :func:`sequence_logprobs` requires; at most ``L``.

    The columns after it are padding in every row, and no real token attends to them (right
    padding, causal attention): dropping them changes no log-prob beyond float rounding and
    saves their compute. The pairs live on the CPU, so reading the width waits for no device.
    """
    if start.numel() == 0:
        return valid.size(1)
    real = valid.any(0).nonzero()  # (k, 1) columns holding a real token in some row
    last = int(real.max()) + 1 if len(real) else 0
    return min(max(last, int(start.max()) + 1), valid.size(1))


def _stack(a: Tensor, b: Tensor) -> Tensor:
    """Two right-padded ``(n, La)``, ``(n, Lb)`` batches as one ``(2n, max(La, Lb))``."""
    L = max(a.size(1), b.size(1))
    return torch.cat([F.pad(a, (0, L - a.size(1))), F.pad(b, (0, L - b.size(1)))])


# ------------------------------------------------------------------ training


def train_dpo(sft: GPT, pairs: DPOPairs, beta: float = 0.1, loss: str = "sigmoid",
              epochs: int = 1, steps: int | None = None, batch_size: int = 32,
              lr: float = 1e-4, seed: int = 0, callback: Callable[[dict], None] | None = None,
              progress: bool = False) -> tuple[GPT, list[dict]]:
    """Train a copy of ``sft`` with DPO/IPO on ``pairs``; ``sft`` itself is the reference.

    ``steps`` (if given) replaces ``epochs``: that many minibatches of ``batch_size`` pairs,
    reshuffled each pass. Returns the trained policy (in eval mode) and one dict per step:
    ``loss``, ``reward_accuracy`` (share of pairs with chosen reward > rejected reward),
    ``reward_margin`` (mean chosen - rejected reward), ``chosen_reward``, ``rejected_reward``.
    ``callback`` receives each step's dict as it is made. Ctrl-C ends the running step and
    raises :class:`~rlhf_edu.interrupt.TrainingInterrupted` holding the policy trained so far.
    """
    check_instance("sft", sft, GPT, hint="e.g. load_pretrained('sft')")
    check_instance("pairs", pairs, DPOPairs, hint="e.g. make_dpo_pairs(sft, 1000)")
    check_arguments(DPOConfig, beta=beta, loss=loss, epochs=epochs, batch_size=batch_size,
                    lr=lr, seed=seed)
    check_int("steps", steps, minimum=1, none_ok=True)
    check_bool("progress", progress)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {shown(callback)}")
    if len(pairs) == 0:
        raise ValueError("pairs is empty (0 pairs); expected at least one pair to train on")
    ref_chosen, ref_rejected = reference_logprobs(Reference(Actor(sft)), pairs, batch_size)
    policy = copy.deepcopy(sft).train().requires_grad_(True)
    opt = adam(policy.parameters(), lr)
    total = steps if steps is not None else epochs * math.ceil(len(pairs) / batch_size)
    g = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    bar = tqdm(total=total, desc=f"DPO ({loss})", disable=not progress)
    epoch = 0
    with DeferredInterrupt() as interrupt:
        while len(history) < total:
            epoch += 1
            # the pairs live on the CPU (as the reward model's data do); so does the order
            for idx in torch.randperm(len(pairs), generator=g, device="cpu").split(batch_size):
                metrics = _dpo_step(policy, opt, pairs, idx, ref_chosen[idx],
                                    ref_rejected[idx], beta, loss, lr, len(history) + 1)
                history.append(metrics)
                bar.update()
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
                if callback is not None:
                    callback(metrics)
                if interrupt.requested:
                    bar.close()
                    raise TrainingInterrupted("DPO", policy.eval(), len(history), total, epoch)
                if len(history) == total:
                    break
    bar.close()
    return policy.eval(), history


def _dpo_step(policy: GPT, opt: torch.optim.Optimizer, pairs: DPOPairs, idx: Tensor,
              ref_chosen: Tensor, ref_rejected: Tensor, beta: float, loss: str, lr: float,
              step: int) -> dict:
    """One optimiser step of DPO on the pairs ``idx``; its metrics. A gradient norm that is
    not finite (clipping would scale every update to 0, silently) or weights that are not
    finite after the step stop training, naming the settings behind them."""
    policy_chosen, policy_rejected = pair_logprobs(policy, pairs, idx)
    value, chosen_r, rejected_r = dpo_loss(policy_chosen, policy_rejected, ref_chosen,
                                           ref_rejected, beta, loss)
    opt.zero_grad(set_to_none=True)
    value.backward()
    norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    if not bool(torch.isfinite(norm)):
        raise FloatingPointError(f"DPO step {step}: the gradient norm is {norm.item()} (the loss "
                                 f"{value.item():g} is finite, but beta {beta:g} scales its "
                                 "gradient past float32); lower beta")
    opt.step()
    # one read back for the finiteness of the weights and every metric
    finite, *values = torch.stack([
        all_finite(list(policy.parameters())).to(value.dtype), value.detach(),
        (chosen_r > rejected_r).to(value.dtype).mean(), (chosen_r - rejected_r).mean(),
        chosen_r.mean(), rejected_r.mean()]).tolist()
    if not finite:
        raise FloatingPointError(f"DPO step {step} made the policy's weights NaN or inf "
                                 f"(training diverged); lower the learning rate (now {lr:g})")
    return {"step": step, **dict(zip(("loss", "reward_accuracy", "reward_margin",
                                      "chosen_reward", "rejected_reward"), values))}


# ------------------------------------------------------------------ evaluation


def evaluate_policy(policy: GPT, sft: GPT, reward: RewardModel | None = None, n: int = 256,
                    seed: int = 0, response_len: int = 20) -> dict:
    """The metrics of a PPO step for ``n`` fresh samples of ``policy``, with ``sft`` as the
    reference: ``gold_score``, ``rm_score``, ``kl`` (to ``sft``, nats per response),
    ``well_formed``, ``repetition``, ``response_len``; and the first three ``samples`` (text).

    The samples come from :meth:`RLHFTrainer.rollout` (prompts, generation, RM score with its
    missing-<eos> penalty, per-token KL), exactly as a PPO run with ``seed`` draws them; the
    same ``seed`` gives the same prompts for any policy, so two policies are compared on the
    same prompts. ``reward`` defaults to the shipped reward model.
    """
    check_instance("policy", policy, GPT)
    check_instance("sft", sft, GPT)
    check_instance("reward", reward, RewardModel, none_ok=True)
    check_int("n", n, **COUNT)
    check_seed("seed", seed)
    check_int("response_len", response_len, minimum=1)
    models = build_models("head", sft=policy, reward=reward)  # actor: a copy of the policy
    models = replace(models, reference=Reference(Actor(sft)))  # reference: the SFT actor
    cfg = PPOConfig(seed=seed, batch_size=n, response_len=response_len, critic_mode="head",
                    minibatches=1)
    trainer = RLHFTrainer(cfg, models)
    batch = trainer.rollout()
    texts = review_texts(batch.prompts, batch.response, trainer.tok)
    judged = text_metrics(texts)
    return {
        "gold_score": judged["gold_score"],
        "rm_score": float(batch.scores.mean()),
        "kl": float(batch.kl.sum(1).mean()),
        "well_formed": judged["well_formed"],
        "repetition": judged["repetition"],
        "response_len": float(batch.mask.sum(1).mean()),
        "samples": texts[:3],
    }


# ------------------------------------------------------------------ the command


METRICS = (("gold_score", "gold score", "+.3f"), ("rm_score", "RM score", "+.3f"),
           ("kl", "KL to SFT", ".3f"), ("well_formed", "well-formed", ".1%"),
           ("repetition", "repetition", ".1%"), ("response_len", "length", ".1f"))


def run_dpo(config: DPOConfig, out: str | Path, progress: bool = True) -> int:
    """``rlhf-edu dpo``: make the pairs, train, save the policy to ``out``, and print the SFT
    actor's metrics beside the policy's. Bad input raises ``ValueError`` (one line)."""
    check_instance("config", config, DPOConfig)
    out = check_output_file("out", out)
    c = config
    sft = load_pretrained("sft")
    reward = load_pretrained("reward")
    print(f"{c.pairs} preference pairs from the SFT actor (Bradley-Terry labels on the gold "
          f"score), loss {c.loss}, beta {c.beta:g}", flush=True)
    data = make_dpo_pairs(sft, c.pairs, seed=c.seed)
    meta = dict(method="dpo", loss=c.loss, beta=c.beta, pairs=c.pairs, epochs=c.epochs,
                lr=c.lr, seed=c.seed)
    try:
        policy, history = train_dpo(sft, data, beta=c.beta, loss=c.loss, epochs=c.epochs,
                                    batch_size=c.batch_size, lr=c.lr, seed=c.seed,
                                    progress=progress)
    except TrainingInterrupted as e:  # keep what was trained: save it, then stop
        raise save_interrupted(e, out, "sft", **meta) from None
    atomic_save(model_checkpoint("sft", policy.config, policy.state_dict(), **meta), out)
    first, last = _window(history[:10]), _window(history[-10:])
    print(f"{len(history)} steps; first vs last 10 steps: loss {first['loss']:.3f} -> "
          f"{last['loss']:.3f}, reward accuracy {first['reward_accuracy']:.1%} -> "
          f"{last['reward_accuracy']:.1%}, reward margin {first['reward_margin']:+.3f} -> "
          f"{last['reward_margin']:+.3f}")
    before = evaluate_policy(sft, sft, reward, n=c.eval_samples, seed=c.seed)
    after = evaluate_policy(policy, sft, reward, n=c.eval_samples, seed=c.seed)
    print(f"\n{c.eval_samples} fresh samples each, the same prompts:")
    print(f"{'':<14}{'SFT actor':>11}{'DPO policy':>12}")
    for key, label, fmt in METRICS:
        b, a = (_no_negative_zero(format(x, fmt)) for x in (before[key], after[key]))
        print(f"{label:<14}{b:>11}{a:>12}")
    for text in after["samples"][:2]:
        print(f"DPO sample: {text}")
    print(f"wrote {out}")
    sys.stdout.flush()
    return 0


def _no_negative_zero(text: str) -> str:
    """"-0.000" as "0.000": the SFT actor's KL to itself is 0 up to rounding (generation and a
    full forward pass round differently), and a sign there would mean nothing."""
    return text[1:] if text.startswith("-") and not text.strip("-0.%") else text


def _window(history: list[dict]) -> dict[str, float]:
    """Mean of each metric over some steps (single steps of 32 pairs are noisy)."""
    return {k: sum(m[k] for m in history) / len(history) for k in history[0]}


__all__ = ["LOSSES", "dpo_loss", "sequence_logprobs", "pair_logprobs", "reference_logprobs",
           "DPOPairs", "dpo_pairs", "make_dpo_pairs", "train_dpo", "evaluate_policy", "run_dpo",
           "DPOConfig"]
