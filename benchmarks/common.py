"""Shared pieces of the benchmark suite: the :class:`Result` row and timing helpers.

Timings are observations, never assertions: a missed target is reported, not raised.

Conventions
-----------
* Every time is in **seconds** (``float``) inside a :class:`Result`; the table formats it.
* Latency is measured per call with :func:`time.perf_counter_ns`, after a warm-up, with the garbage
  collector paused during the timed loop (as :mod:`timeit` does) and collected before it.
* Calls that take about a microsecond are timed in blocks (:func:`time_blocks`), so the cost of
  reading the clock does not swamp them; their percentiles are over per-call block means.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "Result",
    "setup_paths",
    "limit_threads",
    "percentile",
    "summarize",
    "time_each",
    "time_blocks",
    "time_calls",
    "paused_gc",
    "fmt_seconds",
    "error_result",
    "can_measure_memory",
    "measured_call",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def setup_paths() -> None:
    """Make ``import forseti`` and ``import common`` work from a checkout and when installed.

    From a checkout, ``<repo>/src`` goes first so the benchmarks measure the code next to them
    (the same files an editable install points at); an installed forseti is used otherwise.
    """
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    src = REPO_ROOT / "src"
    if (src / "forseti" / "__init__.py").is_file() and str(src) not in sys.path:
        sys.path.insert(0, str(src))


def limit_threads() -> None:
    """One intra-op thread for torch, but only where a benchmark already imported torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(1)
        except Exception:  # pragma: no cover - best effort
            pass


# -- results -----------------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the benchmark table.

    ``forseti`` and ``baseline`` are seconds (or ``None``). A target is an absolute bound
    (``target_s``: forseti must be <= it) and/or a ratio bound (``target_ratio``: forseti /
    baseline must be <= it); ``met`` is ``None`` when the row has no target, was skipped, or
    crashed.
    """

    benchmark: str
    forseti: float | None = None
    baseline: float | None = None
    baseline_name: str = ""
    target_s: float | None = None
    target_ratio: float | None = None
    skipped: str | None = None
    error: str | None = None
    group: str = ""
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: what ``forseti``/``baseline``/``target_s`` measure: seconds by default; any other unit
    #: (``"acc"``, ``"kappa"``, ``"rounds"``, ``"ns/elem"``…) is printed as a plain number
    unit: str = "s"
    #: for a target in ``target_s``: whether forseti must be at most (True) or at least it
    lower_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.forseti is None or not self.baseline:
            return None
        return self.forseti / self.baseline

    @property
    def met(self) -> bool | None:
        if self.skipped or self.error or self.forseti is None:
            return None
        if self.target_s is None and self.target_ratio is None:
            return None
        ok = True
        if self.target_s is not None:
            if self.lower_is_better:
                ok = ok and self.forseti <= self.target_s
            else:
                ok = ok and self.forseti >= self.target_s
        if self.target_ratio is not None:
            ratio = self.ratio
            ok = ok and ratio is not None and ratio <= self.target_ratio
        return ok

    @property
    def target(self) -> str:
        parts = []
        if self.target_s is not None:
            sign = "<=" if self.lower_is_better else ">="
            parts.append(f"{sign} {self.format(self.target_s)}")
        if self.target_ratio is not None:
            parts.append(f"<= {self.target_ratio:g}x base")
        return " & ".join(parts)

    @property
    def flag(self) -> str:
        if self.error:
            return "ERROR"
        if self.skipped:
            return "skipped"
        met = self.met
        return "-" if met is None else ("met" if met else "MISSED")

    def format(self, value: float | None) -> str:
        """``value`` in this row's unit (seconds get ``ms``/``µs``… prefixes)."""
        if value is None:
            return ""
        if self.unit == "s":
            return fmt_seconds(value)
        return f"{value:.3g} {self.unit}".rstrip()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=self.ratio, met=self.met, target=self.target, flag=self.flag)
        return out


