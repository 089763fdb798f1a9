"""B3: the speed and peak memory of the robust aggregation rules (``forseti.consensus``).

Every rule runs on float32 ``(n, d)`` inputs, ``x = mu + N(0, I)`` with one offset ``mu`` shared
by all rows (like the weights or gradients of one model), ``f = n // 5``, for n in {16, 64} x
d in {1e5, 1e6} (quick, CI) and additionally d = 1e7 at n = 16 (full run). The rules: Mean,
CoordinateMedian, TrimmedMean(f), Krum(f), MultiKrum(f), GeometricMedian (defaults: median
start, up to 100 Weiszfeld iterations), Bulyan(f), CenteredClipping (3 iterations, adaptive
radius, reset before every call), ``default_rule(f)`` (NNM then TrimmedMean), and the shared
distance step ``pairwise_sq_distances``.

Reported per (rule, n, d): ms per call, ns per element (call time / (n * d)) and the peak extra
memory of a call as a multiple of the input's size (the benchmark's own table, printed first;
the main table has ns per element, the ratio to one baseline and the targets). Memory is the
process's resident-set high water mark (``VmHWM`` in ``/proc/self/status``, reset through
``/proc/self/clear_refs`` right before the call, after glibc's ``malloc_trim(0)``) minus the
resident set just before the call: it counts every page torch touches on the CPU (tracemalloc
sees none of them), the returned vector included. Sanity check in the printed table:
``torch.sort(x, 0)`` measures 3.0x (values + int64 indices). Linux only; elsewhere blank.

Baselines, in the same process on the same input, timed interleaved with the rules:

* ``x.mean(0)`` (the floor for Mean);
* ``x @ x.T`` (one GEMM: what the Gram-based rules should cost);
* ``torch.median(x, dim=0)`` and ``torch.sort(x, dim=0)`` (+ the mean of the kept rows for the
  trimmed mean): raw torch order statistics, up to n * d = 7e7 (the plain sort to 2e7);
* ByzFL's aggregators where installed (``tests/byzfl_ref.py``), up to n * d = 2e7 (2-6 s a call
  beyond): Average, Median (it calls ``torch.quantile``, which refuses more than 2**24
  elements), TrMean, Krum, MultiKrum, GeometricMedian (ByzFL's Weiszfeld from zero with as many
  iterations as ours took), CenteredClipping (L=3, tau=10), NNM + TrMean (skipped where its
  (n, n - f, d) gather would pass 2 GiB; 128 MiB in the quick run).

Targets (CONSENSUS.md, target 5):

* Mean <= 1 ns/element;
* Krum, Multi-Krum and ``pairwise_sq_distances`` "about one GEMM": <= 1.5x ``x @ x.T``
  (Bulyan and NNM + trimmed mean add a coordinate-wise pass: reported against the GEMM, no
  target);
* median and trimmed mean <= 15 ns/element, and peak extra memory <= 2x the input;
* linear in d: the median ns/element at the largest d <= 1.25x that at d = 1e6 (n = 16, full
  run only; below 1e6 the input sits in cache and the per-call overhead dominates).

Timing: every case is first called once at d = 2048 (MKL and the sorting networks' comparator
lists initialise lazily). Per (n, d), a call measuring memory comes first (not a timing sample:
it hands freed pages back to the OS first, so it pays page faults a steady caller would not),
then interleaved rounds: the full run takes ~``BUDGET_S`` of samples per case (at least 3 for a
rule; one for a baseline slower than that; no memory call at n * d > 7e7). The quick run (CI smoke, ~10 s) repeats only calls
under 20 ms, keeps only the rules with a target above d = 1e5, the raw sorts and ByzFL at
n * d <= 2e6, and measures memory at d = 1e5 only. The minimum over samples is reported (the
machine is shared); the median is in ``extra``. ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import REPO_ROOT, Result, can_measure_memory, measured_call, paused_gc, setup_paths

setup_paths()

try:
    import torch

    import forseti.consensus as fc
except ImportError as exc:  # torch (the "train" extra) is optional
    MISSING: str | None = f"needs torch: {exc}"
else:
    MISSING = None

GROUP = "consensus_speed"
BUDGET_S = 0.5  # timed seconds per case per (n, d) in the full run, beyond the first call
MAX_REPS = 15
QUICK_BUDGET_S = 0.02  # the quick run repeats only the calls faster than this
QUICK_MAX_REPS = 5
MEAN_NS = 1.0
ORDER_NS = 15.0
ORDER_MEMORY = 2.0
GEMM_RATIO = 1.5
LINEAR_RATIO = 1.25
MIN_RULE_SAMPLES = 3
BYZFL_GATHER_LIMIT = 2 << 30  # bytes of ByzFL NNM's (n, n - f, d) gather (full run)
BYZFL_GATHER_LIMIT_QUICK = 128 << 20
BYZFL_ORDER_LIMIT = 1 << 24  # elements: torch.quantile's limit (ByzFL Median)
BYZFL_LIMIT = 20_000_000  # elements: above, ByzFL's rules (2-6 s a call) are not timed
HEAVY_BASELINE_LIMIT = 70_000_000  # elements: above, only x.mean(0) and x @ x.T
BASELINE_MEMORY_LIMIT = 20_000_000  # elements: above, the baselines' memory is not measured
RULE_MEMORY_LIMIT = 70_000_000  # elements: above (d = 1e7), neither is the rules' (time budget)
MEMORY_METHOD = (
    "peak RSS above the pre-call RSS (VmHWM reset via /proc/self/clear_refs after "
    "malloc_trim); counts all of torch's CPU allocations, the output included"
)


# -- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    """One callable timed on one input: a forseti rule or a baseline."""

    key: str
    label: str
    fn: Callable[[], Any]
    rule: bool
    samples: list[float] = field(default_factory=list)
    peak: int | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> float | None:
        return min(self.samples) if self.samples else None


def _byzfl() -> Any:
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    try:
        import byzfl_ref
    except ImportError:
        return None
    return byzfl_ref


def _rules(n: int) -> dict[str, tuple[str, Any]]:
    f = n // 5
    rules: dict[str, tuple[str, Any]] = {
        "mean": ("Mean", fc.Mean()),
        "median": ("CoordinateMedian", fc.CoordinateMedian(f)),
        "trimmed_mean": (f"TrimmedMean(f={f})", fc.TrimmedMean(f)),
        "krum": (f"Krum(f={f})", fc.Krum(f)),
        "multi_krum": (f"MultiKrum(f={f})", fc.MultiKrum(f)),
        "geometric_median": ("GeometricMedian", fc.GeometricMedian(f)),
        "bulyan": (f"Bulyan(f={f})", fc.Bulyan(f)),
        "centered_clipping": ("CenteredClipping", fc.CenteredClipping(f)),
        "default": (f"NNM+TrimmedMean(f={f})", fc.default_rule(f)),
    }
    if n < 4 * f + 3:
        del rules["bulyan"]
    return rules


TARGETED = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "pairwise")


def _cases(x: torch.Tensor, quick: bool) -> list[Case]:
    """The rules then the baselines over ``x``; ByzFL's GeometricMedian reads our iterations.

    The quick run keeps only the rules with a target above d = 1e5, and only the two cheap
    baselines (mean, GEMM) and ``torch.median`` above n * d = 2e6: one call of everything at
    n=64, d=1e6 takes ~15 s, and a raw ``torch.sort`` at n=64, d=1e5 ~0.3 s.
    """
    n, d = x.shape
    f = n // 5
    lean = quick and d > 100_000
    lean_baselines = quick and n * d > 2_000_000
    cases: list[Case] = []
    for key, (label, rule) in _rules(n).items():
        if lean and key not in TARGETED:
            continue
        case = Case(key, label, lambda: None, rule=True)

        def call(rule: Any = rule, case: Case = case) -> Any:
            if isinstance(rule, fc.CenteredClipping):
                rule.reset()  # the same start (zeros) every call
            result = rule(x)
            if "iterations" in result.meta:
                case.meta["iterations"] = result.meta["iterations"]
            return result

        case.fn = call
        cases.append(case)
    cases.append(
        Case("pairwise", "pairwise_sq_distances", lambda: fc.pairwise_sq_distances(x), True)
    )

    keep = slice(f, n - f)
    cases += [
        Case("b:mean", "x.mean(0)", lambda: x.mean(0), rule=False),
        Case("b:gemm", "x @ x.T", lambda: x @ x.T, rule=False),
    ]
    if lean:
        return cases
    if n * d > HEAVY_BASELINE_LIMIT:  # the raw sorts take 5-20 s there, ByzFL's rules 3-6 s
        return cases
    cases.append(Case("b:median", "torch.median(x, 0)", lambda: torch.median(x, 0), rule=False))
    if lean_baselines:
        return cases
    if n * d <= BYZFL_LIMIT:  # above, the next one (sort + a cheap mean) stands for both
        cases.append(Case("b:sort", "torch.sort(x, 0)", lambda: torch.sort(x, 0), rule=False))
    cases.append(
        Case(
            "b:sort_tm",
            "torch.sort(x, 0) + mean of kept rows",
            lambda: torch.sort(x, 0).values[keep].mean(0),
            rule=False,
        )
    )
    ref = _byzfl()
    if ref is None or n * d > BYZFL_LIMIT:
        return cases
    agg, pre = ref.aggregators, ref.preaggregators
    byz: list[tuple[str, str, Callable[[], Any]]] = [
        ("mean", "ByzFL Average", lambda: agg.Average()(x)),
        ("krum", f"ByzFL Krum({f})", lambda: agg.Krum(f)(x)),
        ("multi_krum", f"ByzFL MultiKrum({f})", lambda: agg.MultiKrum(f)(x)),
        ("centered_clipping", "ByzFL CenteredClipping(L=3, tau=10)",
         lambda: agg.CenteredClipping(L=3, tau=10.0)(x)),
    ]  # fmt: skip
    if n * d <= BYZFL_ORDER_LIMIT:  # beyond, they are torch.quantile (refuses) and torch.sort
        byz += [
            ("median", "ByzFL Median", lambda: agg.Median()(x)),
            ("trimmed_mean", f"ByzFL TrMean({f})", lambda: agg.TrMean(f)(x)),
        ]
    gather = n * (n - f) * d * x.element_size()
    if gather <= (BYZFL_GATHER_LIMIT_QUICK if quick else BYZFL_GATHER_LIMIT):
        byz.append(
            ("default", f"ByzFL NNM({f}) + TrMean({f})", lambda: agg.TrMean(f)(pre.NNM(f)(x)))
        )
    gm_case = next(c for c in cases if c.key == "geometric_median")

    def byzfl_gm() -> Any:
        iterations = int(gm_case.meta.get("iterations", 100))
        return agg.GeometricMedian(nu=1e-6, T=iterations)(x)

    byz.append(("geometric_median", "ByzFL GeometricMedian(T=ours)", byzfl_gm))
    cases += [Case(f"z:{key}", label, fn, rule=False) for key, label, fn in byz]
    return cases


def _run_cases(cases: list[Case], quick: bool, memory: bool, elements: int) -> None:
    """A memory-measuring call of each case (where asked), then interleaved timed rounds.

    Memory is measured on every case in the full run (baselines up to ``BASELINE_MEMORY_LIMIT``
    elements) and at d = 1e5 in the quick run. The memory call is not a timing sample: it hands
    freed pages back first (``malloc_trim``), so it pays page faults a steady caller does not.
    """
    estimate: dict[str, float] = {}
    if memory and (not quick or elements <= 64 * 100_000):
        with paused_gc():
            _measure_memory(cases, elements, estimate)
    clock = time.perf_counter
    wanted: dict[str, int] = {}
    with paused_gc():
        for case in cases:  # round 1: every case once
            if case.error:
                continue
            try:
                t0 = clock()
                out = case.fn()
                case.samples.append(clock() - t0)
                del out
            except Exception as exc:  # noqa: BLE001 - as above
                case.error = _error(exc)
                continue
            t = min(case.samples[0], estimate.get(case.key, float("inf")))
            if quick:
                wanted[case.key] = max(1, min(QUICK_MAX_REPS, round(QUICK_BUDGET_S / t)))
            elif case.rule:
                wanted[case.key] = max(MIN_RULE_SAMPLES, min(MAX_REPS, round(BUDGET_S / t)))
            else:
                wanted[case.key] = 1 if t >= BUDGET_S else min(MAX_REPS, round(BUDGET_S / t))
        for r in range(1, max(wanted.values(), default=0)):
            for case in cases:
                if wanted.get(case.key, 0) > r:
                    t0 = clock()
                    out = case.fn()
                    case.samples.append(clock() - t0)
                    del out


def _measure_memory(cases: list[Case], elements: int, estimate: dict[str, float]) -> None:
    for case in cases:
        if elements > (RULE_MEMORY_LIMIT if case.rule else BASELINE_MEMORY_LIMIT):
            continue
        try:
            elapsed, peak = measured_call(case.fn, True)
        except Exception as exc:  # noqa: BLE001 - a baseline refusing the size (quantile)
            case.error = _error(exc)
            continue
        case.peak = peak
        estimate[case.key] = elapsed


def _error(exc: BaseException) -> str:
    lines = str(exc).splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0][:80]}"


# -- report ------------------------------------------------------------------------------------


PRIMARY = {  # the baseline each rule's row is compared with in the main table
    "mean": "b:mean",
    "median": "b:median",
    "trimmed_mean": "b:sort_tm",
    "krum": "b:gemm",
    "multi_krum": "b:gemm",
    "pairwise": "b:gemm",
    "bulyan": "b:gemm",
    "default": "b:gemm",
    "geometric_median": "z:geometric_median",
    "centered_clipping": "z:centered_clipping",
}


def _fmt_d(d: int) -> str:
    e = len(str(d)) - 1
    return f"1e{e}" if d == 10**e else str(d)


def _rows_for(n: int, d: int, cases: list[Case]) -> list[Result]:
    by_key = {c.key: c for c in cases}
    elements = n * d
    out: list[Result] = []
    for case in cases:
        if not case.rule:
            continue
        name = f"{case.label}, n={n} d={_fmt_d(d)}"
        if case.error:
            out.append(Result(name, error=case.error, group=GROUP))
            continue
        base = by_key.get(PRIMARY.get(case.key, ""))
        base_s = base.best if base is not None and not base.error else None
        target_ns = target_ratio = None
        if case.key == "mean":
            target_ns = MEAN_NS
        elif case.key in ("median", "trimmed_mean"):
            target_ns = ORDER_NS
        elif case.key in ("krum", "multi_krum", "pairwise"):
            target_ratio = GEMM_RATIO
        best = case.best
        assert best is not None
        extra: dict[str, Any] = {
            "n": n,
            "d": d,
            "ms_per_call": best * 1e3,
            "median_ms_per_call": statistics.median(case.samples) * 1e3,
            "ns_per_element": best / elements * 1e9,
            "peak_extra_bytes": case.peak,
            "peak_extra_vs_input": None if case.peak is None else case.peak / (elements * 4),
            "vs": _ratios(case, cases),
            **case.meta,
        }
        out.append(
            Result(
                name,
                best / elements * 1e9,
                None if base_s is None else base_s / elements * 1e9,
                baseline_name="" if base is None else base.label,
                target_s=target_ns,
                target_ratio=target_ratio,
                group=GROUP,
                samples=len(case.samples),
                extra=extra,
                unit="ns/elem",
            )
        )
    return out


def _ratios(case: Case, cases: list[Case]) -> dict[str, float]:
    best = case.best
    out: dict[str, float] = {}
    for other in cases:
        if other.rule or other.error or other.best is None or best is None:
            continue
        if other.key.startswith("z:") and other.key[2:] != case.key:
            continue  # a ByzFL rule is compared with its own counterpart only
        out[other.label] = best / other.best
    return out


def _memory_rows(table: list[tuple[int, int, list[Case]]]) -> list[Result]:
    worst: dict[str, tuple[float, str, str]] = {}
    for n, d, cases in table:
        for case in cases:
            if not case.rule or case.peak is None or case.error:
                continue
            ratio = case.peak / (n * d * 4)
            if case.key not in worst or ratio > worst[case.key][0]:
                worst[case.key] = (ratio, f"n={n} d={_fmt_d(d)}", case.label)
    rows: list[Result] = []
    for key, (ratio, where, label) in worst.items():
        limit = ORDER_MEMORY if key in ("median", "trimmed_mean") else None
        rows.append(
            Result(
                f"{label}: peak extra memory (worst: {where})",
                ratio,
                target_s=limit,
                group=GROUP,
                extra={"method": MEMORY_METHOD},
                unit="x input",
            )
        )
    return rows


def _linearity_rows(table: list[tuple[int, int, list[Case]]], quick: bool) -> list[Result]:
    runs = sorted(((d, cases) for n, d, cases in table if n == 16), key=lambda run: run[0])
    if len(runs) < 2:
        return []
    (d_hi, hi) = runs[-1]
    (d_lo, lo) = runs[-2]
    lo_by_key = {c.key: c for c in lo}
    rows: list[Result] = []
    for case in hi:
        other = lo_by_key.get(case.key)
        if not case.rule or other is None or not case.samples or not other.samples:
            continue
        rows.append(
            Result(
                f"{case.label}: linear in d, n=16 d={_fmt_d(d_hi)} vs d={_fmt_d(d_lo)} (medians)",
                statistics.median(case.samples) / (16 * d_hi) * 1e9,
                statistics.median(other.samples) / (16 * d_lo) * 1e9,
                baseline_name=f"the same rule at the next smaller d ({_fmt_d(d_lo)}); medians "
                "(sample counts differ: a min over more samples is biased low)",
                samples=len(case.samples),
                target_ratio=LINEAR_RATIO if d_lo >= 10**6 and not quick else None,
                group=GROUP,
                unit="ns/elem",
            )
        )
    return rows


def _print_detail(table: list[tuple[int, int, list[Case]]], memory: bool) -> None:
    head = ("case", "n", "d", "ms/call", "ns/elem", "peak extra", "vs baselines (time ratio)")
    lines: list[tuple[str, ...]] = []
    for n, d, cases in table:
        elements = n * d
        for case in cases:
            if case.error:
                lines.append((case.label, str(n), _fmt_d(d), "failed", case.error, "", ""))
                continue
            best = case.best or 0.0
            peak = "" if case.peak is None else f"{case.peak / (elements * 4):.2f}x"
            vs = ""
            if case.rule:
                vs = ", ".join(f"{k} {v:.2f}x" for k, v in _ratios(case, cases).items())
            if case.key == "geometric_median":
                vs = f"[{case.meta.get('iterations')} iterations] " + vs
            lines.append(
                (case.label if case.rule else f"  base: {case.label}", str(n), _fmt_d(d),
                 f"{best * 1e3:.2f}", f"{best / elements * 1e9:.2f}", peak, vs)
            )  # fmt: skip
        lines.append(("",) * len(head))
    title = "B3 consensus speed: min over samples; peak extra = " + (
        MEMORY_METHOD if memory else "not measured (needs Linux /proc/self/clear_refs)"
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
        print(title)
        for row in (head, *lines):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return
    rich_table = Table(title=title)
    for i, h in enumerate(head):
        rich_table.add_column(h, justify="right" if 1 <= i <= 5 else "left")
    for row in lines:
        rich_table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 200).print(rich_table)


# -- entry point -------------------------------------------------------------------------------


def _configs(quick: bool) -> list[tuple[int, int]]:
    sizes = [(16, 10**5), (16, 10**6), (64, 10**5), (64, 10**6)]
    return sizes if quick else [*sizes[:2], (16, 10**7), *sizes[2:]]


def _input(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g)
    return torch.randn(n, d, generator=g).add_(mu)


def run(quick: bool) -> list[Result]:
    if MISSING is not None:
        return [Result("consensus speed", skipped=MISSING, group=GROUP)]
    torch.set_num_threads(1)
    memory = can_measure_memory()
    for n in sorted({n for n, _ in _configs(quick)}):  # lazy initialisation, off the clock
        warm = _cases(_input(n, 2048), quick=False)
        for case in warm:
            with contextlib.suppress(Exception):
                case.fn()
    table: list[tuple[int, int, list[Case]]] = []
    for n, d in _configs(quick):
        x = _input(n, d)
        cases = _cases(x, quick)
        _run_cases(cases, quick, memory, n * d)
        for case in cases:
            case.fn = _released  # drop the closures over x before the next, bigger input
        table.append((n, d, cases))
        del x
        gc.collect()
    _print_detail(table, memory)
    rows: list[Result] = []
    for n, d, cases in table:
        rows += _rows_for(n, d, cases)
    rows += _memory_rows(table)
    rows += _linearity_rows(table, quick)
    return rows


def _released() -> None:
    return None
