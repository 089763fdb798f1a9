"""Operations: the scheduler's throughput under contention, its latency cost, and OCC across processes.

1. Hot lineage: 16 threads increment one counter with ``@fs.with_conflict_resolution``, policy
   ``retry`` (one commit per call) and ``merge`` (waiting calls fold into one commit), on
   ``memory://`` and a SQLite file. Reported as seconds per contribution (one call);
   ``extra["contributions_per_s"]`` holds the rate, ``extra["commits"]`` the versions written.
   Baseline: the same number of increments as bare ``reg.commit(head.evolve(n=n + 1))`` from one
   thread, no scheduler (what a single writer gets without operations). Every call must commit:
   the row is marked MISSED if the final count is not exact.
2. Spread: the same 16 threads, each increment on one of 1,000 lineages picked at random (policy
   ``retry``). Same baseline, spread the same way.
3. Uncontended latency: ``reg.submit(Add(target=lid))`` (an ``fs.Operation`` subclass) and a
   decorated call, one thread, p50/p99, against a bare ``reg.commit(head.evolve(n=n + 1))`` of
   the same change (the head read from the registry's cache, as ``apply`` gets it). The overhead
   row is the difference of the p50s; target <= 50 µs.
4. Across processes: 4 spawned processes x 4 threads increment one SQLite lineage; they meet only
   through the store's OCC check. Each process counts ``OperationConflicted``,
   ``OperationRetried``, ``OperationCommitted`` and ``OperationFailed`` with a subscription on its
   bus; the rows report seconds per committed operation, and conflicts and retries per committed
   operation (in ``extra`` and on stderr). Default retry budget (``max_retries=25``). Every
   operation must commit. Quick mode runs fewer operations.

PostgreSQL (``forseti.testing.postgres.TemporaryPostgres``): the hot-lineage rows run on it too in
the full run; when it cannot run here its rows say ``skipped`` with the reason
(``FORSETI_REQUIRE_POSTGRES=1`` makes that a crash). The quick run leaves it out.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

from common import Result, error_result, paused_gc, setup_paths, summarize

setup_paths()

import forseti as fs  # noqa: E402

REQUIRE_PG = os.environ.get("FORSETI_REQUIRE_POSTGRES") == "1"

THREADS = 16
LINEAGES = 1_000
PROCESSES = 4
THREADS_PER_PROCESS = 4
POLICIES = ("retry", "merge")
T_OVERHEAD = 50e-6  # <= 50 µs over a bare commit, uncontended
T_MERGE_SQLITE = 1 / 5_000  # >= 5,000 contributions/s on one SQLite lineage with merge


@dataclass(frozen=True)
class Sizes:
    hot_per_thread: int  # increments per thread, hot lineage
    spread_per_thread: int
    latency_n: int
    proc_per_thread: int  # increments per thread in each process
    postgres: bool

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(50, 30, 300, 10, False)
        return cls(400, 200, 3_000, 60, True)


# -- entities and operations (module level: spawned processes import them) ----------------------


class BenchCounter(fs.Entity):
    entity_type: ClassVar[str] = "bench.Counter"
    n: int = 0


class Add(fs.Operation):
    amount: int = 1

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        head = heads[self.targets[0]]
        return [head.evolve(n=head.n + self.amount)]  # type: ignore[attr-defined]


@fs.with_conflict_resolution(policy="retry")
def inc_retry(c: BenchCounter) -> BenchCounter:
    return c.evolve(n=c.n + 1)


@fs.with_conflict_resolution(policy="merge")
def inc_merge(c: BenchCounter) -> BenchCounter:
    return c.evolve(n=c.n + 1)


DECORATED: dict[str, Callable[..., BenchCounter]] = {"retry": inc_retry, "merge": inc_merge}


class Tally:
    """Counts operation events on a bus (thread-safe)."""

    TOPICS: ClassVar[tuple[type[fs.Event], ...]] = (
        fs.OperationCommitted, fs.OperationConflicted, fs.OperationRetried, fs.OperationFailed,
    )  # fmt: skip

    def __init__(self, reg: fs.EntityRegistry) -> None:
        self.counts = {t.__name__: 0 for t in self.TOPICS}
        self._lock = threading.Lock()
        for t in self.TOPICS:
            reg.bus.subscribe(t, self._add)

    def _add(self, event: fs.Event) -> None:
        with self._lock:
            self.counts[type(event).__name__] += 1


# -- helpers -------------------------------------------------------------------------------------


def open_reg(backend: str, tmp: Path, url: str | None = None) -> fs.EntityRegistry:
    tag = uuid.uuid4().hex[:8]
    if backend == "memory":
        return fs.open("memory://", blob_dir=tmp / f"blobs-{tag}")
    if backend == "sqlite":
        return fs.open(f"sqlite:///{tmp / f'ops-{tag}.db'}", blob_dir=tmp / f"blobs-{tag}")
    assert url is not None
    return fs.open(url, blob_dir=tmp / f"blobs-{tag}")


def run_threads(work: Callable[[int], None], n: int) -> float:
    """Run ``work(i)`` on ``n`` threads released together; wall seconds from release to last."""
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(300)
    elapsed = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a worker thread did not finish within 300 s (deadlock?)")
    if errors:
        raise errors[0]
    return elapsed


def bare_commits(reg: fs.EntityRegistry, lineages: list[UUID], picks: list[int]) -> float:
    """Seconds to make the same increments as bare commits from one thread (no scheduler)."""
    t0 = time.perf_counter()
    for i in picks:
        head = reg.get(lineages[i])
        reg.commit(head.evolve(n=head.n + 1))  # type: ignore[attr-defined]
    return time.perf_counter() - t0


class Complete(Result):
    """A row whose target also requires every operation to have committed
    (``extra["committed"] == extra["submitted"]``)."""

    @property
    def met(self) -> bool | None:
        if self.skipped or self.error or self.forseti is None:
            return None
        ok = self.extra.get("committed") == self.extra.get("submitted")
        base = Result.met.fget(self)  # type: ignore[attr-defined]
        return ok if base is None else (ok and base)

    @property
    def target(self) -> str:
        bound = Result.target.fget(self)  # type: ignore[attr-defined]
        return f"{bound} & all committed" if bound else "all committed"


def note(line: str) -> None:
    print(f"    {line}", file=sys.stderr, flush=True)


# -- 1 + 2. throughput: hot lineage and spread -----------------------------------------------------


def throughput_rows(backend: str, tmp: Path, sz: Sizes, url: str | None = None) -> list[Result]:
    out: list[Result] = []
    reg = open_reg(backend, tmp, url)
    try:
        # warm up: types, caches, code paths
        warm = reg.add(BenchCounter()).lineage_id
        for policy in POLICIES:
            for _ in range(20):
                DECORATED[policy](warm, registry=reg)
                reg.submit(Add(target=warm))

        total = THREADS * sz.hot_per_thread
        for policy in POLICIES:
            lid = reg.add(BenchCounter()).lineage_id
            fn = DECORATED[policy]

            def hot(i: int, fn: Callable[..., Any] = fn, lid: UUID = lid) -> None:
                for _ in range(sz.hot_per_thread):
                    fn(lid, registry=reg)

            with paused_gc():
                elapsed = run_threads(hot, THREADS)
            head = reg.get(lid)
            base_lid = reg.add(BenchCounter()).lineage_id
            with paused_gc():
                base = bare_commits(reg, [base_lid], [0] * total)
            committed = head.n  # type: ignore[attr-defined]
            rate = committed / elapsed
            target = T_MERGE_SQLITE if (backend == "sqlite" and policy == "merge") else None
            out.append(
                Complete(
                    f"hot lineage, {THREADS} threads, {policy} [{backend}]",
                    elapsed / total,
                    base / total,
                    baseline_name="bare reg.commit(head.evolve(n=n+1)), 1 thread, same count",
                    target_s=target,
                    group=f"operations throughput [{backend}]",
                    samples=total,
                    extra={
                        "submitted": total,
                        "committed": committed,
                        "commits": head.version - 1,
                        "contributions_per_s": rate,
                        "baseline_per_s": total / base,
                        "seconds": elapsed,
                    },
                )
            )
            note(f"{backend} hot {policy}: {rate:,.0f} contributions/s in "
                 f"{head.version - 1} commits (bare 1-thread commits: {total / base:,.0f}/s)")  # fmt: skip

        # spread over 1,000 lineages (policy retry)
        total = THREADS * sz.spread_per_thread
        lineages = [
            r.lineage_id for r in reg.commit_many([BenchCounter() for _ in range(LINEAGES)])
        ]
        base_lineages = [
            r.lineage_id for r in reg.commit_many([BenchCounter() for _ in range(LINEAGES)])
        ]
        rng = random.Random(7)
        picks = [[rng.randrange(LINEAGES) for _ in range(sz.spread_per_thread)]
                 for _ in range(THREADS)]  # fmt: skip

        def spread(i: int) -> None:
            for j in picks[i]:
                inc_retry(lineages[j], registry=reg)

        with paused_gc():
            elapsed = run_threads(spread, THREADS)
            base = bare_commits(reg, base_lineages, [j for p in picks for j in p])
        committed = sum(reg.get(x).n for x in lineages)  # type: ignore[attr-defined]
        out.append(
            Complete(
                f"{LINEAGES:,} lineages, {THREADS} threads, retry [{backend}]",
                elapsed / total,
                base / total,
                baseline_name="bare reg.commit(head.evolve(n=n+1)), 1 thread, same count",
                group=f"operations throughput [{backend}]",
                samples=total,
                extra={
                    "submitted": total,
                    "committed": committed,
                    "contributions_per_s": committed / elapsed,
                    "baseline_per_s": total / base,
                    "seconds": elapsed,
                },
            )
        )
        note(f"{backend} spread: {committed / elapsed:,.0f} ops/s "
             f"(bare 1-thread commits: {total / base:,.0f}/s)")  # fmt: skip
    finally:
        reg.close()
    return out


# -- 3. uncontended latency ------------------------------------------------------------------------


def latency_rows(backend: str, tmp: Path, sz: Sizes) -> list[Result]:
    reg = open_reg(backend, tmp)
    n, warmup = sz.latency_n, max(50, sz.latency_n // 10)
    try:
        lid = reg.add(BenchCounter()).lineage_id
        clock = time.perf_counter_ns

        def timed(call: Callable[[], Any]) -> list[int]:
            for _ in range(warmup):
                call()
            out = []
            with paused_gc():
                for _ in range(n):
                    t0 = clock()
                    call()
                    out.append(clock() - t0)
            return out

        def bare() -> None:
            head = reg.get(lid)
            reg.commit(head.evolve(n=head.n + 1))  # type: ignore[attr-defined]

        def op() -> None:
            reg.submit(Add(target=lid))

        def decorated() -> None:
            inc_retry(lid, registry=reg)

        # interleave the three, so drift (WAL growth, caches) hits them alike
        samples: dict[str, list[int]] = {"bare": [], "op": [], "decorated": []}
        calls = {"bare": bare, "op": op, "decorated": decorated}
        for _ in range(3):
            for name, call in calls.items():
                samples[name] += timed(call)
        s = {k: summarize(v) for k, v in samples.items()}
        assert reg.get(lid).n == 3 * (n + warmup) * 3  # type: ignore[attr-defined]
        group = f"operations latency [{backend}]"
        base_name = "bare reg.commit(reg.get(lid).evolve(n=n+1)), same change"
        common: dict[str, Any] = dict(
            group=group, baseline_name=base_name, samples=len(samples["op"])
        )
        overhead = s["op"]["p50"] - s["bare"]["p50"]
        overhead_dec = s["decorated"]["p50"] - s["bare"]["p50"]
        note(f"{backend} latency p50: bare commit {s['bare']['p50'] * 1e6:.1f} µs, "
             f"reg.submit {s['op']['p50'] * 1e6:.1f} µs (+{overhead * 1e6:.1f} µs), "
             f"decorated {s['decorated']['p50'] * 1e6:.1f} µs (+{overhead_dec * 1e6:.1f} µs)")  # fmt: skip
        return [
            Result(f"reg.submit(op) p50, uncontended [{backend}]", s["op"]["p50"],
                   s["bare"]["p50"], extra=s["op"], **common),
            Result(f"reg.submit(op) p99, uncontended [{backend}]", s["op"]["p99"],
                   s["bare"]["p99"], extra=s["op"], **common),
            Result(f"decorated call p50, uncontended [{backend}]", s["decorated"]["p50"],
                   s["bare"]["p50"], extra=s["decorated"], **common),
            Result(f"overhead p50, reg.submit(op) - bare commit [{backend}]", overhead,
                   target_s=T_OVERHEAD, group=group, samples=len(samples["op"]),
                   extra={"bare": s["bare"], "op": s["op"]}),
            Result(f"overhead p50, decorated call - bare commit [{backend}]", overhead_dec,
                   target_s=T_OVERHEAD, group=group, samples=len(samples["op"]),
                   extra={"bare": s["bare"], "decorated": s["decorated"]}),
        ]  # fmt: skip
    finally:
        reg.close()


# -- 4. across processes ---------------------------------------------------------------------------


def _process(
    url: str, blob_dir: str, lids: dict[str, str], per_thread: int, barrier: Any, queue: Any
) -> None:
    """One spawned worker process: for each policy in turn, THREADS_PER_PROCESS threads of
    decorated increments on that policy's lineage, started together with the other processes."""
    try:
        with fs.open(url, blob_dir=blob_dir) as reg:
            tally = Tally(reg)
            own = reg.add(BenchCounter()).lineage_id
            for fn in DECORATED.values():
                fn(own, registry=reg)  # warm up on a lineage of its own
            for policy in POLICIES:
                fn, target = DECORATED[policy], UUID(lids[policy])
                tally.counts = dict.fromkeys(tally.counts, 0)
                failures: list[str] = []
                done = [0] * THREADS_PER_PROCESS

                def work(
                    i: int, fn: Callable[..., Any] = fn, target: UUID = target,
                    done: list[int] = done, failures: list[str] = failures,
                ) -> None:  # fmt: skip
                    for _ in range(per_thread):
                        try:
                            fn(target, registry=reg)
                            done[i] += 1
                        except fs.ConflictError as exc:  # the retry budget was spent
                            failures.append(str(exc)[:300])

                threads = [
                    threading.Thread(target=work, args=(i,)) for i in range(THREADS_PER_PROCESS)
                ]
                barrier.wait(120)
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                queue.put(
                    ("ok", policy, sum(done), dict(tally.counts), failures[:2], len(failures))
                )
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def process_rows(tmp: Path, sz: Sizes) -> list[Result]:
    ctx = mp.get_context("spawn")
    url = f"sqlite:///{tmp / f'procs-{uuid.uuid4().hex[:8]}.db'}"
    blob_dir = str(tmp / "blobs-procs")
    with fs.open(url, blob_dir=blob_dir) as reg:
        lids = {policy: str(reg.add(BenchCounter()).lineage_id) for policy in POLICIES}
    barrier = ctx.Barrier(PROCESSES + 1)
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process, args=(url, blob_dir, lids, sz.proc_per_thread, barrier, queue),
            daemon=True,
        )
        for _ in range(PROCESSES)
    ]  # fmt: skip
    for p in procs:
        p.start()
    out: list[Result] = []
    try:
        for policy in POLICIES:
            barrier.wait(120)  # every process is ready: go
            t0 = time.perf_counter()
            reports = [queue.get(timeout=300) for _ in procs]
            elapsed = time.perf_counter() - t0
            errors = [r for r in reports if r[0] != "ok"]
            if errors:
                raise RuntimeError(f"a worker process failed: {errors[0][1]}\n{errors[0][2]}")
            assert {r[1] for r in reports} == {policy}
            submitted = PROCESSES * THREADS_PER_PROCESS * sz.proc_per_thread
            committed = sum(r[2] for r in reports)
            counts = {k: sum(r[3][k] for r in reports) for k in reports[0][3]}
            failed = sum(r[5] for r in reports)
            with fs.open(url, blob_dir=blob_dir) as reg:
                head = reg.get(UUID(lids[policy]))
            assert head.n == committed, (head.n, committed)  # type: ignore[attr-defined]
            per_op = {
                "conflicts_per_op": counts["OperationConflicted"] / max(committed, 1),
                "retries_per_op": counts["OperationRetried"] / max(committed, 1),
            }
            out.append(
                Complete(
                    f"{PROCESSES} processes x {THREADS_PER_PROCESS} threads, one lineage, "
                    f"{policy} [sqlite]",
                    elapsed / max(committed, 1),
                    group="operations across processes [sqlite]",
                    samples=submitted,
                    extra={
                        "submitted": submitted,
                        "committed": committed,
                        "failed_budget_exhausted": failed,
                        "commits": head.version - 1,
                        "events": counts,
                        **per_op,
                        "contributions_per_s": committed / elapsed,
                        "example_failures": [f for r in reports for f in r[4]][:2],
                    },
                )
            )
            note(f"{PROCESSES} procs x {THREADS_PER_PROCESS} threads {policy}: "
                 f"{committed}/{submitted} committed in {head.version - 1} commits, "
                 f"{committed / elapsed:,.0f}/s; {per_op['conflicts_per_op']:.2f} conflicts and "
                 f"{per_op['retries_per_op']:.2f} retries per committed op; "
                 f"{failed} gave up (ConflictError)")  # fmt: skip
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():  # pragma: no cover - only after a failure
                p.kill()
    return out


