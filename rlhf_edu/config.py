"""Every run's settings, each written once: ``PPOConfig``, ``DPOConfig``, ``PretrainConfig``,
``RewardModelConfig``; and ``preflight``, the checks of a run as a whole.

A field carries its type, its default and its metadata
(:func:`~rlhf_edu.validate.meta`: help text, bounds or choices, the command-line flag). That
metadata is the only description of the setting: ``__post_init__`` validates from it (the
same message in the API and on the command line, e.g. ``PPOConfig.gamma must be in [0, 1],
got 2``), and ``rlhf-edu`` generates each command's flags and ``--help`` from it
(:func:`rlhf_edu.cli.add_config_flags`). A new setting is one field here.

The methods (``advantage_estimator``) come from the method table,
:data:`rlhf_edu.advantages.METHODS`, and the KL estimators from
:data:`rlhf_edu.rewards.KL_ESTIMATORS`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import distributed, sharding
from .advantages import METHODS, method
from .models import CRITIC_MODES, NO_CRITIC
from .rewards import token_estimators
from .rundir import RunDir, check
from .tasks import TASKS, get_task
from .validate import (
    CLIP_MIN,
    COEF_MAX,
    COUNT,
    COUNT_MAX,
    DPO_BETA_MIN,
    EPOCHS,
    GRAD_NORM_MIN,
    LAYERS_MAX,
    LR,
    SEED,
    TEMPERATURE,
    VF_CLIP_MAX,
    WIDTH_MAX,
    check_field,
    check_fields,
    meta,
)

DPO_LOSSES = ("sigmoid", "ipo")
"""DPO's -log sigmoid(beta * margin), IPO's squared distance of the margin to 1 / (2 beta)"""
METHOD_SETTINGS = ("kl_in", "kl_estimator", "beta")
"""the fields a method sets when they are left as None"""


def method_defaults() -> dict[str, dict[str, object]]:
    """Each method's published defaults of :data:`METHOD_SETTINGS`, from the method table."""
    return {name: {k: getattr(m, k) for k in METHOD_SETTINGS} for name, m in METHODS.items()}


def group_methods() -> tuple[str, ...]:
    """The methods whose baseline is the group: they need group_size >= 2."""
    return tuple(name for name, m in METHODS.items() if m.needs_groups)


METHOD_DEFAULTS = method_defaults()
"""the built-in methods' defaults (read :func:`method_defaults` for registered ones too)"""
GROUP_ESTIMATORS = group_methods()
"""the built-in methods that need group_size >= 2 (see :func:`group_methods`)"""


def critic_mode_for(estimator: str, critic_mode: str = "auto") -> str:
    """The critic mode a run of ``estimator`` uses: ``critic_mode`` if it fits, else
    ``ValueError``; "auto" gives the method's: "separate" with a critic, "none" without.

    GAE needs a critic (separate, shared or head); the other methods build none.
    """
    needs_critic = method(estimator).needs_critic
    free = ", ".join(n for n, m in METHODS.items() if not m.needs_critic)
    if critic_mode == "auto":
        return "separate" if needs_critic else NO_CRITIC
    if not needs_critic:
        if critic_mode != NO_CRITIC:
            raise ValueError(f"advantage_estimator {estimator!r} trains no critic, but critic "
                             f"mode {critic_mode!r} was given; leave the critic mode unset (or "
                             "'none'), or use the estimator 'gae'")
    elif critic_mode == NO_CRITIC:
        raise ValueError(f"advantage_estimator {estimator!r} needs a critic, but the critic "
                         f"mode is 'none'; choose one of {', '.join(CRITIC_MODES)}, or a "
                         f"critic-free estimator ({free})")
    elif critic_mode not in CRITIC_MODES:
        raise ValueError(f"unknown critic mode {critic_mode!r}; expected one of "
                         f"{', '.join(CRITIC_MODES)}")
    return critic_mode


def _methods() -> dict[str, str]:
    return {name: m.description for name, m in METHODS.items()}


def _tasks() -> dict[str, str]:
    return {name: t.description for name, t in TASKS.items()}


