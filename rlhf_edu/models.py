"""The four models of RLHF and how they are built.

=========  ========================================  =========  ====================
role       what it computes                          trained?   starts from
=========  ========================================  =========  ====================
actor      the policy: next-token log-probs           yes        the SFT model
critic     a value per response token ``(B, T)``      yes        the reward model
reward     one score per response ``(B,)``            no         trained on pairs
reference  log-probs of the initial policy            no         a copy of the actor
=========  ========================================  =========  ====================

The critic comes in three modes (``critic_mode``):

* ``"separate"``: its own GPT and a linear value head (InstructGPT; most memory, no interference);
* ``"shared"``: one backbone, two heads; the value loss trains the actor's backbone too;
* ``"head"``: a small value MLP on the actor's hidden states, detached, so only the head learns.

``critic_mode="none"`` builds no critic at all: three models, for the critic-free advantage
estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++), whose baseline is the other responses to the
same prompt (or the batch) rather than a learned value.

Response positions follow the usual convention: for response token ``t`` (column ``P + t`` of
the sequence) the logits and the value come from the hidden state at column ``P + t - 1``, the
state in which that token was chosen.
"""

from __future__ import annotations

import copy
import functools
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import check_model_checkpoint, safe_load
from .model import GPT, GPTConfig, check_temperature, entropy_from_logits, token_logprobs
from .tasks import get_task
from .validate import (
    check_instance,
    check_int,
    check_path,
    check_seed,
    check_tensor,
    shown,
)

CRITIC_MODES = ("separate", "shared", "head")
NO_CRITIC = "none"


