"""Hardening, round two: the library API refuses bad input in one line, naming the offending
value and what was expected; padding never changes a result or a gradient; generation refuses
prompts that are not padded on the side it samples from; ``rlhf-edu memory`` checks its numbers.

Every bad-input case matches both halves of its message: the value and the expectation.
"""

import copy
import math
import time

import pytest
import torch

from rlhf_edu import (
    GPT,
    AdaptiveKLController,
    FixedKLController,
    GPTConfig,
    ModelSpec,
    Tokenizer,
    build_models,
    compute_rewards,
    gae,
    gold_score,
    kl_penalty,
    load_pretrained,
    memory_breakdown,
    plan,
    ppo_losses,
    total_loss,
    whiten,
)
from rlhf_edu.advantages import (
    grpo_advantages,
    masked_mean,
    masked_var,
    reinforce_pp_advantages,
    rloo_advantages,
    token_advantages,
)
from rlhf_edu.checkpoint import check_model_checkpoint, model_checkpoint, safe_load
from rlhf_edu.cli import main
from rlhf_edu.config import DPOConfig, PPOConfig, PretrainConfig, RewardModelConfig
from rlhf_edu.dpo import dpo_loss, sequence_logprobs
from rlhf_edu.memory import parse_model
from rlhf_edu.model import left_pad
from rlhf_edu.models import Actor, Critic, RewardModel
from rlhf_edu.pretrain import encode_texts, lm_loss, pad_right, pretrain, sample_texts
from rlhf_edu.reward_model import (
    bradley_terry_loss,
    make_preference_pairs,
    normalise,
    reliability_bins,
    train_reward_model,
)
from rlhf_edu.sampling import best_of_n, rejection_sampling
from rlhf_edu.task import sample_corpus, sample_prompts
from rlhf_edu.validate import check_choice, check_float, check_int, check_seed, derived_seed

TINY = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16)
Z = torch.zeros(2, 4)
ONES = torch.ones(2, 4)
PROMPT = torch.tensor([[0, 1, 5], [1, 7, 8]])  # left-padded: row 0 starts with one <pad>
VALID = PROMPT != 0
SEVEN = ModelSpec.preset("llama-7b")


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY)


def _gen(**kwargs):
    args = dict(prompt=PROMPT, prompt_valid=VALID, max_new_tokens=4)
    args.update(kwargs)
    return _gpt().generate(**args)


