"""A GPT small enough to train on a laptop CPU in seconds, with a KV-cache sampler.

The architecture is GPT-2's (Radford et al. 2019) as nanoGPT writes it
(github.com/karpathy/nanoGPT): pre-norm blocks of causal self-attention and an MLP,
learned positions, the output head tied to the token embedding. Two additions serve RLHF:

* :meth:`GPT.body` returns the final hidden states ``(B, T, C)``, which the value head (critic)
  and the scalar head (reward model) read;
* batches may carry padding. ``valid`` (``(B, T)``, True on real tokens) masks padded keys and
  gives each row its own positions, so a left-padded prompt produces exactly the numbers it would
  produce alone. :meth:`GPT.generate` samples with a KV cache, stops rows at ``<eos>`` and returns
  the response, its log-probabilities and its mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 48  # longest sequence (prompt + response) the model can attend over
    vocab_size: int = 64  # the task's 53 words, padded up to a multiple of 64
    n_layer: int = 3  # three layers learn the grammar's "no repeats" far better than two
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # RLHF needs deterministic log-probs; keep 0 unless pretraining longer

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    The key/value storage is allocated at the first write, in the dtype the layers produce
    (bf16 under autocast, else the weights' dtype), so attention never casts the cache.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device):
        hs = config.n_embd // config.n_head
        self.shape = (config.n_layer, batch, config.n_head, max_len, hs)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.n_valid = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens per row
        self.length = 0  # positions filled so far

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store ``k``, ``v`` ``(B, nh, T, hs)`` after the cached positions of ``layer``; return
        the keys and values of all positions so far, ``(B, nh, S, hs)`` each."""
        if self.k is None:
            self.k = torch.zeros(self.shape, device=k.device, dtype=k.dtype)
            self.v = torch.zeros(self.shape, device=v.device, dtype=v.dtype)
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, nh, S, hs), S = cached + T
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and cache is None,
            dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