@dataclass
class PolicyOutput:
    """Per response token: ``logprobs`` and ``entropy`` ``(B, T)``, ``logits`` ``(B, T, V)`` and
    the ``hidden`` states ``(B, T, C)`` they were read from."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    logits: torch.Tensor
    hidden: torch.Tensor


class Actor(nn.Module):
    """The policy being trained: a GPT read at the response positions."""

    def __init__(self, gpt: GPT):
        super().__init__()
        check_instance("gpt", gpt, GPT)
        self.gpt = gpt

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, prompt_len: int,
                temperature: float = 1.0) -> PolicyOutput:
        """Score the response part (columns ``prompt_len:``) of ``tokens`` ``(B, P + T)`` at
        ``temperature`` in [0.01, 100] (``model.TEMPERATURE_RANGE``)."""
        _check_prompt_len(tokens, prompt_len)
        check_temperature(temperature)
        hidden = self.gpt.body(tokens, valid)[:, prompt_len - 1:-1]  # (B, T, C)
        logits = self.gpt.head(hidden).float() / temperature  # (B, T, V)
        return PolicyOutput(token_logprobs(logits, tokens[:, prompt_len:]),
                            entropy_from_logits(logits),
                            logits, hidden)

    def generate(self, *args, **kwargs):
        return self.gpt.generate(*args, **kwargs)


def _check_prompt_len(tokens: torch.Tensor, prompt_len: int) -> None:
    """``prompt_len`` P must leave a prompt and a response: 1 <= P < L for ``(B, L)`` tokens."""
    check_tensor("tokens", tokens, ndim=2, shape="(B, P + T)")
    L = tokens.size(1)
    if L < 2:
        raise ValueError(f"tokens must hold a prompt and a response (at least 2 columns), "
                         f"got shape {tuple(tokens.shape)}")
    if type(prompt_len) is int and 1 <= prompt_len <= L - 1:
        return  # no message built: under torch.compile L stays a symbol, not a string
    check_int("prompt_len", prompt_len, minimum=1, maximum=L - 1)


class Reference(Actor):
    """A frozen copy of the initial actor: ``requires_grad=False`` and always in eval mode."""

    def __init__(self, actor: Actor):
        check_instance("actor", actor, Actor)
        super().__init__(copy.deepcopy(actor.gpt))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Reference:
        return super().train(False)


class Critic(nn.Module):
    """Values ``(B, T)`` of the states in which each response token was chosen."""

    def __init__(self, mode: str, actor: Actor, body: GPT | None = None):
        super().__init__()
        _check_critic_mode(mode)
        check_instance("actor", actor, Actor)
        check_instance("body", body, GPT, none_ok=True)
        self.mode = mode
        C = actor.gpt.config.n_embd
        if mode == "separate":
            self.body = body if body is not None else copy.deepcopy(actor.gpt)
            self.value_head = nn.Linear(C, 1)
        elif mode == "shared":
            self.value_head = nn.Linear(C, 1)  # the backbone is the actor's, not registered here
        else:
            self.value_head = nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, 1))
        for m in self.value_head.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, prompt_len: int,
                actor_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """``actor_hidden`` ``(B, T, C)`` is required in "shared" and "head" modes."""
        _check_prompt_len(tokens, prompt_len)
        if actor_hidden is not None and self.mode != "separate":
            check_tensor("actor_hidden", actor_hidden, ndim=3, shape="(B, T, C)")
            T = tokens.size(1) - prompt_len
            C = self.value_head.in_features if self.mode != "head" else \
                self.value_head[0].in_features
            if tuple(actor_hidden.shape) != (tokens.size(0), T, C):
                raise ValueError(f"actor_hidden has shape {tuple(actor_hidden.shape)}, expected "
                                 f"(B, T, C) = {(tokens.size(0), T, C)} for these tokens")
        if self.mode == "separate":
            hidden = self.body.body(tokens, valid)[:, prompt_len - 1:-1]  # (B, T, C)
        elif actor_hidden is None:
            raise ValueError(f"critic mode {self.mode!r} reads the actor's hidden states; "
                             "pass actor_hidden")
        else:  # "head" stops the value loss at the head; "shared" lets it train the backbone
            hidden = actor_hidden.detach() if self.mode == "head" else actor_hidden
        return self.value_head(hidden).squeeze(-1).float()  # (B, T)


class RewardModel(nn.Module):
    """A GPT with a scalar head read at each row's last real token: one score per sequence.

    ``mean`` and ``std`` (buffers) z-normalise the raw score over SFT samples, so that a score of
    1 means "one standard deviation better than a typical SFT review" and β has a readable scale.
    """

    def __init__(self, gpt: GPT):
        super().__init__()
        check_instance("gpt", gpt, GPT)
        self.gpt = gpt
        self.score_head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def raw(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Un-normalised scores ``(B,)`` of ``tokens`` ``(B, L)``; ``valid`` ``(B, L)`` marks
        real tokens, and each row needs one (the score is read at its last)."""
        check_tensor("tokens", tokens, ndim=2, shape="(B, L)")
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.bool)
        check_tensor("valid", valid)
        if valid.shape == tokens.shape and bool((~valid.bool()).all(-1).any()):
            row = int((~valid.bool()).all(-1).nonzero()[0])
            raise ValueError(f"valid row {row} has no real token; expected at least one per row "
                             "(the score is read at the last)")
        hidden = self.gpt.body(tokens, valid)  # (B, L, C)
        L = tokens.size(1)
        last = (valid.long() * torch.arange(1, L + 1, device=tokens.device)).argmax(1)  # (B,)
        h_last = hidden[torch.arange(tokens.size(0), device=tokens.device), last]  # (B, C)
        return self.score_head(h_last).squeeze(-1).float()

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """z-normalised scores ``(B,)``."""
        return (self.raw(tokens, valid) - self.mean) / self.std


@dataclass
class Models:
    """The models of one run; ``critic`` is None for the critic-free estimators, ``reward``
    for a task whose verifier scores the responses (arith)."""

    actor: Actor
    critic: Critic | None
    reward: RewardModel | None
    reference: Reference

    @property
    def critic_mode(self) -> str:
        """The critic's mode, or "none" without a critic."""
        return self.critic.mode if self.critic is not None else NO_CRITIC

    def roles(self) -> dict[str, nn.Module]:
        """The resident models by role (three without a critic)."""
        roles = {"actor": self.actor, "critic": self.critic, "reward": self.reward,
                 "reference": self.reference}
        return {role: m for role, m in roles.items() if m is not None}

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Trained parameters per role; in "shared" mode the backbone counts as the actor's."""
        return {role: [p for p in m.parameters() if p.requires_grad]
                for role, m in self.roles().items() if role in ("actor", "critic")}


