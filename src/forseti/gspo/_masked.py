"""Masked reductions and input validation for :mod:`forseti.gspo.loss` (private).

Every reduction takes a boolean ``mask`` of shape ``(B, T)`` and selects with :func:`torch.where`
before summing, so whatever sits at a padding position (``+inf``, ``NaN``, ``1e30``) never reaches
the result and receives exactly zero gradient: ``where`` routes the incoming gradient to the
selected branch only, there is no ``0 * inf`` anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from forseti.errors import ValidationError


def zero_pad(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask`` is true, exactly ``0`` elsewhere (gradient 0 on padding)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def seq_token_mean(x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """``(1/B) Σ_i (1/L_i) Σ_{t valid} x_i,t``: each sequence weighs ``1/B`` whatever its length."""
    return (zero_pad(x, mask).sum(dim=-1) / lengths).mean()


def token_mean(x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """``Σ_{i,t valid} x_i,t / Σ_i L_i``: each valid token weighs the same (long sequences weigh
    more)."""
    return zero_pad(x, mask).sum() / lengths.sum()


def aggregate(x: Tensor, mask: Tensor, lengths: Tensor, agg: str) -> Tensor:
    """Reduce a per-token ``(B, T)`` quantity to a scalar by ``agg``."""
    if agg == "token-mean":
        return token_mean(x, mask, lengths)
    return seq_token_mean(x, mask, lengths)


def check_real(name: str, value: float, *, low: float, low_open: bool = False) -> None:
    """A finite float ``>= low`` (``> low`` when ``low_open``)."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    if not ok:
        rel = ">" if low_open else ">="
        raise ValidationError(f"{name} must be a finite number {rel} {low}; got {value!r}")


def check_tensor(name: str, t: object, *, floating: bool = True) -> Tensor:
    """``t`` is a tensor (of a floating dtype when ``floating``)."""
    if not isinstance(t, Tensor):
        raise ValidationError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise ValidationError(f"{name} must have a floating dtype; got {t.dtype}")
    return t


def as_bool_mask(mask: object, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """The response mask as ``bool``: ``bool`` as is, a numeric mask must hold only 0 and 1."""
    m = check_tensor("mask", mask, floating=False)
    if tuple(m.shape) != shape:
        raise ValidationError(
            f"mask has shape {tuple(m.shape)}, expected {shape} (the shape of logp)"
        )
    if m.device != device:
        raise ValidationError(f"mask is on {m.device}, logp on {device}")
    if m.dtype == torch.bool:
        return m
    if m.is_complex():
        raise ValidationError(f"mask must be bool or a real 0/1 tensor; got {m.dtype}")
    if bool(((m != 0) & (m != 1)).any()):
        raise ValidationError("a numeric mask must contain only 0 and 1")
    return m != 0


def first_true(flags: Tensor) -> list[int]:
    """Indices (up to 5) where a 1-D bool tensor is true, for error messages."""
    return [int(i) for i in flags.nonzero().flatten()[:5].tolist()]


def check_loss_inputs(
    logp: Tensor,
    old_logp: Tensor,
    mask: Tensor,
    advantages: Tensor,
    ref_logp: Tensor | None,
    level: str,
) -> tuple[Tensor, Tensor]:
    """Validate shapes, dtypes, devices and values; return the bool mask and the advantages."""
    logp = check_tensor("logp", logp)
    if logp.dim() != 2 or logp.shape[0] == 0 or logp.shape[1] == 0:
        raise ValidationError(
            f"logp must have shape (B, T) with B, T >= 1; got {tuple(logp.shape)}"
        )
    shape, dtype = tuple(logp.shape), logp.dtype
    named = {"old_logp": old_logp, "ref_logp": ref_logp}
    for name, t in named.items():
        if t is None:
            continue
        check_tensor(name, t)
        if tuple(t.shape) != shape:
            raise ValidationError(f"{name} has shape {tuple(t.shape)}, logp has {shape}")
        if t.dtype != dtype:
            raise ValidationError(
                f"{name} is {t.dtype} but logp is {dtype}: compute both log-probs with the "
                "same code path and precision"
            )
        if t.device != logp.device:
            raise ValidationError(f"{name} is on {t.device}, logp on {logp.device}")
    m = as_bool_mask(mask, shape, logp.device)
    adv = check_tensor("advantages", advantages)
    if tuple(adv.shape) not in (shape[:1], shape):
        raise ValidationError(
            f"advantages has shape {tuple(adv.shape)}; expected ({shape[0]},) per sequence or "
            f"{shape} per token"
        )
    if adv.dim() == 2 and level == "sequence":
        raise ValidationError(
            "per-token advantages (B, T) need level 'sequence_token' or 'token'; level "
            "'sequence' takes one advantage per sequence (B,)"
        )
    if adv.device != logp.device:
        raise ValidationError(f"advantages is on {adv.device}, logp on {logp.device}")
    adv = adv.detach().to(dtype)
    # all value checks in one host sync
    adv_bad = ~torch.isfinite(adv)
    adv_bad = (adv_bad & m).any(-1) if adv.dim() == 2 else adv_bad
    checks = {
        "has no valid token (mask all false)": ~m.any(dim=-1),
        "has non-finite advantages (NaN/inf)": adv_bad,
    }
    for name, t in {"logp": logp, **named}.items():
        if t is not None:
            checks[f"has non-finite {name} (NaN/inf) on a valid token"] = (
                ~torch.isfinite(t) & m
            ).any(dim=-1)
    flags = torch.stack(list(checks.values()))
    # on an accelerator, reading the flags would stall the update loop (a host sync per
    # minibatch): shapes and dtypes are still checked there, values only on the CPU
    if flags.device.type == "cpu" and bool(flags.any()):
        for (what, rows), bad in zip(checks.items(), flags.any(dim=-1).tolist(), strict=True):
            if bad:
                raise ValidationError(f"sequence(s) {first_true(rows)} (row index) {what}")
    return m, adv