REWARDS = ("model", "gold", "lax")
"""what scores a response: the learned reward model, or one of the task's scorers"""


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

    (the method table, :data:`rlhf_edu.advantages.METHODS`, holds these defaults.) "KL in the
    reward" subtracts ``beta * KL_t`` from each token's reward (PPO and REINFORCE++ per token,
    RLOO summed over the response); "KL in the loss" adds ``beta * mean(k3)`` of the current
    policy against the reference to the loss, and the reward carries no KL.
    """

    seed: int = field(default=0, metadata=meta(
        "seed of prompts, sampling and minibatch order: the same seed gives the same run",
        **SEED))
    task: str = field(default="reviews", metadata=meta(
        "what the actor learns, from the task table (rlhf_edu.tasks)", choices=_tasks))
    batch_size: int = field(default=64, metadata=meta(
        "responses per step (batch / group-size prompts)", **COUNT, flag="--batch"))
    group_size: int = field(default=1, metadata=meta(
        "G responses sampled per prompt, in contiguous rows; the methods whose baseline is the "
        "group need G >= 2", minimum=1, maximum=COUNT_MAX))
    response_len: int = field(default=20, metadata=meta(
        "most tokens generated per response", minimum=1))
    temperature: float = field(default=1.0, metadata=meta(
        "sampling temperature (PPO scores the policy logits / temperature)", **TEMPERATURE))
    stop_at_eos: bool = field(default=True, metadata=meta(
        "end a response at <eos> (off: every response has exactly response-len tokens)"))
    beta: float | None = field(default=None, metadata=meta(
        "KL coefficient (initial, if adaptive): reward = score - beta x KL per token, or beta x "
        "KL in the loss; default: the method's", minimum=0, maximum=COEF_MAX))
    kl_estimator: str | None = field(default=None, metadata=meta(
        "per-token KL estimator (see rewards.kl_penalty)", choices=token_estimators))
    kl_in: str | None = field(default=None, metadata=meta(
        "put beta x KL into each token's reward, or add it to the loss as GRPO does",
        choices=("reward", "loss")))
    adaptive_kl: bool = field(default=False, metadata=meta(
        "adapt beta toward kl-target (Ziegler et al. 2019) instead of keeping it fixed"))
    kl_target: float = field(default=1.0, metadata=meta(
        "target KL per response (nats) of the adaptive KL controller; giving it turns "
        "adaptive-kl on", minimum=0, strict_min=True, implies={"adaptive_kl": True}))
    kl_horizon: int = field(default=2000, metadata=meta(
        "horizon (in responses) of the adaptive KL controller", minimum=1))
    ref_reset_every: int = field(default=0, metadata=meta(
        "0: the reference stays frozen (the chapter's design); k: copy the actor into the "
        "reference every k steps, to show why it must not (the kl_sft metric then measures "
        "the drift from the SFT model)", minimum=0))
    reward: str | None = field(default=None, metadata=meta(
        "score responses with the reward model, the task's gold score (a verifiable reward; a "
        "reward model then only gives the rm_score metric) or, for arith, the lax verifier "
        "that a policy can fool; default: model where the task has one, else gold",
        choices=REWARDS))
    missing_eos_penalty: float = field(default=1.0, metadata=meta(
        "subtracted from the score of a response that never reached <eos>", minimum=0,
        maximum=COEF_MAX))
    advantage_estimator: str = field(default="gae", metadata=meta(
        "advantage estimator, from the method table", choices=_methods, flag="--estimator"))
    gamma: float = field(default=1.0, metadata=meta(
        "discount factor of GAE and of REINFORCE++'s return-to-go", minimum=0, maximum=1))
    lam: float = field(default=0.95, metadata=meta(
        "lambda of GAE: the bias-variance knob of advantage estimation", minimum=0, maximum=1))
    whiten_advantages: bool = field(default=True, metadata=meta(
        "normalise GAE's advantages over the batch's response tokens (the critic-free "
        "estimators bring their own normalisation)"))
    ppo_epochs: int = field(default=4, metadata=meta("PPO passes over each batch", **EPOCHS))
    minibatches: int = field(default=2, metadata=meta("minibatches per PPO epoch", minimum=1))
    recompute_logprobs: bool = field(default=False, metadata=meta(
        "recompute the old log-probs with the actor under the training numerics before the "
        "PPO epochs (generation and training kernels differ, in bf16 by up to ~0.03 nats)"))
    clip: float = field(default=0.2, metadata=meta(
        "PPO ratio clip epsilon", minimum=CLIP_MIN, maximum=1))
    vf_clip: float = field(default=0.2, metadata=meta(
        "value clip range around the old values (0: no value clipping)", minimum=0,
        maximum=VF_CLIP_MAX))
    vf_coef: float = field(default=0.1, metadata=meta(
        "c1, weight of the value loss", minimum=0, maximum=COEF_MAX))
    ent_coef: float = field(default=0.0, metadata=meta(
        "c2, weight of the entropy bonus", minimum=0, maximum=COEF_MAX))
    actor_lr: float = field(default=1e-4, metadata=meta(
        "Adam learning rate of the actor", **LR))
    critic_lr: float = field(default=3e-4, metadata=meta(
        "Adam learning rate of the critic (its head, in shared and head modes)", **LR))
    max_grad_norm: float = field(default=1.0, metadata=meta(
        "gradient clipping per optimiser", minimum=GRAD_NORM_MIN))
    critic_mode: str = field(default="auto", metadata=meta(
        "critic mode: separate (own network), shared (a value head on a shared backbone), head "
        "(a value head on the actor), none; auto: separate with gae, none for the critic-free "
        "estimators", choices=("auto", *CRITIC_MODES, NO_CRITIC), flag="--critic"))
    device: str = field(default="cpu", metadata=meta(
        "cpu, cuda, cuda:N or auto (under torchrun with CUDA: each rank's own GPU)"))
    placement: str | dict = field(default="colocate", metadata=meta(
        "colocate, or JSON such as '{\"reward\": \"cuda:1\", \"reference\": \"cuda:1\"}'"))
    precision: str = field(default="auto", metadata=meta(
        "auto: bf16 autocast and bf16 frozen models on CUDA, fp32 on CPU; bf16 (also on CPU); "
        "fp32; the trained models always keep fp32 master weights",
        choices=distributed.PRECISIONS, check=distributed.check_precision))
    shard: str = field(default="none", metadata=meta(
        "none: DDP copies; zero2/zero3: FSDP2 shards of actor and critic (zero3 also the "
        "frozen models) over the --nproc processes (two or more)", choices=sharding.STAGES,
        check=sharding.check_stage))
    compile: bool = field(default=False, metadata=meta(
        "compile the actor and critic's training forward with torch.compile (the response "
        "width dynamic: one compile per run); pays on long runs, needs a C++ compiler on CPU"))

    def __post_init__(self) -> None:
        check_field("PPOConfig", _field(self, "advantage_estimator"), self.advantage_estimator)
        entry = METHODS[self.advantage_estimator]
        for name in METHOD_SETTINGS:  # None: the method's published default
            if getattr(self, name) is None:
                setattr(self, name, getattr(entry, name))
        check_field("PPOConfig", _field(self, "task"), self.task)
        if self.reward is None:
            self.reward = "model" if get_task(self.task).reward_model else "gold"
        check_fields(self)
        self.critic_mode = critic_mode_for(self.advantage_estimator, self.critic_mode)
        self._check_together()

    def _check_together(self) -> None:
        """The checks that read two or more fields."""
        if self.batch_size % self.minibatches:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by minibatches "
                             f"({self.minibatches})")
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by group_size "
                             f"({self.group_size}): each prompt is answered group_size times")
        if METHODS[self.advantage_estimator].needs_groups and self.group_size < 2:
            raise ValueError(f"advantage_estimator {self.advantage_estimator!r} needs "
                             f"group_size >= 2, got {self.group_size}: a group of one response "
                             "has no other response to serve as its baseline")
        check_task_reward(self.task, self.reward)
        sharding.check_config(self.shard, self.placement)
        if self.compile and self.shard != "none":
            raise ValueError(f"compile needs shard='none', got shard={self.shard!r}: the "
                             "sharded models are not compiled")
        if self.ref_reset_every and self.shard != "none":
            raise ValueError(f"ref_reset_every ({self.ref_reset_every}) needs shard='none': a "
                             "moving reference copies the actor's whole weights")
        if self.adaptive_kl and self.beta == 0:
            raise ValueError("PPOConfig.beta must be > 0 with adaptive_kl: the controller "
                             "multiplies beta, so from 0 it would stay 0")
        if self.adaptive_kl and self.kl_horizon < self.batch_size:
            raise ValueError(f"PPOConfig.kl_horizon ({self.kl_horizon}) must be >= batch_size "
                             f"({self.batch_size}): each step moves beta by up to 20 % x "
                             "batch_size / kl_horizon, which must stay below 20 %")

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


def check_task_reward(task: str, reward: str) -> None:
    """``ValueError`` unless the task can score responses with ``reward``."""
    t = get_task(task)
    if reward == "model" and not t.reward_model:
        raise ValueError(f"PPOConfig.reward 'model': task {task!r} has no reward model; use "
                         f"reward {' or '.join(map(repr, t.scorers))} (its verifiers)")
    if reward != "model" and reward not in t.scorers:
        raise ValueError(f"PPOConfig.reward {reward!r} does not apply to task {task!r}; "
                         f"expected one of {', '.join(('model', *t.scorers))}")


def _field(config: object, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(config) if f.name == name)


def preflight(config: PPOConfig, world: int, *, nproc: int | None = None,
              run_dir: str | Path | None = None, resume: bool = False) -> int | None:
    """The checks of a run as a whole, made before any work: the batch splits over ``world``
    ranks, sharding has two or more, ``nproc`` processes fit the device (given when the
    command line will launch them), the placement names real devices, and ``run_dir`` is free
    and (with ``resume``) holds this very run. ``rlhf-edu train`` calls it before any rank
    starts, :class:`~rlhf_edu.trainer.RLHFTrainer` when it is built.

    Returns the step a resumed run continues from, or None (a new run, or no ``run_dir``).
    """
    if nproc is not None:
        distributed.check_nproc(nproc, config.device)
    config.check_world(world)
    sharding.check_world(config.shard, world)
    distributed.resolve_placement(config.placement, distributed.select_device(config.device))
    if run_dir is None:
        return None
    # one process probes the lock (a launcher, or global rank 0): two ranks probing it at the
    # same moment would each find it held by the other
    pid = RunDir(run_dir).busy() if os.environ.get("RANK", "0") == "0" else None
    if pid is not None:
        raise ValueError(f"run directory {str(run_dir)!r} is in use by another run "
                         f"(process {pid}); wait for it to end or choose another --run-dir")
    return check(run_dir, asdict(config), resume)


@dataclass
class DPOConfig:
    """The settings of ``rlhf-edu dpo``: DPO / IPO from the SFT actor on preference pairs."""

    beta: float = field(default=0.1, metadata=meta(
        "beta: the strength of the implicit KL leash to the SFT actor", minimum=DPO_BETA_MIN,
        maximum=COEF_MAX))
    loss: str = field(default="sigmoid", metadata=meta(
        "sigmoid: DPO's -log sigmoid(beta * margin); ipo: IPO's squared distance of the margin "
        "to 1/(2 beta)", choices=DPO_LOSSES))
    pairs: int = field(default=2000, metadata=meta(
        "preference pairs sampled from the SFT actor and labelled by a Bradley-Terry coin flip "
        "on the gold score, as for the reward model", **COUNT))
    epochs: int = field(default=2, metadata=meta("passes over the pairs", **EPOCHS))
    batch_size: int = field(default=32, metadata=meta(
        "pairs per optimiser step", **COUNT, flag="--batch"))
    lr: float = field(default=1e-4, metadata=meta(
        "Adam learning rate of the policy", **LR))
    eval_samples: int = field(default=256, metadata=meta(
        "fresh responses sampled to measure the SFT actor and the DPO policy", **COUNT))
    seed: int = field(default=0, metadata=meta(
        "seed of the pairs, the minibatch order and the evaluation prompts", **SEED))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PretrainConfig:
    """The settings of ``rlhf-edu pretrain``: the SFT actor of a task (its SFT data)."""

    task: str = field(default="reviews", metadata=meta(
        "the task whose SFT data to train on (rlhf_edu.tasks)", choices=_tasks))
    reviews: int | None = field(default=None, metadata=meta(
        "reviews sampled from the grammar to train on (task reviews; default 30,000)", **COUNT))
    problems: int | None = field(default=None, metadata=meta(
        "worked and direct answers to train on (task arith; default 30,000)", **COUNT))
    epochs: int = field(default=4, metadata=meta("passes over the reviews", **EPOCHS))
    n_layer: int = field(default=3, metadata=meta("transformer blocks", minimum=1,
                                                  maximum=LAYERS_MAX))
    n_head: int = field(default=4, metadata=meta("attention heads", minimum=1,
                                                 maximum=WIDTH_MAX))
    n_embd: int = field(default=128, metadata=meta("width of the residual stream", minimum=1,
                                                   maximum=WIDTH_MAX))
    eval_samples: int = field(default=500, metadata=meta(
        "samples drawn to measure the SFT model afterwards", **COUNT))
    seed: int = field(default=0, metadata=meta(
        "seed of data and training (the evaluation uses seed + 1, wrapped into range)", **SEED))

    def __post_init__(self) -> None:
        check_fields(self)
        other = {"reviews": "problems", "arith": "reviews"}[self.task]
        if getattr(self, other) is not None:
            raise ValueError(f"PretrainConfig.{other} does not apply to task {self.task!r}; "
                             f"it trains on {'reviews' if other == 'problems' else 'problems'}")

    @property
    def texts(self) -> int:
        """How many SFT texts to train on: the given count, or 30,000."""
        return (self.reviews if self.task == "reviews" else self.problems) or 30_000


@dataclass
class RewardModelConfig:
    """The settings of ``rlhf-edu train-rm``: the reward model on preference pairs."""

    pairs: int = field(default=8000, metadata=meta(
        "preference pairs to train on", **COUNT))
    heldout: int = field(default=1000, metadata=meta(
        "further pairs kept aside to measure accuracy", **COUNT))
    epochs: int = field(default=2, metadata=meta("passes over the pairs", **EPOCHS))
    seed: int = field(default=0, metadata=meta(
        "seed of the pairs and of training (the evaluation uses seed + 2, wrapped into range)",
        **SEED))

    def __post_init__(self) -> None:
        check_fields(self)


__all__ = ["REWARDS", "check_task_reward", "PPOConfig", "DPOConfig", "PretrainConfig",
           "RewardModelConfig", "preflight",
           "critic_mode_for", "method_defaults", "group_methods", "METHOD_DEFAULTS",
           "GROUP_ESTIMATORS", "METHOD_SETTINGS", "DPO_LOSSES"]
