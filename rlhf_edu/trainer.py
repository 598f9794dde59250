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

import dataclasses
import json
import math
import signal
import sys
import threading
import time
import weakref
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import distributed
from .advantages import gae, whiten
from .checkpoint import atomic_save, safe_load
from .models import CRITIC_MODES, Models, build_models
from .ppo import AdaptiveKLController, FixedKLController, ppo_losses, total_loss
from .rewards import KL_ESTIMATORS, compute_rewards, kl_penalty
from .rundir import RunDir
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
    """value clip range around the old values (0: no value clipping)"""
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
    """cpu, cuda, cuda:N or auto (under torchrun with CUDA: each rank's own GPU)"""
    placement: str | dict = "colocate"
    """"colocate" (all four models on `device`) or a map role -> device: {"reward": "cuda:1"}"""
    precision: str = "auto"
    """auto (bf16 autocast and bf16 frozen models on CUDA, fp32 on CPU), bf16 (also on CPU) or
    fp32; the trained models always keep fp32 master weights"""

    def __post_init__(self) -> None:
        self._check_types()
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
        distributed.check_precision(self.precision)
        if self.adaptive_kl and self.beta == 0:
            raise ValueError("PPOConfig.beta must be > 0 with adaptive_kl: the controller "
                             "multiplies beta, so from 0 it would stay 0")
        if self.adaptive_kl and self.kl_horizon < self.batch_size:
            raise ValueError(f"PPOConfig.kl_horizon ({self.kl_horizon}) must be >= batch_size "
                             f"({self.batch_size}): each step moves beta by up to 20 % x "
                             "batch_size / kl_horizon, which must stay below 20 %")

    def _check_types(self) -> None:
        """Each field has the type its default has: a string "64" or 64.0 for an int field,
        True for a number, NaN or inf, are refused by name instead of failing later."""
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok, want = isinstance(value, bool), "True or False"
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
                want = "an int"
            elif isinstance(default, float):
                ok = (isinstance(value, int | float) and not isinstance(value, bool)
                      and math.isfinite(value))
                want = "a finite number"
            elif f.name == "placement":
                ok, want = isinstance(value, str | dict), "'colocate' or a dict role -> device"
            else:
                ok, want = isinstance(value, str), "a string"
            if not ok:
                raise ValueError(f"PPOConfig.{f.name} must be {want}, got {value!r}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"PPOConfig.seed must be in [0, 2**63), got {self.seed}")

    def check_world(self, world: int) -> None:
        """Raise ``ValueError`` unless the batch splits into ``world`` ranks x minibatches."""
        if self.batch_size % world or (self.batch_size // world) % self.minibatches:
            raise ValueError(f"batch_size {self.batch_size} must split into {world} ranks "
                             f"x {self.minibatches} minibatches")


class _Trace:
    """Records (phase, name, shape, dtype) of tensors and counts passes of each model."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, str, tuple[int, ...], str]] = []
        self.forward: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.backward: dict[str, int] = defaultdict(int)
        self.phase = ""

    def __call__(self, name: str, t: torch.Tensor) -> None:
        self.tensors.append((self.phase, name, tuple(t.shape), str(t.dtype).replace("torch.", "")))


@dataclass
class Rollout:
    """The experience of phases 1-5 for this process's rows. B rows, P prompt width, T response."""

    prompts: list[str]
    tokens: torch.Tensor  # (B, P + T) left-padded prompts, then responses
    valid: torch.Tensor  # (B, P + T) bool
    prompt_len: int  # P
    response: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) 1 on response tokens
    logprobs: torch.Tensor  # (B, T) actor log-probs at sampling time ("old")
    ref_logprobs: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,) reward-model score (minus the missing-<eos> penalty)
    kl: torch.Tensor  # (B, T) per-token KL estimate
    rewards: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T) critic values at sampling time ("old")
    advantages: torch.Tensor  # (B, T)
    returns: torch.Tensor  # (B, T)
    beta: float

    def rows(self, idx: slice | torch.Tensor) -> Rollout:
        """The rollout restricted to rows ``idx`` (used to split a batch across ranks)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[idx]
            elif f.name == "prompts":
                v = [v[i] for i in range(len(v))[idx]] if isinstance(idx, slice) else [
                    v[i] for i in idx.tolist()]
            out[f.name] = v
        return Rollout(**out)


class PolicyValue(nn.Module):
    """Actor and critic as one module: one forward gives log-probs, entropy and values.

    This is the unit that PPO trains (and that DDP wraps): in "shared" and "head" modes the
    critic reads the actor's hidden states, so both must go through the same forward.
    """

    def __init__(self, actor: nn.Module, critic: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.actor, self.critic, self.temperature = actor, critic, temperature

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, prompt_len: int):
        out = self.actor(tokens, valid, prompt_len, self.temperature)
        values = self.critic(tokens, valid, prompt_len, actor_hidden=out.hidden)
        return out.logprobs, out.entropy, values  # (B, T) each


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :meth:`RLHFTrainer.train` between two steps, with nothing half-done.

    ``step`` is the last step completed; ``checkpoint`` the file it was saved to (``None``
    without a run directory). It is a ``KeyboardInterrupt``, so a notebook or script stops.
    """

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"; saved {checkpoint}: continue with --resume" if checkpoint else ""
        super().__init__(f"interrupted after step {step}{where}")


