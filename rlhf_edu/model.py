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
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from .validate import (
    TEMPERATURE,
    check_bool,
    check_float,
    check_floating,
    check_int,
    check_tensor,
    shown,
)

# Sampling temperatures, where logits / T stay finite and the distribution means something:
# below 1e-2 sampling is greedy already (a logit gap of 0.1 becomes e^-10), and 1e-45 makes
# logits / T overflow fp32 (NaN log-probs); above 1e2 every token of the toy vocabulary is about
# equally likely (the log-probs differ from uniform's in the 3rd decimal).
TEMPERATURE_RANGE = (TEMPERATURE["minimum"], TEMPERATURE["maximum"])  # the bound: in validate
# The largest model GPT builds: 2**31 parameters, 8.6 GB in fp32 (34 GB with AdamW and
# gradients), beyond GPT-2 XL's 1.5e9. A larger config asked the allocator for terabytes and got
# "DefaultCPUAllocator: can't allocate memory" (or, below the machine's RAM but above what is
# free, the out-of-memory killer) instead of a message naming the config.
MAX_PARAMS = 2**31


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float if it is in :data:`TEMPERATURE_RANGE`, else a one-line
    ``ValueError`` naming it."""
    t = check_float("temperature", temperature, minimum=0, strict_min=True)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= t <= hi:
        raise ValueError(f"temperature must be in [{lo:g}, {hi:g}] (below, logits / temperature "
                         f"overflow and sampling is greedy anyway; above, it is uniform), "
                         f"got {t:g}")
    return t


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
            value = check_int(f"GPTConfig.{name}", getattr(self, name), minimum=1)
            if value >= 2**31:  # beyond what torch sizes a layer with (and any memory)
                raise ValueError(f"GPTConfig.{name} must be a positive int below 2**31, got "
                                 f"{value}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        check_float("GPTConfig.dropout", self.dropout, minimum=0, maximum=1, strict_max=True)
        C, L = self.n_embd, self.n_layer
        n = self.vocab_size * C + self.block_size * C + L * (12 * C * C + 13 * C) + 2 * C
        if n > MAX_PARAMS:
            raise ValueError(f"GPTConfig(n_layer={L}, n_embd={C}, vocab_size={self.vocab_size}, "
                             f"block_size={self.block_size}) has {n:.3g} parameters; at most "
                             f"2**31 (model.MAX_PARAMS, 8.6 GB in fp32)")

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> GPTConfig:
        """The config a dict such as ``asdict(config)`` describes; ``ValueError`` (starting with
        ``where``) for a non-dict, a key GPTConfig does not know or lacks, or a value it
        refuses, instead of a ``TypeError`` from the constructor or a silent default."""
        names = [f.name for f in fields(cls)]
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a dict of GPTConfig fields, got {type(d).__name__}")
        unknown = sorted(map(str, set(d) - set(names)))
        absent = [k for k in names if k not in d]
        if unknown or absent:
            raise ValueError(f"{where} has " + (f"unknown key(s) {unknown}" if unknown else "")
                             + (" and " if unknown and absent else "")
                             + (f"no {absent}" if absent else "")
                             + f"; expected exactly the GPTConfig fields {', '.join(names)}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


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
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
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
        _check_ids("idx", idx)
        if valid is not None:
            check_tensor("valid", valid)
            if valid.shape != idx.shape:
                raise ValueError(f"valid has shape {tuple(valid.shape)} but idx has shape "
                                 f"{tuple(idx.shape)}; they must match")
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
            pos = (offset + valid.cumsum(1) - 1).clamp(min=0)  # (B, T)
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
        x = self.drop(self._embed(idx) + self.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, attn_mask, cache, layer)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(B, T, C)``; an id outside the vocabulary is a ``ValueError``
        naming it (found only once the lookup has failed, so valid input pays nothing)."""
        try:
            return self.wte(idx)
        except IndexError:
            V = self.config.vocab_size
            bad = ((idx < 0) | (idx >= V)).nonzero()
            if len(bad) == 0:
                raise
            at = tuple(bad[0].tolist())
            raise ValueError(f"idx contains id {idx[at].item()} at index {at}; expected ids "
                             f"in [0, {V}) (the model's vocab_size)") from None

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

    def _check_prompt(self, prompt: torch.Tensor, prompt_valid: torch.Tensor,
                      padding_side: str) -> None:
        """Ids in the vocabulary, no all-padding row, and padding on ``padding_side`` only:
        one read back to the host, then the message if something is wrong."""
        V = self.config.vocab_size
        real = prompt_valid
        outside = (prompt < 0) | (prompt >= V)  # (B, P)
        all_pad = ~real.any(1)  # (B,)
        # left padding: a real token is never followed by padding; right: never preceded
        wrong_side = (real[:, :-1] & ~real[:, 1:]) if padding_side == "left" else (
            ~real[:, :-1] & real[:, 1:])  # (B, P - 1)
        if not bool(torch.stack([outside.any(), all_pad.any(), wrong_side.any()]).any()):
            return
        if outside.any():
            at = tuple(outside.nonzero()[0].tolist())
            raise ValueError(f"prompt contains id {prompt[at].item()} at index {at}; expected "
                             f"ids in [0, {V}) (the model's vocab_size)")
        if all_pad.any():
            raise ValueError(f"prompt row {int(all_pad.nonzero()[0])} is all padding")
        row, col = wrong_side.nonzero()[0].tolist()
        if padding_side == "left":
            raise ValueError(
                f"prompt row {row} is not left-padded: position {col + 1} is padding after a "
                f"real token; expected padding only before the real tokens (as "
                f"Tokenizer.encode_batch makes it), or pass padding_side='right'")
        raise ValueError(
            f"prompt row {row} is not right-padded: position {col + 1} is a real token after "
            f"padding; expected padding only after the real tokens (padding_side='right')")

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, prompt_valid: torch.Tensor | None = None,
                 max_new_tokens: int = 20, temperature: float = 1.0, top_k: int | None = None,
                 eos_id: int | None = None, pad_id: int = 0, padding_side: str = "left",
                 generator: torch.Generator | None = None, use_cache: bool = True) -> Generation:
        """Sample up to ``max_new_tokens`` after ``prompt`` ``(B, P)``.

        ``prompt`` ``(B, P)`` holds ids in ``[0, vocab_size)``; ``prompt_valid`` ``(B, P)`` marks
        its real tokens; ``padding_side`` says where the padding is ("right"-padded prompts are
        moved to the left first). Sampling continues each row from its last column, so a prompt
        padded on the other side, or with holes, is refused (it would sample after padding).
        ``max_new_tokens`` >= 1, ``temperature`` in [0.01, 100] (:data:`TEMPERATURE_RANGE`),
        ``top_k`` >= 1 or None. Rows stop at
        ``eos_id`` and are padded with ``pad_id`` after it. ``use_cache=False`` recomputes the
        whole sequence every step (slow; it exists to check the cache). The returned log-probs
        are those of the temperature-scaled distribution *before* top-k truncation, i.e. of the
        policy that a forward pass scores.
        """
        _check_ids("prompt", prompt)
        B, P = prompt.shape
        if prompt_valid is None:
            prompt_valid = torch.ones_like(prompt, dtype=torch.bool)
        check_tensor("prompt_valid", prompt_valid)
        if prompt.shape != prompt_valid.shape:
            raise ValueError(f"prompt has shape {tuple(prompt.shape)} but prompt_valid has "
                             f"shape {tuple(prompt_valid.shape)}")
        if prompt_valid.dtype != torch.bool:
            bad = ((prompt_valid != 0) & (prompt_valid != 1)).nonzero()
            if len(bad):
                at = tuple(bad[0].tolist())
                raise ValueError(f"prompt_valid must contain only 0 and 1 (or be bool), got "
                                 f"{prompt_valid[at].item()} at index {at}")
        prompt_valid = prompt_valid.bool()
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {shown(padding_side)}")
        self._check_prompt(prompt, prompt_valid, padding_side)
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        if P + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt width {P} + max_new_tokens {max_new_tokens} exceeds the "
                             f"model's context block_size={self.config.block_size}")
        check_temperature(temperature)
        if top_k is not None:
            check_int("top_k", top_k, minimum=1, none_ok=True)
        for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
            check_int(name, value, minimum=0, maximum=self.config.vocab_size - 1,
                      none_ok=name == "eos_id")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got "
                             f"{type(generator).__name__}")
        check_bool("use_cache", use_cache)
        if padding_side == "right":  # shift each row's real tokens to the end
            prompt, prompt_valid = _left_pad(prompt, prompt_valid, pad_id)

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
            try:
                tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            except RuntimeError:  # checked only on failure: the sampling loop stays sync-free
                if not bool(torch.isfinite(logits).any(-1).all()):
                    raise FloatingPointError("the next-token logits are NaN or inf: the "
                                             "model's weights have diverged") from None
                raise
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


