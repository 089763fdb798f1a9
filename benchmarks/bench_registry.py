"""The entity registry against raw baselines measured in the same process.

1. ``reg.commit(draft)`` latency (p50, p99; drafts pre-built with ``evolve`` outside the timed
   region) and ``evolve`` + ``commit`` on ``memory://``, a SQLite file and PostgreSQL.
   Baselines: a raw stdlib ``sqlite3`` insert of an equivalent row (the same ~350-byte msgpack
   state and hex ids) into a table keyed by ``(lineage_id, version)``, one ``BEGIN IMMEDIATE`` …
   ``COMMIT`` per insert, WAL + ``synchronous=NORMAL``, in the same temporary directory; for
   ``memory://``, the in-process floor (msgpack-encode the state, sha256 it, append under a lock);
   for PostgreSQL, a raw asyncpg insert in its own transaction on the same server.
2. Cached head lookup ``reg.get(lineage_id)``; baseline: a plain ``dict`` lookup.
3. ``reg.history(lid)`` of a 10k-version lineage, warm (versions in the registry cache) and cold
   (a fresh registry over the same store: every row decoded and verified). Baseline: raw
   ``SELECT state … ORDER BY version`` plus ``msgspec.msgpack.decode`` of the same rows.
4. ``reg.descendants(ref)`` over a 10k-node provenance DAG. Baseline: the same traversal as a raw
   recursive CTE over an id-only edge table (``src``, ``dst``) holding the same ids.

PostgreSQL uses ``forseti.testing.postgres.TemporaryPostgres``; when that, ``PostgresStore`` or the
server binaries are missing (or the server fails), its rows say ``skipped`` with the reason, unless
``FORSETI_REQUIRE_POSTGRES=1``, which makes that a crash (as in the test suite).
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    Result,
    error_result,
    limit_threads,
    setup_paths,
    summarize,
    time_blocks,
    time_calls,
    time_each,
)

setup_paths()

import msgspec  # noqa: E402

import forseti as fs  # noqa: E402
from forseti.registry.codec import encode_version  # noqa: E402
from forseti.registry.core import EntityRegistry  # noqa: E402

REQUIRE_PG = os.environ.get("FORSETI_REQUIRE_POSTGRES") == "1"


@dataclass(frozen=True)
class Sizes:
    commits: int
    pg_commits: int
    warmup: int
    get_blocks: int
    history_versions: int
    history_reps: int
    cold_reps: int
    graph_nodes: int
    graph_reps: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(200, 200, 20, 50, 1_000, 5, 3, 2_000, 10)
        return cls(5_000, 2_000, 200, 300, 10_000, 10, 5, 10_000, 30)


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


# -- data ----------------------------------------------------------------------------------------


def new_model() -> fs.ModelEntity:
    return fs.ModelEntity(
        name="bench-model",
        architecture="transformer",
        hidden_size=64,
        num_layers=2,
        vocab_size=32_000,
        hyperparameters={"lr": 3e-4, "batch_size": 32, "warmup": 100},
        description="registry benchmark",
    )


def chain(head: fs.Entity, n: int) -> list[fs.Entity]:
    """``n`` drafts, each evolved from the previous one (commit them in order)."""
    out = []
    cur = head
    for i in range(n):
        cur = cur.evolve(num_layers=(i % 96) + 1)
        out.append(cur)
    return out


def open_reg(backend: str, tmp: Path, url: str | None = None) -> fs.EntityRegistry:
    tag = uuid.uuid4().hex[:8]
    if backend == "memory":
        return fs.open("memory://", blob_dir=tmp / f"blobs-{tag}")
    if backend == "sqlite":
        return fs.open(f"sqlite:///{tmp / f'forseti-{tag}.db'}", blob_dir=tmp / f"blobs-{tag}")
    assert url is not None
    return fs.open(url, blob_dir=tmp / f"blobs-{tag}")


def raw_sqlite(path: Path) -> sqlite3.Connection:
    """A stdlib connection with the pragmas SQLiteStore sets."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