@dataclass
class Generation:
    """What :meth:`GPT.generate` returns. P: prompt width, T: response width."""

    tokens: torch.Tensor  # (B, P + T) left-padded prompt followed by the response
    valid: torch.Tensor  # (B, P + T) bool, True on real tokens (prompt and response)
    prompt_len: int  # P
    response: torch.Tensor  # (B, T) sampled ids, <pad> after a row's <eos>
    logprobs: torch.Tensor  # (B, T) log pi(token) under the temperature-scaled policy, 0 on pad
    mask: torch.Tensor  # (B, T) float, 1 on response tokens up to and including <eos>


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def body(self, idx: torch.Tensor, valid: torch.Tensor | None = None,
             cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states ``(B, T, C)`` of ids ``idx`` ``(B, T)``.

        ``valid`` ``(B, T)`` marks real tokens (None: all real). Padded keys are masked and
        positions count real tokens only, so padding never changes a real token's output.
        With ``cache`` the ids continue the cached sequence.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than the model's context "
                             f"block_size={self.config.block_size}")
        if valid is None and cache is None:
            pos = torch.arange(T, device=idx.device).expand(B, T)
            attn_mask = None  # plain causal attention: the fast path
        else:
            if valid is None:
                valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
            valid = valid.bool()
            offset = cache.n_valid[:, None].clone() if cache is not None else 0
            pos = (offset + valid.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
            keys = valid
            if cache is not None:
                cache.valid[:, start:start + T] = valid
                cache.n_valid += valid.long().sum(1)
                keys = cache.valid[:, :start + T]  # (B, S)
            q_pos = torch.arange(start, start + T, device=idx.device)[:, None]  # (T, 1)
            k_pos = torch.arange(start + T, device=idx.device)[None, :]  # (1, S)
            # a key is visible if it is real and not in the future; a query always sees itself,
            # so padded queries get a defined (and ignored) output instead of NaN
            attn_mask = ((k_pos <= q_pos) & keys[:, None, :]) | (k_pos == q_pos)  # (B, T, S)
            attn_mask = attn_mask[:, None]  # (B, 1, T, S), broadcast over heads
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, attn_mask, cache, layer)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def _decode_step(self, tok: torch.Tensor, alive: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Hidden state ``(B, C)`` after one new token per row: :meth:`body` for ``T = 1``.

        Gives bit-for-bit what ``body(tok[:, None], alive[:, None], cache)[:, -1]`` gives, with
        the mask and positions updated in place instead of rebuilt each token: at generation
        speed the small ops around the matmuls cost as much as the matmuls.
        """
        start = cache.length  # generate() has checked that the sequence fits the context
        pos = cache.n_valid + alive.long() - 1  # (B,) >= 0: every prompt has a real token
        cache.n_valid += alive.long()
        # the query sees the real keys so far and itself (a finished row's pad included, so it
        # gets a defined, ignored output); later queries see this key only if it is real
        cache.valid[:, start] = True
        attn_mask = cache.valid[:, None, None, :start + 1]  # (B, 1, 1, S)
        x = self.drop(self.wte(tok[:, None]) + self.wpe(pos[:, None]))  # (B, 1, C)
        for layer, block in enumerate(self.h):
            x = block(x, attn_mask, cache, layer)
        cache.valid[:, start] = alive
        cache.length += 1
        return self.ln_f(x)[:, -1]

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, V)`` from hidden states; the output head shares the token embedding."""
        return F.linear(hidden, self.wte.weight)

    def forward(self, idx: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, T, V)`` for ids ``(B, T)``."""
        return self.head(self.body(idx, valid))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, prompt_valid: torch.Tensor | None = None,
                 max_new_tokens: int = 20, temperature: float = 1.0, top_k: int | None = None,
                 eos_id: int | None = None, pad_id: int = 0, padding_side: str = "left",
                 generator: torch.Generator | None = None, use_cache: bool = True) -> Generation:
        """Sample up to ``max_new_tokens`` after ``prompt`` ``(B, P)``.

        ``prompt_valid`` ``(B, P)`` marks real prompt tokens; ``padding_side`` says where the
        padding is ("right"-padded prompts are moved to the left first). Rows stop at ``eos_id``
        and are padded with ``pad_id`` after it. ``use_cache=False`` recomputes the whole sequence
        every step (slow; it exists to check the cache). The returned log-probs are those of the
        temperature-scaled distribution *before* top-k truncation, i.e. of the policy that a
        forward pass scores.
        """
        B, P = prompt.shape
        if prompt_valid is None:
            prompt_valid = torch.ones_like(prompt, dtype=torch.bool)
        prompt_valid = prompt_valid.bool()
        if prompt.shape != prompt_valid.shape:
            raise ValueError(f"prompt has shape {tuple(prompt.shape)} but prompt_valid has "
                             f"shape {tuple(prompt_valid.shape)}")
        if (~prompt_valid).all(1).any():
            row = int((~prompt_valid).all(1).nonzero()[0])
            raise ValueError(f"prompt row {row} is all padding")
        if P + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt width {P} + max_new_tokens {max_new_tokens} exceeds the "
                             f"model's context block_size={self.config.block_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if padding_side == "right":  # shift each row's real tokens to the end
            prompt, prompt_valid = left_pad(prompt, prompt_valid, pad_id)

        # inference mode skips autograd's bookkeeping on each of the loop's many small ops; its
        # tensors cannot enter autograd later, so the results are cloned out of it at the end
        with torch.inference_mode():
            response, logprobs, mask = self._sample(prompt, prompt_valid, max_new_tokens,
                                                    temperature, top_k, eos_id, pad_id,
                                                    generator, use_cache)
        response, logprobs, mask = response.clone(), logprobs.clone(), mask.clone()
        return Generation(
            tokens=torch.cat([prompt, response], 1), valid=torch.cat([prompt_valid, mask], 1),
            prompt_len=P, response=response, logprobs=logprobs, mask=mask.float())

    def _sample(self, prompt, prompt_valid, max_new_tokens, temperature, top_k, eos_id, pad_id,
                generator, use_cache):
        """The sampling loop of :meth:`generate`: response, log-probs and mask, each ``(B, T)``."""
        B, P = prompt.shape
        cache = KVCache(self.config, B, P + max_new_tokens, prompt.device) if use_cache else None
        tokens, valid = prompt, prompt_valid
        hidden = self.body(tokens, valid, cache)[:, -1]  # (B, C)
        finished = torch.zeros(B, dtype=torch.bool, device=prompt.device)
        alive = ~finished  # stays all True without eos_id
        pad = torch.full((B,), pad_id, dtype=torch.long, device=prompt.device)
        new_tokens, new_logprobs, new_mask = [], [], []
        for _ in range(max_new_tokens):
            logits = self.head(hidden).float()  # (B, V)
            if temperature != 1.0:  # x / 1.0 is x exactly: skipping it changes no bit
                logits = logits / temperature
            logp = F.log_softmax(logits, dim=-1)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            if eos_id is not None:  # finished rows get <pad> and log-prob 0 (else: no-ops)
                alive = ~finished
                tok = torch.where(alive, tok, pad)
            lp = logp.gather(1, tok[:, None]).squeeze(1)  # (B,)
            if eos_id is not None:
                lp = lp * alive
            new_tokens.append(tok)
            new_logprobs.append(lp)
            new_mask.append(alive)
            if eos_id is not None:
                finished = finished | (tok == eos_id)
                if bool(finished.all()):
                    break
            if len(new_tokens) == max_new_tokens:
                break
            if cache is not None:
                hidden = self._decode_step(tok, alive, cache)
            else:
                tokens = torch.cat([tokens, tok[:, None]], 1)
                valid = torch.cat([valid, alive[:, None]], 1)
                hidden = self.body(tokens, valid)[:, -1]
        # (B, T) each
        return (torch.stack(new_tokens, 1), torch.stack(new_logprobs, 1),
                torch.stack(new_mask, 1))


def left_pad(ids: torch.Tensor, valid: torch.Tensor, pad_id: int = 0):
    """Move each row's real tokens to the right end: right-padded ``(B, T)`` → left-padded."""
    n = valid.long().sum(1, keepdim=True)  # (B, 1)
    T = ids.size(1)
    src = (torch.arange(T, device=ids.device)[None] - (T - n)) % T  # where each slot reads from
    out_valid = torch.arange(T, device=ids.device)[None] >= T - n
    out = torch.where(out_valid, ids.gather(1, src), torch.full_like(ids, pad_id))
    return out, out_valid


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log-softmax of ``logits`` ``(B, T, V)`` read at ``tokens`` ``(B, T)`` → ``(B, T)``."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