def _with(t: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


def _ppo(**overrides):
    args = dict(logprobs=Z, old_logprobs=Z, advantages=Z, values=Z, old_values=Z, returns=Z,
                mask=ONES)
    args.update(overrides)
    return ppo_losses(**args)


def _ckpt(**changes) -> dict:
    ckpt = model_checkpoint("sft", TINY, {})
    ckpt.update(changes)
    return ckpt


def _config(**changes) -> dict:
    return {**_ckpt()["config"], **changes}


def _no_config() -> dict:
    ckpt = _ckpt()
    del ckpt["state_dict"]
    return ckpt


CASES = [
    # -- generate: numbers, ids, shapes (class 10)
    ("top_k 0", lambda: _gen(top_k=0), r"top_k must be a positive int or None, got 0$"),
    ("top_k bool", lambda: _gen(top_k=True),
     r"top_k must be a positive int or None, got True \(bool\)"),
    ("max_new_tokens 0", lambda: _gen(max_new_tokens=0),
     r"max_new_tokens must be a positive int, got 0$"),
    ("max_new_tokens float", lambda: _gen(max_new_tokens=2.0),
     r"max_new_tokens must be a positive int, got 2.0 \(float\)"),
    ("NaN temperature", lambda: _gen(temperature=float("nan")),
     r"temperature must be finite, got nan"),
    ("string temperature", lambda: _gen(temperature="1"),
     r"temperature must be a number > 0, got '1' \(str\)"),
    ("id past the vocabulary", lambda: _gen(prompt=_with(PROMPT, (1, 2), 64)),
     r"prompt contains id 64 at index \(1, 2\); expected ids in \[0, 64\)"),
    ("negative id", lambda: _gen(prompt=_with(PROMPT, (0, 2), -1)),
     r"prompt contains id -1 at index \(0, 2\); expected ids in \[0, 64\)"),
    ("1-D prompt", lambda: _gen(prompt=torch.tensor([1, 5, 6]), prompt_valid=None),
     r"prompt must have shape \(B, T\), got \(3,\)"),
    ("float prompt", lambda: _gen(prompt=PROMPT.float()),
     r"prompt must be a tensor of integer token ids, got torch.float32"),
    ("pad_id past the vocabulary", lambda: _gen(pad_id=64),
     r"pad_id must be an int in \[0, 63\], got 64"),
    ("negative eos_id", lambda: _gen(eos_id=-1),
     r"eos_id must be an int in \[0, 63\] or None, got -1"),
    ("prompt_valid not 0/1", lambda: _gen(prompt_valid=_with(VALID.long(), (1, 1), 2)),
     r"prompt_valid must contain only 0 and 1 \(or be bool\), got 2 at index \(1, 1\)"),
    ("generator of the wrong type", lambda: _gen(generator=0),
     r"generator must be a torch.Generator or None, got int"),
    ("forward on an id past the vocabulary", lambda: _gpt()(torch.tensor([[1, 99]])),
     r"idx contains id 99 at index \(0, 1\); expected ids in \[0, 64\)"),
    ("GPTConfig bool", lambda: GPTConfig(n_layer=True),
     r"GPTConfig.n_layer must be a positive int, got True \(bool\)"),
    ("GPTConfig float for an int", lambda: GPTConfig(n_embd=128.0),
     r"GPTConfig.n_embd must be a positive int, got 128.0 \(float\)"),
    ("GPTConfig string dropout", lambda: GPTConfig(dropout="0.1"),
     r"GPTConfig.dropout must be a number in \[0, 1\), got '0.1' \(str\)"),
    ("left_pad of a left-padded batch", lambda: left_pad(PROMPT, VALID),
     r"valid row 0 is not right-padded: position 1 is a real token after padding"),
    ("prompt_len 0", lambda: Actor(_gpt())(PROMPT, VALID, 0),
     r"prompt_len must be an int in \[1, 2\], got 0"),
    ("reward model row without a token", lambda: RewardModel(_gpt()).raw(
        PROMPT, torch.tensor([[0, 1, 1], [0, 0, 0]]).bool()),
     r"valid row 1 has no real token; expected at least one per row"),
    # -- the tokenizer and the task
    ("encode_batch of nothing", lambda: Tokenizer().encode_batch([]),
     r"texts is empty; expected at least one text"),
    ("encode_batch of a string", lambda: Tokenizer().encode_batch("the food"),
     r"texts must be a list of strings, got str 'the food'"),
    ("encode_batch of a number", lambda: Tokenizer().encode_batch(["the food", 3]),
     r"texts\[1\] must be a str, got int 3"),
    ("decode of a negative id", lambda: Tokenizer().decode([5, -3]),
     r"ids\[1\] must be an int >= 0, got -3"),
    ("gold_score of None", lambda: gold_score(None), r"text must be a str, got NoneType None"),
    ("negative corpus size", lambda: sample_corpus(-1),
     r"n must be an int in \[0, 10\*\*8\], got -1"),
    ("negative seed", lambda: sample_corpus(3, seed=-1),
     r"seed must be an int in \[0, 2\*\*63\), got -1$"),
    ("huge seed", lambda: sample_corpus(3, seed=2**63),
     r"seed must be an int in \[0, 2\*\*63\), got 9223372036854775808"),
    ("float prompt count", lambda: sample_prompts(2.0),
     r"n must be an int in \[0, 10\*\*8\], got 2.0 \(float\)"),
    ("vocabulary without specials", lambda: Tokenizer(("a", "b")),
     r"vocab must contain <pad>, <bos> and <eos>; missing \['<pad>', '<bos>', '<eos>'\]"),
    # -- rewards, advantages, PPO: numbers and tensors (classes 9 and 10)
    ("beta bool", lambda: compute_rewards(torch.zeros(2), Z, Z, ONES, True),
     r"beta must be a number in \[0, 10000\], got True \(bool\)"),
    ("beta inf", lambda: compute_rewards(torch.zeros(2), Z, Z, ONES, float("inf")),
     r"beta must be in \[0, 10000\], got inf"),
    ("NaN log-prob on a response token", lambda: compute_rewards(
        torch.zeros(2), _with(Z, (0, 1), float("nan")), Z, ONES, 0.1),
     r"logprobs contains NaN or inf at index \(0, 1\) \(nan\); expected finite values where "
     r"mask is 1"),
    ("kl_penalty mask not 0/1", lambda: kl_penalty(Z, Z, mask=ONES * 0.5),
     r"mask must contain only 0 and 1, got 0.5 at index \(0, 0\)"),
    ("kl_penalty mask shape", lambda: kl_penalty(Z, Z, mask=torch.ones(2, 5)),
     r"mask has shape \(2, 5\) but logprobs has shape \(2, 4\); they must match"),
    ("gamma string", lambda: gae(Z, Z, ONES, gamma="1"),
     r"gamma must be a number in \[0, 1\], got '1' \(str\)"),
    ("lam inf", lambda: gae(Z, Z, ONES, lam=float("inf")), r"lam must be in \[0, 1\], got inf"),
    ("NaN reward on a response token", lambda: gae(_with(Z, (1, 2), float("nan")), Z, ONES),
     r"rewards contains NaN or inf at index \(1, 2\) \(nan\); expected finite values where "
     r"mask is 1"),
    ("integer rewards", lambda: gae(Z.long(), Z, ONES),
     r"rewards must be a floating-point tensor, got torch.int64"),
    ("whiten NaN on a response token", lambda: whiten(_with(Z, (0, 3), float("-inf")), ONES),
     r"x contains NaN or inf at index \(0, 3\) \(-inf\); expected finite values"),
    ("whiten NaN eps", lambda: whiten(Z, ONES, eps=float("nan")),
     r"eps must be in \[1e-12, 1\], got nan"),
    ("whiten shift_mean string", lambda: whiten(Z, ONES, shift_mean="no"),
     r"shift_mean must be True or False, got 'no' \(str\)"),
    ("masked_mean dim", lambda: masked_mean(Z, ONES, dim=2),
     r"dim must be an int in \[-2, 1\], got 2"),
    ("masked_var inf", lambda: masked_var(_with(Z, (1, 1), float("inf")), ONES),
     r"x contains NaN or inf at index \(1, 1\) \(inf\)"),
    ("PPO NaN old log-prob on a response token",
     lambda: _ppo(old_logprobs=_with(Z, (0, 0), float("nan"))),
     r"old_logprobs contains NaN or inf at index \(0, 0\) \(nan\); expected finite values"),
    ("PPO mask shape", lambda: _ppo(mask=torch.ones(2, 5)),
     r"mask has shape \(2, 5\) but logprobs has shape \(2, 4\); they must match"),
    ("PPO integer log-probs", lambda: _ppo(logprobs=Z.long()),
     r"logprobs must be a floating-point tensor, got torch.int64"),
    ("PPO NaN clip", lambda: _ppo(clip=float("nan")), r"clip must be finite, got nan"),
    ("PPO inf vf_clip", lambda: _ppo(vf_clip=float("inf")), r"vf_clip must be finite, got inf"),
    ("PPO empty mask", lambda: _ppo(mask=Z),
     r"mask has no unmasked entries; the PPO losses are undefined"),
    ("total_loss without value_loss", lambda: total_loss({"policy_loss": torch.tensor(0.0)}),
     r"losses has no 'value_loss'; expected the dict from ppo_losses"),
    ("total_loss of integers", lambda: total_loss({"policy_loss": torch.tensor(0),
                                                   "value_loss": torch.tensor(0.0)}),
     r"losses\['policy_loss'\] must be a floating-point tensor, got torch.int64"),
    ("total_loss of a list", lambda: total_loss([0.0, 0.0]),
     r"losses must be the dict from ppo_losses, got list"),
    ("KL controller float step count", lambda: AdaptiveKLController(0.1, 6.0).update(1.0, 2.5),
     r"n_steps must be an int >= 0, got 2.5 \(float\)"),
    ("KL controller steps past the horizon", lambda: AdaptiveKLController(0.1, 6.0, 10).update(
        1.0, 64), r"n_steps must be <= horizon \(10\), so that one update moves beta by at most "
                  r"20 %, got 64"),
    ("GPTConfig too large", lambda: GPTConfig(block_size=10**30),
     r"GPTConfig.block_size must be a positive int below 2\*\*31, got 10{30}"),
    ("KL controller bool beta", lambda: FixedKLController(True),
     r"beta must be a number >= 0, got True \(bool\)"),
    ("KL controller state without value", lambda: FixedKLController(0.1).load_state_dict({}),
     r"a KL controller state must be a dict with keys value, got \{\}"),
    ("Bradley-Terry on no pairs", lambda: bradley_terry_loss(torch.zeros(0), torch.zeros(0)),
     r"r_chosen and r_rejected are empty; the mean loss needs at least one pair"),
    ("Bradley-Terry NaN", lambda: bradley_terry_loss(torch.tensor([0.0, float("nan")]),
                                                     torch.zeros(2)),
     r"r_chosen contains NaN or inf at index 1 \(nan\); expected finite values"),
    # -- models and checkpoints
    ("build_models negative seed", lambda: build_models(seed=-1),
     r"seed must be an int in \[0, 2\*\*63\), got -1"),
    ("build_models float seed", lambda: build_models(seed=1.5),
     r"seed must be an int in \[0, 2\*\*63\), got 1.5 \(float\)"),
    ("build_models sft of the wrong type", lambda: build_models(sft=RewardModel(_gpt())),
     r"sft must be a GPT \(e.g. load_pretrained\('sft'\)\) or None, got RewardModel"),
    ("critic mode None", lambda: Critic(None, Actor(_gpt())),
     r"unknown critic mode None; expected one of separate, shared, head"),
    ("GPT of a dict", lambda: GPT({"n_layer": 1}), r"config must be a GPTConfig, got dict"),
    ("critic on a GPT", lambda: Critic("head", _gpt()), r"actor must be an Actor, got GPT"),
    ("GPTConfig.from_dict unknown key", lambda: GPTConfig.from_dict(_config(n_layers=2)),
     r"config has unknown key\(s\) \['n_layers'\]; expected exactly the GPTConfig fields"),
    ("best-of-n without models", lambda: best_of_n(None, ["the food"], 2),
     r"models must be a Models \(from build_models\), got NoneType"),
    ("pairs from no model", lambda: make_preference_pairs("sft.pt", 4),
     r"sft must be a GPT, got str"),
    ("checkpoint not a dict", lambda: check_model_checkpoint([1], "sft", "x.pt"),
     r"x.pt holds a list, expected a checkpoint dict"),
    ("checkpoint key missing", lambda: check_model_checkpoint(_no_config(), "sft", "x.pt"),
     r"x.pt has no 'state_dict'; expected a checkpoint written by `rlhf-edu pretrain`"),
    ("unknown config key", lambda: check_model_checkpoint(
        _ckpt(config=_config(bias=True)), "sft", "x.pt"),
     r"x.pt's config has unknown key\(s\) \['bias'\]; expected exactly the GPTConfig fields "
     r"block_size"),
    ("config value of the wrong type", lambda: check_model_checkpoint(
        _ckpt(config=_config(n_layer="3")), "sft", "x.pt"),
     r"x.pt's config: GPTConfig.n_layer must be a positive int, got '3' \(str\)"),
    ("config not a dict", lambda: check_model_checkpoint(_ckpt(config=[16]), "sft", "x.pt"),
     r"x.pt's config must be a dict of GPTConfig fields, got list"),
    ("state_dict of the wrong type", lambda: check_model_checkpoint(
        _ckpt(state_dict={"wte.weight": [1.0]}), "sft", "x.pt"),
     r"x.pt: 'state_dict' must map parameter names to tensors"),
    ("checkpoint path of the wrong type", lambda: safe_load(3),
     r"checkpoint path must be a path \(str or os.PathLike\), got 3 \(int\)"),
    # -- pretraining, the reward model, best-of-n
    ("no preference pairs", lambda: make_preference_pairs(_gpt(), 0),
     r"n_pairs must be an int in \[1, 10\*\*8\], got 0"),
    ("negative sharpness", lambda: make_preference_pairs(_gpt(), 4, sharpness=-5.0),
     r"sharpness must be in \[0, 10000\], got -5.0"),
    ("zero reward-model epochs", lambda: train_reward_model(_gpt(), None, epochs=0),
     r"epochs must be an int in \[1, 10000\], got 0"),
    ("reward-model NaN lr", lambda: train_reward_model(_gpt(), None, lr=float("nan")),
     r"lr must be in \[1e-08, 1\], got nan"),
    ("normalise on one sample", lambda: normalise(RewardModel(_gpt()), _gpt(), n=1),
     r"n must be an int in \[2, 10\*\*8\], got 1"),
    ("zero pretraining epochs", lambda: pretrain(epochs=0),
     r"epochs must be an int in \[1, 10000\], got 0"),
    ("pretraining seed too large", lambda: pretrain(seed=2**64),
     r"seed must be an int in \[0, 2\*\*63\), got 18446744073709551616"),
    ("no samples", lambda: sample_texts(_gpt(), 0), r"n must be an int in \[1, 10\*\*8\], got 0"),
    ("eos flags that do not match", lambda: encode_texts(["the food"], Tokenizer(), [True, True]),
     r"eos has 2 entries but texts has 1; they must match"),
    ("best-of-0", lambda: best_of_n(None, ["the food"], 0),
     r"n must be an int in \[1, 10\*\*8\], got 0"),
    ("best-of-n of a string", lambda: best_of_n(None, "the food", 2),
     r"prompts must be a list of strings, got str 'the food'"),
    ("rejection sampling with 0 epochs", lambda: rejection_sampling(None, 1, epochs=0),
     r"epochs must be an int in \[1, 10000\], got 0"),
    ("rejection sampling with a huge seed", lambda: rejection_sampling(None, 1, seed=2**63),
     r"seed must be an int in \[0, 2\*\*63\), got 9223372036854775808"),
    # -- memory (class 11)
    ("GPUs as a float", lambda: memory_breakdown(SEVEN, n_gpus=2.5),
     r"n_gpus must be a positive int, got 2.5 \(float\)"),
    ("GPUs as a bool", lambda: memory_breakdown(SEVEN, n_gpus=True),
     r"n_gpus must be a positive int, got True \(bool\)"),
    ("ZeRO stage as a bool", lambda: memory_breakdown(SEVEN, zero_stage=True),
     r"zero_stage must be an int, got True \(bool\)"),
    ("NaN LoRA fraction", lambda: memory_breakdown(SEVEN, lora_fraction=float("nan")),
     r"lora_fraction must be in \(0, 1\], got nan"),
    ("spec given by name", lambda: memory_breakdown("llama-7b"),
     r"spec must be a ModelSpec \(e.g. ModelSpec.preset\('llama-7b'\)\), got str"),
    ("ModelSpec float layers", lambda: ModelSpec("m", 2.5, 64, 4, 10),
     r"n_layer must be a positive int, got 2.5 \(float\)"),
    ("NaN GPU memory", lambda: plan(SEVEN, gpu_mem_gb=float("nan")),
     r"gpu_mem_gb must be finite, got nan"),
    ("negative GPU memory", lambda: plan(SEVEN, gpu_mem_gb=-80),
     r"gpu_mem_gb must be > 0, got -80"),
    ("NaN host memory", lambda: plan(SEVEN, cpu_mem_gb=float("nan")),
     r"cpu_mem_gb must be finite, got nan"),
    ("critic modes as a string", lambda: plan(SEVEN, critic_modes="separate"),
     r"critic_modes must be a non-empty tuple of separate, shared, head, got 'separate'"),
    ("unknown workload setting", lambda: plan(SEVEN, batch_size=8),
     r"unknown workload setting\(s\) \['batch_size'\]; expected batch, micro_batch"),
    ("infinite parameter count", lambda: ModelSpec.from_n_params(float("inf")),
     r"n_params must be finite, got inf"),
    ("NaN model", lambda: parse_model("nan"),
     r"model must be one of toy, gpt2, .* or a finite parameter count >= 1 \(such as 7e9\), "
     r"got 'nan'"),
    # -- domains: extreme but legal-looking numbers are refused, naming the input (issue 24)
    ("beta 1e39 in compute_rewards", lambda: compute_rewards(torch.zeros(2), Z, Z, ONES, 1e39),
     r"^beta must be in \[0, 10000\], got 1e\+39$"),
    ("whiten eps 0", lambda: whiten(ONES, ONES, eps=0), r"^eps must be in \[1e-12, 1\], got 0$"),
    ("whiten eps 1e308", lambda: whiten(ONES, ONES, eps=1e308),
     r"^eps must be in \[1e-12, 1\], got 1e\+308$"),
    ("grpo eps 1e308", lambda: grpo_advantages(torch.tensor([0.0, 1.0]), 2, eps=1e308),
     r"^eps must be in \[0, 1\], got 1e\+308$"),
    ("IPO beta 1e-30", lambda: dpo_loss(*torch.zeros(4, 2), beta=1e-30, loss="ipo"),
     r"^beta must be in \[0.0001, 10000\], got 1e-30$"),
    ("DPO beta 1e30", lambda: dpo_loss(*torch.zeros(4, 2), beta=1e30),
     r"^beta must be in \[0.0001, 10000\], got 1e\+30$"),
    ("temperature 1e-45", lambda: PPOConfig(temperature=1e-45),
     r"^PPOConfig.temperature must be in \[0.01, 100\], got 1e-45$"),
    ("temperature 1e308", lambda: PPOConfig(temperature=1e308),
     r"^PPOConfig.temperature must be in \[0.01, 100\], got 1e\+308$"),
    ("actor_lr 1e308", lambda: PPOConfig(actor_lr=1e308),
     r"^PPOConfig.actor_lr must be in \[1e-08, 1\], got 1e\+308$"),
    ("critic_lr 1e-45", lambda: PPOConfig(critic_lr=1e-45),
     r"^PPOConfig.critic_lr must be in \[1e-08, 1\], got 1e-45$"),
    ("max_grad_norm 1e-45", lambda: PPOConfig(max_grad_norm=1e-45),
     r"^PPOConfig.max_grad_norm must be >= 0.0001, got 1e-45$"),
    ("clip 1e-45", lambda: PPOConfig(clip=1e-45),
     r"^PPOConfig.clip must be in \[1e-06, 1\], got 1e-45$"),
    ("clip 2 (refused by ppo_losses at the first update)", lambda: PPOConfig(clip=2.0),
     r"^PPOConfig.clip must be in \[1e-06, 1\], got 2.0$"),
    ("vf_clip 1e308 (refused by ppo_losses at the first update)",
     lambda: PPOConfig(vf_clip=1e308),
     r"^PPOConfig.vf_clip must be in \[0, 1e\+06\], got 1e\+308$"),
    ("batch 10**30", lambda: PPOConfig(batch_size=10**30),
     r"^PPOConfig.batch_size must be an int in \[1, 10\*\*8\], got 10{30}$"),
    ("ppo_epochs 10**30", lambda: PPOConfig(ppo_epochs=10**30),
     r"^PPOConfig.ppo_epochs must be an int in \[1, 10000\], got 10{30}$"),
    ("missing_eos_penalty 1e308", lambda: PPOConfig(missing_eos_penalty=1e308),
     r"^PPOConfig.missing_eos_penalty must be in \[0, 10000\], got 1e\+308$"),
    ("vf_coef inf", lambda: PPOConfig(vf_coef=float("inf")),
     r"^PPOConfig.vf_coef must be in \[0, 10000\], got inf$"),
    ("ent_coef 1e308", lambda: PPOConfig(ent_coef=1e308),
     r"^PPOConfig.ent_coef must be in \[0, 10000\], got 1e\+308$"),
    ("DPOConfig beta 1e30", lambda: DPOConfig(beta=1e30),
     r"^DPOConfig.beta must be in \[0.0001, 10000\], got 1e\+30$"),
    ("DPOConfig lr 1e-45", lambda: DPOConfig(lr=1e-45),
     r"^DPOConfig.lr must be in \[1e-08, 1\], got 1e-45$"),
    ("DPOConfig pairs 10**30", lambda: DPOConfig(pairs=10**30),
     r"^DPOConfig.pairs must be an int in \[1, 10\*\*8\], got 10{30}$"),
    ("DPOConfig epochs 10**30", lambda: DPOConfig(epochs=10**30),
     r"^DPOConfig.epochs must be an int in \[1, 10000\], got 10{30}$"),
    ("PretrainConfig reviews 10**30", lambda: PretrainConfig(reviews=10**30),
     r"^PretrainConfig.reviews must be an int in \[1, 10\*\*8\] or None, got 10{30}$"),
    ("PretrainConfig n_embd 10**30", lambda: PretrainConfig(n_embd=10**30),
     r"^PretrainConfig.n_embd must be an int in \[1, 8192\], got 10{30}$"),
    ("PretrainConfig n_layer 10**30", lambda: PretrainConfig(n_layer=10**30),
     r"^PretrainConfig.n_layer must be an int in \[1, 128\], got 10{30}$"),
    ("RewardModelConfig heldout 10**30", lambda: RewardModelConfig(heldout=10**30),
     r"^RewardModelConfig.heldout must be an int in \[1, 10\*\*8\], got 10{30}$"),
    ("sample_prompts 10**30", lambda: sample_prompts(10**30),
     r"^n must be an int in \[0, 10\*\*8\], got 10{30}$"),
    ("sample_corpus 10**30", lambda: sample_corpus(10**30),
     r"^n must be an int in \[0, 10\*\*8\], got 10{30}$"),
    ("pretrain lr 1e308", lambda: pretrain(lr=1e308), r"^lr must be in \[1e-08, 1\], got 1e\+308$"),
    ("sample_texts temperature 1e-45", lambda: sample_texts(_gpt(), 2, temperature=1e-45),
     r"^temperature must be in \[0.01, 100\], got 1e-45$"),
    ("sharpness 1e308", lambda: make_preference_pairs(_gpt(), 4, sharpness=1e308),
     r"^sharpness must be in \[0, 10000\], got 1e\+308$"),
    ("best-of-n penalty 1e308", lambda: best_of_n(None, ["the food"], 2,
                                                  missing_eos_penalty=1e308),
     r"^missing_eos_penalty must be in \[0, 10000\], got 1e\+308$"),
    ("rejection sampling lr 1e-45", lambda: rejection_sampling(None, 1, lr=1e-45),
     r"^lr must be in \[1e-08, 1\], got 1e-45$"),
    ("reliability bins 10**30", lambda: reliability_bins(torch.zeros(2), torch.ones(2), 10**30),
     r"^bins must be an int in \[1, 10000\], got 10{30}$"),
    ("pad_id 10**30", lambda: pad_right([[1, 2]], 10**30),
     r"^pad_id must be an int in \[0, 2147483647\], got 10{30}$"),
    # -- results that overflow from finite inputs name the input that made them overflow
    ("k3 of log-probs 200 nats apart", lambda: kl_penalty(torch.full((1, 2), -200.0),
                                                          torch.zeros(1, 2), "k3"),
     r"^the KL estimate overflowed to inf at index \(0, 0\) from finite inputs: logprobs - "
     r"ref_logprobs = -200 there, and k3 = exp\(-d\) overflows torch.float32"),
    ("rewards that overflow", lambda: compute_rewards(
        torch.tensor([3e38, 0.0]), torch.full((2, 4), 3e38), torch.zeros(2, 4), ONES, 1e4),
     r"^rewards overflowed to -inf at index \(0, 0\) from finite inputs: beta \(10000\) x "
     r"KL \(largest 3e\+38\)"),
    ("whitening values whose squares overflow", lambda: whiten(
        torch.tensor([[1e20, -1e20, 0.0, 1.0]]), torch.ones(1, 4)),
     r"^whiten: the sum of squares of x overflowed from finite inputs: x's values \(largest "
     r"\|x\| = 1e\+20\) are too large to sum in torch.float32"),
    ("GAE returns that overflow", lambda: gae(torch.full((2, 4), 3e38), Z, ONES),
     r"^the GAE returns overflowed to inf at index \(0, 0\) from finite inputs"),
    ("GRPO std that overflows", lambda: grpo_advantages(torch.tensor([3e38, -3e38]), 2),
     r"^the groups' std overflowed to inf at index \(0, 0\) from finite inputs: scores's "
     r"values \(largest \|scores\| = 3e\+38\)"),
    ("RLOO that overflows", lambda: rloo_advantages(torch.tensor([3e38, -3e38]), 2),
     r"^rloo_advantages overflowed to inf at index 0 from finite inputs"),
    ("masked_mean that overflows", lambda: masked_mean(torch.full((2, 4), 3e38), ONES),
     r"^masked_mean overflowed to inf from finite inputs"),
    ("DPO loss that overflows", lambda: dpo_loss(torch.tensor([-1e38]), torch.tensor([1e38]),
                                                 torch.zeros(1), torch.zeros(1), beta=1e4),
     r"^the DPO loss overflowed to inf from finite inputs: the log-prob margins \(largest "
     r"\|h\| = 2e\+38\) are too large for beta 10000"),
    ("Bradley-Terry loss that overflows", lambda: bradley_terry_loss(
        torch.tensor([-3e38]), torch.tensor([3e38])),
     r"^the Bradley-Terry loss overflowed to inf from finite inputs"),
    # -- devices: every tensor input on one device, named in one line (issue 24, item 5)
    ("kl_penalty on cpu and meta", lambda: kl_penalty(Z, torch.zeros(2, 4, device="meta")),
     r"^logprobs is on cpu but ref_logprobs is on meta; all tensor inputs must be on one "
     r"device"),
    ("compute_rewards scores on meta", lambda: compute_rewards(
        torch.zeros(2, device="meta"), Z, Z, ONES, 0.1),
     r"^scores is on meta but logprobs is on cpu"),
    ("gae values on meta", lambda: gae(Z, torch.zeros(2, 4, device="meta"), ONES),
     r"^rewards is on cpu but values is on meta"),
    ("whiten mask on meta", lambda: whiten(Z, torch.ones(2, 4, device="meta")),
     r"^x is on cpu but mask is on meta"),
    ("dpo_loss on cpu and meta", lambda: dpo_loss(
        torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2, device="meta")),
     r"^policy_chosen is on cpu but ref_rejected is on meta"),
    ("grpo scores on meta", lambda: grpo_advantages(torch.zeros(4, device="meta"), 2),
     r"^scores is on the meta device \(a shape without data\)"),
    ("reinforce++ mask on meta", lambda: reinforce_pp_advantages(
        Z, torch.ones(2, 4, device="meta")), r"^rewards is on cpu but mask is on meta"),
    ("token_advantages mask on meta", lambda: token_advantages(
        torch.zeros(2), torch.ones(2, 4, device="meta")),
     r"^advantages is on cpu but mask is on meta"),
    ("sequence_logprobs tokens on meta", lambda: sequence_logprobs(
        _gpt(), torch.ones(2, 5, dtype=torch.long, device="meta"), torch.ones(2, 5).bool(), 2),
     r"^model is on cpu but tokens is on meta"),
    ("lm_loss valid on meta", lambda: lm_loss(_gpt(), torch.ones(2, 5, dtype=torch.long),
                                              torch.ones(2, 5, dtype=torch.bool, device="meta")),
     r"^model is on cpu but valid is on meta"),
    ("sequence_logprobs prompt_len 10**30", lambda: sequence_logprobs(
        _gpt(), torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5).bool(), 10**30),
     r"^prompt_len must be an int in \[1, 4\], got 10{30}$"),
    # -- special tokens typed into text are refused, naming the token and its position
    ("<pad> typed into a prompt", lambda: Tokenizer().encode_batch(["the <pad> food"]),
     r"^texts\[0\] contains the special token '<pad>' at position 1 of 'the <pad> food'"),
    ("<eos> typed into a prompt", lambda: Tokenizer().encode_batch(["the food", "the <eos>"]),
     r"^texts\[1\] contains the special token '<eos>' at position 1 of 'the <eos>'"),
    ("<bos> typed into a text", lambda: Tokenizer().encode("<bos> the food"),
     r"^text contains the special token '<bos>' at position 0 of '<bos> the food'"),
    # -- the helpers themselves
    ("check_int str", lambda: check_int("batch_size", "64", minimum=1),
     r"batch_size must be a positive int, got '64' \(str\)"),
    ("check_float bool", lambda: check_float("lr", False, minimum=0, strict_min=True),
     r"lr must be a number > 0, got False \(bool\)"),
    ("check_seed bool", lambda: check_seed("seed", True),
     r"seed must be an int in \[0, 2\*\*63\), got True \(bool\)"),
]


