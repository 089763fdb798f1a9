"""GSPO (Group Sequence Policy Optimization, Zheng et al. 2025) loss: pure, vectorised torch.

Shapes: ``B`` sequences (responses), ``T`` padded response positions; ``mask`` (B, T) marks the
valid response tokens (sampled tokens through EOS; prompt and padding excluded).

- :func:`group_advantages` — ``A_i = (r_i − mean_g r) / (std_g r + eps)``, unbiased std per group.
- :func:`sequence_log_ratio` — ``log s_i = (1/L_i) Σ_{t valid} (logp_i,t − old_i,t)``.
- :func:`gspo_loss` — ``L = −(1/B) Σ_i min(s_i A_i, clip(s_i, 1−ε_low, 1+ε_high) A_i)`` (+ β·KL),
  with the GSPO-token and GRPO (token ratio) variants for comparison.

Everything is computed in the dtype of ``logp`` (fp64 stays fp64). Padding positions are selected
away with ``torch.where`` before any ``exp``, so they get exactly zero gradient whatever they hold.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch
from torch import Tensor

from forseti.errors import ValidationError

from ._masked import aggregate, check_loss_inputs, check_real, check_tensor, first_true, zero_pad

__all__ = [
    "Agg",
    "GSPOMetrics",
    "Level",
    "Scale",
    "group_advantages",
    "gspo_loss",
    "sequence_log_ratio",
]

Level = Literal["sequence", "sequence_token", "token"]
Agg = Literal["seq-mean-token-mean", "token-mean"]
Scale = Literal["group", "none", "batch"]


def group_advantages(
    rewards: Tensor, group_ids: Tensor, eps: float = 1e-4, scale: Scale = "group"
) -> Tensor:
    """Group-relative advantages, shape ``(N,)`` like ``rewards``.

    ``A_i = (r_i − μ_g) / (σ_g + eps)`` where ``g`` is the group of ``i`` (``group_ids[i]``, any
    integer labels in any order), ``μ_g`` the group mean and ``σ_g`` the unbiased (``n − 1``)
    standard deviation of the group. ``scale="none"`` gives ``r_i − μ_g``; ``scale="batch"``
    divides by the unbiased std of all ``N`` rewards ``+ eps`` instead. A group whose rewards are
    all equal gets advantages exactly ``0``. Vectorised (``unique`` + ``index_add``), computed in
    the dtype of ``rewards``.

    Raises :class:`~forseti.errors.ValidationError` on a group of one response (GSPO needs
    ``G >= 2``), non-finite rewards, shape/dtype/device mismatches, ``eps < 0`` or an unknown
    ``scale``.
    """
    if scale not in get_args(Scale):
        raise ValidationError(f"unknown scale {scale!r}; expected one of {get_args(Scale)}")
    check_real("eps", eps, low=0.0)
    r = check_tensor("rewards", rewards)
    g = check_tensor("group_ids", group_ids, floating=False)
    if g.dtype == torch.bool or g.is_floating_point() or g.is_complex():
        raise ValidationError(f"group_ids must have an integer dtype; got {g.dtype}")
    if r.dim() != 1 or tuple(g.shape) != tuple(r.shape):
        raise ValidationError(
            f"rewards and group_ids must both be 1-D of the same length; got rewards "
            f"{tuple(r.shape)} and group_ids {tuple(g.shape)}"
        )
    if g.device != r.device:
        raise ValidationError(f"group_ids is on {g.device}, rewards on {r.device}")
    if r.numel() == 0:
        raise ValidationError("rewards is empty")
    if not bool(torch.isfinite(r).all()):
        raise ValidationError(f"rewards hold non-finite values at {first_true(~torch.isfinite(r))}")
    labels, inv, counts = torch.unique(g, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        bad = first_true(counts < 2)[0]
        raise ValidationError(
            "GSPO needs at least 2 responses per prompt (group size G >= 2); "
            f"group {int(labels[bad])} has {int(counts[bad])}"
        )
    k, n = labels.numel(), counts.to(r.dtype)
    mean = r.new_zeros(k).index_add(0, inv, r) / n
    dev = r - mean[inv]
    if scale == "none":
        adv = dev
    elif scale == "batch":
        adv = dev / (r.std(correction=1) + eps)
    else:
        std = (r.new_zeros(k).index_add(0, inv, dev * dev) / (n - 1)).sqrt()
        adv = dev / (std[inv] + eps)
    hi = r.new_zeros(k).scatter_reduce(0, inv, r, reduce="amax", include_self=False)
    lo = r.new_zeros(k).scatter_reduce(0, inv, r, reduce="amin", include_self=False)
    return torch.where((hi == lo)[inv], torch.zeros_like(adv), adv)


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """``log s_i = (1/L_i) Σ_{t: mask} (logp_i,t − old_logp_i,t)``, shape ``(B,)``.

    The length-normalised (geometric-mean) log importance ratio of each sequence over its valid
    tokens only; ``mask`` must be ``bool``. Gradient flows to ``logp`` on valid tokens only.
    """
    lengths = mask.sum(dim=-1).to(logp.dtype)
    return zero_pad(logp - old_logp, mask).sum(dim=-1) / lengths


@dataclass(frozen=True)
class GSPOMetrics:
    """Diagnostics of one :func:`gspo_loss` call, as detached 0-dim tensors in the input dtype.

    They stay on the device (no host sync); :meth:`to_floats` reads all of them with one sync.

    A *unit* is a sequence for ``level="sequence"`` and a valid token for the token levels;
    ``ratio`` is the importance ratio that is clipped (``s_i``, ``s_i,t`` or ``π/π_old`` per token).

    - ``loss``: the returned loss value (policy term ``+ β·kl``).
    - ``clip_frac``: among units with ``A ≠ 0``, the fraction whose clipped branch is active, i.e.
      whose gradient is zeroed: ``(A > 0 and ratio > 1+ε_high) or (A < 0 and ratio < 1−ε_low)``.
      Units with ``A = 0`` are neither counted nor in the denominator (0 when none has ``A ≠ 0``).
    - ``clip_frac_low`` / ``clip_frac_high``: the two halves (``A < 0, ratio < 1−ε_low`` and
      ``A > 0, ratio > 1+ε_high``) over the same denominator (``clip_frac = low + high`` up to
      rounding).
    - ``log_ratio_abs_mean``: ``(1/B) Σ_i |log s_i|`` (sequence log-ratio, at every level).
    - ``ratio_min`` / ``ratio_max``: extremes of ``ratio`` over units.
    - ``kl``: the k3 estimator ``exp(ref − logp) − (ref − logp) − 1`` aggregated like the loss
      (``agg``); ``0`` when no ``ref_logp`` is given.
    - ``adv_mean`` / ``adv_std``: mean and population std (``n``) of the advantages over
      sequences (``(B,)`` advantages) or valid tokens (``(B, T)`` advantages).
    """

    loss: Tensor
    clip_frac: Tensor
    clip_frac_low: Tensor
    clip_frac_high: Tensor
    log_ratio_abs_mean: Tensor
    ratio_min: Tensor
    ratio_max: Tensor
    kl: Tensor
    adv_mean: Tensor
    adv_std: Tensor

    def to_floats(self) -> dict[str, float]:
        """All metrics as Python floats, read with a single device→host transfer."""
        names = [f.name for f in fields(self)]
        values = torch.stack([getattr(self, n) for n in names]).tolist()
        return dict(zip(names, values, strict=True))


def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    level: Level = "sequence",
    agg: Agg = "seq-mean-token-mean",
    beta: float = 0.0,
    ref_logp: Tensor | None = None,
) -> tuple[Tensor, GSPOMetrics]:
    """The clipped policy loss (to minimise) and its :class:`GSPOMetrics`.

    Inputs: ``logp`` (B, T) log π_θ of the sampled tokens (differentiable), ``old_logp`` (B, T)
    log π_old of the policy that generated them (detached), ``mask`` (B, T) bool or 0/1,
    ``advantages`` (B,) or, for the token levels, (B, T); ``ref_logp`` (B, T) for the KL term.
    With ``L_i`` valid tokens in sequence ``i``, ``C`` the clip indicator
    ``(A > 0 and ρ > 1+ε_high) or (A < 0 and ρ < 1−ε_low)`` and
    ``ℓ(ρ, A) = −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)``:

    - ``level="sequence"`` (GSPO): ``log s_i = (1/L_i) Σ_t (logp − old)``, one clip decision per
      sequence, ``L = (1/B) Σ_i ℓ(s_i, A_i)``; ``∂L/∂logp_i,t = −A_i s_i (1−C_i) / (B L_i)``.
    - ``level="sequence_token"`` (GSPO-token): ``log s_i,t = logp_t − sg[logp_t] + sg[log s_i]``
      (value ``s_i``), per-token clip and advantages, ``L = (1/B) Σ_i (1/L_i) Σ_t ℓ(s_i,t, A_i,t)``;
      ``∂L/∂logp_i,t = −A_i,t s_i (1−C_i,t) / (B L_i)``.
    - ``level="token"`` (GRPO): ``ρ_i,t = exp(logp − old)`` per token, aggregated like
      sequence_token.

    ``agg="seq-mean-token-mean"`` weighs every sequence ``1/B``; ``agg="token-mean"`` divides the
    sum over all valid tokens by ``Σ L_i`` (with ``level="sequence"``: ``Σ_i L_i ℓ_i / Σ L_i``,
    which weighs sequences by length and warns). ``beta > 0`` adds ``β ×`` the per-token k3 KL
    ``exp(ref − logp) − (ref − logp) − 1`` aggregated by ``agg``. Advantages, ``old_logp`` and
    ``ref_logp`` are treated as constants (detached).

    Raises :class:`~forseti.errors.ValidationError` on bad shapes, dtypes, devices, a sequence
    with no valid token, non-finite values on valid tokens, ``eps_low`` outside ``[0, 1)``,
    ``eps_high < 0``, ``beta < 0``, ``beta > 0`` without ``ref_logp``, unknown level/agg.
    """
    if level not in get_args(Level):
        raise ValidationError(f"unknown level {level!r}; expected one of {get_args(Level)}")
    if agg not in get_args(Agg):
        raise ValidationError(f"unknown agg {agg!r}; expected one of {get_args(Agg)}")
    check_real("eps_low", eps_low, low=0.0)
    if eps_low >= 1.0:
        raise ValidationError(
            f"eps_low must be < 1 (the lower clip bound 1 - eps_low > 0); got {eps_low}"
        )
    check_real("eps_high", eps_high, low=0.0)
    check_real("beta", beta, low=0.0)
    if beta > 0 and ref_logp is None:
        raise ValidationError("beta > 0 needs ref_logp (the reference policy's log-probs)")
    m, adv = check_loss_inputs(logp, old_logp, mask, advantages, ref_logp, level)
    if level == "sequence" and agg == "token-mean":
        warnings.warn(
            "level='sequence' with agg='token-mean' weighs each sequence by its length L_i "
            "(GSPO weighs every sequence 1/B: use agg='seq-mean-token-mean')",
            UserWarning,
            stacklevel=2,
        )
    lengths = m.sum(dim=-1).to(logp.dtype)
    lp = zero_pad(logp, m)
    log_ratio_tok = lp - zero_pad(old_logp.detach(), m)
    log_s = log_ratio_tok.sum(dim=-1) / lengths  # (B,)
    if level == "sequence":
        ratio, a, valid = log_s.exp(), adv, torch.ones_like(m[:, 0])
    else:
        if level == "sequence_token":
            ratio = (lp - lp.detach() + log_s.detach().unsqueeze(-1)).exp()
        else:
            ratio = log_ratio_tok.exp()
        a = zero_pad(adv, m) if adv.dim() == 2 else adv.unsqueeze(-1).expand_as(ratio)
        valid = m
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    clip_low, clip_high = (a < 0) & (ratio < lo), (a > 0) & (ratio > hi)
    clipped = clip_low | clip_high
    per_unit = -a * torch.where(clipped, ratio.detach().clamp(lo, hi), ratio)
    if level != "sequence":
        pg = aggregate(per_unit, m, lengths, agg)
    elif agg == "token-mean":
        pg = (per_unit * lengths).sum() / lengths.sum()
    else:
        pg = per_unit.mean()
    kl = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logp is not None:
        with torch.set_grad_enabled(beta > 0 and torch.is_grad_enabled()):
            d = zero_pad(ref_logp.detach(), m) - lp
            kl = aggregate(d.exp() - d - 1.0, m, lengths, agg)
    loss = pg + beta * kl if beta > 0 else pg
    with torch.no_grad():
        nz = valid & (a != 0)
        denom = nz.sum().clamp_min(1).to(logp.dtype)
        low_frac = (clip_low & nz).sum() / denom
        high_frac = (clip_high & nz).sum() / denom
        r = ratio.detach()
        inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
        if adv.dim() == 1:
            adv_mean, adv_std = adv.mean(), adv.std(correction=0)
        else:
            n_tok = lengths.sum()
            adv_mean = zero_pad(adv, m).sum() / n_tok
            adv_std = (zero_pad((adv - adv_mean) ** 2, m).sum() / n_tok).sqrt()
        metrics = GSPOMetrics(
            loss=loss.detach(),
            clip_frac=(clipped & nz).sum() / denom,
            clip_frac_low=low_frac,
            clip_frac_high=high_frac,
            log_ratio_abs_mean=log_s.detach().abs().mean(),
            ratio_min=torch.where(valid, r, inf).amin(),
            ratio_max=torch.where(valid, r, -inf).amax(),
            kl=kl.detach(),
            adv_mean=adv_mean,
            adv_std=adv_std,
        )
    return loss, metrics
