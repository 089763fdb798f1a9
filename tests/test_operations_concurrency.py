"""Operations under real contention: threads, asyncio tasks and OS processes sharing one store.

- 1,000 increments from 16 workers end at exactly 1,000, under policy ``retry`` and ``merge``:
  threads and asyncio tasks on every backend, 4 OS processes (4 threads each) on the SQLite file
  and on PostgreSQL, where the processes meet only through the store's OCC check.
- A two-lineage transfer from 16 workers preserves the total: no lost update, no partial commit.
- A worker process killed with SIGKILL in the middle of its operations leaves the store
  consistent, and the others carry on.
- A random workload (priorities, policies, multi-target operations, re-submissions, a second
  registry and a writer that bypasses the scheduler) never deadlocks: every operation is
  committed, replayed, rejected, or fails with the budget-exhausted ConflictError. It runs
  ``SOAK_S`` seconds per backend: 60 with ``FORSETI_SOAK=1``, about 8 otherwise.

Workers start together on a barrier; nothing waits on a sleep.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from processes import run_processes

import forseti as fs
from forseti.events import EntityVersionCommitted
from forseti.registry import AsyncEntityRegistry

WORKERS = 16
INCREMENTS = 1000
PROCESSES = 4
THREADS_PER_PROCESS = WORKERS // PROCESSES
MAX_RETRIES = 200  # cross-process contention on one lineage needs a deep budget
TRANSFERS_PER_WORKER = 15
WAIT = 120.0  # seconds anything may take before the test fails instead of hanging
SOAK_S = 60.0 if os.environ.get("FORSETI_SOAK") == "1" else 8.0
POLICIES = ["retry", "merge"]


# -- entities and operations (module level: spawned processes import them) ----------------------


class Counter(fs.Entity):
    n: int = 0


class Account(fs.Entity):
    balance: int = 0


class InsufficientFunds(Exception):
    pass


class Inc(fs.Operation):
    """``n += amount`` on every target."""

    amount: int = 1

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        return [heads[t].evolve(n=heads[t].n + self.amount) for t in self.targets]  # type: ignore[attr-defined]


class Move(fs.Operation):
    """Moves ``amount`` of ``n`` from ``targets[0]`` to ``targets[1]`` (may go negative)."""

    amount: int

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        src, dst = (heads[t] for t in self.targets)
        return [src.evolve(n=src.n - self.amount), dst.evolve(n=dst.n + self.amount)]  # type: ignore[attr-defined]


class Transfer(fs.Operation):
    """Moves ``amount`` of balance from ``targets[0]`` to ``targets[1]``; never overdraws."""

    amount: int

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        src, dst = (heads[t] for t in self.targets)
        if src.balance < self.amount:  # type: ignore[attr-defined]
            raise InsufficientFunds(f"{src.balance} < {self.amount}")  # type: ignore[attr-defined]
        return [
            src.evolve(balance=src.balance - self.amount),  # type: ignore[attr-defined]
            dst.evolve(balance=dst.balance + self.amount),  # type: ignore[attr-defined]
        ]


@fs.with_conflict_resolution(policy="retry", max_retries=MAX_RETRIES)
def inc_retry(c: Counter) -> Counter:
    return c.evolve(n=c.n + 1)


@fs.with_conflict_resolution(policy="merge", max_retries=MAX_RETRIES)
def inc_merge(c: Counter) -> Counter:
    return c.evolve(n=c.n + 1)


@fs.with_conflict_resolution(policy="retry", max_retries=MAX_RETRIES)
async def ainc_retry(c: Counter) -> Counter:
    return c.evolve(n=c.n + 1)


@fs.with_conflict_resolution(policy="merge", max_retries=MAX_RETRIES)
async def ainc_merge(c: Counter) -> Counter:
    return c.evolve(n=c.n + 1)


DECORATED = {"retry": inc_retry, "merge": inc_merge}
ADECORATED = {"retry": ainc_retry, "merge": ainc_merge}


def shares(total: int, workers: int) -> list[int]:
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def increment(reg: fs.EntityRegistry, lid: UUID, policy: str, worker: int) -> tuple[str, str]:
    """One increment, as an Operation (even workers) or a decorated call (odd ones)."""
    op_id = uuid4().hex
    if worker % 2 == 0:
        result = reg.submit(
            Inc(targets=(lid,), policy=policy, max_retries=MAX_RETRIES, op_id=op_id)
        )
        return op_id, result.status
    DECORATED[policy](lid, registry=reg, op_id=op_id)
    return op_id, "committed"


def run_threads(targets: list[Callable[[], None]], timeout: float = WAIT) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} worker(s) still running after {timeout} s (deadlock?)"


# -- checks ---------------------------------------------------------------------------------------


def check_chain(reg: fs.EntityRegistry, lid: UUID) -> list[fs.Entity]:
    """Rows == max(version), versions 1..max with no gaps, each linked to the one before."""
    history = reg.history(lid)
    versions = [e.version for e in history]
    assert versions == list(range(1, len(history) + 1))
    assert [e.previous_id for e in history[1:]] == [e.id for e in history[:-1]]
    assert reg.get(lid) == history[-1]
    return history


def check_counter(
    reg: fs.EntityRegistry, lid: UUID, op_ids: list[str], policy: str, total: int
) -> None:
    """The counter holds exactly ``total``; every op_id is recorded with exactly one version."""
    history = check_chain(reg, lid)
    head = history[-1]
    assert head.n == total, f"lost updates: {total - head.n}"
    assert len(set(op_ids)) == len(op_ids) == total
    ns = [e.n for e in history]
    assert ns == sorted(set(ns)), "every commit adds at least one"
    if policy == "retry":
        assert ns == list(range(total + 1))  # one commit per increment
    commits: Tally[UUID] = Tally()
    for op_id in op_ids:
        (record,) = reg.store.get_by_op_id(op_id)
        commits[record.id] += 1
    # every version after the first is some operations' commit, with one increment each
    by_id = {e.id: e for e in history}
    assert set(commits) == {e.id for e in history[1:]}
    for vid, count in commits.items():
        e = by_id[vid]
        assert e.n - history[e.version - 2].n == count
    audits = [e for e in logged(reg, fs.OperationCommitted) if e.targets == (lid,)]
    assert sorted(e.op_id for e in audits) == sorted(op_ids)
    versions_logged = [
        e for e in logged(reg, EntityVersionCommitted) if e.subject.lineage_id == lid
    ]
    assert len(versions_logged) == head.version - 1


def logged(reg: fs.EntityRegistry, cls: type[fs.Event]) -> list[Any]:
    return [s.event for s in reg.events(topic=cls)]


# -- 1,000 increments: threads and asyncio tasks (every backend) ----------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_threads_increment_to_exactly_1000(reg: fs.EntityRegistry, policy: str) -> None:
    lid = reg.add(Counter()).lineage_id
    barrier = threading.Barrier(WORKERS, timeout=WAIT)
    done: list[list[tuple[str, str]]] = [[] for _ in range(WORKERS)]
    errors: list[str] = []

    def worker(i: int, count: int) -> None:
        barrier.wait()
        try:
            for _ in range(count):
                done[i].append(increment(reg, lid, policy, i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{type(exc).__name__}: {exc}")

    run_threads([lambda i=i, c=c: worker(i, c) for i, c in enumerate(shares(INCREMENTS, WORKERS))])
    assert errors == []
    statuses = Tally(status for d in done for _, status in d)
    assert statuses == {"committed": INCREMENTS}
    check_counter(reg, lid, [op for d in done for op, _ in d], policy, INCREMENTS)


@pytest.mark.parametrize("policy", POLICIES)
def test_asyncio_tasks_increment_to_exactly_1000(reg: fs.EntityRegistry, policy: str) -> None:
    lid = reg.add(Counter()).lineage_id
    areg = AsyncEntityRegistry(reg)
    op_ids: list[str] = []

    async def task(i: int, count: int, start: asyncio.Barrier) -> None:
        await start.wait()
        for _ in range(count):
            op_id = uuid4().hex
            if i % 2 == 0:
                op = Inc(targets=(lid,), policy=policy, max_retries=MAX_RETRIES, op_id=op_id)
                assert (await areg.submit(op)).status == "committed"
            else:
                await ADECORATED[policy](lid, registry=reg, op_id=op_id)
            op_ids.append(op_id)

    async def main() -> None:
        start = asyncio.Barrier(WORKERS)
        tasks = [task(i, c, start) for i, c in enumerate(shares(INCREMENTS, WORKERS))]
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    asyncio.run(main())
    check_counter(reg, lid, op_ids, policy, INCREMENTS)


# -- 1,000 increments: 4 OS processes (SQLite file, PostgreSQL) -----------------------------------


def _increment_process(
    url: str, blob_dir: str, lineage: str, policy: str, counts: list[int], barrier: Any,
    results: Any,
) -> None:  # fmt: skip
    """A spawned process: its own registry, ``len(counts)`` threads of increments."""
    done: list[tuple[str, str]] = []
    errors: list[str] = []
    try:
        with fs.open(url, blob_dir=blob_dir) as reg:
            lid = UUID(lineage)
            reg.get(lid)  # connected and warm before the start line
            barrier.wait(WAIT)
            lock = threading.Lock()

            def worker(i: int, count: int) -> None:
                try:
                    for _ in range(count):
                        outcome = increment(reg, lid, policy, i)
                        with lock:
                            done.append(outcome)
                except Exception as exc:  # noqa: BLE001 - sent to the parent
                    errors.append(f"{type(exc).__name__}: {exc}")

            run_threads([lambda i=i, c=c: worker(i, c) for i, c in enumerate(counts)])
    except BaseException as exc:  # noqa: BLE001 - sent to the parent
        errors.append(f"process failed: {type(exc).__name__}: {exc}")
    results.put((done, errors))


@pytest.mark.parametrize("policy", POLICIES)
def test_processes_increment_to_exactly_1000(
    persistent_url: str, tmp_path: Path, policy: str
) -> None:
    blob_dir = str(tmp_path / "b")
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        lid = reg.add(Counter()).lineage_id
        per_thread = shares(INCREMENTS, WORKERS)
        args = [
            (persistent_url, blob_dir, str(lid), policy,
             per_thread[p * THREADS_PER_PROCESS:(p + 1) * THREADS_PER_PROCESS])
            for p in range(PROCESSES)
        ]  # fmt: skip
        outcomes = run_processes(_increment_process, args, WAIT)
        errors = [e for _, errs in outcomes for e in errs]
        assert errors == []
        done = [d for ds, _ in outcomes for d in ds]
        assert Tally(status for _, status in done) == {"committed": INCREMENTS}
        # the parent's registry (its head cache included) sees every process's commits
        check_counter(reg, lid, [op for op, _ in done], policy, INCREMENTS)


# -- transfers: 16 workers, two lineages, the total preserved ------------------------------------


def check_transfers(
    reg: fs.EntityRegistry, a: UUID, b: UUID, total: int, committed: list[str], failed: list[str]
) -> None:
    """Both lineages moved together, commit by commit, and every version pair sums to ``total``."""
    history_a, history_b = check_chain(reg, a), check_chain(reg, b)
    assert len(history_a) == len(history_b) == len(committed) + 1
    for x, y in zip(history_a, history_b, strict=True):
        assert x.balance + y.balance == total  # type: ignore[attr-defined]
        assert x.balance >= 0 and y.balance >= 0  # type: ignore[attr-defined]
    records_a, records_b = reg.store.history(a), reg.store.history(b)
    assert [r.op_id for r in records_a[1:]] == [r.op_id for r in records_b[1:]]  # no partial commit
    assert sorted(r.op_id for r in records_a[1:]) == sorted(committed)
    for op_id in failed:
        assert reg.store.get_by_op_id(op_id) == []


def _transfer_worker(
    reg: fs.EntityRegistry, a: UUID, b: UUID, seed: int, count: int
) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    committed, failed, errors = [], [], []
    for _ in range(count):
        targets = (a, b) if rng.random() < 0.5 else (b, a)
        op = Transfer(targets=targets, amount=rng.randint(1, 120), max_retries=MAX_RETRIES)
        try:
            result = reg.submit(op)
            assert result.status == "committed", result
            committed.append(op.op_id)
        except InsufficientFunds:
            failed.append(op.op_id)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            errors.append(f"{type(exc).__name__}: {exc}")
    return committed, failed, errors


def test_threads_transfer_and_preserve_the_total(reg: fs.EntityRegistry) -> None:
    a = reg.add(Account(balance=100)).lineage_id
    b = reg.add(Account(balance=100)).lineage_id
    barrier = threading.Barrier(WORKERS, timeout=WAIT)
    outcomes: list[tuple[list[str], list[str], list[str]]] = []

    def worker(i: int) -> None:
        barrier.wait()
        outcomes.append(_transfer_worker(reg, a, b, i, TRANSFERS_PER_WORKER))

    run_threads([lambda i=i: worker(i) for i in range(WORKERS)])
    assert [e for _, _, errs in outcomes for e in errs] == []
    committed = [c for cs, _, _ in outcomes for c in cs]
    failed = [f for _, fs_, _ in outcomes for f in fs_]
    assert len(committed) + len(failed) == WORKERS * TRANSFERS_PER_WORKER
    check_transfers(reg, a, b, 200, committed, failed)


def _transfer_process(
    url: str, blob_dir: str, a: str, b: str, seed: int, barrier: Any, results: Any
) -> None:
    outcomes: list[tuple[list[str], list[str], list[str]]] = []
    try:
        with fs.open(url, blob_dir=blob_dir) as reg:
            la, lb = UUID(a), UUID(b)
            reg.get(la)
            barrier.wait(WAIT)
            lock = threading.Lock()

            def worker(i: int) -> None:
                out = _transfer_worker(reg, la, lb, seed * 100 + i, TRANSFERS_PER_WORKER)
                with lock:
                    outcomes.append(out)

            run_threads([lambda i=i: worker(i) for i in range(THREADS_PER_PROCESS)])
    except BaseException as exc:  # noqa: BLE001 - sent to the parent
        outcomes.append(([], [], [f"process failed: {type(exc).__name__}: {exc}"]))
    results.put(outcomes)


def test_processes_transfer_and_preserve_the_total(persistent_url: str, tmp_path: Path) -> None:
    blob_dir = str(tmp_path / "b")
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        a = reg.add(Account(balance=100)).lineage_id
        b = reg.add(Account(balance=100)).lineage_id
        args = [(persistent_url, blob_dir, str(a), str(b), p) for p in range(PROCESSES)]
        outcomes = [
            o for per_process in run_processes(_transfer_process, args, WAIT) for o in per_process
        ]
        assert [e for _, _, errs in outcomes for e in errs] == []
        committed = [c for cs, _, _ in outcomes for c in cs]
        failed = [f for _, fs_, _ in outcomes for f in fs_]
        assert len(committed) + len(failed) == WORKERS * TRANSFERS_PER_WORKER
        check_transfers(reg, a, b, 200, committed, failed)


def test_two_registries_transfer_in_opposite_directions(
    persistent_url: str, tmp_path: Path
) -> None:
    """Two registries (two schedulers: only the store orders them) move money both ways
    between the same two lineages; each writes its two versions in its own target order. A
    clash must come back as a ConflictError (and be retried), never as a driver error."""
    blob_dir = tmp_path / "b"
    with (
        fs.open(persistent_url, blob_dir=blob_dir) as one,
        fs.open(persistent_url, blob_dir=blob_dir) as two,
    ):
        a = one.add(Account(balance=100)).lineage_id
        b = one.add(Account(balance=100)).lineage_id
        two.get(a), two.get(b)
        barrier = threading.Barrier(WORKERS, timeout=WAIT)
        outcomes: list[tuple[list[str], list[str], list[str]]] = []

        def worker(i: int) -> None:
            reg, pair = (one, (a, b)) if i % 2 == 0 else (two, (b, a))
            rng = random.Random(i)
            committed, failed, errors = [], [], []
            barrier.wait()
            for _ in range(TRANSFERS_PER_WORKER):
                op = Transfer(targets=pair, amount=rng.randint(1, 60), max_retries=MAX_RETRIES)
                try:
                    reg.submit(op)
                    committed.append(op.op_id)
                except InsufficientFunds:
                    failed.append(op.op_id)
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(f"{type(exc).__name__}: {exc}")
            outcomes.append((committed, failed, errors))

        run_threads([lambda i=i: worker(i) for i in range(WORKERS)])
        errors = [e for _, _, errs in outcomes for e in errs]
        assert errors == [], f"{len(errors)} transfers failed, e.g. {errors[0]}"
        committed = [c for cs, _, _ in outcomes for c in cs]
        failed = [f for _, fs_, _ in outcomes for f in fs_]
        check_transfers(one, a, b, 200, committed, failed)


def test_one_op_id_from_many_registries_commits_once(persistent_url: str, tmp_path: Path) -> None:
    """The same request (one op_id) raced from 4 registries x 4 threads: exactly one commit,
    and every caller gets that commit's versions."""
    blob_dir = tmp_path / "b"
    regs = [fs.open(persistent_url, blob_dir=blob_dir) for _ in range(4)]
    try:
        lid = regs[0].add(Counter()).lineage_id
        for r in regs:
            r.get(lid)
        for policy in ("retry", "merge"):
            op = Inc(targets=(lid,), policy=policy, max_retries=MAX_RETRIES)
            barrier = threading.Barrier(WORKERS, timeout=WAIT)
            results: list[Any] = []

            def worker(i: int, op: fs.Operation, barrier: Any, results: list[Any]) -> None:
                barrier.wait()
                try:
                    results.append(regs[i % len(regs)].submit(op))
                except Exception as exc:  # noqa: BLE001 - checked below
                    results.append(exc)

            run_threads(
                [lambda i=i: worker(i, op, barrier, results) for i in range(WORKERS)]  # noqa: B023
            )
            head = regs[0].get(lid)
            assert [r.status for r in results if isinstance(r, fs.OperationResult)].count(
                "committed"
            ) == 1, results
            assert all(
                isinstance(r, fs.OperationResult) and r.versions == (head,) for r in results
            ), [
                r for r in results if not isinstance(r, fs.OperationResult) or r.versions != (head,)
            ]
        assert [e.n for e in check_chain(regs[0], lid)] == [0, 1, 2]
    finally:
        for r in regs:
            r.close()