class _DeferredInterrupt:
    """Hold a Ctrl-C (SIGINT) until the running step ends; a second Ctrl-C stops at once.

    A step interrupted halfway would leave the actor updated by some minibatches and not
    others; holding the signal to the end of the step keeps every saved state a whole step.
    Only the main thread can receive signals; elsewhere this does nothing.
    """

    def __enter__(self) -> _DeferredInterrupt:
        self.requested = False
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt("interrupted twice: stopped in the middle of a step")
        self.requested = True
        print("\nCtrl-C: finishing this step, then stopping (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._installed:  # a handler installed outside Python reads as None: use Python's
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.default_int_handler)


class RLHFTrainer:
    """The RLHF loop over :class:`~rlhf_edu.models.Models` with a :class:`PPOConfig`.

    ``run_dir`` (optional) receives ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt``.
    Under ``torchrun`` (a process group is initialised) each rank generates and scores
    ``batch_size / world_size`` responses, advantages are whitened with global statistics, the
    policy and value are trained with DDP, and only rank 0 writes files.
    """

    def __init__(self, config: PPOConfig | None = None, models: Models | None = None,
                 run_dir: str | Path | None = None, resume: bool = False):
        self.config = cfg = config or PPOConfig()
        self.rank, self.world = distributed.rank_and_world()
        cfg.check_world(self.world)
        self.device = distributed.local_device(cfg.device)
        if self.world > 1:
            distributed.check_process_group(cfg.device, self.device)
        self.devices = distributed.resolve_placement(cfg.placement, self.device)
        self.device = self.devices["actor"]
        self.models = models or build_models(cfg.critic_mode, seed=cfg.seed)
        if self.models.critic.mode != cfg.critic_mode:
            raise ValueError(f"models have critic mode {self.models.critic.mode!r} but the "
                             f"config asks for {cfg.critic_mode!r}")
        for role, module in self.models.roles().items():
            module.to(self.devices[role])
            if role in ("reward", "reference") and distributed.uses_bf16(self.devices[role],
                                                                         cfg.precision):
                distributed.to_bf16(module)  # frozen: half the memory, no optimiser to feed
        self.tok = Tokenizer()
        # prompts and minibatch order come from a generator every rank shares (same seed);
        # token sampling from one per rank, on the actor's device
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sample_generator = torch.Generator(self.device).manual_seed(
            cfg.seed + 1 + 100_003 * self.rank)
        self.policy = PolicyValue(self.models.actor, self.models.critic, cfg.temperature)
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.policy, device_ids=ids)
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
        if run_dir is not None and str(run_dir) == "":
            raise ValueError("run_dir is an empty path; name a directory (or pass None)")
        if resume and run_dir is None:
            raise ValueError("resume=True needs the run_dir of the run to continue")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            resume_step = None
            if self.rank == 0:  # one writer: rank 0 locks the directory for the whole run
                self._run = RunDir(self.run_dir)
                resume_step = self._run.claim(asdict(cfg), resume)
                weakref.finalize(self, self._run.release)
            if resume and (resume_step is not None or self.rank != 0) and \
                    (self.run_dir / "checkpoint.pt").exists():
                self.load()

    def close(self) -> None:
        """Release the run directory now (otherwise when the trainer is garbage-collected)."""
        run = getattr(self, "_run", None)
        if run is not None:
            run.release()

    def _sample_generator_states(self) -> list[torch.Tensor]:
        state = self.sample_generator.get_state()
        if self.world == 1:
            return [state]
        import torch.distributed as dist

        states = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def state_dict(self) -> dict:
        return {
            "kind": "rlhf-run", "step": self.step_count, "config": asdict(self.config),
            "world_size": self.world,
            "actor": self.models.actor.state_dict(), "critic": self.models.critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(), "generator": self.generator.get_state(),
            "sample_generators": self._sample_generator_states(),
            "history": self.history,
        }

    def save(self, path: str | Path | None = None) -> Path | None:
        """Atomically write a checkpoint (default ``run_dir/checkpoint.pt``); rank 0 only."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("no path given and the trainer has no run_dir")
            path = self.run_dir / "checkpoint.pt"
        state = self.state_dict()  # every rank joins the gather of generator states
        if self.rank != 0:
            return None
        atomic_save(state, path)
        return Path(path)

    def load(self, path: str | Path | None = None) -> None:
        """Restore everything :meth:`save` wrote; the next step continues the run exactly."""
        path = Path(path) if path is not None else self.run_dir / "checkpoint.pt"
        state = safe_load(path)
        if state["kind"] != "rlhf-run":
            raise ValueError(f"{path} holds a {state['kind']!r} checkpoint, not an RLHF run")
        if state["config"] != asdict(self.config):
            raise ValueError(f"{path} was written by a run with a different config")
        if state["world_size"] != self.world:
            raise ValueError(f"{path} was written by {state['world_size']} process(es); resume "
                             f"it with the same number, not {self.world}")
        self.models.actor.load_state_dict(state["actor"])
        self.models.critic.load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.generator.set_state(state["generator"])
        self.sample_generator.set_state(state["sample_generators"][self.rank])
        self.step_count = state["step"]
        self.history = list(state["history"])
        if self.run_dir is not None and self.rank == 0:  # drop steps past the checkpoint
            (self.run_dir / "metrics.jsonl").write_text(
                "".join(json.dumps(m) + "\n" for m in self.history))

    # ------------------------------------------------------------------ one step

    def _check_finite(self, name: str, t: torch.Tensor, trained: bool = False) -> None:
        """``FloatingPointError`` naming the step and ``name`` unless ``t`` is all finite;
        ``trained``: the value comes from a model PPO trains, so say what to lower."""
        if not torch.isfinite(t).all():
            hint = self._diverged() if trained else ""
            raise FloatingPointError(f"step {self.step_count + 1}: NaN or inf in {name}{hint}")

    def _diverged(self) -> str:
        return (f" (training diverged: lower the learning rates, actor_lr="
                f"{self.config.actor_lr:g}, critic_lr={self.config.critic_lr:g})")

    def _phase_timer(self, times: dict[str, float]):
        clock, current = time.perf_counter(), ""

        def phase(name: str) -> None:  # close the running phase's timer, open the next one
            nonlocal clock, current
            now = time.perf_counter()
            if current:
                times[current] = now - clock
            clock, current = now, name
            if self.trace is not None:
                self.trace.phase = name
        return phase

    @torch.no_grad()
    def rollout(self, phase=None) -> Rollout:
        """Phases 1-5: prompts, generation, scores, KL-penalised rewards, values and GAE."""
        cfg, m, dev, devs = self.config, self.models, self.device, self.devices
        tr = self.trace or (lambda name, t: None)
        phase = phase or (lambda name: None)
        amp = distributed.autocast(dev, cfg.precision)

        # 1. sample prompts (all ranks draw the same global batch and keep their share)
        phase("1_prompts")
        share = cfg.batch_size // self.world
        prompts = sample_prompts(cfg.batch_size, self.generator)
        prompts = prompts[self.rank * share:(self.rank + 1) * share]
        prompt_ids, prompt_valid = self.tok.encode_batch(prompts)
        prompt_ids, prompt_valid = prompt_ids.to(dev), prompt_valid.to(dev)
        tr("prompt_ids", prompt_ids)
        tr("prompt_valid", prompt_valid)

        # 2. the actor generates, keeping each token's log-prob under the sampling policy
        phase("2_generate")
        m.actor.eval()
        try:
            with amp:
                gen = m.actor.generate(prompt_ids, prompt_valid, cfg.response_len,
                                       temperature=cfg.temperature, pad_id=self.tok.pad_id,
                                       eos_id=self.tok.eos_id if cfg.stop_at_eos else None,
                                       generator=self.sample_generator)
        except FloatingPointError as e:
            raise FloatingPointError(f"step {self.step_count + 1}: generation failed, {e}"
                                     f"{self._diverged()}") from None
        tokens, valid, P, mask = gen.tokens, gen.valid, gen.prompt_len, gen.mask
        for name in ("tokens", "valid", "response", "logprobs", "mask"):
            tr(name if name != "logprobs" else "old_logprobs", getattr(gen, name))
        self._check_finite("actor log-probs", gen.logprobs, trained=True)

        # 3. the reward model scores each whole response (on its own device)
        phase("3_score")
        rdev = devs["reward"]
        with distributed.autocast(rdev, cfg.precision):
            scores = m.reward(tokens.to(rdev), valid.to(rdev)).float().to(dev)  # (B,)
        self._check_finite("reward model scores", scores)
        finished = (gen.response == self.tok.eos_id).any(1)
        scores = scores - cfg.missing_eos_penalty * (~finished).float()
        tr("scores", scores)

        # 4. the reference gives the KL penalty; the score goes on the last token
        phase("4_reference_kl")
        fdev = devs["reference"]
        with distributed.autocast(fdev, cfg.precision):
            ref_logprobs = m.reference(tokens.to(fdev), valid.to(fdev), P,
                                       cfg.temperature).logprobs.float().to(dev)  # (B, T)
        self._check_finite("reference log-probs", ref_logprobs)
        kl = kl_penalty(gen.logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, T)
        beta = self.kl_ctl.value
        rewards = compute_rewards(scores, gen.logprobs, ref_logprobs, mask, beta,
                                  cfg.kl_estimator)
        tr("ref_logprobs", ref_logprobs)
        tr("kl", kl)
        tr("rewards", rewards)

        # 5. the critic's values, then GAE (whitened with the statistics of all ranks)
        phase("5_values_gae")
        with amp:
            if m.critic.mode == "separate":
                values = m.critic(tokens, valid, P)
            else:  # the critic reads the actor's hidden states: one pass through both
                values = self.policy(tokens, valid, P)[2]
        values = values.float() * mask  # (B, T)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask,
                                reduce=distributed.all_reduce_sum if self.world > 1 else None)
        tr("old_values", values)
        tr("advantages", advantages)
        tr("returns", returns)
        return Rollout(prompts, tokens, valid, P, gen.response, mask, gen.logprobs, ref_logprobs,
                       scores, kl, rewards, values, advantages, returns, beta)

    def update(self, batch: Rollout) -> dict[str, float]:
        """Phase 6: PPO epochs over minibatches; actor and critic learn from one loss."""
        cfg = self.config
        tr = self.trace or (lambda name, t: None)
        policy = self.ddp or self.policy
        self.models.actor.train()
        self.models.critic.train()
        stats = defaultdict(list)
        B = batch.tokens.size(0)
        for _ in range(cfg.ppo_epochs):
            # the order comes from the CPU generator all ranks share, then moves to the device
            order = torch.randperm(B, generator=self.generator, device="cpu").to(self.device)
            for idx in order.chunk(cfg.minibatches):
                with distributed.autocast(self.device, cfg.precision):
                    logprobs, entropy, values = policy(batch.tokens[idx], batch.valid[idx],
                                                       batch.prompt_len)
                mask = batch.mask[idx]
                losses = ppo_losses(logprobs.float(), batch.logprobs[idx], batch.advantages[idx],
                                    values.float(), batch.values[idx], batch.returns[idx], mask,
                                    clip=cfg.clip, vf_clip=cfg.vf_clip or None,
                                    entropy=entropy.float())
                loss = total_loss(losses, cfg.vf_coef, cfg.ent_coef)
                if self.world > 1:
                    # token means over the global minibatch: DDP averages gradients over ranks,
                    # so weight this rank's mean by its share of the tokens
                    n_local = mask.sum()
                    n_global = distributed.all_reduce_sum(n_local.detach().clone())
                    loss = loss * (n_local * self.world / n_global)
                self._check_finite("PPO loss", loss, trained=True)
                if self.trace is not None and not stats:
                    tr("minibatch_logprobs", logprobs)
                    tr("minibatch_values", values)
                    tr("loss", loss)
                self.actor_opt.zero_grad(set_to_none=True)
                self.critic_opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in (self.actor_opt, self.critic_opt):
                    torch.nn.utils.clip_grad_norm_(self._trained(opt), cfg.max_grad_norm)
                    opt.step()
                for k, v in losses.items():
                    stats[k].append(v.detach())
        # one copy to the host for all the statistics, not one per number: on a GPU each
        # copy waits for every queued kernel to finish; it also says whether the weights the
        # update wrote are still finite (a learning rate far too high overflows them)
        keys = list(stats)
        table = torch.stack([torch.stack(stats[k]) for k in keys])
        finite = [torch.stack([torch.isfinite(p).all() for p in self._trained(opt)]).all()
                  for opt in (self.actor_opt, self.critic_opt)]
        *table, actor_ok, critic_ok = torch.cat([table.flatten(),
                                                  torch.stack(finite).to(table)]).tolist()
        for ok, role, lr in ((actor_ok, "actor", cfg.actor_lr),
                             (critic_ok, "critic", cfg.critic_lr)):
            if not ok:
                raise FloatingPointError(
                    f"step {self.step_count + 1}: the PPO update made the {role}'s weights NaN "
                    f"or inf (training diverged); lower its learning rate (now {lr:g})")
        n = len(table) // len(keys)
        return {k: sum(table[i * n:(i + 1) * n]) / n for i, k in enumerate(keys)}

    @staticmethod
    def _trained(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for g in opt.param_groups for p in g["params"]]

    def step(self) -> dict:
        """Run the six phases once; return this step's metrics (averaged over ranks)."""
        times: dict[str, float] = {}
        phase = self._phase_timer(times)
        batch = self.rollout(phase)
        phase("6_ppo")
        stats = self.update(batch)
        phase("end")

        B = batch.tokens.size(0)
        kl_per_response = batch.kl.sum(1)
        texts = [f"{p} {self.tok.decode(r)}" for p, r in zip(batch.prompts, batch.response.cpu())]
        metrics = {
            "rm_score": float(batch.scores.mean()),
            "gold_score": sum(map(gold_score, texts)) / B,
            "kl": float(kl_per_response.mean()),
            "non_score_reward": float((-batch.beta * batch.kl).sum(1).mean()),
            "response_len": float(batch.mask.sum(1).mean()),
            "finished": float((batch.response == self.tok.eos_id).any(1).float().mean()),
            "well_formed": sum(map(is_well_formed, texts)) / B,
            "repetition": sum(repetition(t) > 0 for t in texts) / B,
            "advantage_std": float(batch.advantages[batch.mask.bool()].std()),
            **stats,
        }
        if self.world > 1:  # equal shares per rank: the mean of rank means is the global mean
            keys = list(metrics)
            vec = distributed.all_reduce_sum(torch.tensor([metrics[k] for k in keys],
                                                          dtype=torch.float64, device=self.device))
            metrics = {k: float(v) / self.world for k, v in zip(keys, vec.tolist())}
        self.kl_ctl.update(metrics["kl"], self.config.batch_size)
        self.step_count += 1
        metrics = {"step": self.step_count, "beta": batch.beta, **metrics,
                   **{f"time_{k}": v for k, v in times.items() if k != "1_prompts"},
                   "sample": texts[0]}
        metrics["time_step"] = sum(v for k, v in metrics.items() if k.startswith("time_"))
        self.history.append(metrics)
        if self.run_dir is not None and self.rank == 0:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        return metrics

    def train(self, steps: int, save_every: int = 0, progress: bool = True,
              callback=None) -> list[dict]:
        """Run until ``steps`` steps in total have been taken (a resumed run continues)."""
        from tqdm.auto import tqdm

        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"steps must be an int, got {steps!r}")
        if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
            raise ValueError(f"save_every must be an int >= 0 (0: only at the end), "
                             f"got {save_every!r}")
        if steps < self.step_count:
            raise ValueError(f"steps ({steps}) is less than the steps already taken "
                             f"({self.step_count})")
        bar = tqdm(total=steps, initial=self.step_count, desc="RLHF",
                   disable=not progress or self.rank != 0)
        try:
            with _DeferredInterrupt() as interrupt:
                while self.step_count < steps:
                    metrics = self.step()
                    # the figures first, then the count: update() redraws with this step's
                    bar.set_postfix(rm=f"{metrics['rm_score']:+.2f}",
                                    gold=f"{metrics['gold_score']:+.2f}",
                                    kl=f"{metrics['kl']:.2f}", refresh=False)
                    bar.update()
                    if callback is not None:
                        callback(metrics)
                    if self._any_rank(interrupt.requested):
                        saved = self.save() if self.run_dir is not None else None
                        raise RunInterrupted(self.step_count, saved)
                    if self.run_dir is not None and save_every and \
                            self.step_count % save_every == 0:
                        self.save()
                if self.run_dir is not None:
                    self.save()
        finally:
            bar.close()
        return self.history

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` from this rank, or'ed over all ranks (every rank must stop at one step)."""
        if self.world == 1:
            return flag
        vec = torch.tensor([float(flag)], device=self.device)
        return bool(distributed.all_reduce_sum(vec).item() > 0)

    def sample(self, prompts: list[str], seed: int = 0, greedy: bool = False) -> list[str]:
        """The actor's responses to ``prompts`` as text (for before/after comparisons)."""
        ids, valid = self.tok.encode_batch(prompts)
        g = torch.Generator(self.device).manual_seed(seed)
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
    lines.append(f"{'model':<10} {'generation passes':>18} {'forward passes':>15} "
                 f"{'backward passes':>16}")
    for role in ("actor", "critic", "reward", "reference"):
        fw = trace.forward.get(role, {})
        lines.append(f"{role:<10} {fw.get('generate', 0):>18} {fw.get('forward', 0):>15} "
                     f"{trace.backward.get(role, 0):>16}")
    lines.append("generation passes: one prefill of the prompt, then one cached pass per new "
                 "token; forward passes: full-sequence passes (scoring, values, PPO minibatches)")
    return "\n".join(lines)


__all__ = ["PPOConfig", "RLHFTrainer", "Rollout", "PolicyValue", "trace_step", "format_trace"]
