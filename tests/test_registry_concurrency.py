"""Optimistic concurrency under real contention: threads, OS processes and asyncio tasks.

Invariants after every run: the lineage's rows == max(version) == successful commits + 1, versions
are 1..max with no gaps, each version links to the one before, no update is lost (a counter field
equals the number of commits), and every failed attempt was a ConflictError.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from processes import run_processes

import forseti as fs
from forseti.registry import AsyncEntityRegistry

RACERS = 8
THREADS = 8
THREAD_ROUNDS = 25
PROCESSES = 4
PROCESS_ROUNDS = 25
TASKS = 12
TASK_ROUNDS = 4
WAIT = 60  # seconds a barrier waits before the test fails instead of hanging


def check_lineage(reg: fs.EntityRegistry, lineage_id: UUID, commits: int) -> list[fs.Entity]:
    history = reg.history(lineage_id)
    versions = [e.version for e in history]
    assert len(history) == max(versions) == commits + 1
    assert versions == list(range(1, commits + 2))
    assert [e.previous_id for e in history[1:]] == [e.id for e in history[:-1]]
    assert len({e.id for e in history}) == len(history)
    head = reg.get(lineage_id)
    assert head.version == commits + 1
    # every commit added exactly one to the counter: nothing was lost or applied twice
    assert [e.hidden_size for e in history] == list(range(1, commits + 2))
    return history


def bump_until_committed(reg: fs.EntityRegistry, lineage_id: UUID) -> tuple[int, Counter[str]]:
    """Read the head, evolve, commit; on ConflictError start over. Returns (version, failures)."""
    failures: Counter[str] = Counter()
    while True:
        head = reg.get(lineage_id)
        try:
            return reg.commit(head.evolve(hidden_size=head.hidden_size + 1)).version, failures
        except fs.ConflictError as exc:
            assert exc.lineage_id == lineage_id
            assert exc.expected == head.version
            assert exc.actual is None or exc.actual > head.version
            failures["ConflictError"] += 1
        except Exception as exc:  # anything else is a bug: count it, never retry it
            failures[type(exc).__name__] += 1
            return -1, failures


# -- racers released together -------------------------------------------------------------------


def test_racing_drafts_of_one_head_have_exactly_one_winner(
    persistent_url: str, tmp_path: Path
) -> None:
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as reg:
        head = reg.add(fs.ModelEntity(name="raced", hidden_size=1))
        drafts = [head.evolve(hidden_size=100 + i) for i in range(RACERS)]
        barrier = threading.Barrier(RACERS, timeout=WAIT)
        results: list[Any] = [None] * RACERS

        def racer(i: int) -> None:
            barrier.wait()
            try:
                results[i] = reg.commit(drafts[i])
            except Exception as exc:  # collected and checked below
                results[i] = exc

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(RACERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        winners = [r for r in results if isinstance(r, fs.Entity)]
        losers = [r for r in results if isinstance(r, fs.ConflictError)]
        assert len(winners) == 1, results
        assert len(losers) == RACERS - 1, results
        for err in losers:
            assert (err.lineage_id, err.expected) == (head.lineage_id, 1)
            assert err.actual in (2, None)
        winner = winners[0]
        assert reg.history(head.lineage_id) == [head, winner]
        assert reg.get(head.lineage_id) == winner
        for d in drafts:
            if d is not winner:
                with pytest.raises(fs.NotFoundError):
                    reg.get_by_id(d.id)
        # a registry that did not take part sees the same single winner
        with fs.open(persistent_url, blob_dir=tmp_path / "b") as other:
            assert other.history(head.lineage_id) == [head, winner]


def test_racing_first_versions_of_one_lineage(persistent_url: str, tmp_path: Path) -> None:
    """Adding the same new lineage from many threads: one add wins, the rest conflict."""
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as reg:
        proto = fs.ModelEntity(name="first", hidden_size=1)
        candidates = [
            fs.ModelEntity(name=f"first-{i}", hidden_size=1, lineage_id=proto.lineage_id)
            for i in range(RACERS)
        ]
        barrier = threading.Barrier(RACERS, timeout=WAIT)
        results: list[Any] = [None] * RACERS

        def racer(i: int) -> None:
            barrier.wait()
            try:
                results[i] = reg.add(candidates[i])
            except Exception as exc:
                results[i] = exc

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(RACERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        winners = [r for r in results if isinstance(r, fs.Entity)]
        assert len(winners) == 1, results
        assert all(isinstance(r, fs.ConflictError) for r in results if r is not winners[0])
        assert reg.history(proto.lineage_id) == winners
        assert reg.find(fs.ModelEntity) == winners


# -- sustained contention: threads ----------------------------------------------------------


def test_threads_commit_with_retry_and_lose_nothing(persistent_url: str, tmp_path: Path) -> None:
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as reg:
        lineage_id = reg.add(fs.ModelEntity(name="counter", hidden_size=1)).lineage_id
        barrier = threading.Barrier(THREADS, timeout=WAIT)
        committed: list[list[int]] = [[] for _ in range(THREADS)]
        failures: list[Counter[str]] = [Counter() for _ in range(THREADS)]

        def worker(i: int) -> None:
            barrier.wait()
            for _ in range(THREAD_ROUNDS):
                version, failed = bump_until_committed(reg, lineage_id)
                failures[i] += failed
                committed[i].append(version)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 2)
        assert not any(t.is_alive() for t in threads)
        total_failures = sum(failures, Counter())
        assert set(total_failures) <= {"ConflictError"}, total_failures
        versions = sorted(v for vs in committed for v in vs)
        commits = THREADS * THREAD_ROUNDS
        # every success got its own version: exactly one winner per version
        assert versions == list(range(2, commits + 2))
        check_lineage(reg, lineage_id, commits)
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as fresh:
        check_lineage(fresh, lineage_id, commits)


# -- sustained contention: OS processes -------------------------------------------------------


def _process_worker(
    url: str, blob_dir: str, lineage_id: str, rounds: int, barrier: Any, results: Any
) -> None:
    """Runs in a spawned process: its own registry on the shared store."""
    failures: Counter[str] = Counter()
    versions: list[int] = []
    try:
        with fs.open(url, blob_dir=blob_dir) as reg:
            lid = UUID(lineage_id)
            reg.get(lid)  # connect and warm up before the start line
            barrier.wait(timeout=WAIT)
            for _ in range(rounds):
                version, failed = bump_until_committed(reg, lid)
                failures += failed
                versions.append(version)
    except Exception as exc:  # reported to the parent, which fails the test
        failures[f"worker crashed: {type(exc).__name__}: {exc}"] += 1
    results.put((versions, dict(failures)))


def test_processes_commit_with_retry_and_lose_nothing(persistent_url: str, tmp_path: Path) -> None:
    blob_dir = str(tmp_path / "b")
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        lineage_id = reg.add(fs.ModelEntity(name="counter", hidden_size=1)).lineage_id
        # the parent reads the head now, so its cache is warm when the others commit
        assert reg.get(lineage_id).version == 1
        args = [(persistent_url, blob_dir, str(lineage_id), PROCESS_ROUNDS)] * PROCESSES
        outcomes = run_processes(_process_worker, args, WAIT)
        failures = sum((Counter(f) for _, f in outcomes), Counter())
        assert set(failures) <= {"ConflictError"}, failures
        versions = sorted(v for vs, _ in outcomes for v in vs)
        commits = PROCESSES * PROCESS_ROUNDS
        assert versions == list(range(2, commits + 2))
        # the parent's registry (its head cache included) sees every process's commits
        check_lineage(reg, lineage_id, commits)
        assert reg.get(lineage_id).hidden_size == commits + 1


def _first_open_worker(url: str, blob_dir: str, name: str, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: open a store nobody has created yet, add one lineage."""
    try:
        barrier.wait(timeout=WAIT)
        with fs.open(url, blob_dir=blob_dir) as reg:
            m = reg.add(fs.ModelEntity(name=name, hidden_size=1))
            results.put(("ok", str(m.lineage_id)))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_processes_racing_to_create_a_store(persistent_url: str, tmp_path: Path) -> None:
    """Several jobs starting at once all open (and so bootstrap) the same empty store."""
    blob_dir = str(tmp_path / "b")
    args = [(persistent_url, blob_dir, f"job-{i}") for i in range(PROCESSES)]
    outcomes = run_processes(_first_open_worker, args, WAIT)
    assert [kind for kind, _ in outcomes] == ["ok"] * PROCESSES, outcomes
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        found = reg.find(fs.ModelEntity)
        assert sorted(e.name for e in found) == [f"job-{i}" for i in range(PROCESSES)]
        assert sorted(str(e.lineage_id) for e in found) == sorted(lid for _, lid in outcomes)


