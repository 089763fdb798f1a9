"""A tiny nanoGPT-style causal transformer, and the causal-LM call every GSPO component relies on.

Shapes: B batch, T current tokens, S = T_past + T keys, C = d_model, H heads, D = C // H, V vocab.

``TinyCausalLM`` follows the Hugging Face causal-LM call (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values``, ``use_cache`` → ``.logits``, ``.past_key_values``) so the
sampler and the trainer run unchanged on an HF model wrapped in :class:`HFCausalLM`.

Design: pre-LayerNorm blocks, learned token and position embeddings, GELU MLP, final LayerNorm.
The LM head is *untied* with a bias (costs nothing at 14 tokens; learns token frequencies at once;
gives tests a knob to force a token). ``attention_mask`` (1 = real, 0 = pad) covers past + current
tokens: real queries never see pad keys; a pad query sees only itself (no empty softmax row, no
NaN). Default ``position_ids`` count real tokens only (``cumsum(mask) − 1``), so a left-padded row
gives the same logits as the row alone. The KV cache is a tuple of per-layer ``(k, v)`` pairs of
``(B, H, S, D)`` tensors; each step returns a new tuple.

Init is PyTorch's default (embeddings N(0, 1), linear layers U(±1/√fan_in)), deterministic under
``torch.manual_seed``. Measured with GSPO on ``reverse`` (16 prompts × G = 8, 200 steps, ε = 0.2):
the default init reached ≥ 0.98 exact on 3 of 3 seeds (by step 75–125); nanoGPT's N(0, 0.02) init
reached 0.11 at best, and N(0, 0.02) linears with N(0, 1) embeddings 0.50.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import torch
import torch.nn.functional as F
from pydantic import PositiveInt, model_validator
from torch import Tensor, nn

from ..entities import Entity, Name
from ..errors import ValidationError

__all__ = [
    "TinyLMConfigEntity",
    "TinyCausalLM",
    "LMOutput",
    "KVCache",
    "CausalLM",
    "CausalLMOutput",
    "HFCausalLM",
    "default_position_ids",
]

KVCache = tuple[tuple[Tensor, Tensor], ...]
"""One ``(keys, values)`` pair per layer, each ``(B, H, S, D)``."""


class TinyLMConfigEntity(Entity):
    """The architecture of a :class:`TinyCausalLM` (an entity, so it is stored and versioned)."""

    entity_type: ClassVar[str] = "forseti.gspo.TinyLMConfig"

    name: Name = "tiny-lm"
    vocab_size: PositiveInt = 14
    d_model: PositiveInt = 64
    n_layers: PositiveInt = 2
    n_heads: PositiveInt = 4
    max_seq_len: PositiveInt = 32
    mlp_ratio: PositiveInt = 4

    @model_validator(mode="after")
    def _check_heads(self) -> Self:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self


@dataclass
class LMOutput:
    """What a causal LM returns: ``logits`` (B, T, V) and the cache to pass to the next call."""

    logits: Tensor
    past_key_values: Any = None


class CausalLMOutput(Protocol):
    """Anything with ``.logits`` (B, T, V) and ``.past_key_values`` (HF outputs qualify)."""

    @property
    def logits(self) -> Tensor: ...

    @property
    def past_key_values(self) -> Any: ...


@runtime_checkable
class CausalLM(Protocol):
    """The Hugging Face causal-LM call: the only thing the sampler and the trainer need."""

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> CausalLMOutput: ...


def default_position_ids(attention_mask: Tensor, num_new: int) -> Tensor:
    """Positions of the last ``num_new`` tokens, counting real tokens only (pads get 0).

    ``attention_mask`` (B, S) → (B, num_new) long.
    """
    pos = attention_mask.long().cumsum(-1) - 1  # (B, S)
    return pos[:, -num_new:].clamp_min(0)  # (B, num_new)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an explicit boolean mask and a KV cache."""

    def __init__(self, config: TinyLMConfigEntity) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(
        self, x: Tensor, allowed: Tensor, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` (B, T, C), ``allowed`` (B, 1, T, S) bool → (B, T, C) and this layer's (k, v)."""
        B, T, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, S, D)
            v = torch.cat([past[1], v], dim=2)  # (B, H, S, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: TinyLMConfigEntity) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp_in = nn.Linear(config.d_model, hidden)
        self.mlp_out = nn.Linear(hidden, config.d_model)

    def forward(
        self, x: Tensor, allowed: Tensor, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` (B, T, C) → (B, T, C) and this layer's (k, v)."""
        a, kv = self.attn(self.ln_1(x), allowed, past)  # (B, T, C)
        x = x + a  # (B, T, C)
        h = F.gelu(self.mlp_in(self.ln_2(x)))  # (B, T, mlp_ratio·C)
        x = x + self.mlp_out(h)  # (B, T, C)
        return x, kv


class TinyCausalLM(nn.Module):
    """A small decoder-only transformer with the Hugging Face causal-LM call signature."""

    def __init__(self, config: TinyLMConfigEntity) -> None:
        super().__init__()
        if not isinstance(config, TinyLMConfigEntity):
            raise ValidationError(
                f"TinyCausalLM needs a TinyLMConfigEntity, got {type(config).__name__}"
            )
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)  # untied, with bias
        # PyTorch's default init on purpose (see the module docstring)

    def num_parameters(self) -> int:
        """The number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> LMOutput:
        """``input_ids`` (B, T) → logits (B, T, V) (and the cache when ``use_cache``).

        ``attention_mask`` (B, T_past + T) covers the cached and the current tokens.
        """
        T_past = self._check_inputs(input_ids, attention_mask, position_ids, past_key_values)
        B, T = input_ids.shape
        S = T_past + T
        device = input_ids.device
        if attention_mask is None:
            key_real = torch.ones(B, S, dtype=torch.bool, device=device)  # (B, S)
        else:
            key_real = attention_mask != 0  # (B, S)
        if position_ids is None:
            position_ids = default_position_ids(key_real, T)  # (B, T)

        q_pos = torch.arange(T_past, S, device=device)  # (T,)
        k_pos = torch.arange(S, device=device)  # (S,)
        causal = k_pos[None, :] <= q_pos[:, None]  # (T, S)
        itself = k_pos[None, :] == q_pos[:, None]  # (T, S)
        allowed = (causal[None] & key_real[:, None, :]) | itself[None]  # (B, T, S)
        allowed = allowed[:, None]  # (B, 1, T, S), broadcast over heads

        x = self.tok_emb(input_ids) + self.pos_emb(position_ids)  # (B, T, C)
        present: list[tuple[Tensor, Tensor]] = []
        for i, block in enumerate(self.blocks):
            past = None if past_key_values is None else past_key_values[i]
            x, kv = block(x, allowed, past)  # (B, T, C)
            present.append(kv)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return LMOutput(logits=logits, past_key_values=tuple(present) if use_cache else None)

    def _check_inputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        past_key_values: KVCache | None,
    ) -> int:
        """Validate the call; return the number of cached tokens T_past."""
        cfg = self.config
        if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValidationError("input_ids must be an int64 (or int32) tensor of token ids")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValidationError(
                f"input_ids must be (batch, seq) with both > 0, got shape {tuple(input_ids.shape)}"
            )
        B, T = input_ids.shape
        T_past = 0
        if past_key_values is not None:
            D = cfg.d_model // cfg.n_heads
            ok = isinstance(past_key_values, tuple) and len(past_key_values) == cfg.n_layers
            if ok:
                kvs = [t for pair in past_key_values for t in pair]
                ok = all(isinstance(t, Tensor) and t.dim() == 4 for t in kvs)
                T_past = kvs[0].shape[2] if ok else 0
                ok = ok and all(tuple(t.shape) == (B, cfg.n_heads, T_past, D) for t in kvs)
            if not ok:
                raise ValidationError(
                    f"past_key_values must be {cfg.n_layers} (keys, values) pairs of "
                    f"(batch={B}, heads={cfg.n_heads}, past, {D}) tensors"
                )
        S = T_past + T
        if S > cfg.max_seq_len:
            raise ValidationError(
                f"sequence of {S} tokens ({T_past} cached + {T} new) exceeds "
                f"max_seq_len={cfg.max_seq_len}"
            )
        on_cpu = input_ids.device.type == "cpu"  # value checks would be host syncs elsewhere
        if on_cpu and bool(((input_ids < 0) | (input_ids >= cfg.vocab_size)).any()):
            raise ValidationError(f"input_ids must lie in [0, {cfg.vocab_size})")
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, S):
                got = getattr(attention_mask, "shape", type(attention_mask).__name__)
                raise ValidationError(
                    f"attention_mask must be (batch, past + new) = {(B, S)}, got {got}"
                )
        if position_ids is not None:
            if not isinstance(position_ids, Tensor) or tuple(position_ids.shape) != (B, T):
                raise ValidationError(f"position_ids must be (batch, new) = {(B, T)}")
            if position_ids.dtype not in (torch.int64, torch.int32):
                raise ValidationError("position_ids must be an int64 (or int32) tensor")
            if on_cpu and bool(((position_ids < 0) | (position_ids >= cfg.max_seq_len)).any()):
                raise ValidationError(f"position_ids must lie in [0, {cfg.max_seq_len})")
        return T_past


class HFCausalLM(nn.Module):
    """Adapt any Hugging Face-style causal LM module to :class:`CausalLM`, returning LMOutput.

    The wrapped module is called with keywords (``input_ids``, ``attention_mask``,
    ``position_ids``, ``past_key_values``, ``use_cache``). When ``position_ids`` is not given but
    ``attention_mask`` is, positions are derived from the mask (real tokens only), as HF's own
    ``generate`` does: many HF models otherwise shift the positions of left-padded rows.
    The cache object is passed through untouched (legacy tuples or ``Cache`` objects alike).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValidationError(f"HFCausalLM wraps a torch module, got {type(module).__name__}")
        self.module = module

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> LMOutput:
        """Call the wrapped module; ``logits`` (B, T, V) and its cache come back as LMOutput."""
        if position_ids is None and attention_mask is not None:
            position_ids = default_position_ids(attention_mask, input_ids.shape[1])  # (B, T)
        out = self.module(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        logits = getattr(out, "logits", None)
        if not isinstance(logits, Tensor):
            raise ValidationError(
                f"the wrapped model returned {type(out).__name__} without a .logits tensor"
            )
        return LMOutput(logits=logits, past_key_values=getattr(out, "past_key_values", None))