# -- 1. commit latency ---------------------------------------------------------------------------

_BASE_SQLITE = "raw sqlite3 insert, same ~350 B row, 1 txn each, WAL+NORMAL"
_BASE_MEMORY = "in-process floor: msgpack encode + sha256 + list append under a lock"
_BASE_PG = "raw asyncpg INSERT, same row, 1 txn each, same server"


def baseline_sqlite_insert(tmp: Path, states: list[bytes], warmup: int) -> list[int]:
    conn = raw_sqlite(tmp / f"raw-commit-{uuid.uuid4().hex[:8]}.db")
    conn.execute(
        "CREATE TABLE entity_versions (lineage_id TEXT NOT NULL, version INTEGER NOT NULL, "
        "id TEXT NOT NULL UNIQUE, state BLOB NOT NULL, PRIMARY KEY (lineage_id, version))"
    )
    lid = uuid.uuid4().hex
    rows = [(lid, i + 1, uuid.uuid4().hex, s) for i, s in enumerate(states)]
    execute = conn.execute

    def insert(row: tuple[str, int, str, bytes]) -> None:
        execute("BEGIN IMMEDIATE")
        execute("INSERT INTO entity_versions VALUES (?,?,?,?)", row)
        execute("COMMIT")

    try:
        return time_each(insert, rows, warmup)
    finally:
        conn.close()


def baseline_memory_append(states: list[dict[str, Any]], warmup: int) -> list[int]:
    lock = threading.Lock()
    history: dict[str, list[tuple[bytes, str]]] = {"l": []}
    encode = msgspec.msgpack.encode
    sha = hashlib.sha256

    def append(state: dict[str, Any]) -> None:
        b = encode(state)
        h = sha(b).hexdigest()
        with lock:
            history["l"].append((b, h))

    return time_each(append, states, warmup)


def commit_rows(
    backend: str,
    reg: fs.EntityRegistry,
    sz: Sizes,
    n: int,
    baseline: list[int] | None,
    baseline_name: str,
    target_p50: float | None,
    target_ratio: float | None,
) -> list[Result]:
    head = reg.add(new_model())
    drafts = chain(head, n + sz.warmup)
    samples = time_each(reg.commit, drafts, sz.warmup)

    cur = reg.get(head.lineage_id)

    def evolve_commit(i: int) -> None:
        nonlocal cur
        cur = reg.commit(cur.evolve(num_layers=(i % 96) + 1))

    samples_ec = time_each(evolve_commit, range(n + sz.warmup), sz.warmup)
    s = summarize(samples)
    ec = summarize(samples_ec)
    b = summarize(baseline) if baseline else None
    group = f"commit [{backend}]"
    common = dict(group=group, baseline_name=baseline_name, samples=len(samples))
    return [
        Result(
            f"commit p50 [{backend}]",
            s["p50"],
            b["p50"] if b else None,
            target_s=target_p50,
            target_ratio=target_ratio,
            extra=s,
            **common,
        ),
        Result(f"commit p99 [{backend}]", s["p99"], b["p99"] if b else None, extra=s, **common),
        Result(
            f"evolve+commit p50 [{backend}]",
            ec["p50"],
            b["p50"] if b else None,
            extra=ec,
            **common,
        ),
    ]


def bench_commit_local(tmp: Path, sz: Sizes) -> list[Result]:
    # the same kind of rows the registry writes: ~350-byte msgpack states of evolved models
    sample = chain(new_model(), sz.commits + sz.warmup)
    states = [encode_version(d).state for d in sample]
    dumped = [d.to_state() for d in sample]
    base_sqlite = baseline_sqlite_insert(tmp, states, sz.warmup)
    base_mem = baseline_memory_append(dumped, sz.warmup)
    out: list[Result] = []
    reg = open_reg("memory", tmp)
    try:
        out += commit_rows("memory", reg, sz, sz.commits, base_mem, _BASE_MEMORY, 20e-6, None)
    finally:
        reg.close()
    reg = open_reg("sqlite", tmp)
    try:
        out += commit_rows("sqlite", reg, sz, sz.commits, base_sqlite, _BASE_SQLITE, 0.5e-3, 5.0)
    finally:
        reg.close()
    for r in out:
        r.extra["state_bytes_mean"] = sum(map(len, states)) / len(states)
    return out


