"""One RLHF step, in the order the chapter teaches it, and the loop around it.

``RLHFTrainer.step()`` runs the six phases:

1. sample prompts;
2. the actor generates responses and keeps their log-probs ``(B, T)``;
3. the reward model scores each response ``(B,)``;
4. the reference's log-probs give a per-token KL penalty, ``R = R_rm - beta * KL``;
5. the critic's values and GAE give advantages and returns ``(B, T)``;
6. PPO epochs over minibatches update the actor and the critic.

The same loop runs the critic-free methods (``PPOConfig.advantage_estimator``): GRPO, Dr. GRPO
and RLOO sample G responses per prompt and take each response's advantage from its group;
REINFORCE++ normalises returns over the batch. Then no critic is built, phase 5 is a few
tensor operations, and phase 6 updates the actor alone (GRPO puts the KL in the loss).

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

from . import distributed, sharding
from .advantages import (
    CRITIC_FREE,
    ESTIMATORS,
    gae,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    token_advantages,
    whiten,
)
from .checkpoint import atomic_save, safe_load
from .models import CRITIC_MODES, NO_CRITIC, Models, build_models
from .ppo import AdaptiveKLController, FixedKLController, ppo_losses, total_loss
from .rewards import KL_ESTIMATORS, compute_rewards, kl_penalty
from .rundir import RunDir
from .task import Tokenizer, gold_score, is_well_formed, repetition, sample_prompts

# Defaults that follow each method's paper (fields left as None take them; explicit values win)
METHOD_DEFAULTS: dict[str, dict[str, object]] = {
    "gae": dict(kl_in="reward", kl_estimator="k1", beta=0.05),
    "grpo": dict(kl_in="loss", kl_estimator="k3", beta=0.04),
    "dr_grpo": dict(kl_in="loss", kl_estimator="k3", beta=0.04),
    "rloo": dict(kl_in="reward", kl_estimator="k1", beta=0.05),
    "reinforce_pp": dict(kl_in="reward", kl_estimator="k1", beta=0.01),
}
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
"""estimators whose baseline is the group: they need group_size >= 2"""


def critic_mode_for(estimator: str, critic_mode: str = "auto") -> str:
    """The critic mode a run of ``estimator`` uses: ``critic_mode`` if it fits, else
    ``ValueError``; "auto" gives the estimator's: "separate" for gae, "none" otherwise.

    GAE needs a critic (separate, shared or head); the other estimators build none.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; expected one of "
                         f"{', '.join(ESTIMATORS)}")
    if critic_mode == "auto":
        return NO_CRITIC if estimator in CRITIC_FREE else "separate"
    if estimator in CRITIC_FREE:
        if critic_mode != NO_CRITIC:
            raise ValueError(f"advantage_estimator {estimator!r} trains no critic, but critic "
                             f"mode {critic_mode!r} was given; leave the critic mode unset (or "
                             "'none'), or use the estimator 'gae'")
    elif critic_mode == NO_CRITIC:
        raise ValueError(f"advantage_estimator 'gae' needs a critic, but the critic mode is "
                         f"'none'; choose one of {', '.join(CRITIC_MODES)}, or a critic-free "
                         f"estimator ({', '.join(CRITIC_FREE)})")
    elif critic_mode not in CRITIC_MODES:
        raise ValueError(f"unknown critic mode {critic_mode!r}; expected one of "
                         f"{', '.join(CRITIC_MODES)}")
    return critic_mode


