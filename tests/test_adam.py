"""The optimiser every training loop builds: fused Adam where the build has it, else the loop."""

import copy

import pytest
import torch

from rlhf_edu import distributed
from rlhf_edu.model import GPT, GPTConfig
from rlhf_edu.trainer import PPOConfig, RLHFTrainer


def _train(model: GPT, opt: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
    """A few next-token steps on ``batches`` of ids ``(B, T)``."""
    for ids in batches:
        logits = model(ids[:, :-1])  # (B, T - 1, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_adam_matches_the_for_loop_adam(weight_decay):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=20, block_size=12))
    batches = [torch.randint(0, 20, (4, 12)) for _ in range(5)]
    fused, loop = copy.deepcopy(model), copy.deepcopy(model)
    opts = [distributed.adam(m.parameters(), 3e-3, weight_decay=weight_decay, eps=1e-5,
                             fused=f) for m, f in ((fused, None), (loop, False))]
    assert [o.param_groups[0]["fused"] for o in opts] == [True, False]
    assert isinstance(opts[0], torch.optim.AdamW if weight_decay else torch.optim.Adam)
    for m, opt in zip((fused, loop), opts):
        _train(m, opt, batches)
    moved = 0.0
    for (name, a), b, c in zip(fused.named_parameters(), loop.parameters(), model.parameters()):
        # the same update up to float rounding: far below the distance the weights moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((b - c).detach().abs().max()))
    assert moved > 1e-3


def test_without_a_fused_kernel_adam_falls_back_to_the_loop():
    odd = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))  # not a float tensor
    opt = distributed.adam([odd], 1e-3)
    assert not opt.param_groups[0]["fused"]
    odd.grad = torch.ones_like(odd)
    opt.step()  # the loop runs it
    with pytest.raises(ValueError, match="fused Adam needs floating-point parameters"):
        distributed.adam([odd], 1e-3, fused=True)


def test_the_trainer_steps_with_fused_adam():
    trainer = RLHFTrainer(PPOConfig(batch_size=4, response_len=4, minibatches=1, ppo_epochs=1))
    assert all(opt.param_groups[0]["fused"] for _, opt, _ in trainer._optimizers())