def _check_ids(name: str, ids: object) -> None:
    """``ids`` must be a non-empty ``(B, T)`` integer tensor (values are checked elsewhere)."""
    check_tensor(name, ids, ndim=2, shape="(B, T)")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be a tensor of integer token ids, got {ids.dtype}")
    if ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}); expected at least one "
                         "row and one token")


def left_pad(ids: torch.Tensor, valid: torch.Tensor, pad_id: int = 0):
    """Move each row's real tokens to the right end: right-padded ``(B, T)`` → left-padded.

    ``valid`` ``(B, T)`` must mark a prefix of each row (right padding); other patterns are
    refused rather than scrambled.
    """
    _check_ids("ids", ids)
    check_tensor("valid", valid)
    if valid.shape != ids.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)} but ids has shape "
                         f"{tuple(ids.shape)}; they must match")
    check_int("pad_id", pad_id, minimum=0, maximum=2**63 - 1)
    check_tensor("valid", valid)
    valid = valid.bool()
    holes = ~valid[:, :-1] & valid[:, 1:]  # a real token after padding
    if bool(holes.any()):
        row, col = holes.nonzero()[0].tolist()
        raise ValueError(f"valid row {row} is not right-padded: position {col + 1} is a real "
                         "token after padding; expected each row's real tokens first")
    return _left_pad(ids, valid, pad_id)


