import copy

import pytest
import torch

from rlhf_edu.checkpoint import atomic_save, model_checkpoint
from rlhf_edu.model import GPT, GPTConfig
from rlhf_edu.models import Critic, RewardModel, build_models, describe, load_pretrained
from rlhf_edu.task import Tokenizer

SMALL = GPTConfig(block_size=40, vocab_size=64, n_layer=1, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return GPT(SMALL), RewardModel(GPT(SMALL))


def _batch():
    tok = Tokenizer()
    ids, valid = tok.encode_batch(["the food", "i loved the"])
    response = torch.tensor([[5, 8, 2, 0], [8, 2, 0, 0]])
    return torch.cat([ids, response], 1), torch.cat([valid, response != 0], 1), ids.size(1)


@pytest.mark.parametrize("mode", ["separate", "shared", "head"])
def test_roles_shapes_and_what_trains(small, mode):
    m = build_models(mode, sft=small[0], reward=small[1])
    tokens, valid, P = _batch()
    out = m.actor(tokens, valid, P)
    assert out.logprobs.shape == (2, 4) and out.entropy.shape == (2, 4)
    assert out.hidden.shape == (2, 4, 32)
    values = m.critic(tokens, valid, P, actor_hidden=out.hidden)
    assert values.shape == (2, 4)
    assert m.reward(tokens, valid).shape == (2,)
    assert not any(p.requires_grad for p in m.reference.parameters())
    assert not any(p.requires_grad for p in m.reward.parameters())
    m.reference.train()
    assert not m.reference.training  # the reference stays in eval mode
    values.sum().backward()
    backbone_grad = m.actor.gpt.wte.weight.grad
    if mode == "shared":  # the value loss reaches the actor's backbone only when shared
        assert backbone_grad is not None and backbone_grad.abs().sum() > 0
    else:
        assert backbone_grad is None


def test_reference_is_a_copy_that_does_not_follow_the_actor(small):
    m = build_models("separate", sft=small[0], reward=small[1])
    tokens, valid, P = _batch()
    torch.testing.assert_close(m.actor(tokens, valid, P).logprobs,
                               m.reference(tokens, valid, P).logprobs)
    with torch.no_grad():
        m.actor.gpt.h[0].mlp.c_fc.weight.add_(torch.randn_like(m.actor.gpt.h[0].mlp.c_fc.weight))
    assert not torch.allclose(m.actor(tokens, valid, P).logprobs,
                              m.reference(tokens, valid, P).logprobs)


def test_reward_reads_the_last_real_token(small):
    rm = small[1]
    torch.nn.init.normal_(rm.score_head.weight)
    tokens, valid, _ = _batch()
    scores = rm(tokens, valid)
    for b in range(2):
        row = tokens[b, valid[b]][None]
        torch.testing.assert_close(rm(row), scores[b:b + 1], atol=1e-5, rtol=0)


def test_describe_counts(small):
    rows = {r["role"]: r for r in describe(build_models("head", sft=small[0], reward=small[1]))}
    n = small[0].num_params()
    assert rows["actor"]["params"] == n and rows["reference"]["params"] == n
    assert rows["critic"]["params"] == 32 * 32 + 32 + 32 + 1
    assert rows["critic"]["reads_actor_backbone"] == n
    assert [rows[r]["trains"] for r in ("actor", "critic", "reward", "reference")] == [
        True, True, False, False]


def test_bad_inputs(small, tmp_path):
    with pytest.raises(ValueError, match="unknown critic mode 'tiny'"):
        build_models("tiny", sft=small[0], reward=small[1])
    other = RewardModel(GPT(GPTConfig(block_size=40, vocab_size=128, n_layer=1, n_head=2,
                                      n_embd=32)))
    with pytest.raises(ValueError, match="mismatched vocabularies: 64 vs 128"):
        build_models("separate", sft=small[0], reward=other)
    with pytest.raises(ValueError, match="reads the actor's hidden states"):
        tokens, valid, P = _batch()
        Critic("head", build_models(sft=small[0], reward=small[1]).actor)(tokens, valid, P)
    bad = tmp_path / "sft.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_pretrained("sft", bad)
    ckpt = model_checkpoint("sft", SMALL, small[0].state_dict())
    ckpt["vocab"] = ckpt["vocab"][:-1]
    atomic_save(ckpt, bad)
    with pytest.raises(ValueError, match="different vocabulary"):
        load_pretrained("sft", bad)
    ckpt = model_checkpoint("sft", SMALL, copy.deepcopy(small[0].state_dict()))
    ckpt["config"]["n_embd"] = 64
    atomic_save(ckpt, bad)
    with pytest.raises(ValueError, match="does not match a sft model"):
        load_pretrained("sft", bad)
    atomic_save(model_checkpoint("reward", SMALL, small[1].state_dict()), bad)
    with pytest.raises(ValueError, match="holds a 'reward' model, expected 'sft'"):
        load_pretrained("sft", bad)
    with pytest.raises(ValueError, match="no sft weights at"):
        load_pretrained("sft", tmp_path / "missing.pt")


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"kind": "x", "a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"kind": "x", "a": Boom()}, path)
    assert torch.load(path)["a"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