@pytest.mark.parametrize("name, call, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_value_and_expectation(name, call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)


def test_a_directory_is_not_said_to_be_missing(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory; expected a checkpoint file"):
        load_pretrained("sft", tmp_path)
    with pytest.raises(ValueError, match=r"is a directory; expected a checkpoint file"):
        safe_load(tmp_path)


class Foreign:  # a pickled class: what a weights-only load refuses
    pass


def test_a_foreign_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"kind": "sft", "payload": Foreign()}, path)
    with pytest.raises(ValueError, match=r"is not an rlhf_edu checkpoint: it holds Python "
                                         r"objects that a safe \(weights-only\) load refuses"
                       ) as info:
        load_pretrained("sft", path)
    message = str(info.value)
    assert "Foreign" in message and "\n" not in message
    assert "weights_only=False" not in message and "trust" not in message


# ------------------------------------------------------------------ right-padded prompts (7)


def test_right_padded_prompts_are_refused_by_generate():
    right = torch.tensor([[1, 5, 0], [1, 7, 8]])  # row 0 ends in padding
    with pytest.raises(ValueError, match=r"prompt row 0 is not left-padded: position 2 is "
                                         r"padding after a real token; expected padding only "
                                         r"before the real tokens") as info:
        _gpt().generate(right, right != 0, max_new_tokens=3)
    assert "padding_side='right'" in str(info.value)
    holes = torch.tensor([[1, 0, 5]])
    with pytest.raises(ValueError, match=r"prompt row 0 is not left-padded: position 1"):
        _gpt().generate(holes, holes != 0, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt row 0 is not right-padded: position 1 is a "
                                         r"real token after padding"):
        _gpt().generate(PROMPT, VALID, max_new_tokens=3, padding_side="right")


