"""Device and precision discipline, checked on CPU so that CI guards the GPU paths.

* every tensor the RLHF step creates names its device, so a CUDA run never builds a stray CPU
  tensor (found by auditing torch's factory functions during a step);
* ``precision="bf16"`` runs the GPU's mixed-precision code path on CPU: bf16 frozen models, fp32
  master weights, a bf16 KV cache under autocast, and numbers close to fp32;
* bad device requests fail before any work starts.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import rlhf_edu
from rlhf_edu import distributed
from rlhf_edu.models import build_models
from rlhf_edu.sampling import rejection_sampling
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor,
             torch.as_tensor, torch.rand, torch.randn, torch.randint, torch.randperm,
             torch.linspace, torch.eye}
PACKAGE = str(Path(rlhf_edu.__file__).parent)
# text in, CPU tensors out: the tokenizer and the prompt sampler work on the host by design
# (the trainer moves their output to the device in one explicit copy)
HOST_SIDE = {"task.py"}


class CallRecorder(TorchFunctionMode):
    """Records the calls of ``funcs`` made directly from package code (``files``: only from
    files whose path ends so) for which ``keep(func, args, kwargs)`` holds, as ``(where, func
    name, args)``; ``where`` is ``file:line``."""

    def __init__(self, funcs, keep=lambda func, args, kwargs: True, files=""):
        super().__init__()
        self.funcs, self.keep, self.files = funcs, keep, files
        self.calls: list[tuple[str, str, tuple]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.funcs:
            caller = sys._getframe(1)
            where = caller.f_code.co_filename
            if (where.startswith(PACKAGE) and where.endswith(self.files)
                    and self.keep(func, args, kwargs)):
                self.calls.append((f"{Path(where).name}:{caller.f_lineno}", func.__name__, args))
        return func(*args, **kwargs)


def FactoryAudit() -> CallRecorder:
    """Tensor factories called from package code without naming a device."""
    return CallRecorder(FACTORIES, keep=lambda func, args, kwargs: "device" not in kwargs)


def implicit(audit: CallRecorder) -> list[str]:
    """The audit's findings outside the host-side files."""
    return [f"{where} {name}" for where, name, _ in audit.calls
            if where.split(":")[0] not in HOST_SIDE]


def test_the_audit_catches_a_factory_without_device():
    code = compile("torch.zeros(3)\ntorch.ones(2, device='cpu')", str(Path(PACKAGE) / "x.py"),
                   "exec")
    with FactoryAudit() as audit:
        exec(code, {"torch": torch})
    assert implicit(audit) == ["x.py:1 zeros"]


@pytest.mark.parametrize("critic_mode", ["separate", "head"])
def test_every_tensor_of_a_step_names_its_device(critic_mode):
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1,
                                    critic_mode=critic_mode))
    with FactoryAudit() as audit:
        trainer.step()
        trainer.sample(["the food"])
    assert implicit(audit) == []


@pytest.mark.parametrize("settings", [
    dict(advantage_estimator="grpo", group_size=4, reward="gold"),
    dict(advantage_estimator="rloo", group_size=2, recompute_logprobs=True),
    dict(advantage_estimator="reinforce_pp"),
], ids=["grpo-gold", "rloo-recompute", "reinforce_pp"])
def test_every_tensor_of_a_critic_free_step_names_its_device(settings):
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1, **settings))
    with FactoryAudit() as audit:
        trainer.step()
    assert implicit(audit) == []


def test_dpo_names_its_devices():
    from rlhf_edu.dpo import make_dpo_pairs, train_dpo
    from rlhf_edu.models import load_pretrained

    sft = load_pretrained("sft")
    pairs = make_dpo_pairs(sft, 8, seed=0)
    with FactoryAudit() as audit:
        train_dpo(sft, pairs, batch_size=4, epochs=1)
    assert implicit(audit) == []


def test_rejection_sampling_names_its_devices():
    models = build_models()
    with FactoryAudit() as audit:
        rejection_sampling(models, steps=1, prompts_per_step=2, n=2, response_len=6)
        # and the variant with PPO's minibatches (a shuffled order each epoch)
        rejection_sampling(models, steps=1, prompts_per_step=2, n=2, response_len=6, epochs=2,
                           minibatches=2)
    assert implicit(audit) == []