def _left_pad(ids: torch.Tensor, valid: torch.Tensor, pad_id: int):
    """:func:`left_pad` on checked input."""
    n = valid.long().sum(1, keepdim=True)  # (B, 1)
    T = ids.size(1)
    src = (torch.arange(T, device=ids.device)[None] - (T - n)) % T  # where each slot reads from
    out_valid = torch.arange(T, device=ids.device)[None] >= T - n
    out = torch.where(out_valid, ids.gather(1, src), torch.full_like(ids, pad_id))
    return out, out_valid


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log-softmax of ``logits`` ``(B, T, V)`` read at ``tokens`` ``(B, T)`` → ``(B, T)``."""
    check_tensor("logits", logits, ndim=3, shape="(B, T, V)")
    check_tensor("tokens", tokens, ndim=2, shape="(B, T)")
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits have (B, T) = {tuple(logits.shape[:2])} but tokens have shape "
                         f"{tuple(tokens.shape)}; they must match")
    return F.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution given by ``logits``, per position.

    ``(B, T, V)`` → ``(B, T)``. Uses log_softmax (no overflow for large logits) and treats
    ``p = 0`` entries (e.g. logits of -inf) as contributing 0, with finite gradients.
    """
    check_floating("logits", logits)
    acc = torch.promote_types(logits.dtype, torch.float32)
    logp = F.log_softmax(logits.to(acc), dim=-1)
    p = logp.exp()
    # 0 * log 0 = 0; filling logp (not the product) keeps the backward pass free of NaN.
    logp = logp.masked_fill(p == 0, 0.0)
    return -(p * logp).sum(-1).to(logits.dtype)