def test_right_padded_prompts_with_padding_side_right_sample_what_left_padded_ones_do():
    right = torch.tensor([[1, 5, 0], [1, 7, 8]])
    gpt = _gpt()
    a = gpt.generate(right, right != 0, 5, padding_side="right",
                     generator=torch.Generator().manual_seed(1))
    b = gpt.generate(PROMPT, VALID, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)


# ------------------------------------------------------------------ NaN in padding (class 9)


def _padded_batch(fill: float):
    """Inputs of every masked function with ``fill`` at the padded positions."""
    g = torch.Generator().manual_seed(0)
    B, T = 4, 6
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    mask[3, 2] = 0  # a hole
    pad = mask == 0

    def t(scale=1.0, shift=0.0):
        x = torch.randn(B, T, generator=g) * scale + shift
        return x.masked_fill(pad, fill)

    return dict(mask=mask, logprobs=t(0.3, -2.0), old_logprobs=t(0.3, -2.0),
                ref_logprobs=t(0.3, -2.0), advantages=t(), values=t(), old_values=t(),
                returns=t(), rewards=t(), entropy=t().abs(), scores=torch.randn(B, generator=g),
                token_scores=t())


def _all_results(fill: float) -> list[torch.Tensor]:
    d = _padded_batch(fill)
    m = d["mask"]
    out = [kl_penalty(d["logprobs"], d["ref_logprobs"], "k3", mask=m)]
    for scores in (d["scores"], d["token_scores"]):
        out.append(compute_rewards(scores, d["logprobs"], d["ref_logprobs"], m, 0.1, "k2"))
    out += list(gae(d["rewards"], d["values"], m, 1.0, 0.95))
    out += [whiten(d["advantages"], m), masked_mean(d["values"], m), masked_var(d["values"], m)]
    logits, ref_logits = (torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(1))
                          for _ in range(2))
    pad = (m == 0)[..., None]
    out.append(compute_rewards(d["scores"], logits.masked_fill(pad, fill),
                               ref_logits.masked_fill(pad, fill), m, 0.1, "full"))
    logprobs = d["logprobs"].clone().requires_grad_()
    values = d["values"].clone().requires_grad_()
    losses = ppo_losses(logprobs, d["old_logprobs"], d["advantages"], values, d["old_values"],
                        d["returns"], m, entropy=d["entropy"])
    loss = total_loss(losses, 0.1, 0.01)
    loss.backward()
    out += [v.detach() for v in losses.values()] + [loss.detach(), logprobs.grad, values.grad]
    return out


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf"), 1e30])
def test_padding_changes_no_result_and_no_gradient(fill):
    clean, dirty = _all_results(0.0), _all_results(fill)
    for i, (a, b) in enumerate(zip(clean, dirty)):
        assert torch.isfinite(b).all(), i
        assert torch.equal(a, b), i


