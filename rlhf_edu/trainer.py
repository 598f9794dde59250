"""One RLHF step, in the order the chapter teaches it, and the loop around it.

``RLHFTrainer.step()`` runs the six phases:

1. sample prompts;
2. the actor generates responses and keeps their log-probs ``(B, T)``;
3. the reward model scores each response ``(B,)``;
4. the reference's log-probs give a per-token KL penalty, ``R = R_rm - beta * KL``;
5. the critic's values and GAE give advantages and returns ``(B, T)``;
6. PPO epochs over minibatches update the actor and the critic.

The trainer also keeps metrics (``metrics.jsonl`` in the run directory), writes atomic
checkpoints, resumes bit-for-bit, and can record a trace of every tensor and forward pass.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .advantages import gae, masked_mean, whiten
from .checkpoint import atomic_save, safe_load
from .distributed import select_device
from .models import CRITIC_MODES, Models, build_models
from .ppo import AdaptiveKLController, FixedKLController, ppo_losses, total_loss
from .rewards import KL_ESTIMATORS, compute_rewards, kl_penalty
from .task import Tokenizer, gold_score, is_well_formed, repetition, sample_prompts


@dataclass
class PPOConfig:
    """Hyper-parameters of the RLHF loop; defaults are the course's "good β" run."""

    seed: int = 0
    """seed of prompts, sampling and minibatch order: the same seed gives the same run"""
    batch_size: int = 64
    """prompts (and responses) per step"""
    response_len: int = 20
    """most tokens generated per response"""
    temperature: float = 1.0
    """sampling temperature (the policy scored by PPO is logits / temperature)"""
    stop_at_eos: bool = True
    """end a response at <eos>; off, every response has exactly response_len tokens"""
    beta: float = 0.05
    """KL coefficient: reward = score - beta * KL(actor || reference) per token"""
    kl_estimator: str = "k1"
    """per-token KL estimator in the reward: k1, k2 or k3 (see rewards.kl_penalty)"""
    adaptive_kl: bool = False
    """adapt beta toward kl_target (Ziegler et al. 2019) instead of keeping it fixed"""
    kl_target: float = 1.0
    """target KL per response (nats) of the adaptive controller"""
    kl_horizon: int = 2000
    """horizon (in responses) of the adaptive controller"""
    missing_eos_penalty: float = 1.0
    """subtracted from the score of a response that never reached <eos>"""
    gamma: float = 1.0
    """discount factor of GAE"""
    lam: float = 0.95
    """lambda of GAE: the bias-variance knob of advantage estimation"""
    whiten_advantages: bool = True
    """normalise advantages over the batch's response tokens"""
    ppo_epochs: int = 4
    """passes of PPO over each batch"""
    minibatches: int = 2
    """minibatches per PPO epoch"""
    clip: float = 0.2
    """PPO ratio clip epsilon"""
    vf_clip: float = 0.2
    """value clip range around the old values"""
    vf_coef: float = 0.1
    """c1: weight of the value loss in the combined loss"""
    ent_coef: float = 0.0
    """c2: weight of the entropy bonus in the combined loss"""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic (its head, in "shared"/"head" modes)"""
    max_grad_norm: float = 1.0
    """gradient clipping per optimiser"""
    critic_mode: str = "separate"
    """separate | shared | head (see rlhf_edu.models)"""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto"""

    def __post_init__(self) -> None:
        positive = ("batch_size", "response_len", "ppo_epochs", "minibatches", "temperature",
                    "clip", "kl_target", "kl_horizon", "actor_lr", "critic_lr", "max_grad_norm")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("beta", "vf_coef", "ent_coef", "missing_eos_penalty", "vf_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"PPOConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PPOConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.kl_estimator not in KL_ESTIMATORS or self.kl_estimator == "full":
            raise ValueError(f"unknown KL estimator {self.kl_estimator!r}; expected k1, k2 or k3")
        if self.critic_mode not in CRITIC_MODES:
            raise ValueError(f"unknown critic mode {self.critic_mode!r}; expected one of "
                             f"{', '.join(CRITIC_MODES)}")
        if self.batch_size % self.minibatches:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by minibatches "
                             f"({self.minibatches})")