# -- PostgreSQL ----------------------------------------------------------------------------------


class Skip(Exception):
    """The PostgreSQL rows cannot run here; the message says why."""


@contextmanager
def postgres_url() -> Iterator[str]:
    try:
        from forseti.testing.postgres import TemporaryPostgres, postgres_binaries
    except ImportError as exc:
        raise Skip(f"forseti.testing.postgres is not importable ({exc})") from None
    if postgres_binaries() is None:
        raise Skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    try:
        server_cm = TemporaryPostgres()
        server = server_cm.__enter__()
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise Skip(f"the throwaway PostgreSQL server did not start: {why}") from None
    try:
        yield server.new_schema_url(f"bench_ops_{uuid.uuid4().hex[:12]}")
    finally:
        server_cm.__exit__(None, None, None)


def _pg_skipped(reason: str) -> list[Result]:
    group = "operations throughput [postgres]"
    names = [f"hot lineage, {THREADS} threads, {p} [postgres]" for p in ("retry", "merge")]
    names.append(f"{LINEAGES:,} lineages, {THREADS} threads, retry [postgres]")
    return [Result(n, skipped=reason, group=group) for n in names]


def postgres_rows(tmp: Path, sz: Sizes) -> list[Result]:
    if not sz.postgres:
        return _pg_skipped("quick run: PostgreSQL rows run in the full run only")
    try:
        with postgres_url() as url:
            return throughput_rows("postgres", tmp, sz, url)
    except Skip as exc:
        if REQUIRE_PG:
            raise RuntimeError(f"FORSETI_REQUIRE_POSTGRES=1 but: {exc}") from None
        return _pg_skipped(str(exc))


# -- entry point ---------------------------------------------------------------------------------


def run(quick: bool) -> list[Result]:
    sz = Sizes.of(quick)
    sections: list[tuple[str, Callable[[Path, Sizes], list[Result]]]] = [
        ("latency [memory]", lambda tmp, sz: latency_rows("memory", tmp, sz)),
        ("latency [sqlite]", lambda tmp, sz: latency_rows("sqlite", tmp, sz)),
        ("throughput [memory]", lambda tmp, sz: throughput_rows("memory", tmp, sz)),
        ("throughput [sqlite]", lambda tmp, sz: throughput_rows("sqlite", tmp, sz)),
        ("throughput [postgres]", postgres_rows),
        ("processes [sqlite]", process_rows),
    ]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="forseti-bench-ops-") as tmpdir:
        tmp = Path(tmpdir)
        for name, fn in sections:
            t0 = time.perf_counter()
            try:
                results += fn(tmp, sz)
            except Exception as exc:
                traceback.print_exc()
                results.append(error_result(f"operations {name}", exc, group=name))
            print(f"    {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return results