# -- PostgreSQL ----------------------------------------------------------------------------------


class Skip(Exception):
    """The PostgreSQL rows cannot run here; the message says why."""


@contextmanager
def postgres_url() -> Iterator[tuple[str, Any]]:
    """A fresh schema URL on a throwaway server, and the server object."""
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
        server_cm = TemporaryPostgres()
        server = server_cm.__enter__()
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise Skip(f"the throwaway PostgreSQL server did not start: {why}") from None
    try:
        yield server.new_schema_url(f"bench_{uuid.uuid4().hex[:12]}"), server
    finally:
        server_cm.__exit__(None, None, None)


def _pg_dsn(server: Any, schema_url: str) -> str:
    for attr in ("url", "dsn", "base_url"):
        value = getattr(server, attr, None)
        if isinstance(value, str) and value.startswith("postgres"):
            return value
    return schema_url.split("?", 1)[0]


def baseline_pg_insert(dsn: str, states: list[bytes], warmup: int) -> list[int]:
    import asyncio

    import asyncpg

    async def main() -> list[int]:
        conn = await asyncpg.connect(dsn)
        table = f"bench_raw_{uuid.uuid4().hex[:10]}"
        try:
            await conn.execute(
                f"CREATE TABLE {table} (lineage_id uuid NOT NULL, version integer NOT NULL, "
                f"id uuid NOT NULL UNIQUE, state bytea NOT NULL, PRIMARY KEY (lineage_id, version))"
            )
            stmt = await conn.prepare(f"INSERT INTO {table} VALUES ($1, $2, $3, $4)")
            lid = uuid.uuid4()
            out: list[int] = []
            clock = time.perf_counter_ns
            for i, state in enumerate(states):
                t0 = clock()
                async with conn.transaction():
                    await stmt.fetch(lid, i + 1, uuid.uuid4(), state)
                if i >= warmup:
                    out.append(clock() - t0)
            await conn.execute(f"DROP TABLE {table}")
            return out
        finally:
            await conn.close()

    return asyncio.run(main())


def _pg_skipped(reason: str) -> list[Result]:
    targets = {"commit p50 [postgres]": 3e-3, "commit p99 [postgres]": None}
    names = [*targets, "evolve+commit p50 [postgres]"]
    return [
        Result(n, skipped=reason, target_s=targets.get(n), group="commit [postgres]") for n in names
    ]


def bench_commit_pg(tmp: Path, sz: Sizes) -> list[Result]:
    try:
        with postgres_url() as (url, server):
            try:
                reg = open_reg("postgres", tmp, url)
            except Exception as exc:
                where = url.split("?")[0]
                raise Skip(f"forseti.open({where!r}) failed: {type(exc).__name__}: {exc}") from None
            try:
                base: list[int] | None
                try:
                    drafts = chain(new_model(), sz.pg_commits + sz.warmup)
                    states = [encode_version(d).state for d in drafts]
                    base = baseline_pg_insert(_pg_dsn(server, url), states, sz.warmup)
                except Exception:  # the baseline is a comparison, not the thing measured
                    traceback.print_exc()
                    base = None
                return commit_rows("postgres", reg, sz, sz.pg_commits, base, _BASE_PG, 3e-3, None)
            finally:
                reg.close()
    except Skip as exc:
        if REQUIRE_PG:
            raise RuntimeError(f"FORSETI_REQUIRE_POSTGRES=1 but: {exc}") from None
        return _pg_skipped(str(exc))
    except Exception as exc:
        if REQUIRE_PG:
            raise
        traceback.print_exc()
        return _pg_skipped(f"the PostgreSQL benchmark failed: {type(exc).__name__}: {exc}")


