"""rlhf_edu: the RLHF computation flow on toy GPT models, one step at a time.

The four models (actor, critic, reward model, reference), the reward with its KL penalty, GAE,
PPO, and a trainer that runs the chapter's six phases, small enough to read in an afternoon;
beside them the critic-free estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++) on the same trainer,
DPO/IPO (``rlhf_edu.dpo``), and a second task scored by a verifier instead of a reward model
(``rlhf_edu.arith``, ``rlhf_edu.rlvr``: ``PPOConfig(task="arith")``).
"""

from .advantages import (
    METHODS,
    Method,
    gae,
    grpo_advantages,
    masked_mean,
    register_method,
    reinforce_pp_advantages,
    rloo_advantages,
    token_advantages,
    whiten,
)
from .config import DPOConfig, PretrainConfig, RewardModelConfig, preflight
from .dpo import dpo_loss, train_dpo
from .memory import ModelSpec, memory_breakdown, plan
from .model import GPT, GPTConfig
from .models import (
    Actor,
    Critic,
    Models,
    Reference,
    RewardModel,
    build_models,
    load_pretrained,
)
from .passk import pass_at_k, pass_at_k_curve
from .ppo import AdaptiveKLController, FixedKLController, ppo_losses, total_loss
from .rewards import KL_ESTIMATORS, compute_rewards, kl_penalty, register_kl_estimator
from .rlvr import evaluate_arith
from .task import Tokenizer, gold_score, text_metrics
from .tasks import TASKS, get_task
from .trainer import PPOConfig, RLHFTrainer, format_trace, trace_step

__version__ = "0.1.0"

__all__ = [
    "GPTConfig", "GPT", "Actor", "Critic", "RewardModel", "Reference", "Models", "build_models",
    "load_pretrained", "kl_penalty", "compute_rewards", "gae", "whiten", "masked_mean",
    "ppo_losses", "total_loss", "AdaptiveKLController", "FixedKLController", "RLHFTrainer",
    "PPOConfig", "trace_step", "format_trace", "Tokenizer", "gold_score", "ModelSpec",
    "memory_breakdown", "plan", "grpo_advantages", "rloo_advantages", "reinforce_pp_advantages",
    "token_advantages", "dpo_loss", "train_dpo", "DPOConfig", "PretrainConfig",
    "RewardModelConfig", "preflight", "METHODS", "Method", "register_method", "KL_ESTIMATORS",
    "register_kl_estimator", "text_metrics", "pass_at_k", "pass_at_k_curve", "TASKS", "get_task",
    "evaluate_arith",
]