def _check_critic_mode(mode: object, none_ok: bool = False) -> None:
    modes = CRITIC_MODES + ((NO_CRITIC,) if none_ok else ())
    if not isinstance(mode, str) or mode not in modes:
        raise ValueError(f"unknown critic mode {shown(mode)}; expected one of "
                         f"{', '.join(modes)}")


def weights_path(kind: str, task: str = "reviews") -> Path:
    """Where the shipped ``sft`` or ``reward`` checkpoint of ``task`` lives in the package."""
    name = f"{get_task(task).weights_prefix}{kind}.pt"
    return Path(str(resources.files("rlhf_edu") / "weights" / name))


def load_pretrained(kind: str = "sft", path: str | Path | None = None,
                    task: str = "reviews") -> GPT | RewardModel:
    """The shipped SFT actor (a :class:`GPT`) or reward model (a :class:`RewardModel`) of
    ``task`` (arith ships no reward model: its verifier scores).

    ``path`` loads another checkpoint written by ``rlhf-edu pretrain`` / ``rlhf-edu train-rm``.
    """
    if kind not in ("sft", "reward"):
        raise ValueError(f"kind must be 'sft' or 'reward', got {shown(kind)}")
    if kind == "reward" and not get_task(task).reward_model:
        raise ValueError(f"task {task!r} has no reward model: a verifier scores its responses")
    path = Path(check_path("path", path)) if path is not None else weights_path(kind, task)
    if not path.exists():
        make = "pretrain" if kind == "sft" else "train-rm"
        raise ValueError(f"no {kind} weights at {str(path)!r}; create them with "
                         f"`rlhf-edu {make}{' --task ' + task if task != 'reviews' else ''}`")
    ckpt = safe_load(path)
    config = check_model_checkpoint(ckpt, kind, str(path), task)
    model = GPT(config) if kind == "sft" else RewardModel(GPT(config))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path} does not match a {kind} model with config {config}: {e}") from e
    return model.eval()


def build_models(critic_mode: str = "separate", sft: GPT | None = None,
                 reward: RewardModel | None = None, critic_init: str = "reward",
                 seed: int = 0, task: str = "reviews") -> Models:
    """Actor and reference from the SFT model, the reward model, and a critic.

    ``critic_mode`` "none" builds no critic (``Models.critic`` is None): nothing of it is
    created or held in memory. ``critic_init`` ("reward" or "sft") picks the critic's backbone
    in "separate" mode; starting from the reward model, as InstructGPT did, gives values a
    head start. ``seed`` initialises the critic's new value head (the global random state is
    left as it was). ``task`` picks the shipped weights; a task without a reward model
    (arith: a verifier scores) gets ``Models.reward`` None and a critic from the SFT model.
    """
    has_rm = get_task(task).reward_model
    if not has_rm:
        if reward is not None:
            raise ValueError(f"task {task!r} has no reward model (a verifier scores), but "
                             "reward was given")
        critic_init = "sft"
    _check_critic_mode(critic_mode, none_ok=True)
    if critic_init not in ("reward", "sft"):
        raise ValueError(f"critic_init must be 'reward' or 'sft', got {shown(critic_init)}")
    check_seed("seed", seed)
    if sft is not None and not isinstance(sft, GPT):
        raise ValueError(f"sft must be a GPT (e.g. load_pretrained('sft')) or None, got "
                         f"{type(sft).__name__}")
    if reward is not None and not isinstance(reward, RewardModel):
        raise ValueError(f"reward must be a RewardModel (e.g. load_pretrained('reward')) or "
                         f"None, got {type(reward).__name__}")
    sft = copy.deepcopy(sft) if sft is not None else load_pretrained("sft", task=task)
    if has_rm:
        reward = copy.deepcopy(reward) if reward is not None else load_pretrained("reward")
    if reward is not None and sft.config.vocab_size != reward.gpt.config.vocab_size:
        raise ValueError(f"actor and reward model have mismatched vocabularies: "
                         f"{sft.config.vocab_size} vs {reward.gpt.config.vocab_size} tokens")
    actor = Actor(sft).train()
    reference = Reference(actor)
    if reward is not None:
        reward.requires_grad_(False).eval()
    if critic_mode == NO_CRITIC:
        return Models(actor, None, reward, reference)
    body = copy.deepcopy(reward.gpt).requires_grad_(True) if critic_init == "reward" else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = Critic(critic_mode, actor, body=body)
    if critic_init == "reward" and critic_mode == "separate":
        critic.value_head.load_state_dict(reward.score_head.state_dict())
    return Models(actor, critic.train(), reward, reference)