# -- 2. cached head lookup -----------------------------------------------------------------------


def bench_get(tmp: Path, sz: Sizes) -> list[Result]:
    out = []
    for backend in ("memory", "sqlite"):
        reg = open_reg(backend, tmp)
        try:
            head = reg.add(new_model())
            for d in chain(head, 5):
                reg.commit(d)
            lid = head.lineage_id
            assert reg.get(lid).version == 6
            got = time_blocks(functools.partial(reg.get, lid), sz.get_blocks, 1000)
            table = {lid: reg.get(lid)}
            for _ in range(1000):  # a realistically sized dict
                table[uuid.uuid4()] = head
            base = time_blocks(functools.partial(table.__getitem__, lid), sz.get_blocks, 1000)
            s, b = summarize(got), summarize(base)
            out.append(
                Result(
                    f"get(lineage) cached head p50 [{backend}]",
                    s["p50"],
                    b["p50"],
                    baseline_name="dict lookup (same call overhead)",
                    target_s=2e-6,
                    group="get",
                    samples=len(got),
                    extra=s,
                )
            )
        finally:
            reg.close()
    return out


# -- shared 10k builds ---------------------------------------------------------------------------


def commit_in_chunks(reg: fs.EntityRegistry, entities: list[fs.Entity], chunk: int = 500) -> None:
    for i in range(0, len(entities), chunk):
        reg.commit_many(entities[i : i + chunk])


def fresh_view(reg: fs.EntityRegistry) -> EntityRegistry:
    """A registry over the same store with empty caches (not closed: it would close the store)."""
    return EntityRegistry(reg.store, reg.blobs)


# -- 3. history ----------------------------------------------------------------------------------


def bench_history(tmp: Path, sz: Sizes) -> list[Result]:
    n = sz.history_versions
    head = new_model()
    versions = [head, *chain(head, n - 1)]
    regs = {"memory": open_reg("memory", tmp), "sqlite": open_reg("sqlite", tmp)}
    out = []
    try:
        for reg in regs.values():
            commit_in_chunks(reg, versions)
        lid = head.lineage_id
        # baseline: the same rows, read raw from the SQLite file
        raw = raw_sqlite(regs["sqlite"].store.path)  # type: ignore[attr-defined]
        decode = msgspec.msgpack.decode

        def raw_history() -> list[Any]:
            rows = raw.execute(
                "SELECT state FROM entity_versions WHERE lineage_id=? ORDER BY version", (lid.hex,)
            ).fetchall()
            return [decode(r[0]) for r in rows]

        assert len(raw_history()) == n
        base = summarize(time_calls(raw_history, sz.history_reps, warmup=2))
        raw.close()
        label = _k(n)
        for backend, reg in regs.items():
            assert len(reg.history(lid)) == n
            history = functools.partial(reg.history, lid)
            warm = summarize(time_calls(history, sz.history_reps, warmup=1))

            def cold(reg: fs.EntityRegistry = reg) -> None:
                fresh_view(reg).history(lid)

            cold_s = summarize(time_calls(cold, sz.cold_reps, warmup=1))
            for what, s in (("warm cache", warm), ("cold cache", cold_s)):
                out.append(
                    Result(
                        f"history({label} versions) {what} [{backend}]",
                        s["p50"],
                        base["p50"],
                        baseline_name="raw sqlite3 SELECT state ORDER BY version + msgpack decode",
                        group="history",
                        samples=int(s["n"]),
                        extra={**s, "per_version_s": s["p50"] / n},
                    )
                )
    finally:
        for reg in regs.values():
            reg.close()
    return out


# -- 4. descendants ------------------------------------------------------------------------------