def test_nan_old_logprobs_in_padding_leave_every_actor_gradient_bit_identical():
    torch.manual_seed(0)
    actor = Actor(GPT(TINY))
    tokens = torch.tensor([[1, 5, 6, 7, 8, 0], [1, 9, 10, 11, 0, 0]])
    valid = tokens != 0
    P = 2
    mask = valid[:, P:].float()

    def grads(fill: float) -> list[torch.Tensor]:
        actor.zero_grad(set_to_none=True)
        out = actor(tokens, valid, P)
        old = out.logprobs.detach().masked_fill(mask == 0, fill)
        adv = torch.linspace(-1, 1, 8).view(2, 4).masked_fill(mask == 0, fill)
        losses = ppo_losses(out.logprobs, old, adv, torch.zeros(2, 4), torch.zeros(2, 4),
                            torch.zeros(2, 4), mask)
        total_loss(losses).backward()
        return [p.grad.clone() for p in actor.parameters()]

    clean, dirty = grads(0.0), grads(float("nan"))
    for a, b in zip(clean, dirty):
        assert torch.isfinite(b).all()
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bit for bit


def test_gae_keeps_the_multiplication_bits_on_finite_input():
    """Selecting with torch.where must give exactly what ``x * mask`` gave, sign of zero
    included (a printed -0. would show the difference)."""
    g = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    mask = (torch.rand(5, 7, generator=g) > 0.4).float()
    mask[:, 0] = 1
    values = values * mask  # as the trainer passes them: -0. on padding
    gamma, lam = 0.9, 0.8
    last = torch.zeros(5)
    reference = []
    for t in reversed(range(7)):  # the seed's loop, multiplying by the mask
        nxt = values[:, t + 1] * mask[:, t + 1] if t < 6 else torch.zeros(5)
        last = (rewards[:, t] + gamma * nxt - values[:, t] + gamma * lam * last) * mask[:, t]
        reference.append(last)
    adv_ref = torch.stack(reference[::-1], 1)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert torch.equal(adv.view(torch.int32), adv_ref.view(torch.int32))
    assert torch.equal(ret.view(torch.int32), ((adv_ref + values) * mask).view(torch.int32))


