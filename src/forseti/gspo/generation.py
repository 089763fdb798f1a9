"""Batched sampling with a KV cache, and token log-probs through one code path.

Shapes: B prompts, G samples per prompt, N = B·G rows, P prompt width (left-padded), R response
width, V vocabulary.

Trap 9 (GSPO.md): the log-probs recorded while sampling and the ones the trainer recomputes go
through :func:`token_logprobs` — fp32 log-softmax of ``logits / temperature`` — and nothing else.
Trap 6: logits at position t score token t+1, so response token j (absolute position P + j) is
scored by the logits at position P + j − 1; the first response token by the last prompt position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ValidationError
from .model import CausalLM

__all__ = ["Generation", "generate", "left_pad", "sequence_logprobs", "token_logprobs"]


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each target under ``logits / temperature``, in fp32.

    ``logits`` (N, T, V) any float dtype, ``targets`` (N, T) long → (N, T) float32.
    """
    if logits.dim() != 3 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValidationError(
            f"token_logprobs needs logits (N, T, V) and targets (N, T), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    _check_temperature(temperature)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (N, T, V) fp32
    return logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (N, T)


def sequence_logprobs(
    model: CausalLM,
    tokens: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    temperature: float = 1.0,
) -> Tensor:
    """Log-probs of every response token from one full forward (no cache); keeps the graph.

    ``tokens`` (N, P + R), ``attention_mask`` (N, P + R) → (N, R) fp32; the caller masks.
    The last token is never an input (its logits would score nothing), so P + R − 1 tokens
    go through the model: the same length the cached sampler reached.
    """
    if tokens.dim() != 2 or tuple(attention_mask.shape) != tuple(tokens.shape):
        raise ValidationError("tokens and attention_mask must both be (N, P + R)")
    if not 1 <= prompt_len < tokens.shape[1]:
        raise ValidationError(f"prompt_len must be in [1, {tokens.shape[1]}), got {prompt_len}")
    out = model(tokens[:, :-1], attention_mask=attention_mask[:, :-1])  # logits (N, P+R-1, V)
    logits = out.logits[:, prompt_len - 1 :]  # (N, R, V): position P+j-1 scores token P+j
    return token_logprobs(logits, tokens[:, prompt_len:], temperature)  # (N, R)


@dataclass
class Generation:
    """A batch of sampled responses; rows ``b·G … b·G + G − 1`` belong to prompt ``b``.

    ``response_mask`` is True exactly on sampled tokens: the first one, the EOS (when sampled),
    nothing after it. ``R`` is the number of steps actually run (≤ ``max_new_tokens``; sampling
    stops once every row has emitted EOS).
    """

    tokens: Tensor  # (N, P + R) long: left-padded prompt, then response, PAD after EOS
    attention_mask: Tensor  # (N, P + R) long: 1 on real prompt tokens and sampled tokens
    prompt_len: int  # P
    response: Tensor  # (N, R) long
    response_mask: Tensor  # (N, R) bool
    logprobs: Tensor  # (N, R) fp32: sampled tokens' log-probs, 0 where masked
    lengths: Tensor  # (N,) long: sampled tokens per row, EOS included
    truncated: Tensor  # (N,) bool: no EOS within max_new_tokens

    @property
    def num_rows(self) -> int:
        """N = B·G."""
        return int(self.tokens.shape[0])

    def prompt_lists(self) -> list[list[int]]:
        """Each row's prompt tokens without padding."""
        prompt = self.tokens[:, : self.prompt_len].tolist()
        mask = self.attention_mask[:, : self.prompt_len].tolist()
        return [
            [t for t, m in zip(p, ms, strict=True) if m] for p, ms in zip(prompt, mask, strict=True)
        ]

    def response_lists(self) -> list[list[int]]:
        """Each row's sampled tokens (EOS included when sampled), as reward functions take them."""
        resp, mask = self.response.tolist(), self.response_mask.tolist()
        return [
            [t for t, m in zip(r, ms, strict=True) if m] for r, ms in zip(resp, mask, strict=True)
        ]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists into ``ids`` (B, P) long and ``mask`` (B, P) long (1 = real)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValidationError("left_pad needs at least one sequence, none of them empty")
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros(len(seqs), P, dtype=torch.long)  # (B, P)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, P - len(s) :] = 1
    return ids, mask


@torch.no_grad()  # not inference_mode: the trainer differentiates through these tokens' forward
def generate(
    model: CausalLM,
    prompts: Tensor,
    prompt_mask: Tensor,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Generation:
    """Sample ``num_samples`` responses per left-padded prompt in one batched loop.

    ``prompts`` (B, P) long, ``prompt_mask`` (B, P) → :class:`Generation` with N = B·G rows.
    With ``use_cache`` the prompt is prefilled once and each step feeds one token; without it,
    every step recomputes the full forward (same tokens; for benchmarks and tests).
    The model's train/eval mode is left as it is (dropout would make sampling noisy).
    """
    _check_generate(prompts, prompt_mask, num_samples, max_new_tokens, temperature)
    G, R, device = num_samples, max_new_tokens, prompts.device
    ids = prompts.long().repeat_interleave(G, dim=0)  # (N, P)
    N, P = ids.shape
    tokens = torch.full((N, P + R), pad_id, dtype=torch.long, device=device)  # (N, P+R)
    tokens[:, :P] = ids
    attn = torch.zeros(N, P + R, dtype=torch.long, device=device)  # (N, P+R)
    attn[:, :P] = (prompt_mask != 0).long().repeat_interleave(G, dim=0)
    response_mask = torch.zeros(N, R, dtype=torch.bool, device=device)  # (N, R)
    logprobs = torch.zeros(N, R, dtype=torch.float32, device=device)  # (N, R)
    finished = torch.zeros(N, dtype=torch.bool, device=device)  # (N,)

    out = model(ids, attention_mask=attn[:, :P], use_cache=use_cache)  # prefill
    past = out.past_key_values if use_cache else None
    step_logits = out.logits[:, -1:]  # (N, 1, V)
    steps = R
    for t in range(R):
        probs = torch.softmax(step_logits[:, 0].float() / temperature, dim=-1)  # (N, V)
        sampled = torch.multinomial(probs, 1, generator=generator)  # (N, 1)
        lp = token_logprobs(step_logits, sampled, temperature)[:, 0]  # (N,)
        active = ~finished  # (N,)
        nxt = torch.where(active, sampled[:, 0], torch.full_like(sampled[:, 0], pad_id))  # (N,)
        tokens[:, P + t] = nxt
        attn[:, P + t] = active.long()
        response_mask[:, t] = active
        logprobs[:, t] = torch.where(active, lp, torch.zeros_like(lp))
        finished |= active & (nxt == eos_id)
        if t == R - 1 or bool(finished.all()):
            steps = t + 1
            break
        if use_cache:
            out = model(
                nxt[:, None],
                attention_mask=attn[:, : P + t + 1],
                past_key_values=past,
                use_cache=True,
            )  # logits (N, 1, V)
            past = out.past_key_values
            step_logits = out.logits
        else:
            out = model(tokens[:, : P + t + 1], attention_mask=attn[:, : P + t + 1])
            step_logits = out.logits[:, -1:]  # (N, 1, V)

    response_mask = response_mask[:, :steps]  # (N, R')
    return Generation(
        tokens=tokens[:, : P + steps],
        attention_mask=attn[:, : P + steps],
        prompt_len=P,
        response=tokens[:, P : P + steps],
        response_mask=response_mask,
        logprobs=logprobs[:, :steps],
        lengths=response_mask.sum(dim=1),
        truncated=~finished,
    )


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValidationError(f"temperature must be a positive number, got {temperature!r}")


def _check_generate(
    prompts: Tensor, prompt_mask: Tensor, num_samples: int, max_new_tokens: int, temperature: float
) -> None:
    if not isinstance(prompts, Tensor) or prompts.dim() != 2 or prompts.numel() == 0:
        raise ValidationError("prompts must be a non-empty (B, P) tensor of token ids")
    if prompts.is_floating_point() or prompts.is_complex() or prompts.dtype == torch.bool:
        raise ValidationError(f"prompts must hold integer token ids, got {prompts.dtype}")
    if not isinstance(prompt_mask, Tensor) or prompt_mask.shape != prompts.shape:
        raise ValidationError(f"prompt_mask must have the prompts' shape {tuple(prompts.shape)}")
    real = prompt_mask != 0  # (B, P)
    if bool((real[:, :-1] & ~real[:, 1:]).any()) or not bool(real[:, -1].all()):
        raise ValidationError(
            "prompts must be left-padded (mask 0…0 1…1) with at least one real token per row"
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValidationError(f"num_samples must be a positive int, got {num_samples!r}")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValidationError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    _check_temperature(temperature)