# -- a worker process killed mid-operation ----------------------------------------------------------


class Stuck(fs.Operation):
    """Signals, then never returns from apply(): its process is killed inside it."""

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        _STUCK_ENTERED.set()  # type: ignore[union-attr]
        threading.Event().wait()  # until the process is killed
        raise AssertionError("unreachable")


_STUCK_ENTERED: Any = None


def _doomed_process(
    url: str, blob_dir: str, counter: str, a: str, b: str, held: str,
    progressed: Any, stuck_entered: Any,
) -> None:  # fmt: skip
    """Commits increments and transfers on several threads until it is killed."""
    global _STUCK_ENTERED
    _STUCK_ENTERED = stuck_entered
    reg = fs.open(url, blob_dir=blob_dir)
    c, la, lb, lheld = UUID(counter), UUID(a), UUID(b), UUID(held)
    commits = [0]
    lock = threading.Lock()

    def count(event: fs.OperationCommitted) -> None:
        with lock:
            commits[0] += 1
            if commits[0] == 40:
                progressed.set()

    reg.bus.subscribe(fs.OperationCommitted, count)

    def incrementer() -> None:
        while True:
            reg.submit(Inc(targets=(c,), max_retries=10_000))

    def mover(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            pair = (la, lb) if rng.random() < 0.5 else (lb, la)
            try:
                reg.submit(Transfer(targets=pair, amount=rng.randint(1, 50), max_retries=10_000))
            except InsufficientFunds:
                pass

    threads = [threading.Thread(target=incrementer, daemon=True) for _ in range(3)]
    threads += [threading.Thread(target=mover, args=(i,), daemon=True) for i in range(2)]
    threads.append(
        threading.Thread(target=lambda: reg.submit(Stuck(targets=(lheld,))), daemon=True)
    )
    for t in threads:
        t.start()
    threading.Event().wait()  # until killed


def test_a_killed_worker_process_leaves_the_store_consistent(
    persistent_url: str, tmp_path: Path
) -> None:
    blob_dir = str(tmp_path / "b")
    ctx = mp.get_context("spawn")
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        c = reg.add(Counter()).lineage_id
        a = reg.add(Account(balance=500)).lineage_id
        b = reg.add(Account(balance=500)).lineage_id
        held = reg.add(Counter()).lineage_id
        progressed, stuck_entered = ctx.Event(), ctx.Event()
        proc = ctx.Process(
            target=_doomed_process,
            args=(persistent_url, blob_dir, str(c), str(a), str(b), str(held),
                  progressed, stuck_entered),
        )  # fmt: skip
        proc.start()
        try:
            assert stuck_entered.wait(WAIT), "the child never started its stuck operation"
            assert progressed.wait(WAIT), "the child never committed 40 operations"
            # the parent keeps writing to the same lineages while the child is killed
            parent = threading.Thread(
                target=lambda: [
                    reg.submit(Inc(targets=(c,), max_retries=10_000)) for _ in range(20)
                ],
                daemon=True,
            )
            parent.start()
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
            proc.join(WAIT)
            parent.join(WAIT)
            assert not parent.is_alive()
        finally:
            if proc.is_alive():  # pragma: no cover
                proc.kill()
        assert proc.exitcode == -signal.SIGKILL

    with fs.open(persistent_url, blob_dir=blob_dir) as fresh:
        # the counter: every version one increment more than the one before, nothing half-done
        history = check_chain(fresh, c)
        assert [e.n for e in history] == list(range(len(history)))
        child_commits = len(history) - 1 - 20 + len(fresh.history(a)) - 1
        assert child_commits >= 40
        records = fresh.store.history(c)
        assert len({r.op_id for r in records[1:]}) == len(records) - 1
        for cls in (EntityVersionCommitted, fs.OperationCommitted):  # the outbox is atomic too
            events = [
                e for e in logged(fresh, cls)
                if (e.subject.lineage_id if e.subject is not None else e.targets[0]) == c
            ]  # fmt: skip
            assert len(events) == len(history) - 1, cls
        # the accounts: moved together, the total kept
        history_a, history_b = check_chain(fresh, a), check_chain(fresh, b)
        assert len(history_a) == len(history_b)
        for x, y in zip(history_a, history_b, strict=True):
            assert x.balance + y.balance == 1000  # type: ignore[attr-defined]
        assert [r.op_id for r in fresh.store.history(a)] == [
            r.op_id for r in fresh.store.history(b)
        ]
        # the lineage held by the killed operation was never written, and is free
        assert fresh.get(held).version == 1
        assert fresh.submit(Inc(targets=(held,))).entity.n == 1
        # nothing is left locked: other writers carry on
        before = fresh.get(c).n
        run_threads([lambda: [fresh.submit(Inc(targets=(c,))) for _ in range(5)] for _ in range(4)])
        assert fresh.get(c).n == before + 20
        assert fresh.submit(Transfer(targets=(a, b), amount=1)).status == "committed"
    if persistent_url.startswith("sqlite"):
        path = persistent_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- no deadlock under a random workload ----------------------------------------------------------


class Soak:
    """Random operations from many threads (and a second registry) until a deadline."""

    LINEAGES = 4

    def __init__(self, regs: list[fs.EntityRegistry], deadline: float) -> None:
        self.regs = regs
        self.deadline = deadline
        self.lineages = [regs[0].add(Counter()).lineage_id for _ in range(self.LINEAGES)]
        self.lock = threading.Lock()
        self.expected = dict.fromkeys(self.lineages, 0)
        self.outcomes: Tally[str] = Tally()
        self.errors: list[str] = []

    def _effect(self, op: fs.Operation) -> dict[UUID, int]:
        if isinstance(op, Move):
            return {op.targets[0]: -op.amount, op.targets[1]: op.amount}
        assert isinstance(op, Inc)
        return dict.fromkeys(op.targets, op.amount)

    def _random_op(self, rng: random.Random, mine: list[fs.Operation]) -> fs.Operation:
        roll = rng.random()
        if mine and roll < 0.1:  # a re-submission of one of my committed operations
            return rng.choice(mine).model_copy(update={"policy": "retry"})
        targets = tuple(rng.sample(self.lineages, rng.choice([1, 1, 2])))
        common: dict[str, Any] = {
            "targets": targets,
            "priority": rng.choice(list(fs.Priority)),
            "max_retries": rng.choice([0, 1, 2, 50, 50]),
        }
        if len(targets) == 2 and roll < 0.4:
            return Move(amount=rng.randint(1, 5), policy=rng.choice(["retry", "reject"]), **common)
        policy = rng.choice(["retry", "merge", "merge", "reject"])
        return Inc(amount=rng.randint(1, 3), policy=policy, **common)

    def worker(self, reg: fs.EntityRegistry, seed: int) -> None:
        rng = random.Random(seed)
        mine: list[fs.Operation] = []
        while time.monotonic() < self.deadline:
            op = self._random_op(rng, mine)
            try:
                result = reg.submit(op)
            except fs.ConflictError as exc:
                if "gave up after" not in str(exc):
                    self._error(op, exc)
                    continue
                self._count("budget exhausted")
                continue
            except Exception as exc:  # noqa: BLE001 - reported at the end
                self._error(op, exc)
                continue
            if result.status == "committed":
                mine.append(op)
                with self.lock:
                    for lid, delta in self._effect(op).items():
                        self.expected[lid] += delta
            elif result.status == "replayed" and not any(o.op_id == op.op_id for o in mine):
                self._error(op, AssertionError("replayed an op never committed"))
            self._count(result.status)

    def rogue(self, reg: fs.EntityRegistry, seed: int) -> None:
        """Commits straight to the store, bypassing the scheduler: the others must retry."""
        rng = random.Random(seed)
        while time.monotonic() < self.deadline:
            lid = rng.choice(self.lineages)
            head = reg.get(lid)
            try:
                reg.commit(head.evolve(n=head.n + 1))  # type: ignore[attr-defined]
            except fs.ConflictError:
                continue
            with self.lock:
                self.expected[lid] += 1
            self._count("rogue commit")

    def _count(self, what: str) -> None:
        with self.lock:
            self.outcomes[what] += 1

    def _error(self, op: fs.Operation, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{type(op).__name__} {op.policy}: {type(exc).__name__}: {exc}")


def test_no_deadlock_under_a_random_workload(
    reg: fs.EntityRegistry, store_url: str, tmp_path: Path
) -> None:
    regs = [reg]
    if not store_url.startswith("memory"):
        regs.append(fs.open(store_url, blob_dir=tmp_path / "blobs"))
    try:
        soak = Soak(regs, time.monotonic() + SOAK_S)
        workers: list[Callable[[], None]] = [lambda i=i: soak.worker(regs[0], i) for i in range(10)]
        workers += [lambda i=i: soak.worker(regs[-1], 100 + i) for i in range(4)]
        workers.append(lambda: soak.rogue(regs[-1], 999))
        try:
            run_threads(workers, timeout=SOAK_S + WAIT)
        except AssertionError:
            queued = {
                str(lid)[:8]: [f"{o.policy}/{o.priority.name}" for o in r.scheduler.pending(lid)]
                for r in regs for lid in soak.lineages
            }  # fmt: skip
            raise AssertionError(f"deadlock; queued operations: {queued}") from None
        assert soak.errors == [], soak.errors[:10]
        assert soak.outcomes["committed"] > 0
        assert soak.outcomes["replayed"] > 0
        for lid in soak.lineages:
            check_chain(reg, lid)
            for r in regs:
                assert r.scheduler.pending(lid) == []
        assert {lid: reg.get(lid).n for lid in soak.lineages} == soak.expected, soak.outcomes
    finally:
        for r in regs[1:]:
            r.close()