@dataclass
class PPOConfig:
    """Hyper-parameters of the RLHF loop; defaults are the course's "good β" run.

    ``advantage_estimator`` picks the method; ``beta``, ``kl_estimator`` and ``kl_in`` left
    as None take that method's published defaults, and ``critic_mode`` "auto" its critic (an
    explicit value always wins; a critic mode given with a critic-free estimator is refused):

    ============  =======  =========  =====  ======  ===========================================
    estimator     kl_in    estimator  beta   critic  source
    ============  =======  =========  =====  ======  ===========================================
    gae (PPO)     reward   k1         0.05   yes     Ziegler et al. 2019; TRL's PPO (kl_coef)
    grpo          loss     k3         0.04   no      DeepSeekMath (Shao et al. 2024), eq. 3-4
    dr_grpo       loss     k3         0.04   no      Liu et al. 2025 (GRPO without the std)
    rloo          reward   k1         0.05   no      Ahmadian et al. 2024; TRL's RLOO (beta)
    reinforce_pp  reward   k1         0.01   no      Hu 2025; OpenRLHF's REINFORCE++ script
    ============  =======  =========  =====  ======  ===========================================

    "KL in the reward" subtracts ``beta * KL_t`` from each token's reward (PPO and REINFORCE++
    per token, RLOO summed over the response); "KL in the loss" adds ``beta * mean(k3)`` of the
    current policy against the reference to the loss, and the reward carries no KL.
    """

    seed: int = 0
    """seed of prompts, sampling and minibatch order: the same seed gives the same run"""
    batch_size: int = 64
    """responses per step (batch_size / group_size prompts)"""
    group_size: int = 1
    """G responses sampled per prompt, in contiguous rows (g*G ... g*G + G - 1 share a prompt)"""
    response_len: int = 20
    """most tokens generated per response"""
    temperature: float = 1.0
    """sampling temperature (the policy scored by PPO is logits / temperature)"""
    stop_at_eos: bool = True
    """end a response at <eos>; off, every response has exactly response_len tokens"""
    beta: float | None = None
    """KL coefficient: reward = score - beta * KL(actor || reference) per token (or beta times
    the KL in the loss); None: the estimator's default (0.05 for PPO)"""
    kl_estimator: str | None = None
    """per-token KL estimator: k1, k2 or k3 (see rewards.kl_penalty); None: the estimator's"""
    kl_in: str | None = None
    """where the KL goes: "reward" (a per-token penalty) or "loss" (GRPO); None: the
    estimator's default"""
    adaptive_kl: bool = False
    """adapt beta toward kl_target (Ziegler et al. 2019) instead of keeping it fixed"""
    kl_target: float = 1.0
    """target KL per response (nats) of the adaptive controller"""
    kl_horizon: int = 2000
    """horizon (in responses) of the adaptive controller"""
    reward: str = "model"
    """the score: "model" (the reward model) or "gold" (task.gold_score of the text: a
    verifiable reward; the reward model then only gives the rm_score metric)"""
    missing_eos_penalty: float = 1.0
    """subtracted from the score of a response that never reached <eos>"""
    advantage_estimator: str = "gae"
    """gae (PPO with a critic), grpo, dr_grpo, rloo or reinforce_pp (no critic)"""
    gamma: float = 1.0
    """discount factor of GAE and of REINFORCE++'s return-to-go"""
    lam: float = 0.95
    """lambda of GAE: the bias-variance knob of advantage estimation"""
    whiten_advantages: bool = True
    """normalise GAE's advantages over the batch's response tokens (the critic-free estimators
    bring their own normalisation)"""
    ppo_epochs: int = 4
    """passes of PPO over each batch"""
    minibatches: int = 2
    """minibatches per PPO epoch"""
    recompute_logprobs: bool = False
    """recompute the old log-probs with the actor under the update's numerics before the PPO
    epochs (generation and training kernels differ, in bf16 by up to ~0.03 nats)"""
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
    critic_mode: str = "auto"
    """separate | shared | head (see rlhf_edu.models) with gae; none without a critic;
    auto: separate for gae, none for the critic-free estimators"""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto (under torchrun with CUDA: each rank's own GPU)"""
    placement: str | dict = "colocate"
    """"colocate" (all four models on `device`) or a map role -> device: {"reward": "cuda:1"}"""
    precision: str = "auto"
    """auto (bf16 autocast and bf16 frozen models on CUDA, fp32 on CPU), bf16 (also on CPU) or
    fp32; the trained models always keep fp32 master weights"""
    shard: str = "none"
    """none (DDP: every rank holds whole models), zero2 or zero3 (FSDP2 shards; see
    rlhf_edu.sharding); sharding needs two or more processes"""

    def __post_init__(self) -> None:
        self._check_types()
        self._resolve_method_defaults()
        positive = ("batch_size", "group_size", "response_len", "ppo_epochs", "minibatches",
                    "temperature", "clip", "kl_target", "kl_horizon", "actor_lr", "critic_lr",
                    "max_grad_norm")
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
        for name, choices in (("kl_in", ("reward", "loss")), ("reward", ("model", "gold"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"PPOConfig.{name} must be one of {', '.join(choices)}, got "
                                 f"{getattr(self, name)!r}")
        if self.batch_size % self.minibatches:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by minibatches "
                             f"({self.minibatches})")
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by group_size "
                             f"({self.group_size}): each prompt is answered group_size times")
        if self.advantage_estimator in GROUP_ESTIMATORS and self.group_size < 2:
            raise ValueError(f"advantage_estimator {self.advantage_estimator!r} needs "
                             f"group_size >= 2, got {self.group_size}: a group of one response "
                             "has no other response to serve as its baseline")
        distributed.check_precision(self.precision)
        sharding.check_config(self.shard, self.placement)
        if self.adaptive_kl and self.beta == 0:
            raise ValueError("PPOConfig.beta must be > 0 with adaptive_kl: the controller "
                             "multiplies beta, so from 0 it would stay 0")
        if self.adaptive_kl and self.kl_horizon < self.batch_size:
            raise ValueError(f"PPOConfig.kl_horizon ({self.kl_horizon}) must be >= batch_size "
                             f"({self.batch_size}): each step moves beta by up to 20 % x "
                             "batch_size / kl_horizon, which must stay below 20 %")

    def _resolve_method_defaults(self) -> None:
        """Fill the fields left as None with the estimator's defaults (METHOD_DEFAULTS), and
        the critic mode "auto" with its critic."""
        if self.advantage_estimator not in ESTIMATORS:
            raise ValueError(f"unknown advantage estimator {self.advantage_estimator!r}; "
                             f"expected one of {', '.join(ESTIMATORS)}")
        for name, value in METHOD_DEFAULTS[self.advantage_estimator].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.critic_mode = critic_mode_for(self.advantage_estimator, self.critic_mode)

    def _check_types(self) -> None:
        """Each field has the type its default has: a string "64" or 64.0 for an int field,
        True for a number, NaN or inf, are refused by name instead of failing later. A field
        whose default is None (set per estimator) takes None or the type of PPO's default."""
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), f.default
            if default is None:
                if value is None:
                    continue
                default = METHOD_DEFAULTS["gae"][f.name]
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
        """Raise ``ValueError`` unless the batch splits into ``world`` ranks x minibatches, and
        each rank's share into whole groups of ``group_size`` responses."""
        if self.batch_size % world or (self.batch_size // world) % self.minibatches:
            raise ValueError(f"batch_size {self.batch_size} must split into {world} ranks "
                             f"x {self.minibatches} minibatches")
        if (self.batch_size // world) % self.group_size:
            raise ValueError(f"batch_size {self.batch_size} must split into {world} ranks, "
                             f"each holding whole groups of group_size {self.group_size} "
                             f"(each rank's {self.batch_size // world} rows are not a multiple)")


class _Trace:
    """Records (phase, name, shape, dtype) of tensors and counts passes of each model."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, str, tuple[int, ...], str]] = []
        self.forward: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.backward: dict[str, int] = defaultdict(int)
        self.phase = ""
        self.resident: list[str] = ["actor", "critic", "reward", "reference"]
        self.estimator = "gae"

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
    scores: torch.Tensor  # (B,) the score advantages use (minus the missing-<eos> penalty)
    kl: torch.Tensor  # (B, T) per-token KL estimate
    rewards: torch.Tensor  # (B, T) per-token rewards (no KL in them with kl_in="loss")
    values: torch.Tensor | None  # (B, T) critic values at sampling time ("old"); None: no critic
    advantages: torch.Tensor  # (B, T)
    returns: torch.Tensor | None  # (B, T) the critic's targets; None: no critic to train
    beta: float
    rm_scores: torch.Tensor | None = None  # (B,) reward-model score (minus the penalty)

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
    critic reads the actor's hidden states, so both must go through the same forward. Without
    a critic (``critic`` None) the values are None.
    """

    def __init__(self, actor: nn.Module, critic: nn.Module | None, temperature: float = 1.0):
        super().__init__()
        self.actor, self.critic, self.temperature = actor, critic, temperature

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, prompt_len: int):
        out = self.actor(tokens, valid, prompt_len, self.temperature)
        values = (self.critic(tokens, valid, prompt_len, actor_hidden=out.hidden)
                  if self.critic is not None else None)
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
        if self.models.critic_mode != cfg.critic_mode:
            raise ValueError(f"models have critic mode {self.models.critic_mode!r} but the "
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
        # zero2/zero3: FSDP2 shards actor and critic (zero3: all four) instead of DDP copies
        self.sharded = sharding.shard_models(self.models, cfg.shard, precision=cfg.precision,
                                             root=self.policy)
        if self.world > 1 and self.sharded is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.policy, device_ids=ids)
        actor_params = list(self.models.actor.parameters())
        self.actor_opt = torch.optim.Adam(actor_params, lr=cfg.actor_lr, eps=1e-5)
        self.critic_opt = None  # no critic, no optimiser state
        if self.models.critic is not None:
            critic_params = [p for p in self.models.critic.parameters()
                             if all(p is not q for q in actor_params)]
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

    def _optimizers(self) -> list[tuple[str, torch.optim.Optimizer, float]]:
        """(role, optimiser, learning rate) of each trained model: the actor, and the critic
        if there is one."""
        opts = [("actor", self.actor_opt, self.config.actor_lr)]
        if self.critic_opt is not None:
            opts.append(("critic", self.critic_opt, self.config.critic_lr))
        return opts

    def state_dict(self) -> dict:
        critic = self.models.critic
        return {
            "kind": "rlhf-run", "step": self.step_count, "config": asdict(self.config),
            "world_size": self.world,
            "actor": self.models.actor.state_dict(),
            "critic": critic.state_dict() if critic is not None else None,
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict() if critic is not None else None,
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
        if self.sharded is not None:  # every rank writes its shards (DCP), then rank 0 the file
            return sharding.save_checkpoint(self, path)
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
        if "shards" in state or self.sharded is not None:  # DCP: any world size, any stage
            sharding.load_checkpoint(self, state, path)
        else:
            if state["config"] != asdict(self.config):
                raise ValueError(f"{path} was written by a run with a different config")
            if state["world_size"] != self.world:
                raise ValueError(f"{path} was written by {state['world_size']} process(es); "
                                 f"resume it with the same number, not {self.world}")
            self.models.actor.load_state_dict(state["actor"])
            self.actor_opt.load_state_dict(state["actor_opt"])
            if self.models.critic is not None:  # the same config: both have a critic, or neither
                self.models.critic.load_state_dict(state["critic"])
                self.critic_opt.load_state_dict(state["critic_opt"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.generator.set_state(state["generator"])
        if self.rank < len(state["sample_generators"]):  # more ranks than wrote it: fresh streams
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
        rates = ", ".join(f"{role}_lr={lr:g}" for role, _, lr in self._optimizers())
        return f" (training diverged: lower the learning rates, {rates})"

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
    @sharding.gathered_during  # generation needs whole weights: sharded ones are gathered
    def rollout(self, phase=None) -> Rollout:
        """Phases 1-5: prompts, generation, scores, KL-penalised rewards, values and GAE (or,
        without a critic, the group's or the batch's baseline)."""
        cfg, m, dev, devs = self.config, self.models, self.device, self.devices
        tr = self.trace or (lambda name, t: None)
        phase = phase or (lambda name: None)
        amp = distributed.autocast(dev, cfg.precision)

        # 1. sample prompts (all ranks draw the same global batch and keep their share); each
        # prompt is answered G = group_size times, in contiguous rows
        phase("1_prompts")
        G, share = cfg.group_size, cfg.batch_size // self.world
        prompts = sample_prompts(cfg.batch_size // G, self.generator)
        prompts = prompts[self.rank * share // G:(self.rank + 1) * share // G]
        prompt_ids, prompt_valid = self.tok.encode_batch(prompts)
        if G > 1:
            tr("group_prompt_ids", prompt_ids)  # (B / G, P)
            prompts = [p for p in prompts for _ in range(G)]
            prompt_ids = prompt_ids.repeat_interleave(G, dim=0)  # (B, P)
            prompt_valid = prompt_valid.repeat_interleave(G, dim=0)
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

        # 3. the reward model scores each whole response (on its own device); with
        # reward="gold" the task's own judge gives the score, and the RM only a metric
        phase("3_score")
        rdev = devs["reward"]
        with distributed.autocast(rdev, cfg.precision):
            rm_scores = m.reward(tokens.to(rdev), valid.to(rdev)).float().to(dev)  # (B,)
        self._check_finite("reward model scores", rm_scores)
        finished = (gen.response == self.tok.eos_id).any(1)
        penalty = cfg.missing_eos_penalty * (~finished).float()  # (B,)
        rm_scores = rm_scores - penalty
        scores = rm_scores
        if cfg.reward == "gold":
            gold = [gold_score(t) for t in self._texts(prompts, gen.response)]
            scores = torch.tensor(gold, device=dev) - penalty  # (B,)
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
        # the KL goes into the reward or (GRPO) into the loss, never both
        rewards = compute_rewards(scores, gen.logprobs, ref_logprobs, mask,
                                  beta if cfg.kl_in == "reward" else 0.0, cfg.kl_estimator)
        tr("ref_logprobs", ref_logprobs)
        tr("kl", kl)
        tr("rewards", rewards)

        values = returns = None
        if m.critic is not None:
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
                advantages = whiten(advantages, mask, reduce=self._reduce)
            tr("old_values", values)
        else:
            # 5. no critic: the baseline is the group (or, for REINFORCE++, the batch)
            phase("5_advantages")
            advantages = self._critic_free_advantages(rewards, mask)
        tr("advantages", advantages)
        if returns is not None:
            tr("returns", returns)
        return Rollout(prompts, tokens, valid, P, gen.response, mask, gen.logprobs, ref_logprobs,
                       scores, kl, rewards, values, advantages, returns, beta, rm_scores)

    @property
    def _reduce(self):
        """The sum over ranks that makes a batch statistic global (None in one process)."""
        return distributed.all_reduce_sum if self.world > 1 else None

    def _critic_free_advantages(self, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Phase 5 without a critic: advantages ``(B, T)`` from per-token rewards ``(B, T)``.

        GRPO, Dr. GRPO and RLOO judge each response as a whole, its reward (the score, minus
        beta x its summed KL when the KL is in the reward) against the others of its group;
        REINFORCE++ takes each token's return-to-go, normalised over the batch."""
        cfg, tr = self.config, self.trace or (lambda name, t: None)
        if cfg.advantage_estimator == "reinforce_pp":
            return reinforce_pp_advantages(rewards, mask, cfg.gamma, reduce=self._reduce)
        sequence_rewards = rewards.sum(1)  # (B,): groups lie within a rank's rows
        if cfg.advantage_estimator == "rloo":
            advantages = rloo_advantages(sequence_rewards, cfg.group_size)
        else:
            advantages = grpo_advantages(sequence_rewards, cfg.group_size,
                                         scale=cfg.advantage_estimator == "grpo")
        tr("sequence_advantages", advantages)
        return token_advantages(advantages, mask)  # (B, T)

    def _texts(self, prompts: list[str], response: torch.Tensor) -> list[str]:
        """Each prompt followed by its decoded response ``(B, T)``: the review the judge reads."""
        return [f"{p} {self.tok.decode(r)}" for p, r in zip(prompts, response.cpu())]

    def update(self, batch: Rollout) -> dict[str, float]:
        """Phase 6: PPO epochs over minibatches; actor and critic learn from one loss.

        Besides the losses it reports ``ratio_dev_first``, max |ratio - 1| over the response
        tokens of the first minibatch of the first epoch, where the policy is still the one
        that sampled: with ``recompute_logprobs`` it is 0, otherwise the gap between the
        generation and the training numerics; and per trained model ``<role>_grad_norm``, the
        mean gradient norm before clipping to ``max_grad_norm``, and ``<role>_grad_clipped``,
        the share of minibatches that clipping scaled down."""
        cfg = self.config
        tr = self.trace or (lambda name, t: None)
        policy = self.ddp or self.policy
        for module in (self.models.actor, self.models.critic):
            if module is not None:
                module.train()
        stats = defaultdict(list)
        B = batch.tokens.size(0)
        # each epoch's order comes from the CPU generator all ranks share, then moves to the
        # device; drawn up front so the recomputation can use the first epoch's minibatches
        orders = [torch.randperm(B, generator=self.generator, device="cpu").to(self.device)
                  for _ in range(cfg.ppo_epochs)]
        old_logprobs = batch.logprobs  # (B, T)
        if cfg.recompute_logprobs:
            old_logprobs = self._recompute_logprobs(batch, orders[0].chunk(cfg.minibatches))
            tr("recomputed_logprobs", old_logprobs)
        kl_coef = batch.beta if cfg.kl_in == "loss" else 0.0
        ratio_dev_first = None
        for order in orders:
            for idx in order.chunk(cfg.minibatches):
                with distributed.autocast(self.device, cfg.precision):
                    logprobs, entropy, values = policy(batch.tokens[idx], batch.valid[idx],
                                                       batch.prompt_len)
                mask = batch.mask[idx]
                logprobs = logprobs.float()
                if ratio_dev_first is None:
                    ratio_dev_first = torch.where(
                        mask.bool(), (logprobs.detach() - old_logprobs[idx]).exp() - 1, 0.0
                    ).abs().amax()
                critic = ((values.float(), batch.values[idx], batch.returns[idx])
                          if values is not None else (None, None, None))
                losses = ppo_losses(logprobs, old_logprobs[idx], batch.advantages[idx],
                                    *critic, mask, clip=cfg.clip, vf_clip=cfg.vf_clip or None,
                                    entropy=entropy.float(),
                                    ref_logprobs=(batch.ref_logprobs[idx]
                                                  if cfg.kl_in == "loss" else None),
                                    kl_estimator=cfg.kl_estimator)
                loss = total_loss(losses, cfg.vf_coef if values is not None else 0.0,
                                  cfg.ent_coef, kl_coef)
                if self.world > 1:
                    # token means over the global minibatch: DDP averages gradients over ranks,
                    # so weight this rank's mean by its share of the tokens
                    n_local = mask.sum()
                    n_global = distributed.all_reduce_sum(n_local.detach().clone())
                    loss = loss * (n_local * self.world / n_global)
                self._check_finite("PPO loss", loss, trained=True)
                if self.trace is not None and not stats:
                    tr("minibatch_logprobs", logprobs)
                    if values is not None:
                        tr("minibatch_values", values)
                    tr("loss", loss)
                opts = self._optimizers()
                for _, opt, _ in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for role, opt, _ in opts:
                    # the norm before clipping: how often, and how far, clipping steps in
                    norm = torch.nn.utils.clip_grad_norm_(self._trained(opt), cfg.max_grad_norm)
                    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                    stats[f"{role}_grad_norm"].append(norm.detach().float())
                    stats[f"{role}_grad_clipped"].append((norm > cfg.max_grad_norm).float())
                    opt.step()
                for k, v in losses.items():
                    stats[k].append(v.detach())
        # one copy to the host for all the statistics, not one per number: on a GPU each
        # copy waits for every queued kernel to finish; it also says whether the weights the
        # update wrote are still finite (a learning rate far too high overflows them)
        keys = list(stats)
        table = torch.stack([torch.stack(stats[k]) for k in keys])
        opts = self._optimizers()
        finite = [sharding.all_finite(self._trained(opt)) for _, opt, _ in opts]
        host = torch.cat([torch.stack(finite).to(table), ratio_dev_first.reshape(1).to(table),
                          table.flatten()]).tolist()
        oks, ratio_dev, table = host[:len(opts)], host[len(opts)], host[len(opts) + 1:]
        for ok, (role, _, lr) in zip(oks, opts):
            if not ok:
                raise FloatingPointError(
                    f"step {self.step_count + 1}: the PPO update made the {role}'s weights NaN "
                    f"or inf (training diverged); lower its learning rate (now {lr:g})")
        n = len(table) // len(keys)
        return {**{k: sum(table[i * n:(i + 1) * n]) / n for i, k in enumerate(keys)},
                "ratio_dev_first": ratio_dev}

    @torch.no_grad()
    def _recompute_logprobs(self, batch: Rollout, minibatches: tuple[torch.Tensor, ...]
                            ) -> torch.Tensor:
        """The old log-probs ``(B, T)`` again, from a forward pass of the actor under the
        update's numerics: the same autocast and the same minibatches (row sets and shapes) as
        the first epoch, so the first minibatch's ratio is exactly 1 before any Adam step."""
        cfg = self.config
        old = torch.empty_like(batch.logprobs)  # (B, T)
        for idx in minibatches:
            with distributed.autocast(self.device, cfg.precision):
                out = self.models.actor(batch.tokens[idx], batch.valid[idx], batch.prompt_len,
                                        cfg.temperature)
            old[idx] = out.logprobs.float()
        self._check_finite("recomputed log-probs", old, trained=True)
        return old

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
        texts = self._texts(batch.prompts, batch.response)
        rm_scores = batch.rm_scores if batch.rm_scores is not None else batch.scores
        metrics = {
            "rm_score": float(rm_scores.mean()),
            "gold_score": sum(map(gold_score, texts)) / B,
            "kl": float(kl_per_response.mean()),
            # the KL's part of the reward; with the KL in the loss, stats give kl_loss instead
            **({"non_score_reward": float((-batch.beta * batch.kl).sum(1).mean())}
               if self.config.kl_in == "reward" else {}),
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

    @sharding.gathered_during
    def sample(self, prompts: list[str], seed: int = 0, greedy: bool = False) -> list[str]:
        """The actor's responses to ``prompts`` as text (for before/after comparisons)."""
        ids, valid = self.tok.encode_batch(prompts)
        g = torch.Generator(self.device).manual_seed(seed)
        self.models.actor.eval()
        out = self.models.actor.generate(ids.to(self.device), valid.to(self.device),
                                         self.config.response_len, top_k=1 if greedy else None,
                                         eos_id=self.tok.eos_id, generator=g)
        return self._texts(prompts, out.response)


def trace_step(batch_size: int = 4, response_len: int = 100, critic_mode: str = "auto",
               seed: int = 0, estimator: str = "gae", group_size: int = 1) -> _Trace:
    """Run one step on randomly initialised toy models sized for ``response_len`` and record
    every tensor's shape and dtype per phase, and the forward/backward passes of each model.

    ``estimator`` and ``group_size`` are PPOConfig's ``advantage_estimator`` and ``group_size``
    (``critic_mode`` "auto": the estimator's); ``trace.resident`` lists the models held."""
    from .model import GPT, GPTConfig
    from .models import RewardModel

    cfg = PPOConfig(batch_size=batch_size, response_len=response_len, stop_at_eos=False,
                    critic_mode=critic_mode, minibatches=1 if batch_size % 2 else 2, seed=seed,
                    advantage_estimator=estimator, group_size=group_size)
    torch.manual_seed(seed)
    prompt_width = 4  # <bos> + the longest prompt (3 words)
    config = GPTConfig(block_size=prompt_width + response_len)
    models = build_models(cfg.critic_mode, sft=GPT(config), reward=RewardModel(GPT(config)))
    trainer = RLHFTrainer(cfg, models)
    trace = trainer.trace = _Trace()
    trace.resident = list(models.roles())
    trace.estimator = estimator
    hooks = []
    # a GPT's final LayerNorm runs once per pass, so its pre-hook counts passes
    bodies = {"actor": models.actor.gpt.ln_f, "reference": models.reference.gpt.ln_f,
              "reward": models.reward.gpt.ln_f}
    if models.critic is not None:
        bodies["critic"] = (models.critic.body.ln_f if cfg.critic_mode == "separate"
                            else models.critic.value_head)

    def count(role):
        def hook(module, args):
            kind = "generate" if trace.phase == "2_generate" else "forward"
            trace.forward[role][kind] += 1
        return hook

    for role, module in bodies.items():
        hooks.append(module.register_forward_pre_hook(count(role)))
    trained = [("actor", models.actor.gpt.ln_f.weight)]
    if models.critic is not None:
        trained.append(("critic", next(models.critic.value_head.parameters())))
    for role, p in trained:
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
    for role in trace.resident:
        fw = trace.forward.get(role, {})
        lines.append(f"{role:<10} {fw.get('generate', 0):>18} {fw.get('forward', 0):>15} "
                     f"{trace.backward.get(role, 0):>16}")
    lines.append("generation passes: one prefill of the prompt, then one cached pass per new "
                 "token; forward passes: full-sequence passes (scoring, values, PPO minibatches)")
    if "critic" not in trace.resident:
        lines.append(f"resident models: {', '.join(trace.resident)}; no critic is built for "
                     f"{trace.estimator} (the baseline comes from the other responses)")
    return "\n".join(lines)


__all__ = ["PPOConfig", "RLHFTrainer", "Rollout", "PolicyValue", "trace_step", "format_trace",
           "METHOD_DEFAULTS", "critic_mode_for"]
