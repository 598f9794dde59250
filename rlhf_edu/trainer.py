"""One RLHF step, in the order the chapter teaches it, and the loop around it.

``RLHFTrainer.step()`` runs the six phases:

1. sample prompts;
2. the actor generates responses and keeps their log-probs ``(B, T)``;
3. the reward model scores each response ``(B,)``;
4. the reference's log-probs give a per-token KL penalty, ``R = R_rm - beta * KL``;
5. the critic's values and GAE give advantages and returns ``(B, T)``;
6. PPO epochs over minibatches update the actor and the critic.

The same loop runs the critic-free methods (``PPOConfig.advantage_estimator``, an entry of the
method table ``advantages.METHODS``, whose function phase 5 calls): GRPO, Dr. GRPO
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
import time
import weakref
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import distributed, sharding
from .advantages import METHODS
from .checkpoint import atomic_save, safe_load
from .config import (  # PPOConfig and the method defaults are also re-exported from here
    GROUP_ESTIMATORS,
    METHOD_DEFAULTS,
    PPOConfig,
    critic_mode_for,
    preflight,
)
from .interrupt import DeferredInterrupt as _DeferredInterrupt
from .model import GPT, GPTConfig
from .models import (
    Models,
    Reference,
    RewardModel,
    build_models,
    check_compile,
    compile_forward,
)
from .ppo import (
    AdaptiveKLController,
    FixedKLController,
    check_ppo_inputs,
    ppo_losses,
    total_loss,
)
from .rewards import compute_rewards, kl_penalty
from .rundir import RunDir
from .task import review_texts
from .tasks import get_task
from .validate import derived_seed


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


RUN_KEYS = ("step", "config", "world_size", "kl_ctl", "generator", "sample_generators",
            "history")
"""what every RLHF run checkpoint holds (a whole one also the models and their optimisers)"""
UNDEFINED = {
    "advantage_std": "fewer than two response tokens in the batch: the std of one value is "
                     "undefined",
}
"""why a metric can be undefined; metrics.jsonl writes it as null and the reason under
"undefined" (e.g. ``--batch 1 --response-len 1``)"""


def defined_metrics(metrics: dict) -> dict:
    """``metrics`` with each NaN or inf number replaced by None, and an ``"undefined"`` entry
    mapping those keys to the reason (:data:`UNDEFINED`, else the value that was not finite):
    metrics.jsonl is strict JSON, which has no NaN."""
    out, undefined = {}, {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            undefined[key] = UNDEFINED.get(key, f"not finite ({value})")
            value = None
        out[key] = value
    return {**out, "undefined": undefined} if undefined else out


def metrics_line(metrics: dict) -> str:
    """One line of metrics.jsonl: strict JSON (``allow_nan=False``: a NaN that slipped past
    :func:`defined_metrics` raises here instead of writing a bare ``NaN``)."""
    return json.dumps(metrics, allow_nan=False) + "\n"


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
        preflight(cfg, self.world)
        self.device = distributed.local_device(cfg.device)
        if self.world > 1:
            distributed.check_process_group(cfg.device, self.device)
        self.devices = distributed.resolve_placement(cfg.placement, self.device)
        self.device = self.devices["actor"]
        if cfg.compile:  # refused here, before any model is built; on CPU it starts a probe
            check_compile(self.device)
        self.task = get_task(cfg.task)
        self.models = models or build_models(cfg.critic_mode, seed=cfg.seed, task=cfg.task)
        if cfg.reward == "model" and self.models.reward is None:
            raise ValueError("PPOConfig.reward is 'model' but the models have no reward model; "
                             "score with one of the task's verifiers: "
                             f"{', '.join(self.task.scorers)}")
        if self.models.critic_mode != cfg.critic_mode:
            raise ValueError(f"models have critic mode {self.models.critic_mode!r} but the "
                             f"config asks for {cfg.critic_mode!r}")
        for role, module in self.models.roles().items():
            module.to(self.devices[role])
            if role in ("reward", "reference") and distributed.uses_bf16(self.devices[role],
                                                                         cfg.precision):
                distributed.to_bf16(module)  # frozen: half the memory, no optimiser to feed
        # a reference that moves (ref_reset_every > 0) is measured against a frozen SFT copy
        self.sft = (Reference(self.models.reference) if cfg.ref_reset_every else None)
        self.tok = self.task.tokenizer()
        # prompts and minibatch order come from a generator every rank shares (same seed);
        # token sampling from one per rank, on the actor's device
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sample_generator = torch.Generator(self.device).manual_seed(
            derived_seed(cfg.seed, 1 + 100_003 * self.rank))
        self.policy = PolicyValue(self.models.actor, self.models.critic, cfg.temperature)
        if cfg.compile:  # PPO's forward and backward, ~90 % of a step; generation stays eager
            compile_forward(self.policy, self.device)
        self.ddp = None
        # zero2/zero3: FSDP2 shards actor and critic (zero3: all four) instead of DDP copies
        self.sharded = sharding.shard_models(self.models, cfg.shard, precision=cfg.precision,
                                             root=self.policy)
        if self.world > 1 and self.sharded is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.policy, device_ids=ids)
        actor_params = list(self.models.actor.parameters())
        self.actor_opt = distributed.adam(actor_params, cfg.actor_lr, eps=1e-5)
        self.critic_opt = None  # no critic, no optimiser state
        if self.models.critic is not None:
            critic_params = [p for p in self.models.critic.parameters()
                             if all(p is not q for q in actor_params)]
            self.critic_opt = distributed.adam(critic_params, cfg.critic_lr, eps=1e-5)
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
            # a reference that moves is part of the run's state (a frozen one is the SFT model)
            **({"reference": self.models.reference.state_dict()} if self.sft is not None
               else {}),
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
        whole = () if "shards" in state else ("actor", "critic", "actor_opt", "critic_opt")
        missing = [k for k in (*RUN_KEYS, *whole) if k not in state]
        if missing:
            raise ValueError(f"{path} is an incomplete RLHF run checkpoint: it has no "
                             f"{', '.join(map(repr, missing))}; expected one written by "
                             "RLHFTrainer.save (rlhf-edu train)")
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
        if "reference" in state:  # ref_reset_every > 0: the reference the run had moved to
            self.models.reference.load_state_dict(state["reference"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.generator.set_state(state["generator"])
        if self.rank < len(state["sample_generators"]):  # more ranks than wrote it: fresh streams
            self.sample_generator.set_state(state["sample_generators"][self.rank])
        self.step_count = state["step"]
        self.history = list(state["history"])
        if self.run_dir is not None and self.rank == 0:  # drop steps past the checkpoint
            (self.run_dir / "metrics.jsonl").write_text(
                "".join(metrics_line(m) for m in self.history))

    # ------------------------------------------------------------------ one step

    def _check_finite(self, name: str, t: torch.Tensor, trained: bool = False) -> None:
        """``FloatingPointError`` naming the step and ``name`` unless ``t`` is all finite;
        ``trained``: the value comes from a model PPO trains, so say what to lower."""
        if not torch.isfinite(t).all():
            hint = self._diverged() if trained else ""
            raise FloatingPointError(f"step {self.step_count + 1}: NaN or inf in {name}{hint}")

    def _diverged(self) -> str:
        """Why a value a trained model computed is not finite. "Diverged" only if the weights
        really are NaN or inf; otherwise the settings made a finite model's numbers overflow,
        and those at the far end of their range are named."""
        rates = ", ".join(f"{role}_lr={lr:g}" for role, _, lr in self._optimizers())
        edge = self._far_settings()
        weights_ok = self.sharded is None and all(  # a sharded check is a collective: skip
            bool(sharding.all_finite(self._trained(opt))) for _, opt, _ in self._optimizers())
        if weights_ok:
            return (f" (the weights are finite, so the numbers of this step overflowed{edge}; "
                    f"or lower the learning rates, {rates})")
        return f" (training diverged: lower the learning rates, {rates}{edge})"

    def _far_settings(self) -> str:
        """"; settings far out in their range: ..." naming those that can make a finite
        model's numbers overflow (a low temperature, a large beta, a large learning rate), or
        "" if none is."""
        cfg = self.config
        opts = self._optimizers()
        edges = [text for far, text in (
            (cfg.temperature < 0.1, f"temperature={cfg.temperature:g} (the logits are "
                                    f"multiplied by {1 / cfg.temperature:g})"),
            (cfg.beta > 100, f"beta={cfg.beta:g}"),
            (max(lr for _, _, lr in opts) > 1e-2,
             ", ".join(f"{role}_lr={lr:g}" for role, _, lr in opts))) if far]
        return "; settings far out in their range: " + ", ".join(edges) if edges else ""

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
        cfg = self.config
        tr = self.trace or (lambda name, t: None)
        phase = phase or (lambda name: None)

        # 1. sample prompts (all ranks draw the same global batch and keep their share); each
        # prompt is answered G = group_size times, in contiguous rows
        phase("1_prompts")
        prompts, prompt_ids, prompt_valid = self._prompts(tr)

        # 2. the actor generates, keeping each token's log-prob under the sampling policy
        phase("2_generate")
        gen = self._generate(prompt_ids, prompt_valid, tr)
        tokens, valid, P, mask = gen.tokens, gen.valid, gen.prompt_len, gen.mask

        # 3. the reward model scores each whole response (on its own device); with
        # reward="gold" the task's own judge gives the score, and the RM only a metric
        phase("3_score")
        scores, rm_scores = self._score(prompts, gen)
        tr("scores", scores)

        # 4. the reference gives the KL penalty; the score goes on the last token
        phase("4_reference_kl")
        fdev = self.devices["reference"]
        with distributed.autocast(fdev, cfg.precision):
            ref_logprobs = self.models.reference(tokens.to(fdev), valid.to(fdev), P,
                                                 cfg.temperature).logprobs.float().to(self.device)
        self._check_finite("reference log-probs", ref_logprobs)  # (B, T)
        # the mask keeps the padding out: its log-probs mean nothing and may overflow k3
        kl = kl_penalty(gen.logprobs, ref_logprobs, cfg.kl_estimator, mask=mask)  # (B, T)
        beta = self.kl_ctl.value
        # the KL goes into the reward or (GRPO) into the loss, never both
        rewards = compute_rewards(scores, gen.logprobs, ref_logprobs, mask,
                                  beta if cfg.kl_in == "reward" else 0.0, cfg.kl_estimator)
        tr("ref_logprobs", ref_logprobs)
        tr("kl", kl)
        tr("rewards", rewards)

        # 5. the method's advantages: GAE over the critic's values (whitened with the
        # statistics of all ranks), or without a critic the group's or the batch's baseline
        values = None
        if self.models.critic is not None:
            phase("5_values_gae")
            values = self._values(tokens, valid, P, mask)
            tr("old_values", values)
        else:
            phase("5_advantages")
        advantages, returns = METHODS[cfg.advantage_estimator].advantages(
            rewards, mask, values=values, config=cfg, reduce=self._reduce,
            trace=self.trace)
        tr("advantages", advantages)
        if returns is not None:
            tr("returns", returns)
        return Rollout(prompts, tokens, valid, P, gen.response, mask, gen.logprobs, ref_logprobs,
                       scores, kl, rewards, values, advantages, returns, beta, rm_scores)

    def _prompts(self, tr) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Phase 1: this rank's prompts, each repeated group_size times, and their ids and
        valid mask ``(B, P)`` on the actor's device."""
        G, share = self.config.group_size, self.config.batch_size // self.world
        prompts = self.task.sample_prompts(self.config.batch_size // G, self.generator)
        prompts = prompts[self.rank * share // G:(self.rank + 1) * share // G]
        prompt_ids, prompt_valid = self.tok.encode_batch(prompts)
        if G > 1:
            tr("group_prompt_ids", prompt_ids)  # (B / G, P)
            prompts = [p for p in prompts for _ in range(G)]
            prompt_ids = prompt_ids.repeat_interleave(G, dim=0)  # (B, P)
            prompt_valid = prompt_valid.repeat_interleave(G, dim=0)
        prompt_ids, prompt_valid = prompt_ids.to(self.device), prompt_valid.to(self.device)
        tr("prompt_ids", prompt_ids)
        tr("prompt_valid", prompt_valid)
        return prompts, prompt_ids, prompt_valid

    def _generate(self, prompt_ids: torch.Tensor, prompt_valid: torch.Tensor, tr):
        """Phase 2: the actor's responses to the prompts ``(B, P)``, with their log-probs."""
        cfg, actor = self.config, self.models.actor
        actor.eval()
        try:
            with distributed.autocast(self.device, cfg.precision):
                gen = actor.generate(prompt_ids, prompt_valid, cfg.response_len,
                                     temperature=cfg.temperature, pad_id=self.tok.pad_id,
                                     eos_id=self.tok.eos_id if cfg.stop_at_eos else None,
                                     generator=self.sample_generator)
        except FloatingPointError as e:
            raise FloatingPointError(f"step {self.step_count + 1}: generation failed, {e}"
                                     f"{self._diverged()}") from None
        for name in ("tokens", "valid", "response", "logprobs", "mask"):
            tr(name if name != "logprobs" else "old_logprobs", getattr(gen, name))
        self._check_finite("actor log-probs", gen.logprobs, trained=True)
        return gen

    def _score(self, prompts: list[str], gen) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Phase 3: the scores ``(B,)`` advantages use, and the reward model's ``(B,)`` (the
        same unless a task's scorer gives the reward; None without a reward model), both
        minus the missing-<eos> penalty."""
        cfg, rdev = self.config, self.devices["reward"]
        finished = (gen.response == self.tok.eos_id).any(1)
        penalty = cfg.missing_eos_penalty * (~finished).float()  # (B,)
        rm_scores = None
        if self.models.reward is not None:
            with distributed.autocast(rdev, cfg.precision):
                rm_scores = self.models.reward(gen.tokens.to(rdev),
                                               gen.valid.to(rdev)).float().to(self.device)
            self._check_finite("reward model scores", rm_scores)  # (B,)
            rm_scores = rm_scores - penalty
        if cfg.reward == "model":
            return rm_scores, rm_scores
        texts = review_texts(prompts, gen.response, self.tok)
        scores = torch.tensor(self.task.score(cfg.reward, texts), device=self.device)
        return scores - penalty, rm_scores  # (B,)

    def _values(self, tokens: torch.Tensor, valid: torch.Tensor, P: int,
                mask: torch.Tensor) -> torch.Tensor:
        """Phase 5's input with a critic: its values ``(B, T)``, 0 on padding."""
        with distributed.autocast(self.device, self.config.precision):
            if self.models.critic.mode == "separate":
                values = self.models.critic(tokens, valid, P)
            else:  # the critic reads the actor's hidden states: one pass through both
                values = self.policy(tokens, valid, P)[2]
        return values.float() * mask  # (B, T)

    @property
    def _reduce(self):
        """The sum over ranks that makes a batch statistic global (None in one process)."""
        return distributed.all_reduce_sum if self.world > 1 else None

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
        # the rollout's side of the losses is checked and zeroed on padding once here, not
        # once per minibatch
        x = check_ppo_inputs(old_logprobs, batch.advantages, batch.values, batch.returns,
                             batch.mask, cfg.clip, cfg.vf_clip or None,
                             batch.ref_logprobs if cfg.kl_in == "loss" else None,
                             cfg.kl_estimator)  # (B, T) each
        ratio_dev_first = None
        for order in orders:
            for idx in order.chunk(cfg.minibatches):
                with distributed.autocast(self.device, cfg.precision):
                    logprobs, entropy, values = policy(batch.tokens[idx], batch.valid[idx],
                                                       batch.prompt_len)
                mask, old = x.mask[idx], x.old_logprobs[idx]
                logprobs = logprobs.float()
                if ratio_dev_first is None:
                    ratio_dev_first = torch.where(
                        mask, (logprobs.detach() - old).exp() - 1, 0.0).abs().amax()
                critic = ((values.float(), x.old_values[idx], x.returns[idx])
                          if values is not None else (None, None, None))
                losses = ppo_losses(logprobs, old, x.advantages[idx], *critic, mask,
                                    clip=cfg.clip, vf_clip=cfg.vf_clip or None,
                                    entropy=entropy.float(),
                                    ref_logprobs=(x.ref_logprobs[idx]
                                                  if x.ref_logprobs is not None else None),
                                    kl_estimator=cfg.kl_estimator, checked=True)
                loss = total_loss(losses, cfg.vf_coef if values is not None else 0.0,
                                  cfg.ent_coef, kl_coef)
                if self.world > 1:
                    # token means over the global minibatch: DDP averages gradients over ranks,
                    # so weight this rank's mean by its share of the tokens
                    n_local = batch.mask[idx].sum()
                    n_global = distributed.all_reduce_sum(n_local.detach().clone())
                    loss = loss * (n_local * self.world / n_global)
                self._check_finite("PPO loss", loss, trained=True)
                if self.trace is not None and not stats:
                    tr("minibatch_logprobs", logprobs)
                    if values is not None:
                        tr("minibatch_values", values)
                    tr("loss", loss)
                self._optimizer_step(loss, stats)
                for k, v in losses.items():
                    stats[k].append(v.detach())
        return self._summarise(stats, ratio_dev_first)

    def _optimizer_step(self, loss: torch.Tensor, stats: dict[str, list]) -> None:
        """Backward, clip and step each optimiser; record each gradient norm before clipping."""
        max_norm = self.config.max_grad_norm
        opts = self._optimizers()
        for _, opt, _ in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for role, opt, _ in opts:
            # the norm before clipping: how often, and how far, clipping steps in
            norm = torch.nn.utils.clip_grad_norm_(self._trained(opt), max_norm)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            stats[f"{role}_grad_norm"].append(norm.detach().float())
            opt.step()

    def _summarise(self, stats: dict[str, list], ratio_dev_first: torch.Tensor
                   ) -> dict[str, float]:
        """The mean of each statistic over the minibatches, after checking that the weights
        the update wrote are finite."""
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
        n = len(table) // len(keys)
        means, max_norm = {}, self.config.max_grad_norm
        for i, k in enumerate(keys):
            column = table[i * n:(i + 1) * n]
            means[k] = sum(column) / n
            if k.endswith("_grad_norm"):  # the share of minibatches that clipping scaled down
                means[k.replace("_norm", "_clipped")] = sum(v > max_norm for v in column) / n
        for role, _, _ in opts:  # first: an inf norm scales the update to 0 (or inf x 0, NaN)
            norm = means.get(f"{role}_grad_norm", 0.0)
            if not math.isfinite(norm):
                raise FloatingPointError(
                    f"step {self.step_count + 1}: the {role}'s gradient norm is {norm} while "
                    f"the loss is finite: its gradient overflows float32, and clipping cannot "
                    f"scale an inf{self._far_settings()}")
        for ok, (role, _, lr) in zip(oks, opts):
            if not ok:
                raise FloatingPointError(
                    f"step {self.step_count + 1}: the PPO update made the {role}'s weights NaN "
                    f"or inf (training diverged); lower its learning rate (now {lr:g})")
        return {**means, "ratio_dev_first": ratio_dev}

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

    @torch.no_grad()
    def _kl_to_sft(self, batch: Rollout) -> float:
        """KL(policy || SFT) per response, the batch mean: ``kl`` measured against the frozen
        SFT copy kept when the reference moves (``ref_reset_every`` > 0)."""
        cfg, fdev = self.config, self.devices["reference"]
        with distributed.autocast(fdev, cfg.precision):
            sft_logprobs = self.sft(batch.tokens.to(fdev), batch.valid.to(fdev), batch.prompt_len,
                                    cfg.temperature).logprobs.float().to(self.device)  # (B, T)
        kl = kl_penalty(batch.logprobs, sft_logprobs, cfg.kl_estimator) * batch.mask  # (B, T)
        return float(kl.sum(1).mean())

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

        kl_per_response = batch.kl.sum(1)
        texts = review_texts(batch.prompts, batch.response, self.tok)
        judged = self.task.metrics(texts)
        metrics = {
            # the reward model's score; a task without one is judged by its verifiers alone
            **({"rm_score": float(batch.rm_scores.mean())} if batch.rm_scores is not None
               else {}),
            "gold_score": judged.pop("gold_score"),
            "kl": float(kl_per_response.mean()),
            # the KL's part of the reward; with the KL in the loss, stats give kl_loss instead
            **({"non_score_reward": float((-batch.beta * batch.kl).sum(1).mean())}
               if self.config.kl_in == "reward" else {}),
            "response_len": float(batch.mask.sum(1).mean()),
            "finished": float((batch.response == self.tok.eos_id).any(1).float().mean()),
            **judged,
            # the std of one value is undefined: NaN here, null in metrics.jsonl, with the reason
            "advantage_std": (float(batch.advantages[batch.mask.bool()].std())
                              if batch.mask.sum() > 1 else math.nan),
            **self._advantage_scale(batch),
            **stats,
            **({"kl_sft": self._kl_to_sft(batch)} if self.sft is not None else {}),
        }
        if self.world > 1:  # equal shares per rank: the mean of rank means is the global mean
            keys = list(metrics)
            vec = distributed.all_reduce_sum(torch.tensor([metrics[k] for k in keys],
                                                          dtype=torch.float64, device=self.device))
            metrics = {k: float(v) / self.world for k, v in zip(keys, vec.tolist())}
        self.kl_ctl.update(metrics["kl"], self.config.batch_size)
        self.step_count += 1
        k = self.config.ref_reset_every
        if k and self.step_count % k == 0:  # the anchor moves to where the actor now is
            with torch.no_grad():
                self.models.reference.load_state_dict(self.models.actor.state_dict())
        metrics = {"step": self.step_count, "beta": batch.beta, **metrics,
                   **{f"time_{k}": v for k, v in times.items() if k != "1_prompts"},
                   "sample": texts[0]}
        metrics["time_step"] = sum(v for k, v in metrics.items() if k.startswith("time_"))
        metrics = defined_metrics(metrics)
        self.history.append(metrics)
        if self.run_dir is not None and self.rank == 0:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(metrics_line(metrics))
        return metrics

    def _advantage_scale(self, batch: Rollout) -> dict[str, float]:
        """How large the step's advantages are: ``adv_abs_mean``, the mean over responses of
        each response's mean |advantage| over its tokens; with groups (group_size G > 1) also
        ``group_std``, the mean over groups of the std of the G scores ``(B / G, G)`` that
        GRPO divides by."""
        m = batch.mask  # (B, T)
        per_response = (batch.advantages.abs() * m).sum(1) / m.sum(1).clamp(min=1)  # (B,)
        out = {"adv_abs_mean": float(per_response.mean())}
        G = self.config.group_size
        if G > 1:
            out["group_std"] = float(batch.scores.view(-1, G).std(dim=1).mean())
        return out

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
                    bar.set_postfix(**({"rm": f"{metrics['rm_score']:+.2f}"}
                                       if "rm_score" in metrics else {}),
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
        return review_texts(prompts, out.response, self.tok)


def trace_step(batch_size: int = 4, response_len: int = 100, critic_mode: str = "auto",
               seed: int = 0, estimator: str = "gae", group_size: int = 1) -> _Trace:
    """Run one step on randomly initialised toy models sized for ``response_len`` and record
    every tensor's shape and dtype per phase, and the forward/backward passes of each model.

    ``estimator`` and ``group_size`` are PPOConfig's ``advantage_estimator`` and ``group_size``
    (``critic_mode`` "auto": the estimator's); ``trace.resident`` lists the models held."""
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
           "METHOD_DEFAULTS", "GROUP_ESTIMATORS", "critic_mode_for", "preflight"]