NONFINITE_AT_A_RESPONSE_TOKEN = [
    ("kl_penalty", lambda x: kl_penalty(Z, x), "ref_logprobs"),
    ("kl_penalty masked", lambda x: kl_penalty(x, Z, mask=ONES), "logprobs"),
    ("compute_rewards", lambda x: compute_rewards(torch.zeros(2), Z, x, ONES, 0.1),
     "ref_logprobs"),
    ("compute_rewards scores", lambda x: compute_rewards(x, Z, Z, ONES, 0.1), "scores"),
    ("gae", lambda x: gae(Z, x, ONES), "values"),
    ("whiten", lambda x: whiten(x, ONES), "x"),
    ("ppo_losses returns", lambda x: _ppo(returns=x), "returns"),
    ("ppo_losses advantages", lambda x: _ppo(advantages=x), "advantages"),
    ("ppo_losses old_values", lambda x: _ppo(old_values=x), "old_values"),
    ("masked_mean", lambda x: masked_mean(x, ONES), "x"),
    ("bradley_terry_loss", lambda x: bradley_terry_loss(torch.zeros(2), x[:, 0]), "r_rejected"),
]


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
@pytest.mark.parametrize("name, call, argument", NONFINITE_AT_A_RESPONSE_TOKEN,
                         ids=[c[0] for c in NONFINITE_AT_A_RESPONSE_TOKEN])