def error_result(benchmark: str, exc: BaseException, group: str = "") -> Result:
    """A row recording that a benchmark crashed (the run then exits non-zero)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    error = f"{type(exc).__name__}: {exc}"
    return Result(benchmark, error=error, group=group, extra={"traceback": tb})


# -- statistics --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no samples")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(samples_ns: list[int] | list[float]) -> dict[str, float]:
    """p50/p99/mean/min/max of nanosecond samples, in seconds."""
    s = [x / 1e9 for x in samples_ns]
    return {
        "p50": percentile(s, 50),
        "p99": percentile(s, 99),
        "mean": sum(s) / len(s),
        "min": min(s),
        "max": max(s),
        "n": float(len(s)),
    }


# -- timing ------------------------------------------------------------------------------------


@contextmanager
def paused_gc() -> Iterator[None]:
    """Collect, then keep the cyclic GC off for the timed region (as :mod:`timeit` does)."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def time_each(fn: Callable[[Any], Any], items: Iterable[Any], warmup: int = 0) -> list[int]:
    """Call ``fn(item)`` for each item and return each call's time in ns.

    The first ``warmup`` items are called untimed. Use this when every call needs its own input
    (a pre-built draft to commit).
    """
    it = iter(items)
    for _ in range(warmup):
        try:
            fn(next(it))
        except StopIteration:
            break
    out: list[int] = []
    clock = time.perf_counter_ns
    with paused_gc():
        for item in it:
            t0 = clock()
            fn(item)
            out.append(clock() - t0)
    return out


def time_calls(fn: Callable[[], Any], n: int, warmup: int = 3) -> list[int]:
    """Call ``fn()`` ``warmup`` times untimed, then ``n`` times timed; ns per call."""
    for _ in range(warmup):
        fn()
    out: list[int] = []
    clock = time.perf_counter_ns
    with paused_gc():
        for _ in range(n):
            t0 = clock()
            fn()
            out.append(clock() - t0)
    return out


def time_blocks(
    fn: Callable[[], Any], blocks: int, per_block: int = 1000, warmup_blocks: int = 2
) -> list[float]:
    """Mean ns per call of ``fn()`` over ``blocks`` blocks of ``per_block`` calls each.

    For sub-microsecond to few-microsecond calls. The loop's own overhead (~20 ns a call) is
    included, as it is in the baseline timed the same way.
    """
    rng = range(per_block)
    clock = time.perf_counter_ns
    for _ in range(warmup_blocks):
        for _ in rng:
            fn()
    out: list[float] = []
    with paused_gc():
        for _ in range(blocks):
            t0 = clock()
            for _ in rng:
                fn()
            out.append((clock() - t0) / per_block)
    return out


# -- formatting --------------------------------------------------------------------------------


def fmt_seconds(s: float | None) -> str:
    """``1.23 µs``, ``45.6 ms`` … (three significant digits)."""
    if s is None:
        return ""
    if s == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if abs(s) >= scale or unit == "ns":
            v = s / scale
            digits = 0 if v >= 100 else (1 if v >= 10 else 2)
            return f"{v:.{digits}f} {unit}"
    return f"{s:g} s"  # pragma: no cover


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken."""
    import platform
    import sqlite3

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]  # other work skews timings
    try:
        import subprocess

        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip() or None
    except Exception:  # pragma: no cover - not a checkout, or no git
        info["git_commit"] = None
    try:
        import forseti

        info["forseti"] = getattr(forseti, "__version__", "?")
        info["forseti_path"] = str(Path(forseti.__file__).resolve().parent)
    except Exception as exc:  # pragma: no cover
        info["forseti"] = f"not importable: {exc}"
    return info


# -- peak memory -------------------------------------------------------------------------------


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _status_bytes() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


def can_measure_memory() -> bool:
    """Whether :func:`measured_call` can measure memory here (Linux ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _status_bytes()["VmHWM"]
    except (OSError, KeyError):
        return False
    return True


def measured_call(fn: Callable[[], Any], memory: bool) -> tuple[float, int | None]:
    """One call of ``fn``: its seconds, and its peak extra resident memory (bytes) if asked.

    The peak is the resident-set high water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` after glibc's ``malloc_trim(0)``) minus the resident set just
    before the call: every page the call touches counts (tracemalloc sees none of torch's), its
    result included; the page cache of files it writes does not. No ``gc.collect()`` here: the
    caller collects once and pauses the collector.
    """
    before = None
    if memory:
        if _LIBC is not None:
            _LIBC.malloc_trim(0)  # hand freed heap pages back, so the call must touch its own
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := VmRSS
        before = _status_bytes()["VmRSS"]
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    peak = _status_bytes()["VmHWM"] - before if before is not None else None
    del out
    return elapsed, peak
