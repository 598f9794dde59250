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
    gpu = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, seed=1, device="cuda",
                                precision="fp32"))
    # prompts come from a CPU generator, so a seed means the same prompts on any device
    a, b = cpu.rollout(), gpu.rollout()
    assert a.prompts == b.prompts
    assert b.values.dtype == torch.float32 and torch.isfinite(b.values).all()


def test_rejection_sampling_runs_on_cuda():
    from rlhf_edu.models import build_models
    from rlhf_edu.sampling import rejection_sampling

    models = build_models()
    for module in models.roles().values():
        module.to("cuda")
    history = rejection_sampling(models, steps=1, prompts_per_step=4, n=2, response_len=8)
    assert torch.isfinite(torch.tensor(history[0]["kl"]))


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@two_gpus
def test_split_placement_moves_the_data_between_gpus():
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, device="cuda:0",
                                    placement={"reward": "cuda:1", "reference": "cuda:1"}))
    assert next(trainer.models.reward.parameters()).device == torch.device("cuda", 1)
    batch = trainer.rollout()
    assert batch.scores.device == batch.ref_logprobs.device == torch.device("cuda", 0)


@two_gpus
def test_two_gpus_train_with_nccl(tmp_path):
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_edu.cli", "train", "--nproc", "2", "--device", "cuda",
         "--steps", "2", "--batch", "8", "--response-len", "8", "--quiet", "--run-dir", str(run)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