def test_nonfinite_at_a_response_token_is_refused_everywhere(name, call, argument, fill):
    x = torch.zeros(2, 4)
    x[0, 0] = fill
    if name == "compute_rewards scores":
        x = x[:, 0]
    with pytest.raises(ValueError, match=rf"^{argument} contains NaN or inf at index "
                                         rf"(\(0, 0\)|0) \({fill}\); expected finite values"):
        call(x)


def test_a_diverged_forward_pass_reaches_the_loss_for_the_caller_to_check():
    """ppo_losses refuses NaN in the rollout's data; NaN in the current forward pass is a
    diverged model, left in the loss for the trainer's check (which names the step)."""
    losses = _ppo(logprobs=_with(Z, (0, 0), float("nan")))
    assert losses["policy_loss"].isnan() and not losses["value_loss"].isnan()
    assert total_loss(losses).isnan()


# ------------------------------------------------------------------ memory (class 11)


def test_split_placement_search_picks_what_trying_every_split_picks():
    for name in ("toy", "llama-7b", "llama-70b"):
        spec = ModelSpec.preset(name)
        for n in (2, 3, 7, 16, 33):
            for zero in (0, 1, 2, 3):
                for critic, lora in (("separate", None), ("shared", 0.01), ("head", None)):
                    best = memory_breakdown(spec, n, zero, placement="split", critic=critic,
                                            lora_fraction=lora)
                    each = [memory_breakdown(spec, n, zero, placement="split", critic=critic,
                                             lora_fraction=lora, frozen_gpus=k)
                            for k in range(1, n)]
                    linear = min(each, key=lambda bd: bd.per_gpu_bytes)
                    assert best.to_dict() == linear.to_dict(), (name, n, zero, critic)


