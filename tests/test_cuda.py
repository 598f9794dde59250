"""The trainer on a CUDA device; skipped (with the reason shown) where there is none."""

import pytest
import torch

from rlhf_edu.trainer import PPOConfig, RLHFTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the GPU path is checked on GPU machines")


def test_trainer_runs_on_cuda_with_bf16_frozen_models():
    torch.cuda.reset_peak_memory_stats()
    trainer = RLHFTrainer(PPOConfig(batch_size=16, response_len=12, device="cuda"))
    assert next(trainer.models.reference.parameters()).dtype == torch.bfloat16
    assert next(trainer.models.reward.parameters()).dtype == torch.bfloat16
    assert next(trainer.models.actor.parameters()).dtype == torch.float32  # fp32 master weights
    batch = trainer.rollout()
    for name in ("tokens", "mask", "logprobs", "ref_logprobs", "scores", "values",
                 "advantages", "returns"):
        assert getattr(batch, name).device.type == "cuda", name
    metrics = trainer.step()
    assert torch.isfinite(torch.tensor(metrics["rm_score"]))
    assert torch.cuda.max_memory_allocated() > 0


def test_cuda_run_draws_the_same_prompts_as_cpu():
    cpu = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, seed=1))
    gpu = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, seed=1, device="cuda", amp=False))
    # prompts come from a CPU generator, so a seed means the same prompts on any device
    a, b = cpu.rollout(), gpu.rollout()
    assert a.prompts == b.prompts
    assert b.values.dtype == torch.float32 and torch.isfinite(b.values).all()