class _Trace:
    """Records (phase, name, shape, dtype) of tensors and counts passes of each model."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, str, tuple[int, ...], str]] = []
        self.forward: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.backward: dict[str, int] = defaultdict(int)
        self.phase = ""

    def __call__(self, name: str, t: torch.Tensor) -> None:
        self.tensors.append((self.phase, name, tuple(t.shape), str(t.dtype).replace("torch.", "")))


class RLHFTrainer:
    """The RLHF loop over :class:`~rlhf_edu.models.Models` with a :class:`PPOConfig`.

    ``run_dir`` (optional) receives ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt``.
    """

    def __init__(self, config: PPOConfig | None = None, models: Models | None = None,
                 run_dir: str | Path | None = None):
        self.config = cfg = config or PPOConfig()
        self.device = select_device(cfg.device)
        self.models = models or build_models(cfg.critic_mode)
        if self.models.critic.mode != cfg.critic_mode:
            raise ValueError(f"models have critic mode {self.models.critic.mode!r} but the "
                             f"config asks for {cfg.critic_mode!r}")
        for m in self.models.roles().values():
            m.to(self.device)
        self.tok = Tokenizer()
        self.generator = torch.Generator().manual_seed(cfg.seed)  # CPU: same numbers anywhere
        actor_params = list(self.models.actor.parameters())
        critic_params = [p for p in self.models.critic.parameters()
                         if all(p is not q for q in actor_params)]
        self.actor_opt = torch.optim.Adam(actor_params, lr=cfg.actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr, eps=1e-5)
        self.kl_ctl = (AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
                       if cfg.adaptive_kl else FixedKLController(cfg.beta))
        self.step_count = 0
        self.history: list[dict] = []
        self.trace: _Trace | None = None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            self._claim_run_dir()

    # ------------------------------------------------------------------ run directory

    def _claim_run_dir(self) -> None:
        """Write config.json, or check that the run directory holds this same run."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.json"
        mine = asdict(self.config)
        if path.exists():
            theirs = json.loads(path.read_text())
            diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
            if diff:
                raise ValueError(f"run directory {str(self.run_dir)!r} holds a different run "
                                 f"(config differs in {diff}); choose another --run-dir")
        else:
            path.write_text(json.dumps(mine, indent=2))

    def state_dict(self) -> dict:
        return {
            "kind": "rlhf-run", "step": self.step_count, "config": asdict(self.config),
            "actor": self.models.actor.state_dict(), "critic": self.models.critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "history": self.history,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write a checkpoint (default ``run_dir/checkpoint.pt``)."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("no path given and the trainer has no run_dir")
            path = self.run_dir / "checkpoint.pt"
        atomic_save(self.state_dict(), path)
        return Path(path)

    def load(self, path: str | Path | None = None) -> None:
        """Restore everything :meth:`save` wrote; the next step continues the run exactly."""
        path = Path(path) if path is not None else self.run_dir / "checkpoint.pt"
        state = safe_load(path)
        if state["kind"] != "rlhf-run":
            raise ValueError(f"{path} holds a {state['kind']!r} checkpoint, not an RLHF run")
        if state["config"] != asdict(self.config):
            raise ValueError(f"{path} was written by a run with a different config")
        self.models.actor.load_state_dict(state["actor"])
        self.models.critic.load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step_count = state["step"]
        self.history = list(state["history"])
        if self.run_dir is not None:  # metrics.jsonl may hold steps past the checkpoint
            (self.run_dir / "metrics.jsonl").write_text(
                "".join(json.dumps(m) + "\n" for m in self.history))

    # ------------------------------------------------------------------ one step

    def _check_finite(self, name: str, t: torch.Tensor) -> None:
        if not torch.isfinite(t).all():
            raise FloatingPointError(f"step {self.step_count + 1}: {name} contains NaN or inf")

    def _policy(self, tokens, valid, P):
        """Actor forward and critic values on the same batch (one actor pass in every mode)."""
        out = self.models.actor(tokens, valid, P, self.config.temperature)
        values = self.models.critic(tokens, valid, P, actor_hidden=out.hidden)
        return out, values

    def step(self) -> dict:
        """Run the six phases once; return this step's metrics."""
        cfg, m, dev = self.config, self.models, self.device
        tr = self.trace or (lambda name, t: None)
        times: dict[str, float] = {}
        clock, current = time.perf_counter(), ""

        def phase(name: str) -> None:  # close the running phase's timer, open the next one
            nonlocal clock, current
            now = time.perf_counter()
            if current:
                times[current] = now - clock
            clock, current = now, name
            if self.trace is not None:
                self.trace.phase = name

        # 1. sample prompts
        phase("1_prompts")
        prompts = sample_prompts(cfg.batch_size, self.generator)
        prompt_ids, prompt_valid = self.tok.encode_batch(prompts)
        prompt_ids, prompt_valid = prompt_ids.to(dev), prompt_valid.to(dev)
        tr("prompt_ids", prompt_ids)
        tr("prompt_valid", prompt_valid)

        # 2. the actor generates, keeping each token's log-prob under the sampling policy
        phase("2_generate")
        m.actor.eval()
        gen = m.actor.generate(prompt_ids, prompt_valid, cfg.response_len,
                               temperature=cfg.temperature, pad_id=self.tok.pad_id,
                               eos_id=self.tok.eos_id if cfg.stop_at_eos else None,
                               generator=self.generator)
        tokens, valid, P, mask = gen.tokens, gen.valid, gen.prompt_len, gen.mask
        old_logprobs = gen.logprobs
        for name in ("tokens", "valid", "response", "logprobs", "mask"):
            tr(name if name != "logprobs" else "old_logprobs", getattr(gen, name))
        self._check_finite("actor log-probs", old_logprobs)

        with torch.no_grad():
            # 3. the reward model scores each whole response
            phase("3_score")
            scores = m.reward(tokens, valid)  # (B,)
            self._check_finite("reward model scores", scores)
            finished = (gen.response == self.tok.eos_id).any(1)
            scores = scores - cfg.missing_eos_penalty * (~finished).float()
            tr("scores", scores)

            # 4. the reference gives the KL penalty; the score goes on the last token
            phase("4_reference_kl")
            ref_logprobs = m.reference(tokens, valid, P, cfg.temperature).logprobs
            self._check_finite("reference log-probs", ref_logprobs)
            kl = kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, T)
            beta = self.kl_ctl.value
            rewards = compute_rewards(scores, old_logprobs, ref_logprobs, mask, beta,
                                      cfg.kl_estimator)
            tr("ref_logprobs", ref_logprobs)
            tr("kl", kl)
            tr("rewards", rewards)

            # 5. the critic's values, then GAE
            phase("5_values_gae")
            hidden = None if m.critic.mode == "separate" else m.actor(tokens, valid, P).hidden
            old_values = m.critic(tokens, valid, P, actor_hidden=hidden) * mask
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, mask)
            tr("old_values", old_values)
            tr("advantages", advantages)
            tr("returns", returns)

        # 6. PPO epochs over minibatches: actor and critic learn from the same batch
        phase("6_ppo")
        m.actor.train()
        m.critic.train()
        stats = defaultdict(list)
        B = tokens.size(0)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=self.generator).to(dev)
            for idx in order.chunk(cfg.minibatches):
                out, values = self._policy(tokens[idx], valid[idx], P)
                losses = ppo_losses(out.logprobs, old_logprobs[idx], advantages[idx], values,
                                    old_values[idx], returns[idx], mask[idx], clip=cfg.clip,
                                    vf_clip=cfg.vf_clip or None, entropy=out.entropy)
                loss = total_loss(losses, cfg.vf_coef, cfg.ent_coef)
                self._check_finite("PPO loss", loss)
                if self.trace is not None and not stats:
                    tr("minibatch_logprobs", out.logprobs)
                    tr("minibatch_values", values)
                    tr("loss", loss)
                self.actor_opt.zero_grad(set_to_none=True)
                self.critic_opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in (self.actor_opt, self.critic_opt):
                    params = [p for g in opt.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                for k, v in losses.items():
                    stats[k].append(float(v.detach()))
        phase("end")

        # bookkeeping: the KL controller sees the mean KL per response
        kl_per_response = kl.sum(1)
        self.kl_ctl.update(float(kl_per_response.mean()), B)
        self.step_count += 1
        texts = [f"{p} {self.tok.decode(r)}" for p, r in zip(prompts, gen.response.cpu())]
        gold = [gold_score(t) for t in texts]
        metrics = {
            "step": self.step_count,
            "rm_score": float(scores.mean()),
            "gold_score": sum(gold) / B,
            "kl": float(kl_per_response.mean()),
            "beta": beta,
            "non_score_reward": float((-beta * kl).sum(1).mean()),
            "entropy": float(masked_mean(out.entropy.detach(), mask[idx])),
            "response_len": float(mask.sum(1).mean()),
            "finished": float(finished.float().mean()),
            "well_formed": sum(map(is_well_formed, texts)) / B,
            "repetition": sum(repetition(t) > 0 for t in texts) / B,
            "advantage_std": float(advantages[mask.bool()].std()),
            **{k: sum(v) / len(v) for k, v in stats.items()},
            **{f"time_{k}": v for k, v in times.items() if k != "1_prompts"},
            "sample": texts[0],
        }
        metrics["time_step"] = sum(v for k, v in metrics.items() if k.startswith("time_"))
        self.history.append(metrics)
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        return metrics

    def train(self, steps: int, save_every: int = 0, progress: bool = True,
              callback=None) -> list[dict]:
        """Run until ``steps`` steps in total have been taken (a resumed run continues)."""
        from tqdm.auto import tqdm

        if steps < self.step_count:
            raise ValueError(f"steps ({steps}) is less than the steps already taken "
                             f"({self.step_count})")
        bar = tqdm(total=steps, initial=self.step_count, desc="RLHF", disable=not progress)
        while self.step_count < steps:
            metrics = self.step()
            bar.update()
            bar.set_postfix(rm=f"{metrics['rm_score']:+.2f}", gold=f"{metrics['gold_score']:+.2f}",
                            kl=f"{metrics['kl']:.2f}", refresh=False)
            if callback is not None:
                callback(metrics)
            if self.run_dir is not None and save_every and self.step_count % save_every == 0:
                self.save()
        bar.close()
        if self.run_dir is not None:
            self.save()
        return self.history

    def sample(self, prompts: list[str], seed: int = 0, greedy: bool = False) -> list[str]:
        """The actor's responses to ``prompts`` as text (for before/after comparisons)."""
        ids, valid = self.tok.encode_batch(prompts)
        g = torch.Generator().manual_seed(seed)
        self.models.actor.eval()
        out = self.models.actor.generate(ids.to(self.device), valid.to(self.device),
                                         self.config.response_len, top_k=1 if greedy else None,
                                         eos_id=self.tok.eos_id, generator=g)
        return [f"{p} {self.tok.decode(r)}" for p, r in zip(prompts, out.response.cpu())]


def trace_step(batch_size: int = 4, response_len: int = 100, critic_mode: str = "separate",
               seed: int = 0) -> _Trace:
    """Run one step on randomly initialised toy models sized for ``response_len`` and record
    every tensor's shape and dtype per phase, and the forward/backward passes of each model."""
    from .model import GPT, GPTConfig
    from .models import RewardModel

    torch.manual_seed(seed)
    prompt_width = 4  # <bos> + the longest prompt (3 words)
    config = GPTConfig(block_size=prompt_width + response_len)
    models = build_models(critic_mode, sft=GPT(config), reward=RewardModel(GPT(config)))
    cfg = PPOConfig(batch_size=batch_size, response_len=response_len, stop_at_eos=False,
                    critic_mode=critic_mode, minibatches=1 if batch_size % 2 else 2, seed=seed)
    trainer = RLHFTrainer(cfg, models)
    trace = trainer.trace = _Trace()
    hooks = []
    # a GPT's final LayerNorm runs once per pass, so its pre-hook counts passes
    bodies = {"actor": models.actor.gpt.ln_f, "reference": models.reference.gpt.ln_f,
              "reward": models.reward.gpt.ln_f,
              "critic": (models.critic.body.ln_f if critic_mode == "separate"
                         else models.critic.value_head)}

    def count(role):
        def hook(module, args):
            kind = "generate" if trace.phase == "2_generate" else "forward"
            trace.forward[role][kind] += 1
        return hook

    for role, module in bodies.items():
        hooks.append(module.register_forward_pre_hook(count(role)))
    for role, p in (("actor", models.actor.gpt.ln_f.weight),
                    ("critic", next(models.critic.value_head.parameters()))):
        hooks.append(p.register_hook(lambda g, role=role: trace.backward.__setitem__(
            role, trace.backward[role] + 1)))
    trainer.step()
    for h in hooks:
        h.remove()
    trainer.trace = None
    return trace


def format_trace(trace: _Trace) -> str:
    """The trace as a table: phase, tensor, shape, dtype; then passes per model."""
    lines = [f"{'phase':<16} {'tensor':<20} {'shape':<16} dtype"]
    for phase, name, shape, dtype in trace.tensors:
        lines.append(f"{phase:<16} {name:<20} {str(shape):<16} {dtype}")
    lines.append("")
    lines.append(f"{'model':<10} {'generate calls':>15} {'forward passes':>15} "
                 f"{'backward passes':>16}")
    for role in ("actor", "critic", "reward", "reference"):
        fw = trace.forward.get(role, {})
        lines.append(f"{role:<10} {fw.get('generate', 0):>15} {fw.get('forward', 0):>15} "
                     f"{trace.backward.get(role, 0):>16}")
    return "\n".join(lines)


__all__ = ["PPOConfig", "RLHFTrainer", "trace_step", "format_trace"]