# ---------------------------------------------------------------- precision

def test_auto_precision_on_cpu_is_fp32_bit_for_bit():
    cfg = dict(batch_size=8, response_len=8, ppo_epochs=1, seed=2)
    a = RLHFTrainer(PPOConfig(**cfg)).step()
    b = RLHFTrainer(PPOConfig(**cfg, precision="fp32")).step()
    drop = [k for k in a if k.startswith("time_")]
    assert {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop}


def test_bf16_precision_runs_the_mixed_precision_path_on_cpu():
    cfg = dict(batch_size=8, response_len=10, ppo_epochs=1, seed=4)
    mixed = RLHFTrainer(PPOConfig(**cfg, precision="bf16"))
    full = RLHFTrainer(PPOConfig(**cfg))
    m = mixed.models
    assert {p.dtype for p in m.reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in m.reward.parameters()} == {torch.bfloat16}
    assert m.reward.mean.dtype == m.reward.std.dtype == torch.float32  # statistics stay fp32
    for module in (m.actor, m.critic):  # fp32 master weights for what trains
        assert {p.dtype for p in module.parameters()} == {torch.float32}

    batch = mixed.rollout()
    for name in ("logprobs", "ref_logprobs", "scores", "values", "advantages", "returns"):
        t = getattr(batch, name)
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), name
    # the same tokens scored in fp32: bf16 moves numbers by rounding, not by meaning
    with torch.no_grad():
        ref32 = full.models.reference(batch.tokens, batch.valid, batch.prompt_len).logprobs
        score32 = full.models.reward(batch.tokens, batch.valid)
        logp32 = full.models.actor(batch.tokens, batch.valid, batch.prompt_len).logprobs
    assert ((batch.ref_logprobs - ref32) * batch.mask).abs().max() < 0.1
    assert ((batch.logprobs - logp32) * batch.mask).abs().max() < 0.1
    unfinished = ~(batch.response == mixed.tok.eos_id).any(1)
    score32 = score32 - mixed.config.missing_eos_penalty * unfinished.float()
    assert (batch.scores - score32).abs().max() < 0.05
    assert (batch.ref_logprobs != ref32).any()  # it did run in bf16

    before = [p.detach().clone() for p in m.actor.parameters()]
    stats = mixed.update(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    after = list(m.actor.parameters())
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(p, q) for p, q in zip(before, after))


def test_kv_cache_takes_the_autocast_dtype():
    from rlhf_edu.model import GPT, GPTConfig, KVCache

    gpt = GPT(GPTConfig())
    ids = torch.ones(2, 3, dtype=torch.long)
    for enabled, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        cache = KVCache(gpt.config, 2, 8, "cpu")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            gpt.body(ids, cache=cache)
        assert cache.k.dtype == cache.v.dtype == dtype


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; expected one of auto"):
        PPOConfig(precision="fp16")


# ---------------------------------------------------------------- devices and launching

def test_cuda_names_are_normalised_or_refused():
    if torch.cuda.is_available():
        assert distributed.select_device("cuda") == torch.device("cuda", 0)
        assert distributed.select_device("auto").index is not None
    else:
        with pytest.raises(ValueError, match="'cuda' requested but CUDA is not available"):
            distributed.select_device("cuda")


@pytest.mark.parametrize("device", ["mps", "meta", "xpu:0"])
def test_other_device_types_are_refused(device):
    with pytest.raises(ValueError, match=f"device '{device}' is not supported: use cpu, cuda"):
        distributed.select_device(device)


def test_nproc_checks():
    distributed.check_nproc(4, "cpu")  # gloo ranks share the CPU
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match=f"--nproc must be a positive integer, got {bad!r}"):
            distributed.check_nproc(bad, "cpu")
    with pytest.raises(ValueError, match="--nproc 1000 on CPU: at most"):
        distributed.check_nproc(1000, "cpu")
    n = torch.cuda.device_count()
    if n:
        with pytest.raises(ValueError, match=f"only {n} CUDA device"):
            distributed.check_nproc(n + 1, "cuda")


