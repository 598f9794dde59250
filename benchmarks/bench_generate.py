"""Sampling speed: our KV-cache ``GPT.generate`` against recomputing the whole sequence every
step (``use_cache=False``) and against Hugging Face ``GPT2LMHeadModel.generate``.

    python benchmarks/bench_generate.py [--repeats 5] [--quick]

All three sample from the *same* network: the toy GPT shape (3 layers, 4 heads, width 128,
vocabulary 64, context 128), randomly initialised, and the Hugging Face model receives our
weights (the script checks that both give the same logits before timing anything). Every call
generates exactly ``max_new_tokens`` tokens per row after a 4-token prompt: ours with
``eos_id=None``, Hugging Face with ``min_new_tokens == max_new_tokens`` (pure sampling:
``do_sample=True, top_k=0, top_p=1``). Throughput is generated tokens (batch x length) per
second, median of interleaved repeats (at least 5, and more for cheap points until 2 s have
passed; one warm-up call of each variant at the smallest point comes first); writes
``results/generate.json``.
"""

from __future__ import annotations

import argparse

import _common
import torch

from rlhf_edu.model import GPT, GPTConfig

CONFIG = GPTConfig(n_layer=3, n_head=4, n_embd=128, vocab_size=64, block_size=128)
PROMPT_LEN = 4
BATCHES = (4, 64)
LENGTHS = (16, 64, 100)


def hf_twin(model: GPT):
    """A ``GPT2LMHeadModel`` of the same shape carrying ``model``'s weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(
        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
        n_positions=c.block_size, activation_function="gelu",  # exact GELU, as ours
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    ours = model.state_dict()
    with torch.no_grad():
        for name, p in hf.transformer.named_parameters():
            w = ours[name]
            # Hugging Face's Conv1D stores (in, out); nn.Linear stores (out, in)
            conv1d = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
            p.copy_(w.t() if conv1d else w)
    return hf


def check_same_network(model: GPT, hf) -> float:
    x = torch.randint(3, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        diff = (model(x) - hf(x).logits).abs().max().item()
    if diff > 1e-4:
        raise AssertionError(f"the Hugging Face twin's logits differ by {diff}")
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one batch size, short responses")
    args = parser.parse_args()
    info = _common.setup()
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    hf = hf_twin(model)
    diff = check_same_network(model, hf)
    gen = torch.Generator().manual_seed(0)

    prompt = torch.randint(3, CONFIG.vocab_size, (BATCHES[0], PROMPT_LEN))
    for use_cache in (True, False):  # one warm-up of each variant, at the smallest point
        model.generate(prompt, max_new_tokens=LENGTHS[0], generator=gen, use_cache=use_cache)
    with torch.no_grad():
        hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                    max_new_tokens=LENGTHS[0], min_new_tokens=LENGTHS[0], pad_token_id=0)
    rows = []
    for B in BATCHES[:1] if args.quick else BATCHES:
        for T in LENGTHS[:1] if args.quick else LENGTHS:
            prompt = torch.randint(3, CONFIG.vocab_size, (B, PROMPT_LEN), generator=gen)
            ones = torch.ones_like(prompt)

            def ours(use_cache: bool, prompt=prompt, T=T):
                out = model.generate(prompt, max_new_tokens=T, eos_id=None, generator=gen,
                                     use_cache=use_cache)
                assert out.response.shape == (prompt.size(0), T)

            def hugging_face(prompt=prompt, ones=ones, T=T):
                with torch.no_grad():
                    out = hf.generate(prompt, attention_mask=ones, do_sample=True, top_k=0,
                                      top_p=1.0, temperature=1.0, max_new_tokens=T,
                                      min_new_tokens=T, pad_token_id=0)
                assert out.shape == (prompt.size(0), PROMPT_LEN + T)

            times = _common.interleaved({
                "kv_cache": lambda: ours(True),
                "recompute": lambda: ours(False),
                "hugging_face": hugging_face,
            }, repeats=args.repeats, warmup=0, min_seconds=2.0)
            med = {k: _common.median(v) for k, v in times.items()}
            row = {"batch": B, "new_tokens": T, "seconds": times,
                   **{f"{k}_tok_s": B * T / v for k, v in med.items()}}
            row["cache_vs_recompute"] = med["recompute"] / med["kv_cache"]
            row["cache_vs_hf"] = med["hugging_face"] / med["kv_cache"]
            rows.append(row)
            print(f"  batch {B:>2}, {T:>3} new tokens: done", flush=True)

    print(f"\nGeneration throughput, tokens/s (higher is better); model {CONFIG}, "
          f"{model.num_params():,} parameters, prompt {PROMPT_LEN} tokens")
    print(_common.machine_line(info))
    print(f"transformers {transformers.__version__} (attention: "
          f"{hf.config._attn_implementation}); same weights, max |logit diff| = {diff:.1e}")
    print(_common.format_table(rows, [
        ("batch", "batch", "d"), ("new_tokens", "new tokens", "d"),
        ("kv_cache_tok_s", "ours KV cache", ",.0f"), ("recompute_tok_s", "ours recompute", ",.0f"),
        ("hugging_face_tok_s", "HF generate", ",.0f"),
        ("cache_vs_recompute", "cache/recompute", ".1f"), ("cache_vs_hf", "cache/HF", ".2f")]))
    at_100 = [r["cache_vs_recompute"] for r in rows if r["new_tokens"] == max(LENGTHS)]
    targets = {
        "kv_cache_5x_recompute_at_100": bool(at_100) and min(at_100) >= 5,
        "kv_cache_1x_hf_everywhere": min(r["cache_vs_hf"] for r in rows) >= 1,
    }
    print(f"targets: KV cache >= 5x recompute at 100 new tokens: "
          f"{'met' if targets['kv_cache_5x_recompute_at_100'] else 'NOT met'} "
          f"(min {min(at_100, default=float('nan')):.1f}x); >= 1x Hugging Face everywhere: "
          f"{'met' if targets['kv_cache_1x_hf_everywhere'] else 'NOT met'} "
          f"(min {min(r['cache_vs_hf'] for r in rows):.2f}x)")
    path = _common.write_json("generate.json", {
        "machine": info, "config": vars(CONFIG), "prompt_len": PROMPT_LEN,
        "transformers": transformers.__version__, "max_logit_diff": diff,
        "rows": rows, "targets": targets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