def build_dag(n: int, seed: int = 7) -> list[fs.Entity]:
    """A root dataset and ``n`` datasets each derived from a random earlier node (20 % two)."""
    rng = random.Random(seed)
    nodes: list[fs.Entity] = [fs.DatasetEntity(name="root", uri="s3://bench/root")]
    for i in range(n):
        parents = {rng.randrange(len(nodes))}
        if rng.random() < 0.2:
            parents.add(rng.randrange(len(nodes)))
        nodes.append(
            fs.DatasetEntity(
                name=f"d{i}",
                uri=f"s3://bench/d{i}",
                derived_from=tuple(nodes[p].ref for p in sorted(parents)),
            )
        )
    return nodes


def bench_descendants(tmp: Path, sz: Sizes) -> list[Result]:
    n = sz.graph_nodes
    nodes = build_dag(n)
    root = nodes[0]
    regs = {"memory": open_reg("memory", tmp), "sqlite": open_reg("sqlite", tmp)}
    out = []
    try:
        for reg in regs.values():
            commit_in_chunks(reg, nodes)
        # baseline: the same edges, ids only, in their own table (same layout: PK + index on dst)
        raw = raw_sqlite(tmp / f"raw-graph-{uuid.uuid4().hex[:8]}.db")
        raw.execute(
            "CREATE TABLE edges (src TEXT NOT NULL, dst TEXT NOT NULL, PRIMARY KEY (src, dst))"
        )
        raw.execute("CREATE INDEX ix_edges_dst ON edges (dst)")
        id_of = {node.ref: node.id for node in nodes}
        edges = [(id_of[ref].hex, node.id.hex) for node in nodes[1:] for ref in node.derived_from]
        raw.execute("BEGIN")
        raw.executemany("INSERT INTO edges VALUES (?, ?)", edges)
        raw.execute("COMMIT")
        sql = (
            "WITH RECURSIVE walk(id) AS (SELECT dst FROM edges WHERE src = ? "
            "UNION SELECT e.dst FROM edges e JOIN walk w ON e.src = w.id) SELECT id FROM walk"
        )

        def raw_walk() -> list[Any]:
            return raw.execute(sql, (root.id.hex,)).fetchall()

        assert len(raw_walk()) == n
        base = summarize(time_calls(raw_walk, sz.graph_reps, warmup=2))
        raw.close()
        label = _k(n)
        for backend, reg in regs.items():
            # the first walk of a SQLite store loads its in-memory graph index: timed on its own
            cold = functools.partial(reg.descendants, root.ref)
            t0 = time.perf_counter()
            got = cold()
            first = time.perf_counter() - t0
            assert len(got) == n, (backend, len(got))
            out.append(
                Result(
                    f"descendants({label}-node DAG), first walk [{backend}]",
                    first,
                    base["p50"],
                    baseline_name="raw sqlite3 recursive CTE over an id-only edge table",
                    group="descendants",
                    samples=1,
                )
            )
            walk = functools.partial(reg.descendants, root.ref)
            s = summarize(time_calls(walk, sz.graph_reps, warmup=1))
            out.append(
                Result(
                    f"descendants({label}-node DAG) [{backend}]",
                    s["p50"],
                    base["p50"],
                    baseline_name="raw sqlite3 recursive CTE over an id-only edge table",
                    target_s=20e-3,
                    group="descendants",
                    samples=int(s["n"]),
                    extra={**s, "edges": len(edges)},
                )
            )
    finally:
        for reg in regs.values():
            reg.close()
    return out


# -- entry point ---------------------------------------------------------------------------------


def run(quick: bool) -> list[Result]:
    limit_threads()
    sz = Sizes.of(quick)
    sections: list[tuple[str, Callable[[Path, Sizes], list[Result]]]] = [
        ("commit", bench_commit_local),
        ("commit [postgres]", bench_commit_pg),
        ("get", bench_get),
        ("history", bench_history),
        ("descendants", bench_descendants),
    ]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="forseti-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for name, fn in sections:
            t0 = time.perf_counter()
            try:
                results += fn(tmp, sz)
            except Exception as exc:
                traceback.print_exc()
                results.append(error_result(f"registry {name}", exc, group=name))
            print(f"    {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return results
