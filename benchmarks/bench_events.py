"""The event bus, the persisted event log and ``@emit_events``, against in-process baselines.

1. ``bus.publish(event)`` → dispatch latency per event (a pre-built event, a standalone bus), with
   1 and 3 sync handlers. Baseline: calling the same handlers directly in a loop. Also build +
   publish (the event constructed in the timed call, as a training loop does).
2. 3 async handlers: ``await bus.apublish(e)`` for a block of events, then ``await bus.drain()``,
   per event. Baseline: awaiting the same handlers directly. Also the sync ``publish`` of an event
   with async handlers (they run on the bus's loop thread: a thread hop per handler), for
   information.
3. Sustained in-process throughput: build + publish with one sync handler, for a second or so.
   Baseline: build the same event and call the handler directly.
4. Persisted throughput through the group-commit writer: publish N step events on ``reg.bus``
   (built in the loop, ``subject`` = a run version, no handlers), then ``reg.flush_events()``;
   seconds per event from the first publish to the end of the flush, on SQLite and PostgreSQL.
   Baselines: the same encoded payloads, ids and timestamps prepared beforehand and inserted raw
   into an identical ``events`` table (same DDL and indexes) in batches of 1000 rows, one
   transaction each: stdlib ``sqlite3`` ``executemany`` (WAL + ``synchronous=NORMAL``), and
   asyncpg ``INSERT … SELECT FROM unnest(…)`` on the same server.
5. ``@emit_events`` per call (a bus active, no handlers: two events published per call) vs the bare
   function.

PostgreSQL uses ``forseti.testing.postgres.TemporaryPostgres``; when it cannot run here its row says
``skipped`` with the reason (``FORSETI_REQUIRE_POSTGRES=1`` makes that a crash instead).

Throughput rows are reported as seconds per event (the table's unit); ``extra["events_per_s"]``
holds the rate, also printed to stderr.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import Result, error_result, paused_gc, setup_paths, summarize, time_blocks

setup_paths()

import forseti as fs  # noqa: E402
from forseti.events import encode_event  # noqa: E402
from forseti.registry.schema import ddl_statements  # noqa: E402

REQUIRE_PG = os.environ.get("FORSETI_REQUIRE_POSTGRES") == "1"

T_SYNC1 = 5e-6  # <= 5 µs per event, one sync handler
T_ASYNC3 = 20e-6  # <= 20 µs per event, three async handlers
T_SQLITE = 1 / 100_000  # >= 100k persisted events/s on SQLite
T_PG = 1 / 30_000  # >= 30k persisted events/s on PostgreSQL
T_EMIT_OVERHEAD = 10e-6  # <= 10 µs added per @emit_events call


class StepCompleted(fs.Event, frozen=True):
    """The event a training loop publishes per step."""

    topic = "bench.step_completed"
    step: int
    loss: float


@dataclass(frozen=True)
class Sizes:
    blocks: int  # time_blocks blocks
    per_block: int  # calls per block
    async_blocks: int
    async_per_block: int
    sustained: int  # events in the sustained run
    persisted: int  # events per persisted run (SQLite)
    pg_persisted: int
    persisted_reps: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(20, 1000, 15, 200, 100_000, 30_000, 10_000, 1)
        return cls(100, 2000, 50, 500, 500_000, 100_000, 50_000, 3)


def _rate(seconds_per_event: float) -> str:
    rate = 1 / seconds_per_event
    return f"{rate / 1000:.1f}k ev/s" if rate < 1e6 else f"{rate / 1e6:.2f}M ev/s"


def _note(msg: str) -> None:
    print(f"    {msg}", file=sys.stderr, flush=True)


# -- 1. publish -> dispatch, sync handlers -------------------------------------------------------


def _handlers(n: int) -> list[Callable[[Any], None]]:
    sink: list[int] = [0]

    def make(i: int) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            sink[0] += event.step

        handler.__name__ = handler.__qualname__ = f"handler{i}"
        return handler

    return [make(i) for i in range(n)]


def bench_sync(sz: Sizes) -> list[Result]:
    out = []
    for n in (1, 3):
        handlers = _handlers(n)
        bus = fs.EventBus()
        for h in handlers:
            bus.subscribe(StepCompleted, h)
        event = StepCompleted(step=1, loss=0.5)
        publish = bus.publish

        def direct(handlers: list[Callable[[Any], None]] = handlers) -> None:
            for h in handlers:
                h(event)

        base = summarize(time_blocks(direct, sz.blocks, sz.per_block))
        s = summarize(time_blocks(lambda: publish(event), sz.blocks, sz.per_block))
        assert bus.stats.failed == 0 and bus.stats.delivered >= sz.blocks * sz.per_block * n
        out.append(
            Result(
                f"publish -> {n} sync handler{'s' * (n > 1)} (per event)",
                s["p50"],
                base["p50"],
                baseline_name="the same handlers called directly in a loop",
                target_s=T_SYNC1 if n == 1 else None,
                group="bus (sync)",
                samples=int(s["n"]),
                extra=s,
            )
        )
        if n == 1:

            def build_direct(h: Callable[[Any], None] = handlers[0]) -> None:
                h(StepCompleted(step=1, loss=0.5))

            base_b = summarize(time_blocks(build_direct, sz.blocks, sz.per_block))
            def build_publish() -> None:
                publish(StepCompleted(step=1, loss=0.5))

            s_b = summarize(time_blocks(build_publish, sz.blocks, sz.per_block))
            out.append(
                Result(
                    "build + publish -> 1 sync handler (per event)",
                    s_b["p50"],
                    base_b["p50"],
                    baseline_name="build the event, call the handler directly",
                    group="bus (sync)",
                    samples=int(s_b["n"]),
                    extra=s_b,
                )
            )
        bus.close()
    return out


# -- 2. async handlers ---------------------------------------------------------------------------


def _async_handlers(n: int) -> list[Callable[[Any], Any]]:
    sink: list[int] = [0]

    def make(i: int) -> Callable[[Any], Any]:
        async def handler(event: Any) -> None:
            sink[0] += event.step

        handler.__name__ = handler.__qualname__ = f"async_handler{i}"
        return handler

    return [make(i) for i in range(n)]


def bench_async(sz: Sizes) -> list[Result]:
    handlers = _async_handlers(3)
    bus = fs.EventBus(queue_size=max(1000, sz.async_per_block))
    for h in handlers:
        bus.subscribe(StepCompleted, h)
    events = [StepCompleted(step=i, loss=0.5) for i in range(sz.async_per_block)]

    async def measure() -> tuple[list[float], list[float]]:
        async def via_bus() -> None:
            for e in events:
                await bus.apublish(e)
            await bus.drain()

        async def direct() -> None:
            for e in events:
                for h in handlers:
                    await h(e)

        clock = time.perf_counter_ns
        per = len(events)
        results: dict[str, list[float]] = {"bus": [], "direct": []}
        for name, fn in (("direct", direct), ("bus", via_bus)):
            for _ in range(2):
                await fn()  # warm-up
            with paused_gc():
                for _ in range(sz.async_blocks):
                    t0 = clock()
                    await fn()
                    results[name].append((clock() - t0) / per)
        return results["bus"], results["direct"]

    bus_ns, direct_ns = asyncio.run(measure())
    assert bus.stats.failed == 0
    s, base = summarize(bus_ns), summarize(direct_ns)
    out = [
        Result(
            "apublish + drain -> 3 async handlers (per event)",
            s["p50"],
            base["p50"],
            baseline_name="await the same handlers directly in a loop",
            target_s=T_ASYNC3,
            group="bus (async)",
            samples=int(s["n"]),
            extra=s,
        )
    ]
    # sync publish of an event whose handlers are async: they run on the bus's loop thread
    event = events[0]
    n_sync = max(50, sz.async_per_block // 4)
    sync_blocks = max(5, sz.async_blocks // 3)
    s_sync = summarize(time_blocks(lambda: bus.publish(event), sync_blocks, n_sync))
    out.append(
        Result(
            "publish (sync) -> 3 async handlers (per event)",
            s_sync["p50"],
            base["p50"],
            baseline_name="await the same handlers directly in a loop",
            group="bus (async)",
            samples=int(s_sync["n"]),
            extra=s_sync,
        )
    )
    bus.close()
    return out


# -- 3. sustained in-process ---------------------------------------------------------------------


def bench_sustained(sz: Sizes) -> list[Result]:
    (handler,) = _handlers(1)
    bus = fs.EventBus()
    bus.subscribe(StepCompleted, handler)
    publish = bus.publish
    n = sz.sustained

    def via_bus() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            publish(StepCompleted(step=i, loss=0.5))
        return time.perf_counter() - t0

    def direct() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            handler(StepCompleted(step=i, loss=0.5))
        return time.perf_counter() - t0

    direct()  # warm-up
    base = direct() / n
    elapsed = via_bus() / n  # the GC stays on: this is what a long loop sees
    bus.close()
    _note(f"sustained in process: {_rate(elapsed)} (baseline {_rate(base)})")
    return [
        Result(
            f"sustained build + publish, {n // 1000}k events (per event)",
            elapsed,
            base,
            baseline_name="build the event, call the handler directly (GC on)",
            group="bus (sustained)",
            samples=n,
            extra={"events_per_s": 1 / elapsed, "baseline_events_per_s": 1 / base},
        )
    ]


# -- 4. persisted throughput ---------------------------------------------------------------------


def _step_events(n: int, run: fs.EntityRef) -> list[StepCompleted]:
    return [StepCompleted(step=i, loss=1.0 / (i + 1), subject=run) for i in range(n)]


def _rows(events: list[StepCompleted]) -> list[tuple[Any, ...]]:
    """The log rows of ``events``: hex ids, payload, timestamp text (SQLite's format)."""
    rows = []
    for e in events:
        subject = e.subject
        assert subject is not None
        recorded = datetime.fromtimestamp(e.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        rows.append(
            (e.id.hex, subject.lineage_id.hex, subject.version, e.topic, encode_event(e), recorded)
        )
    return rows


def _publish_and_flush(reg: fs.EntityRegistry, run: fs.EntityRef, n: int) -> dict[str, float]:
    publish = reg.bus.publish
    with paused_gc():
        t0 = time.perf_counter()
        for i in range(n):
            publish(StepCompleted(step=i, loss=1.0 / (i + 1), subject=run))
        t1 = time.perf_counter()
        reg.flush_events()
        t2 = time.perf_counter()
    return {"total_s": t2 - t0, "publish_phase_s": t1 - t0, "flush_s": t2 - t1}


def _check_logged(reg: fs.EntityRegistry, n: int) -> None:
    got = reg.events(topic=StepCompleted)
    assert len(got) == n, f"{len(got)} of {n} step events were logged"


def raw_sqlite_events(path: Path, rows: list[tuple[Any, ...]], batch: int = 1000) -> float:
    """Insert the rows into a fresh ``events`` table with Forseti's DDL; seconds taken."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for stmt in ddl_statements("sqlite"):
            conn.execute(stmt)
        sql = (
            "INSERT INTO events (event_id, lineage_id, version, topic, payload, recorded_at) "
            "VALUES (?,?,?,?,?,?)"
        )
        with paused_gc():
            t0 = time.perf_counter()
            for i in range(0, len(rows), batch):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, rows[i : i + batch])
                conn.execute("COMMIT")
            elapsed = time.perf_counter() - t0
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
        assert count == len(rows)
        return elapsed
    finally:
        conn.close()


def bench_persist_sqlite(tmp: Path, sz: Sizes) -> list[Result]:
    n = sz.persisted
    runs: list[dict[str, float]] = []
    bases: list[float] = []
    for rep in range(sz.persisted_reps):
        reg = fs.open(f"sqlite:///{tmp / f'events-{rep}.db'}", blob_dir=tmp / "blobs")
        try:
            run = reg.add(fs.TrainingRunEntity(name="bench-run", status="running")).ref
            runs.append(_publish_and_flush(reg, run, n))
            _check_logged(reg, n)
        finally:
            reg.close()
        bases.append(raw_sqlite_events(tmp / f"raw-events-{rep}.db", _rows(_step_events(n, run))))
    best = min(runs, key=lambda r: r["total_s"])
    per_event, base = best["total_s"] / n, min(bases) / n
    _note(f"persisted [sqlite]: {_rate(per_event)} (raw baseline {_rate(base)}); {best}")
    return [
        Result(
            f"persist {n // 1000}k step events [sqlite] (per event)",
            per_event,
            base,
            baseline_name="raw sqlite3 executemany of the same rows, 1000/txn, same DDL",
            target_s=T_SQLITE,
            group="event log",
            samples=len(runs),
            extra={
                **{k: v / n for k, v in best.items()},
                "events_per_s": 1 / per_event,
                "baseline_events_per_s": 1 / base,
            },
        )
    ]


# -- PostgreSQL ----------------------------------------------------------------------------------


class Skip(Exception):
    """The PostgreSQL row cannot run here; the message says why."""


@contextmanager
def postgres_server() -> Iterator[Any]:
    try:
        from forseti.testing.postgres import TemporaryPostgres, postgres_binaries
    except ImportError as exc:
        raise Skip(f"forseti.testing.postgres is not importable ({exc})") from None
    try:
        import forseti.registry.stores.postgres  # noqa: F401
    except ImportError as exc:
        raise Skip(f"PostgresStore is not importable ({exc})") from None
    if postgres_binaries() is None:
        raise Skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    try:
        server = TemporaryPostgres().start()
    except Exception as exc:
        raise Skip(f"the throwaway PostgreSQL server did not start: {type(exc).__name__}: {exc}")
    try:
        yield server
    finally:
        server.stop()


def raw_pg_events(dsn: str, events: list[StepCompleted], batch: int = 1000) -> float:
    """Insert the events' rows with asyncpg into an identical table; seconds taken."""
    import asyncpg

    cols = []
    for e in events:
        subject = e.subject
        assert subject is not None
        cols.append(
            (
                e.id,
                subject.lineage_id,
                subject.version,
                e.topic,
                encode_event(e),
                datetime.fromtimestamp(e.timestamp, UTC),
            )
        )
    chunks = [list(zip(*cols[i : i + batch], strict=True)) for i in range(0, len(cols), batch)]

    async def main() -> float:
        conn = await asyncpg.connect(dsn)
        schema = f"bench_raw_{uuid.uuid4().hex[:10]}"
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
            await conn.execute(f"SET search_path TO {schema}")
            for stmt in ddl_statements("postgresql"):
                await conn.execute(stmt)
            insert = await conn.prepare(
                "INSERT INTO events (event_id, lineage_id, version, topic, payload, recorded_at) "
                "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], "
                "$5::bytea[], $6::timestamptz[])"
            )
            with paused_gc():
                t0 = time.perf_counter()
                for chunk in chunks:
                    async with conn.transaction():
                        await insert.fetch(*chunk)
                elapsed = time.perf_counter() - t0
            count = await conn.fetchval("SELECT count(*) FROM events")
            assert count == len(events)
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            return elapsed
        finally:
            await conn.close()

    return asyncio.run(main())


def _pg_skipped(n: int, reason: str) -> list[Result]:
    return [
        Result(
            f"persist {n // 1000}k step events [postgres] (per event)",
            skipped=reason,
            target_s=T_PG,
            group="event log",
        )
    ]


def bench_persist_pg(tmp: Path, sz: Sizes) -> list[Result]:
    n = sz.pg_persisted
    try:
        with postgres_server() as server:
            runs: list[dict[str, float]] = []
            bases: list[float] = []
            for rep in range(sz.persisted_reps):
                url = server.new_schema_url(f"bench_events_{uuid.uuid4().hex[:10]}")
                try:
                    reg = fs.open(url, blob_dir=tmp / "blobs")
                except Exception as exc:
                    raise Skip(f"forseti.open(postgres) failed: {type(exc).__name__}: {exc}")
                try:
                    run = reg.add(fs.TrainingRunEntity(name="bench-run", status="running")).ref
                    runs.append(_publish_and_flush(reg, run, n))
                    _check_logged(reg, n)
                finally:
                    reg.close()
                try:
                    bases.append(raw_pg_events(server.url, _step_events(n, run)))
                except Exception:  # the baseline is a comparison, not the thing measured
                    traceback.print_exc()
    except Skip as exc:
        if REQUIRE_PG:
            raise RuntimeError(f"FORSETI_REQUIRE_POSTGRES=1 but: {exc}") from None
        return _pg_skipped(n, str(exc))
    except Exception as exc:
        if REQUIRE_PG:
            raise
        traceback.print_exc()
        return _pg_skipped(n, f"the PostgreSQL benchmark failed: {type(exc).__name__}: {exc}")
    best = min(runs, key=lambda r: r["total_s"])
    per_event = best["total_s"] / n
    base = min(bases) / n if bases else None
    base_txt = f"raw baseline {_rate(base)}" if base else "no baseline"
    _note(f"persisted [postgres]: {_rate(per_event)} ({base_txt}); {best}")
    return [
        Result(
            f"persist {n // 1000}k step events [postgres] (per event)",
            per_event,
            base,
            baseline_name="raw asyncpg INSERT … SELECT unnest, 1000 rows/txn, same DDL, server",
            target_s=T_PG,
            group="event log",
            samples=len(runs),
            extra={
                **{k: v / n for k, v in best.items()},
                "events_per_s": 1 / per_event,
                "baseline_events_per_s": (1 / base) if base else None,
            },
        )
    ]


# -- 5. @emit_events -----------------------------------------------------------------------------


def bench_emit(sz: Sizes) -> list[Result]:
    def bare(x: int) -> int:
        return x + 1

    wrapped = fs.emit_events(bare)
    bus = fs.EventBus()
    base = summarize(time_blocks(lambda: bare(1), sz.blocks, sz.per_block))
    with bus.activate():
        s = summarize(time_blocks(lambda: wrapped(1), sz.blocks, sz.per_block))
    assert bus.stats.published >= 2 * sz.blocks * sz.per_block
    bus.close()
    overhead = s["p50"] - base["p50"]
    return [
        Result(
            "@emit_events call, bus active, no handlers",
            s["p50"],
            base["p50"],
            baseline_name="the bare function",
            target_s=base["p50"] + T_EMIT_OVERHEAD,  # i.e. <= 10 µs of overhead
            group="emit_events",
            samples=int(s["n"]),
            extra={**s, "overhead_s": overhead},
        )
    ]


# -- entry point ---------------------------------------------------------------------------------


def run(quick: bool) -> list[Result]:
    sz = Sizes.of(quick)
    sections: list[tuple[str, Callable[[Path, Sizes], list[Result]]]] = [
        ("bus (sync)", lambda tmp, sz: bench_sync(sz)),
        ("bus (async)", lambda tmp, sz: bench_async(sz)),
        ("bus (sustained)", lambda tmp, sz: bench_sustained(sz)),
        ("event log [sqlite]", bench_persist_sqlite),
        ("event log [postgres]", bench_persist_pg),
        ("emit_events", lambda tmp, sz: bench_emit(sz)),
    ]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="forseti-bench-events-") as tmpdir:
        tmp = Path(tmpdir)
        for name, fn in sections:
            t0 = time.perf_counter()
            try:
                results += fn(tmp, sz)
            except Exception as exc:
                traceback.print_exc()
                results.append(error_result(f"events {name}", exc, group=name))
            _note(f"{name}: {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":  # python benchmarks/bench_events.py [--quick]: this module's table only
    from run import print_table

    quick = "--quick" in sys.argv[1:]
    print_table(run(quick), f"forseti event benchmarks ({'quick' if quick else 'full'})")