# -- asyncio tasks on the async face ------------------------------------------------------------


def test_async_tasks_commit_with_retry(store_url: str, tmp_path: Path) -> None:
    async def scenario() -> tuple[UUID, list[int], Counter[str], int]:
        if store_url.startswith("memory"):
            sync = fs.open(store_url)
            areg = AsyncEntityRegistry(sync)
        else:
            areg = await fs.aopen(store_url, blob_dir=tmp_path / "b")
        try:
            head = await areg.add(fs.ModelEntity(name="async-counter", hidden_size=1))
            lid = head.lineage_id
            start = asyncio.Barrier(TASKS)
            failures: Counter[str] = Counter()
            first_round_winners = 0

            async def task() -> list[int]:
                nonlocal first_round_winners
                versions: list[int] = []
                # round one: every task has read version 1 before any of them commits
                current = await areg.get(lid, version=1)
                await start.wait()
                try:
                    committed = await areg.commit(current.evolve(hidden_size=2))
                    versions.append(committed.version)
                    first_round_winners += 1
                except fs.ConflictError:
                    failures["ConflictError"] += 1
                while len(versions) < TASK_ROUNDS:
                    current = await areg.get(lid)
                    try:
                        committed = await areg.commit(
                            current.evolve(hidden_size=current.hidden_size + 1)
                        )
                        versions.append(committed.version)
                    except fs.ConflictError as exc:
                        assert exc.expected == current.version
                        failures["ConflictError"] += 1
                return versions

            per_task = await asyncio.gather(*(task() for _ in range(TASKS)))
            versions = sorted(v for vs in per_task for v in vs)
            check_lineage(areg.sync, lid, TASKS * TASK_ROUNDS)
            return lid, versions, failures, first_round_winners
        finally:
            await areg.close()

    lid, versions, failures, first_round_winners = asyncio.run(scenario())
    commits = TASKS * TASK_ROUNDS
    assert first_round_winners == 1
    assert failures["ConflictError"] >= TASKS - 1
    assert versions == list(range(2, commits + 2))
    if not store_url.startswith("memory"):
        with fs.open(store_url, blob_dir=tmp_path / "b") as reg:
            check_lineage(reg, lid, commits)


# -- fault injection: PostgreSQL connections killed under the registry ------------------------


def _terminate_other_backends(dsn: str) -> int:
    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            return sum(1 for r in rows if r[0])
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.mark.postgres
def test_postgres_registry_survives_terminated_connections(pg_server: Any, tmp_path: Path) -> None:
    url = pg_server.new_schema_url(f"t_kill_{uuid4().hex[:10]}")
    with fs.open(url, blob_dir=tmp_path / "b") as reg:
        m = reg.add(fs.ModelEntity(name="survivor", hidden_size=1))
        for round_ in range(3):
            assert _terminate_other_backends(pg_server.url) >= 1
            head = reg.get(m.lineage_id)  # a read on a dead connection is retried
            assert head.version == round_ + 1
            assert reg.commit(head.evolve(hidden_size=head.hidden_size + 1)).version == round_ + 2
            assert _terminate_other_backends(pg_server.url) >= 1
            with pytest.raises(fs.ConflictError):  # OCC still holds on a fresh connection
                reg.commit(head.evolve(hidden_size=0 + 99))
        check_lineage(reg, m.lineage_id, 3)