def check_compile(device: torch.device) -> None:
    """``ValueError`` (one line) unless ``torch.compile`` can generate code for ``device``
    here: TorchDynamo supports this Python, and inductor has its C++ compiler (CPU; ``CXX``
    names another) or Triton (CUDA). It refuses rather than falling back to eager: compiling
    was asked for, and a run that silently did not would mislead whoever times it. On CPU it
    then starts inductor's vector-ISA probe in the background (``_probe_cpu_isa_in_background``).
    """
    why = None
    if not torch._dynamo.is_dynamo_supported():
        why = "TorchDynamo does not support this Python version"
    elif torch.device(device).type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception:  # inductor's InvalidCxxCompiler, or a compiler that fails to run
            why = "no C++ compiler found (inductor looks for g++, or the one CXX names)"
    elif torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            why = "Triton is not installed"
    if why:
        raise ValueError(f"compile=True needs torch.compile, which cannot run here: {why}; "
                         "run without --compile")
    if torch.device(device).type == "cpu":
        _probe_cpu_isa_in_background()


@functools.cache  # once per process
def _probe_cpu_isa_in_background() -> None:
    """Start inductor's CPU vector-ISA probe now, on a thread, so that it overlaps the work
    before the first compiled call instead of adding to it.

    Each process, before its first CPU kernel is loaded (from the cache too), inductor checks
    which SIMD instruction sets it may use by building a test library per candidate and loading
    it in a child Python: ten children on an AVX-512 machine, about 1.4 s of the 3.3 s a
    warm-cache compile took before the first compiled step. The thread mostly waits on those
    children, so the main thread keeps running (building the models, the first rollout,
    TorchDynamo's tracing); the result is cached for the process, and the compiled call reads
    it. :func:`check_compile` starts it, as early as a run knows it will compile. A torch
    without this probe skips the head start.
    """
    def probe() -> None:
        try:
            from torch._inductor.cpu_vec_isa import valid_vec_isa_list
        except ImportError:
            return
        valid_vec_isa_list()

    threading.Thread(target=probe, name="inductor-isa-probe", daemon=True).start()


def compile_forward(module: nn.Module, device: torch.device) -> nn.Module:
    """Compile ``module``'s forward in place with ``torch.compile``, the width (dimension 1)
    of its tensor arguments marked dynamic; return the module.

    Each RLHF step's responses have their own width ``P + T``. A forward compiled for one
    width is recompiled for the next (guard "size mismatch at index 1"); traced with the width
    as a symbol, one compiled graph serves every step (a width that leaves a one-token
    response compiles once more: torch specialises sizes 0 and 1). The module is not wrapped: its
    parameters, ``state_dict`` and identity (for DDP and checkpoints) stay as they were.
    ``ValueError`` (:func:`check_compile`) if torch.compile cannot run on ``device``.
    """
    check_compile(device)
    compiled = torch.compile(module.forward)

    @functools.wraps(module.forward)
    def forward(*args, **kwargs):
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.dim() >= 2:
                torch._dynamo.maybe_mark_dynamic(arg, 1)
        return compiled(*args, **kwargs)

    module.forward = forward
    return module


def describe(models: Models) -> list[dict]:
    """One row per resident role (three without a critic): its own parameters, the actor
    parameters it reads, whether it trains."""
    n_actor = sum(p.numel() for p in models.actor.parameters())
    rows = []
    for role, module in models.roles().items():
        reads_actor = role == "critic" and models.critic.mode != "separate"
        rows.append({
            "role": role,
            "params": sum(p.numel() for p in module.parameters()),
            "reads_actor_backbone": n_actor if reads_actor else 0,
            "trains": any(p.requires_grad for p in module.parameters()),
        })
    return rows


__all__ = ["Actor", "Critic", "RewardModel", "Reference", "Models", "PolicyOutput",
           "build_models", "load_pretrained", "describe", "compile_forward", "check_compile",
           "CRITIC_MODES", "NO_CRITIC", "GPTConfig"]
