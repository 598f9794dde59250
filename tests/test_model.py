import pytest
import torch

from rlhf_edu.model import GPT, GPTConfig, left_pad, token_logprobs


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=40, vocab_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


def _prompts():
    ids = torch.tensor([[0, 0, 1, 5, 6], [1, 7, 8, 9, 10], [0, 1, 4, 4, 4], [0, 0, 0, 1, 3]])
    return ids, ids != 0


def test_param_count_matches_formula(gpt):
    c = gpt.config
    C, V, L = c.n_embd, c.vocab_size, c.n_layer
    assert gpt.num_params() == V * C + c.block_size * C + L * (12 * C * C + 13 * C) + 2 * C


def test_cached_generation_equals_recomputation(gpt):
    ids, valid = _prompts()
    kw = dict(max_new_tokens=30, eos_id=2, pad_id=0)
    cached = gpt.generate(ids, valid, generator=torch.Generator().manual_seed(3), **kw)
    full = gpt.generate(ids, valid, generator=torch.Generator().manual_seed(3), use_cache=False,
                        **kw)
    assert torch.equal(cached.tokens, full.tokens)
    assert torch.equal(cached.mask, full.mask)
    torch.testing.assert_close(cached.logprobs, full.logprobs, atol=1e-5, rtol=0)


def test_generation_logprobs_match_a_forward_pass(gpt):
    ids, valid = _prompts()
    out = gpt.generate(ids, valid, 25, eos_id=2, generator=torch.Generator().manual_seed(0))
    logits = gpt(out.tokens, out.valid)[:, out.prompt_len - 1:-1]
    lp = token_logprobs(logits, out.response) * out.mask
    torch.testing.assert_close(lp, out.logprobs, atol=1e-5, rtol=0)
    assert (out.logprobs <= 0).all()


def test_padding_does_not_change_real_tokens(gpt):
    ids, valid = _prompts()
    alone = gpt(ids[:1, 2:])  # the first row without its two pads
    padded = gpt(ids[:1], valid[:1])[:, 2:]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


def test_eos_stops_rows_and_pads_after(gpt):
    ids, valid = _prompts()
    out = gpt.generate(ids, valid, 30, eos_id=2, generator=torch.Generator().manual_seed(1),
                       temperature=2.0)
    for row, m in zip(out.response, out.mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # the mask is a prefix
        assert (row[n:] == 0).all()
        eos = (row == 2).nonzero()
        if len(eos):
            assert int(eos[0]) == n - 1  # the mask includes <eos> and nothing after it
    assert out.logprobs[out.mask == 0].abs().sum() == 0


def test_right_padded_prompts_give_the_same_samples(gpt):
    ids, valid = _prompts()
    right = torch.zeros_like(ids)
    right_valid = torch.zeros_like(valid)
    for b in range(ids.size(0)):
        n = int(valid[b].sum())
        right[b, :n] = ids[b, valid[b]]
        right_valid[b, :n] = True
    assert torch.equal(left_pad(right, right_valid)[0], ids)
    a = gpt.generate(ids, valid, 10, generator=torch.Generator().manual_seed(5))
    b = gpt.generate(right, right_valid, 10, padding_side="right",
                     generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.tokens, b.tokens)


def test_top_k_samples_only_top_tokens(gpt):
    ids, valid = _prompts()
    out = gpt.generate(ids, valid, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    greedy = gpt(ids, valid)[:, -1].argmax(-1)
    assert torch.equal(out.response[:, 0], greedy)


def test_same_seed_same_samples(gpt):
    ids, valid = _prompts()
    a = gpt.generate(ids, valid, 20, generator=torch.Generator().manual_seed(9))
    b = gpt.generate(ids, valid, 20, generator=torch.Generator().manual_seed(9))
    c = gpt.generate(ids, valid, 20, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_embd=30, n_head=4), r"n_embd \(30\) must be divisible by n_head \(4\)"),
    (dict(n_layer=0), "n_layer must be a positive int, got 0"),
    (dict(dropout=1.5), "dropout must be in"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_bad_generate_inputs(gpt):
    ids, valid = _prompts()
    with pytest.raises(ValueError, match="exceeds the model's context block_size=40"):
        gpt.generate(ids, valid, 36)
    with pytest.raises(ValueError, match="prompt row 1 is all padding"):
        gpt.generate(ids, torch.stack([valid[0], torch.zeros(5, dtype=torch.bool)]).repeat(2, 1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        gpt.generate(ids, valid, 5, temperature=0.0)
    with pytest.raises(ValueError, match="longer than the model's context"):
        gpt(torch.zeros(1, 41, dtype=torch.long))