def test_many_gpus_split_is_fast():
    start = time.perf_counter()
    bd = memory_breakdown(SEVEN, 400_000, 3, placement="split")
    assert time.perf_counter() - start < 2.0
    assert 0 < bd.frozen_gpus < 400_000


MEMORY_CLI = [
    (["--model", "inf"], r"model must be one of toy, .* or a finite parameter count >= 1 "
                         r"\(such as 7e9\), got 'inf'"),
    (["--model", "nan"], r"got 'nan'$"),
    (["--model", "-5"], r"parameter count >= 1 \(such as 7e9\), got '-5'"),
    (["--plan", "--gpu-mem", "nan"], r"--gpu-mem must be finite, got nan"),
    (["--plan", "--gpu-mem", "-80"], r"--gpu-mem must be > 0, got -80.0"),
    (["--plan", "--cpu-mem", "nan"], r"--cpu-mem must be finite, got nan"),
    (["--gpu-mem", "0"], r"--gpu-mem must be > 0, got 0.0"),
    (["--gpus", "0"], r"n_gpus must be a positive int, got 0"),
    (["--plan", "--zero", "3"], r"--zero cannot be used with --plan, which tries every setting"),
    (["--plan", "--critic", "head", "--offload"],
     r"--offload, --critic cannot be used with --plan"),
    (["--plan", "--lora", "0"], r"lora_fraction must be in \(0, 1\], got 0.0"),
    (["--micro-batch", "0"], r"micro_batch must be a positive int, got 0"),
]


@pytest.mark.parametrize("argv, match", MEMORY_CLI, ids=[" ".join(a) for a, _ in MEMORY_CLI])
def test_memory_cli_bad_numbers_are_one_line_and_exit_2(capsys, argv, match):
    code = main(["memory", *argv])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out.out == "", out
    assert lines[0].startswith("rlhf-edu memory: error: ")
    assert __import__("re").search(match, lines[0]), lines[0]


def test_memory_cli_gpu_mem_is_used_without_plan(capsys):
    assert main(["memory", "--model", "llama-7b", "--gpus", "8", "--zero", "3",
                 "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "fits in 80 GB per GPU: yes" in out.splitlines()[-1]
    assert main(["memory", "--model", "llama-70b", "--gpu-mem", "80", "--cpu-mem", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("fits in 80 GB per GPU: no (")
    assert lines[-1] == "fits in 64 GB of host memory: yes (0.00 GB offloaded)"
    assert main(["memory", "--model", "toy"]) == 0  # without the flags: no verdict line
    assert "fits in" not in capsys.readouterr().out


def test_memory_cli_many_gpus_split_is_fast(capsys):
    start = time.perf_counter()
    assert main(["memory", "--gpus", "400000", "--placement", "split"]) == 0
    assert time.perf_counter() - start < 5.0
    assert "split" in capsys.readouterr().out


def test_validate_helpers_accept_what_they_should():
    import numpy as np

    assert check_int("n", np.int64(3), minimum=1) == 3
    assert check_float("x", np.float32(0.5), minimum=0, maximum=1) == 0.5
    assert check_float("x", torch.tensor(0.25), minimum=0) == 0.25
    assert check_float("x", 0, minimum=0) == 0.0
    assert check_seed("seed", 2**63 - 1) == 2**63 - 1
    assert check_int("top_k", None, minimum=1, none_ok=True) is None
    assert math.isclose(check_float("beta", 1e-3, minimum=0), 1e-3)
    assert copy.copy(GPTConfig()) == GPTConfig()
    assert check_choice("critic", "head", ("separate", "head")) == "head"
    with pytest.raises(ValueError, match=r"mode must be one of 1, 2, got True"):
        check_choice("mode", True, (1, 2))  # True == 1, but it is not the choice 1
    assert derived_seed(2**63 - 1, 1) == 0 and derived_seed(5, 1) == 6
    assert GPTConfig.from_dict(_config()) == TINY