# two ranks asking for GPUs: none here, one here, or one named GPU for both
_GPU_REQUEST = ((["--device", "cuda"], "CUDA is not available") if not torch.cuda.is_available()
                else (["--device", "cuda"], "only 1 CUDA device") if torch.cuda.device_count() == 1
                else (["--device", "cuda:0"], "names one GPU"))


@pytest.mark.parametrize("args, message", [
    (["--batch", "7", "--minibatches", "1"],
     "batch_size 7 must split into 2 ranks x 1 minibatches"),
    (["--placement", '{"policy": "cpu"}'], "unknown role(s) ['policy']"),
    (["--placement", '{"reward": "cuda:9"}'], "cuda:9"),
    _GPU_REQUEST,
    (["--precision", "bf16", "--batch", "6", "--minibatches", "2"],
     "batch_size 6 must split into 2 ranks x 2 minibatches"),
])
def test_bad_launches_fail_before_torchrun_starts(tmp_path, capsys, monkeypatch, args, message):
    from rlhf_edu.cli import main

    def no_process(cmd, *rest, **kwargs):
        raise AssertionError(f"started {cmd}")

    monkeypatch.setattr(subprocess, "Popen", no_process)  # torchrun, or any other process
    assert main(["train", "--nproc", "2", *args, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    # one line from this process: torchrun, had it started, would report each rank's failure
    assert len(lines) == 1 and lines[0].startswith("rlhf-edu train: error:"), err
    assert message in lines[0]
    assert not (tmp_path / "r").exists()


def test_only_ids_masks_scores_and_logprobs_cross_to_the_frozen_models():
    # the table of notebook 2 ("What crosses GPUs in a split placement"), observed
    from rlhf_edu.trainer import _Trace

    B, T = 4, 6
    trainer = RLHFTrainer(PPOConfig(batch_size=B, response_len=T, stop_at_eos=False,
                                    ppo_epochs=1, minibatches=1,
                                    placement={"reward": "cpu", "reference": "cpu"}))
    trainer.trace = _Trace()
    moves = []  # (phase, shape, dtype) of every Tensor.to the trainer calls

    def keep(func, args, kwargs):
        moves.append((trainer.trace.phase, tuple(args[0].shape), str(args[0].dtype)[6:]))
        return True

    with CallRecorder({torch.Tensor.to}, keep, files="trainer.py"):
        batch = trainer.rollout(lambda name: setattr(trainer.trace, "phase", name))
    L = batch.tokens.size(1)
    crossing = [m for m in moves if m[0] in ("3_score", "4_reference_kl")]
    assert crossing == [
        ("3_score", (B, L), "int64"), ("3_score", (B, L), "bool"),  # ids, mask to the RM
        ("3_score", (B,), "float32"),  # scores back
        ("4_reference_kl", (B, L), "int64"), ("4_reference_kl", (B, L), "bool"),
        ("4_reference_kl", (B, T), "float32"),  # reference log-probs back
    ]
    # from the host: only the tokenised prompts
    assert [m[0] for m in moves if m[0] not in ("3_score", "4_reference_kl")] == [
        "1_prompts", "1_prompts"]


# calls that copy a tensor's value to the host: on a GPU each waits for every queued kernel
HOST_SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.__bool__,
              torch.Tensor.__float__, torch.Tensor.__int__}


def test_the_ppo_loop_reads_nothing_back_but_its_checks():
    epochs, minibatches = 3, 2
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=6, ppo_epochs=epochs,
                                    minibatches=minibatches))
    batch = trainer.rollout()
    with CallRecorder(HOST_SYNCS) as syncs:
        stats = trainer.update(batch)
    # once: "is the rollout finite, with a token in every row?"; per minibatch: "is the loss
    # finite?"; then the statistics of the whole update come back in one copy
    assert len(syncs.calls) == 1 + epochs * minibatches + 1, syncs.calls
    assert set(stats) >= {"policy_loss", "value_loss", "clipfrac", "approx_kl"}
