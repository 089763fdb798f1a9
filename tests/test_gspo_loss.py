"""forseti.gspo.loss: the GSPO objective against hand-written per-sequence references.

Implements the numeric specifications T1–T12, T15, T16 of ``shared/design/GSPO.md``. The
references below are pure-Python loops over sequences and tokens (``math`` and Python floats), or
loops of scalar torch ops differentiated by autograd; none of them reuses the vectorised code.

Fixture (float64): B = 16 sequences (4 groups × G = 4), T = 12, lengths uniform in [1, T] (right
padding), ``old = −3·U(0,1)``, ``logp = old + 0.05·N(0,1)``, binary rewards, ε = (3e-4, 4e-4).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, fields
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forseti.errors import ValidationError
from forseti.gspo.loss import GSPOMetrics, group_advantages, gspo_loss, sequence_log_ratio

torch.set_num_threads(1)

F64 = torch.float64
PAPER_EPS = (3e-4, 4e-4)
WIDE_EPS = (0.2, 0.28)
LEVELS = ["sequence", "sequence_token", "token"]
PROPS = settings(max_examples=50, deadline=None)
Rows = list[list[float]]


# -- fixture ------------------------------------------------------------------------------------


@dataclass
class Batch:
    logp: torch.Tensor  # (B, T) leaf, requires_grad
    old: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) bool
    lengths: list[int]
    rewards: torch.Tensor  # (B,)
    group_ids: torch.Tensor  # (B,) long
    adv: torch.Tensor  # (B,) group advantages

    def leaf(self) -> torch.Tensor:
        """A fresh leaf copy of logp (gradients do not accumulate across calls)."""
        return self.logp.detach().clone().requires_grad_(True)


def make_batch(
    seed: int, *, groups: int = 4, g: int = 4, t: int = 12, noise: float = 0.05
) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    b = groups * g
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    old = -3.0 * torch.rand(b, t, generator=gen, dtype=F64)
    logp = old + noise * torch.randn(b, t, generator=gen, dtype=F64)
    rewards = torch.randint(0, 2, (b,), generator=gen).to(F64)
    group_ids = torch.arange(groups).repeat_interleave(g)
    adv = group_advantages(rewards, group_ids)
    return Batch(logp.requires_grad_(True), old, mask, lengths.tolist(), rewards, group_ids, adv)


# -- pure-Python references ---------------------------------------------------------------------


def clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def clipped(a: float, rho: float, el: float, eh: float) -> bool:
    """C = 1: the clipped branch is active (zero gradient)."""
    return (a > 0 and rho > 1 + eh) or (a < 0 and rho < 1 - el)


def ref_log_s(logp: Rows, old: Rows, lengths: list[int]) -> list[float]:
    return [math.fsum(logp[i][t] - old[i][t] for t in range(n)) / n for i, n in enumerate(lengths)]


@dataclass
class Ref:
    loss: float
    grad: Rows  # closed-form dL/dlogp, 0 on padding
    clipped: list[list[bool]]  # per sequence (one entry) or per valid token
    ratios: list[float]  # per unit


def ref_sequence(b: Batch, adv: list[float], el: float, eh: float, token_mean: bool = False) -> Ref:
    """GSPO: one ratio and one clip decision per sequence (T1/T2)."""
    logp, old, lengths = b.logp.tolist(), b.old.tolist(), b.lengths
    n_seq, n_tok, t_max = len(lengths), sum(lengths), len(logp[0])
    loss, grad, flags, ratios = 0.0, [], [], []
    for i, (n, a) in enumerate(zip(lengths, adv, strict=True)):
        s = math.exp(ref_log_s(logp, old, lengths)[i])
        c = clipped(a, s, el, eh)
        term = -min(s * a, clip(s, 1 - el, 1 + eh) * a)
        weight = n / n_tok if token_mean else 1 / n_seq
        loss += weight * term
        g = 0.0 if c else -a * s * weight / n
        grad.append([g if t < n else 0.0 for t in range(t_max)])
        flags.append([c])
        ratios.append(s)
    return Ref(loss, grad, flags, ratios)


def ref_tokens(
    b: Batch,
    adv_tok: Rows,
    el: float,
    eh: float,
    *,
    sequence_ratio: bool,
    token_mean: bool = False,
) -> Ref:
    """GSPO-token (sequence_ratio=True) or GRPO (False): per-token clip decisions (T15)."""
    logp, old, lengths = b.logp.tolist(), b.old.tolist(), b.lengths
    n_seq, n_tok, t_max = len(lengths), sum(lengths), len(logp[0])
    log_s = ref_log_s(logp, old, lengths)
    loss, grad, flags, ratios = 0.0, [], [], []
    for i, n in enumerate(lengths):
        row, row_flags = [0.0] * t_max, []
        weight = 1 / n_tok if token_mean else 1 / (n_seq * n)
        for t in range(n):
            rho = math.exp(log_s[i]) if sequence_ratio else math.exp(logp[i][t] - old[i][t])
            a = adv_tok[i][t]
            c = clipped(a, rho, el, eh)
            loss += -weight * min(rho * a, clip(rho, 1 - el, 1 + eh) * a)
            row[t] = 0.0 if c else -a * rho * weight
            row_flags.append(c)
            ratios.append(rho)
        grad.append(row)
        flags.append(row_flags)
    return Ref(loss, grad, flags, ratios)


def per_token(adv: torch.Tensor, t: int) -> Rows:
    return [[a] * t for a in adv.tolist()]


def loop_torch_sequence(
    logp: torch.Tensor, b: Batch, adv: list[float], el: float, eh: float
) -> torch.Tensor:
    """GSPO as a loop of scalar torch ops (min / clamp, no indicator), for autograd (T1)."""
    total = torch.zeros((), dtype=F64)
    for i, n in enumerate(b.lengths):
        s = ((logp[i, :n] - b.old[i, :n]).sum() / n).exp()
        total = total - torch.minimum(s * adv[i], s.clamp(1 - el, 1 + eh) * adv[i])
    return total / len(b.lengths)


def grad_of(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, leaf)
    return g


def close(x: float, y: float, tol: float = 1e-12) -> bool:
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def assert_grad(got: torch.Tensor, want: list[Any], tol: float = 1e-12) -> None:
    """``got`` equals the nested list ``want`` (same shape) to ``tol``."""
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=tol, atol=tol)


SEEDS = [0, 1, 2, 3]


# -- group advantages (T9, trap 8, trap 10) -----------------------------------------------------


def ref_advantages(rewards: list[float], ids: list[int], eps: float, scale: str) -> list[float]:
    members: dict[int, list[float]] = {}
    for r, k in zip(rewards, ids, strict=True):
        members.setdefault(k, []).append(r)
    out = []
    for r, k in zip(rewards, ids, strict=True):
        grp = members[k]
        if max(grp) == min(grp):
            out.append(0.0)
            continue
        mean = math.fsum(grp) / len(grp)
        if scale == "none":
            out.append(r - mean)
        elif scale == "batch":
            out.append((r - mean) / (statistics.stdev(rewards) + eps))
        else:
            out.append((r - mean) / (statistics.stdev(grp) + eps))
    return out


@pytest.mark.parametrize("scale", ["group", "none", "batch"])
@pytest.mark.parametrize("eps", [1e-4, 1e-6, 0.0])
def test_group_advantages_match_a_hand_loop(scale: Any, eps: float) -> None:
    gen = torch.Generator().manual_seed(7)
    rewards = torch.rand(24, generator=gen, dtype=F64) * 3 - 1
    ids = torch.tensor([5, -2, 9, 1000] * 6)[torch.randperm(24, generator=gen)]
    got = group_advantages(rewards, ids, eps=eps, scale=scale)
    want = ref_advantages(rewards.tolist(), ids.tolist(), eps, scale)
    assert got.dtype == F64 and got.shape == (24,)
    assert_grad(got, want)


def test_group_advantages_use_the_unbiased_std() -> None:
    got = group_advantages(torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0, 0]), eps=0.0)
    # mean 0.5, unbiased std sqrt(0.5): A = ±0.5/sqrt(0.5) = ±sqrt(0.5) (biased std would give ±1)
    assert torch.allclose(got, torch.tensor([math.sqrt(0.5), -math.sqrt(0.5)], dtype=F64))


@pytest.mark.parametrize("seed", SEEDS)
def test_t9_advantages_sum_to_zero_per_group(seed: int) -> None:
    b = make_batch(seed)
    sums = torch.zeros(4, dtype=F64).index_add(0, b.group_ids, b.adv)
    assert sums.abs().max() < 1e-12
    # and they are the hand loop's
    want = ref_advantages(b.rewards.tolist(), b.group_ids.tolist(), 1e-4, "group")
    assert_grad(b.adv, want)


@pytest.mark.parametrize("scale", ["group", "none", "batch"])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, -7.3])
def test_t9_equal_rewards_give_exactly_zero(scale: Any, value: float) -> None:
    rewards = torch.tensor([value] * 3 + [0.0, 1.0, 1.0], dtype=F64)
    adv = group_advantages(rewards, torch.tensor([3, 3, 3, 8, 8, 8]), eps=0.0, scale=scale)
    assert torch.isfinite(adv).all()
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert (adv[3:] != 0).all()


def test_t7_group_ids_shuffled_and_non_contiguous() -> None:
    b = make_batch(3)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([40, -1, 7, 123])[b.group_ids]  # arbitrary labels
    shuffled = group_advantages(b.rewards[perm], labels[perm])
    torch.testing.assert_close(shuffled, b.adv[perm], rtol=1e-12, atol=1e-12)
    assert (shuffled != 0).any()


def test_t10_group_of_one_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"G >= 2\); group 5 has 1"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([2, 2, 5]))
    with pytest.raises(ValueError, match="at least 2 responses per prompt"):
        group_advantages(torch.tensor([1.0]), torch.tensor([0]))


@pytest.mark.parametrize(
    ("rewards", "ids", "kwargs", "match"),
    [
        (torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0]), {}, r"same length.*\(2,\).*\(3,\)"),
        (torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long), {}, "1-D"),
        (torch.tensor([1, 0]), torch.tensor([0, 0]), {}, "floating dtype"),
        (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), {}, "integer dtype"),
        (torch.tensor([1.0, 0.0]), torch.tensor([True, True]), {}, "integer dtype"),
        (torch.tensor([1.0, math.nan]), torch.tensor([0, 0]), {}, "non-finite"),
        (torch.tensor([1.0, math.inf]), torch.tensor([0, 0]), {}, "non-finite"),
        (torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), {"eps": -1e-4}, "eps must be"),
        (torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), {"eps": math.nan}, "eps must be"),
        (torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), {"scale": "prompt"}, "unknown scale"),
        (torch.zeros(0), torch.zeros(0, dtype=torch.long), {}, "empty"),
        ([1.0, 0.0], torch.tensor([0, 0]), {}, "torch.Tensor"),
    ],
)
def test_group_advantages_validation(rewards: Any, ids: Any, kwargs: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        group_advantages(rewards, ids, **kwargs)


# -- T1, T2: the vectorised loss and gradient == the per-sequence loops -------------------------


@pytest.mark.parametrize("eps", [PAPER_EPS, WIDE_EPS])
@pytest.mark.parametrize("seed", SEEDS)
def test_t1_t2_sequence_loss_and_gradient(seed: int, eps: tuple[float, float]) -> None:
    b, (el, eh) = make_batch(seed), eps
    adv = b.adv.tolist()
    ref = ref_sequence(b, adv, el, eh)
    leaf = b.leaf()
    loss, metrics = gspo_loss(leaf, b.old, b.mask, b.adv, eps_low=el, eps_high=eh)
    got = grad_of(loss, leaf)
    # T1: value == the pure-Python loop and == the scalar-torch loop; gradient == its autograd
    assert close(loss.item(), ref.loss)
    loop_leaf = b.leaf()
    loop_loss = loop_torch_sequence(loop_leaf, b, adv, el, eh)
    assert close(loss.item(), loop_loss.item())
    torch.testing.assert_close(got, grad_of(loop_loss, loop_leaf), rtol=1e-12, atol=1e-12)
    # T2: the closed form −A_i s_i C_i / (N L_i) on valid tokens, exactly 0 on padding
    assert_grad(got, ref.grad)
    assert (got[~b.mask] == 0).all()
    assert loss.dtype == F64 and metrics.loss.item() == loss.item()
    if eps == PAPER_EPS:  # the fixture really exercises both branches
        assert any(c for (c,) in ref.clipped) and not all(c for (c,) in ref.clipped)


def test_sequence_log_ratio_is_the_masked_mean() -> None:
    b = make_batch(0)
    got = sequence_log_ratio(b.logp, b.old, b.mask)
    assert_grad(got, ref_log_s(b.logp.tolist(), b.old.tolist(), b.lengths))


# -- T3: GSPO-token == GSPO when A is per sequence -----------------------------------------------


@pytest.mark.parametrize("eps", [PAPER_EPS, WIDE_EPS])
@pytest.mark.parametrize("seed", SEEDS)
def test_t3_gspo_token_equals_gspo(seed: int, eps: tuple[float, float]) -> None:
    b, (el, eh) = make_batch(seed), eps
    seq_leaf, tok_leaf = b.leaf(), b.leaf()
    seq, _ = gspo_loss(seq_leaf, b.old, b.mask, b.adv, eps_low=el, eps_high=eh)
    tok, _ = gspo_loss(
        tok_leaf, b.old, b.mask, b.adv, eps_low=el, eps_high=eh, level="sequence_token"
    )
    assert close(seq.item(), tok.item())
    torch.testing.assert_close(grad_of(seq, seq_leaf), grad_of(tok, tok_leaf), rtol=1e-12, atol=0)
    # the same with the advantages given per token (constant within each sequence)
    tok2_leaf = b.leaf()
    adv_tok = b.adv[:, None].expand(-1, 12)
    tok2, _ = gspo_loss(
        tok2_leaf, b.old, b.mask, adv_tok, eps_low=el, eps_high=eh, level="sequence_token"
    )
    assert close(seq.item(), tok2.item())
    seq2_leaf = b.leaf()
    seq2, _ = gspo_loss(seq2_leaf, b.old, b.mask, b.adv, eps_low=el, eps_high=eh)
    torch.testing.assert_close(
        grad_of(tok2, tok2_leaf), grad_of(seq2, seq2_leaf), rtol=1e-12, atol=0
    )


# -- T15: GSPO-token with token-varying advantages ----------------------------------------------


@pytest.mark.parametrize("eps", [PAPER_EPS, WIDE_EPS])
@pytest.mark.parametrize("seed", SEEDS)
def test_t15_gspo_token_with_token_advantages(seed: int, eps: tuple[float, float]) -> None:
    b, (el, eh) = make_batch(seed), eps
    gen = torch.Generator().manual_seed(100 + seed)
    adv_tok = torch.randn(16, 12, generator=gen, dtype=F64)
    adv_tok[~b.mask] = math.nan  # padding advantages are never read
    ref = ref_tokens(b, adv_tok.tolist(), el, eh, sequence_ratio=True)
    leaf = b.leaf()
    loss, _ = gspo_loss(
        leaf, b.old, b.mask, adv_tok, eps_low=el, eps_high=eh, level="sequence_token"
    )
    got = grad_of(loss, leaf)
    assert close(loss.item(), ref.loss)
    assert_grad(got, ref.grad)  # −A_t s_i C_i,t / (N L_i)
    assert (got[~b.mask] == 0).all()


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_token_level_matches_a_loop(seed: int, agg: Any) -> None:
    b = make_batch(seed, noise=0.3)
    gen = torch.Generator().manual_seed(seed)
    adv_tok = torch.randn(16, 12, generator=gen, dtype=F64)
    for adv, rows in [(b.adv, per_token(b.adv, 12)), (adv_tok, adv_tok.tolist())]:
        ref = ref_tokens(b, rows, 0.2, 0.28, sequence_ratio=False, token_mean=agg == "token-mean")
        leaf = b.leaf()
        loss, m = gspo_loss(
            leaf, b.old, b.mask, adv, eps_low=0.2, eps_high=0.28, level="token", agg=agg
        )
        assert close(loss.item(), ref.loss)
        assert_grad(grad_of(loss, leaf), ref.grad)
        assert close(m.ratio_min.item(), min(ref.ratios))
        assert close(m.ratio_max.item(), max(ref.ratios))


# -- T4: on-policy ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_t4_on_policy_loss_is_minus_mean_advantage(seed: int) -> None:
    b = make_batch(seed)
    adv = 3.0 * torch.randn(16, generator=torch.Generator().manual_seed(seed), dtype=F64) + 1.0
    old = b.logp.detach().clone()
    leaf, grpo_leaf = b.leaf(), b.leaf()
    loss, m = gspo_loss(leaf, old, b.mask, adv)
    grpo, _ = gspo_loss(grpo_leaf, old, b.mask, adv, level="token")
    assert close(loss.item(), -math.fsum(adv.tolist()) / 16)
    g, g_grpo = grad_of(loss, leaf), grad_of(grpo, grpo_leaf)
    torch.testing.assert_close(g, g_grpo, rtol=1e-12, atol=0)
    assert_grad(
        g,
        [
            [-a / (16 * n) if t < n else 0.0 for t in range(12)]
            for a, n in zip(adv.tolist(), b.lengths, strict=True)
        ],
    )
    f = m.to_floats()
    assert f["clip_frac"] == 0.0 and f["ratio_min"] == f["ratio_max"] == 1.0
    assert f["log_ratio_abs_mean"] == 0.0


# -- T5: all lengths 1 ⇒ GSPO == GRPO -----------------------------------------------------------


@pytest.mark.parametrize("eps", [PAPER_EPS, WIDE_EPS])
@pytest.mark.parametrize("seed", SEEDS)
def test_t5_length_one_gspo_is_grpo(seed: int, eps: tuple[float, float]) -> None:
    b = make_batch(seed, noise=0.5)
    mask = torch.zeros_like(b.mask)
    mask[:, 0] = True
    seq_leaf, tok_leaf = b.leaf(), b.leaf()
    kw: dict[str, Any] = {"eps_low": eps[0], "eps_high": eps[1]}
    seq, ms = gspo_loss(seq_leaf, b.old, mask, b.adv, **kw)
    tok, mt = gspo_loss(tok_leaf, b.old, mask, b.adv, level="token", **kw)
    assert seq.item() == tok.item()
    assert torch.equal(grad_of(seq, seq_leaf), grad_of(tok, tok_leaf))
    assert ms.to_floats() == mt.to_floats()


# -- T6: padding invariance ---------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("pads", [(50.0, -50.0), (math.inf, -math.inf), (math.nan, math.nan)])
def test_t6_padding_values_do_not_matter(level: Any, pads: tuple[float, float]) -> None:
    b = make_batch(2)
    ref_leaf, leaf = b.leaf(), b.leaf()
    want, _ = gspo_loss(ref_leaf, b.old, b.mask, b.adv, level=level, beta=0.1, ref_logp=b.old)
    logp = torch.where(b.mask, leaf, pads[0])
    old = torch.where(b.mask, b.old, pads[1])
    got, m = gspo_loss(logp, old, b.mask, b.adv, level=level, beta=0.1, ref_logp=old)
    assert got.item() == want.item()
    g = grad_of(got, leaf)
    assert (g[~b.mask] == 0).all() and not torch.signbit(g[~b.mask]).any()
    assert torch.equal(g, grad_of(want, ref_leaf))
    assert all(math.isfinite(v) for v in m.to_floats().values())


# -- T8: repeated token log-ratios --------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_t8_repeating_log_ratios_keeps_s(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    x = 0.05 * torch.randn(4, generator=gen, dtype=F64)
    old = -3.0 * torch.rand(4 * k, generator=gen, dtype=F64)
    logp = old + x.repeat(k)  # the same 4 token log-ratios, k times over
    short = torch.stack([torch.cat([old[:4] + x, torch.zeros(4 * k - 4, dtype=F64)]), logp])
    olds = torch.stack([torch.cat([old[:4], torch.zeros(4 * k - 4, dtype=F64)]), old])
    mask = torch.zeros(2, 4 * k, dtype=torch.bool)
    mask[0, :4] = True
    mask[1] = True
    log_s = sequence_log_ratio(short, olds, mask)
    assert abs(log_s[0].item() - log_s[1].item()) < 1e-15
    assert abs(log_s[0].item() - math.fsum(x.tolist()) / 4) < 1e-15
    _, m = gspo_loss(short, olds, mask, torch.tensor([1.0, -1.0], dtype=F64))
    assert close(m.ratio_min.item(), m.ratio_max.item(), 1e-14)  # both sequences have one s


# -- T10: the four clip corners -----------------------------------------------------------------


def test_t10_clip_branches() -> None:
    el, eh, n = 3e-4, 4e-4, 3
    # (A, s): clipped high, clipped low, two unclipped off-side corners, inside the band
    cases = [(1.0, 1.01), (-1.0, 0.99), (1.0, 0.99), (-1.0, 1.01), (1.0, 1.0001), (-2.0, 0.9999)]
    old = torch.full((len(cases), n), -1.0, dtype=F64)
    leaf = (old + torch.tensor([[math.log(s)] * n for _, s in cases], dtype=F64)).requires_grad_()
    adv = torch.tensor([a for a, _ in cases], dtype=F64)
    mask = torch.ones(len(cases), n, dtype=torch.bool)
    loss, m = gspo_loss(leaf, old, mask, adv, eps_low=el, eps_high=eh)
    g = grad_of(loss, leaf)
    assert (g[0] == 0).all() and (g[1] == 0).all()  # A>0, s>1+ε_h ; A<0, s<1−ε_l
    for i, (a, s) in enumerate(cases[2:], start=2):
        torch.testing.assert_close(g[i], torch.full((n,), -a * s / (len(cases) * n), dtype=F64))
    terms = [1 + eh, -(1 - el), 0.99, -1.01, 1.0001, -2 * 0.9999]  # min(sA, clip(s)A)
    assert close(loss.item(), -math.fsum(terms) / len(cases))
    assert m.clip_frac_high.item() == m.clip_frac_low.item() == 1 / 6


# -- T11: the clip-fraction metric --------------------------------------------------------------


@pytest.mark.parametrize("eps", [PAPER_EPS, (0.01, 0.012)])
@pytest.mark.parametrize("seed", SEEDS)
def test_t11_clip_fraction_metric(seed: int, eps: tuple[float, float]) -> None:
    b, (el, eh) = make_batch(seed), eps
    adv = b.adv.clone()
    adv[4:8] = 0.0  # a zero-variance group: neither counted nor in the denominator
    rows = adv.tolist()
    ref = ref_sequence(b, rows, el, eh)
    nonzero = [i for i, a in enumerate(rows) if a != 0]
    _, m = gspo_loss(b.logp, b.old, b.mask, adv, eps_low=el, eps_high=eh)
    f = m.to_floats()
    assert f["clip_frac"] == sum(ref.clipped[i][0] for i in nonzero) / len(nonzero)
    low = sum(rows[i] < 0 and ref.ratios[i] < 1 - el for i in nonzero) / len(nonzero)
    high = sum(rows[i] > 0 and ref.ratios[i] > 1 + eh for i in nonzero) / len(nonzero)
    assert (f["clip_frac_low"], f["clip_frac_high"]) == (low, high)
    assert close(f["ratio_min"], min(ref.ratios)) and close(f["ratio_max"], max(ref.ratios))
    log_s = ref_log_s(b.logp.tolist(), b.old.tolist(), b.lengths)
    assert close(f["log_ratio_abs_mean"], math.fsum(map(abs, log_s)) / 16)
    assert close(f["adv_mean"], statistics.fmean(rows))
    assert close(f["adv_std"], statistics.pstdev(rows))
    assert f["kl"] == 0.0
    # token levels count tokens (among tokens with A ≠ 0)
    ref_t = ref_tokens(b, per_token(adv, 12), el, eh, sequence_ratio=False)
    flags = [c for i, r in enumerate(ref_t.clipped) if rows[i] != 0 for c in r]
    _, mt = gspo_loss(b.logp, b.old, b.mask, adv, eps_low=el, eps_high=eh, level="token")
    assert close(mt.clip_frac.item(), sum(flags) / len(flags))


def test_clip_fraction_is_zero_when_every_advantage_is_zero() -> None:
    b = make_batch(0)
    _, m = gspo_loss(b.logp, b.old, b.mask, torch.zeros(16, dtype=F64))
    assert m.clip_frac.item() == 0.0 and m.adv_std.item() == 0.0


# -- T12: fp32 agrees with fp64 -----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("eps", [PAPER_EPS, WIDE_EPS])
@pytest.mark.parametrize("seed", SEEDS)
def test_t12_fp32_agrees_with_fp64(seed: int, eps: tuple[float, float], level: Any) -> None:
    """The same (fp32-representable) inputs computed in fp32 and in fp64.

    Gradients, ratios and metrics agree elementwise to 1e-6 relative. The loss is a sum of
    terms ``A_i s_i`` whose exact total nearly cancels (Σ A = 0 per group), so its difference
    is measured relative to the size of those terms, ``mean |A_i s_i|``.
    """
    b, (el, eh) = make_batch(seed), eps
    lp32, old32 = b.logp.detach().float(), b.old.float()
    out = {}
    for dtype in (torch.float32, F64):
        leaf = lp32.to(dtype).requires_grad_(True)
        adv = group_advantages(b.rewards.to(dtype), b.group_ids)
        loss, m = gspo_loss(
            leaf, old32.to(dtype), b.mask, adv, eps_low=el, eps_high=eh, level=level
        )
        assert loss.dtype == dtype and m.ratio_max.dtype == dtype
        out[dtype] = (loss, grad_of(loss, leaf), m.to_floats(), adv)
    (l32, g32, m32, a32), (l64, g64, m64, a64) = out[torch.float32], out[F64]
    assert torch.equal(g32 == 0, g64 == 0)  # the same clip decisions
    torch.testing.assert_close(g32.double(), g64, rtol=1e-6, atol=0)
    torch.testing.assert_close(a32.double(), a64, rtol=1e-6, atol=0)
    scale = (a64 * sequence_log_ratio(lp32.double(), old32.double(), b.mask).exp()).abs().mean()
    assert abs(l32.item() - l64.item()) <= 1e-6 * scale.item()
    for key in ("ratio_min", "ratio_max", "adv_std", "clip_frac", "clip_frac_low"):
        assert close(m32[key], m64[key], 1e-6)
    assert abs(m32["log_ratio_abs_mean"] - m64["log_ratio_abs_mean"]) <= 1e-6 * 0.05


# -- T16: zero advantages ⇒ zero gradient, parameters unchanged ---------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_t16_zero_advantages_leave_parameters_bit_identical(level: Any) -> None:
    torch.manual_seed(0)
    vocab, d, b, t = 7, 5, 8, 6
    net = torch.nn.Linear(d, vocab).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(b, t, d, generator=gen, dtype=F64)
    targets = torch.randint(0, vocab, (b, t), generator=gen)
    mask = torch.arange(t)[None, :] < torch.randint(1, t + 1, (b, 1), generator=gen)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        old = torch.log_softmax(net(x), -1).gather(-1, targets[..., None]).squeeze(-1) - 0.1
    logp = torch.log_softmax(net(x), -1).gather(-1, targets[..., None]).squeeze(-1)
    rewards = torch.ones(b, dtype=F64)  # every group has zero variance
    adv = group_advantages(rewards, torch.arange(b // 2).repeat_interleave(2))
    assert (adv == 0).all()
    loss, _ = gspo_loss(logp, old, mask, adv, level=level, eps_low=0.2, eps_high=0.2)
    opt.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None and (p.grad == 0).all() for p in net.parameters())
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))


# -- KL term and aggregation --------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("level", ["sequence_token", "token"])
def test_kl_k3_term_value_and_gradient(agg: Any, level: Any) -> None:
    b, beta = make_batch(1), 0.05
    ref_lp = b.old + 0.1 * torch.randn(
        16, 12, generator=torch.Generator().manual_seed(9), dtype=F64
    )
    token_mean = agg == "token-mean"
    pg = ref_tokens(
        b, per_token(b.adv, 12), 0.2, 0.2, sequence_ratio=level != "token", token_mean=token_mean
    )
    logp, rl, n_tok = b.logp.tolist(), ref_lp.tolist(), sum(b.lengths)
    kl, grad = 0.0, [row[:] for row in pg.grad]
    for i, n in enumerate(b.lengths):
        w = 1 / n_tok if token_mean else 1 / (16 * n)
        for t in range(n):
            dlt = rl[i][t] - logp[i][t]
            kl += w * (math.exp(dlt) - dlt - 1)
            grad[i][t] += beta * w * (1 - math.exp(dlt))
    leaf = b.leaf()
    loss, m = gspo_loss(
        leaf,
        b.old,
        b.mask,
        b.adv,
        eps_low=0.2,
        eps_high=0.2,
        level=level,
        agg=agg,
        beta=beta,
        ref_logp=ref_lp,
    )
    assert close(loss.item(), pg.loss + beta * kl)
    assert close(m.kl.item(), kl) and kl > 0
    assert_grad(grad_of(loss, leaf), grad)
    # beta = 0 with a reference: KL reported, not in the loss
    loss0, m0 = gspo_loss(
        b.logp,
        b.old,
        b.mask,
        b.adv,
        eps_low=0.2,
        eps_high=0.2,
        level=level,
        agg=agg,
        ref_logp=ref_lp,
    )
    assert close(loss0.item(), pg.loss) and close(m0.kl.item(), kl)


def test_sequence_level_token_mean_warns_and_weighs_by_length() -> None:
    b = make_batch(0)
    with pytest.warns(UserWarning, match="weighs each sequence by its length"):
        loss, _ = gspo_loss(b.logp, b.old, b.mask, b.adv, agg="token-mean")
    ref = ref_sequence(b, b.adv.tolist(), *PAPER_EPS, token_mean=True)
    assert close(loss.item(), ref.loss)
    leaf = b.leaf()
    with pytest.warns(UserWarning):
        loss, _ = gspo_loss(leaf, b.old, b.mask, b.adv, agg="token-mean")
    assert_grad(grad_of(loss, leaf), ref.grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for level in ("sequence_token", "token"):
            gspo_loss(b.logp, b.old, b.mask, b.adv, level=level, agg="token-mean")
        gspo_loss(b.logp, b.old, b.mask, b.adv)


def test_numeric_mask_equals_bool_mask() -> None:
    b = make_batch(1)
    want, _ = gspo_loss(b.logp, b.old, b.mask, b.adv)
    for mask in (b.mask.double(), b.mask.float(), b.mask.long()):
        assert gspo_loss(b.logp, b.old, mask, b.adv)[0].item() == want.item()


def test_metrics_are_detached_zero_dim_tensors() -> None:
    b = make_batch(1)
    _, m = gspo_loss(b.logp, b.old, b.mask, b.adv)
    assert isinstance(m, GSPOMetrics)
    for f in fields(m):
        v = getattr(m, f.name)
        assert v.shape == () and not v.requires_grad and v.dtype == F64
    floats = m.to_floats()
    assert list(floats) == [f.name for f in fields(m)]
    assert all(type(v) is float for v in floats.values())
    assert set(vars(m)) == set(floats)  # the trainer reads vars(metrics)


# -- validation ---------------------------------------------------------------------------------


def _bad_inputs() -> list[Any]:
    b = make_batch(0)
    lp, old, mask, adv = b.logp.detach(), b.old, b.mask, b.adv
    empty = mask.clone()
    empty[3] = False
    nan_lp, nan_old, nan_adv = lp.clone(), old.clone(), adv.clone()
    nan_lp[0, 0] = math.nan
    nan_old[1, 0] = math.nan
    nan_adv[2] = math.inf
    two = mask.double()
    two[0, 0] = 2.0
    cases: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        ((lp, old[:, :5], mask, adv), {}, r"old_logp has shape \(16, 5\), logp has \(16, 12\)"),
        ((lp, old, mask[:, :5], adv), {}, r"mask has shape \(16, 5\), expected \(16, 12\)"),
        ((lp, old, mask, adv[:5]), {}, r"advantages has shape \(5,\)"),
        ((lp, old, mask, adv[:, None].expand(-1, 12)), {}, "per-token advantages"),
        ((lp[0], old[0], mask[0], adv[:1]), {}, r"shape \(B, T\)"),
        ((lp, old, empty, adv), {}, r"sequence\(s\) \[3\].*no valid token"),
        ((nan_lp, old, mask, adv), {}, r"\[0\].*non-finite logp"),
        ((lp, nan_old, mask, adv), {}, r"\[1\].*non-finite old_logp"),
        ((lp, old, mask, nan_adv), {}, r"\[2\].*non-finite advantages"),
        ((lp, old, mask, adv), {"beta": 0.1, "ref_logp": nan_old}, "non-finite ref_logp"),
        ((lp, old, mask, adv), {"eps_low": -0.1}, "eps_low must be"),
        ((lp, old, mask, adv), {"eps_low": 1.0}, "eps_low must be < 1"),
        ((lp, old, mask, adv), {"eps_high": -1e-4}, "eps_high must be"),
        ((lp, old, mask, adv), {"eps_high": math.nan}, "eps_high must be"),
        ((lp, old, mask, adv), {"beta": 0.1}, "beta > 0 needs ref_logp"),
        ((lp, old, mask, adv), {"beta": -0.1, "ref_logp": old}, "beta must be"),
        ((lp, old, mask, adv), {"level": "seq"}, "unknown level 'seq'"),
        ((lp, old, mask, adv), {"agg": "token-sum"}, "unknown agg 'token-sum'"),
        ((lp.long(), old, mask, adv), {}, "logp must have a floating dtype"),
        ((lp, old.long(), mask, adv), {}, "old_logp must have a floating dtype"),
        ((lp, old.float(), mask, adv), {}, "old_logp is torch.float32 but logp is torch.float64"),
        ((lp, old, mask, adv.long()), {}, "advantages must have a floating dtype"),
        ((lp, old, two, adv), {}, "only 0 and 1"),
        ((lp, old, mask, adv), {"ref_logp": old[:, :3]}, r"ref_logp has shape \(16, 3\)"),
        ((lp.tolist(), old, mask, adv), {}, "logp must be a torch.Tensor"),
    ]
    return [pytest.param(*c, id=c[2][:40]) for c in cases]


@pytest.mark.parametrize(("args", "kwargs", "match"), _bad_inputs())
def test_gspo_loss_validation(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        gspo_loss(*args, **kwargs)


# -- Hypothesis properties (T4, T5, T6, T7) -----------------------------------------------------


@dataclass
class Drawn:
    logp: torch.Tensor
    old: torch.Tensor
    mask: torch.Tensor
    adv: torch.Tensor
    rewards: torch.Tensor
    ids: torch.Tensor
    eps: tuple[float, float]
    level: Any


@st.composite
def drawn(draw: st.DrawFn) -> Drawn:
    groups, g, t = draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(1, 6))
    b = groups * g
    lengths = draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    old = -3.0 * torch.rand(b, t, generator=gen, dtype=F64)
    logp = old + draw(st.sampled_from([0.0, 0.05, 0.5])) * torch.randn(
        b, t, generator=gen, dtype=F64
    )
    rewards = torch.tensor(
        draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=b, max_size=b)), dtype=F64
    )
    labels = torch.tensor(
        draw(st.lists(st.integers(-50, 50), min_size=groups, max_size=groups, unique=True))
    )
    ids = labels.repeat_interleave(g)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    eps = draw(st.sampled_from([PAPER_EPS, WIDE_EPS, (0.0, 0.0)]))
    level = draw(st.sampled_from(LEVELS))
    return Drawn(logp, old, mask, group_advantages(rewards, ids), rewards, ids, eps, level)


def _loss(
    d: Drawn,
    logp: torch.Tensor,
    old: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    **kw: Any,
) -> torch.Tensor:
    return gspo_loss(
        logp, old, mask, adv, eps_low=d.eps[0], eps_high=d.eps[1], level=d.level, **kw
    )[0]


@PROPS
@given(drawn(), st.integers(0, 4), st.sampled_from([50.0, 1e30, math.inf]))
def test_t6_property_padding_invariance(d: Drawn, extra: int, junk: float) -> None:
    b = d.mask.shape[0]
    leaf = d.logp.clone().requires_grad_(True)
    want = _loss(d, leaf, d.old, d.mask, d.adv)
    big = torch.cat([leaf, torch.zeros(b, extra, dtype=F64)], dim=1)
    big_old = torch.cat([d.old, torch.zeros(b, extra, dtype=F64)], dim=1)
    big_mask = torch.cat([d.mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1)
    big = torch.where(big_mask, big, junk)
    big_old = torch.where(big_mask, big_old, -junk)
    got = _loss(d, big, big_old, big_mask, d.adv)
    assert close(got.item(), want.item())
    g_got = torch.autograd.grad(got, leaf)[0]
    leaf2 = d.logp.clone().requires_grad_(True)
    g_want = torch.autograd.grad(_loss(d, leaf2, d.old, d.mask, d.adv), leaf2)[0]
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-15)
    assert (g_got[~d.mask] == 0).all()


@PROPS
@given(drawn(), st.randoms(use_true_random=False))
def test_t7_property_permutation_invariance(d: Drawn, rnd: Any) -> None:
    order = list(range(d.mask.shape[0]))
    rnd.shuffle(order)
    p = torch.tensor(order)
    adv_p = group_advantages(d.rewards[p], d.ids[p])
    torch.testing.assert_close(adv_p, d.adv[p], rtol=1e-12, atol=1e-12)
    want = _loss(d, d.logp, d.old, d.mask, d.adv)
    got = _loss(d, d.logp[p], d.old[p], d.mask[p], adv_p)
    assert close(got.item(), want.item())


@PROPS
@given(drawn())
def test_t5_property_length_one_gspo_is_grpo(d: Drawn) -> None:
    mask = torch.zeros_like(d.mask)
    mask[:, 0] = True
    kw: dict[str, Any] = {"eps_low": d.eps[0], "eps_high": d.eps[1]}
    a, b = d.logp.clone().requires_grad_(True), d.logp.clone().requires_grad_(True)
    seq = gspo_loss(a, d.old, mask, d.adv, level="sequence", **kw)[0]
    tok = gspo_loss(b, d.old, mask, d.adv, level="token", **kw)[0]
    assert seq.item() == tok.item()
    assert torch.equal(torch.autograd.grad(seq, a)[0], torch.autograd.grad(tok, b)[0])


@PROPS
@given(drawn(), st.lists(st.floats(-5, 5), min_size=12, max_size=12))
def test_t4_property_on_policy_loss(d: Drawn, values: list[float]) -> None:
    adv = torch.tensor(values[: d.mask.shape[0]], dtype=F64)  # arbitrary, not normalised
    loss, m = gspo_loss(
        d.logp, d.logp.clone(), d.mask, adv, eps_low=d.eps[0], eps_high=d.eps[1], level=d.level
    )
    assert close(loss.item(), -math.fsum(adv.tolist()) / adv.numel())
    assert m.clip_frac.item() == 0.0
