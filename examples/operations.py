"""Operations: concurrent changes that never lose an update, by priority, with an audit trail.

Run it with ``python examples/operations.py``. It works on a SQLite file in a temporary directory
(removed at the end) and shows, in order:

1. ``@fs.with_conflict_resolution(policy="merge")``: 8 threads increment one counter; the final
   count is exact, and waiting increments are folded into fewer commits.
2. An ``fs.Operation`` subclass that moves money between two accounts (two lineages): each
   transfer commits both sides or neither, and the total is preserved under concurrent workers.
3. Priorities: while a first operation runs, a HIGH operation overtakes the NORMAL ones waiting.
4. ``policy="reject"``: an operation that would have to wait is rejected, with its event.
5. Idempotency: re-submitting an ``op_id`` returns the stored result and writes nothing.
6. The audit trail: ``reg.events(topic=fs.OperationCommitted)`` says who changed what and why.

See docs/operations.md for the rules behind each of these.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar
from uuid import UUID

from pydantic import Field

import forseti as fs

# -- entity types ----------------------------------------------------------------------------------


class Counter(fs.Entity):
    entity_type: ClassVar[str] = "examples.Counter"
    name: str
    n: int = 0


class Account(fs.Entity):
    entity_type: ClassVar[str] = "examples.Account"
    name: str
    balance: int = 0


class Board(fs.Entity):
    """A list of notes, appended in the order the operations commit."""

    entity_type: ClassVar[str] = "examples.Board"
    name: str
    notes: tuple[str, ...] = ()


# -- operations ------------------------------------------------------------------------------------


@fs.with_conflict_resolution(policy="merge", reason="page view")
def increment(counter: Counter, by: int = 1) -> Counter:
    """Always called with the current head; merge folds waiting calls into one commit."""
    return counter.evolve(n=counter.n + by)


class Deposit(fs.Operation):
    amount: int = Field(gt=0)

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        account = heads[self.targets[0]]
        assert isinstance(account, Account)
        return [account.evolve(balance=account.balance + self.amount)]


class InsufficientFunds(Exception):
    pass


class Transfer(fs.Operation):
    """Move ``amount`` from ``targets[0]`` to ``targets[1]``; both versions commit together."""

    amount: int = Field(gt=0)
    requested_by: str  # an operation's own fields are recorded in the audit trail

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        # Pure: reads only `heads` and the operation's fields; may run again after a conflict.
        src, dst = heads[self.targets[0]], heads[self.targets[1]]
        assert isinstance(src, Account) and isinstance(dst, Account)
        if src.balance < self.amount:
            raise InsufficientFunds(f"{src.name} has {src.balance}, needs {self.amount}")
        return [
            src.evolve(balance=src.balance - self.amount),
            dst.evolve(balance=dst.balance + self.amount),
        ]


class Gate:
    """Keeps an operation inside apply() until released: a stand-in for a slow operation."""

    def __init__(self) -> None:
        self.entered, self.released = threading.Event(), threading.Event()

    def wait(self) -> None:
        self.entered.set()
        self.released.wait(10)


class Note(fs.NormalOperation):
    """Append ``text`` to a board (NORMAL priority unless told otherwise). ``gate`` (not
    recorded) keeps the board busy while the demo queues other operations behind it."""

    text: str
    gate: Gate | None = Field(default=None, exclude=True)

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        if self.gate is not None:
            self.gate.wait()
        board = heads[self.targets[0]]
        assert isinstance(board, Board)
        return [board.evolve(notes=(*board.notes, self.text))]


def wait_until_pending(reg: fs.EntityRegistry, lineage: UUID, count: int) -> None:
    """Wait until ``count`` operations are queued on ``lineage`` (they are submitted from
    other threads, so this is how we know they are staged)."""
    deadline = time.monotonic() + 10
    while len(reg.scheduler.pending(lineage)) < count:
        assert time.monotonic() < deadline, "operations were not queued"
        time.sleep(0.001)


with tempfile.TemporaryDirectory() as tmp:
    reg = fs.open(f"sqlite:///{Path(tmp) / 'ops.db'}")

    # Count what the scheduler does, from the bus (the events are also in the log).
    seen: dict[str, int] = {}
    seen_lock = threading.Lock()

    def count(event: fs.Event) -> None:
        with seen_lock:
            seen[type(event).__name__] = seen.get(type(event).__name__, 0) + 1

    for event_type in (
        fs.OperationCommitted,
        fs.OperationConflicted,
        fs.OperationRetried,
        fs.OperationRejected,
        fs.OperationFailed,
    ):
        reg.bus.subscribe(event_type, count)

    # 1. ----------------------------------------------------------------------------------------
    page = reg.add(Counter(name="page-views"))
    THREADS, CALLS = 8, 50

    def visitor() -> None:
        with reg.activate():  # decorated calls in this block use `reg` (or pass registry=reg)
            for _ in range(CALLS):
                increment(page)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        for f in [pool.submit(visitor) for _ in range(THREADS)]:
            f.result()
    elapsed = time.perf_counter() - t0
    final = reg.get(page.lineage_id)
    assert isinstance(final, Counter)
    commits = final.version - 1  # version 1 was the add()
    print(
        f"1. merge: {THREADS} threads x {CALLS} increments -> n={final.n} "
        f"in {commits} commits ({elapsed:.2f} s)"
    )

    # 2. ----------------------------------------------------------------------------------------
    accounts = [reg.add(Account(name=name, balance=100)) for name in ("alice", "bob", "carol")]
    ids = [a.lineage_id for a in accounts]
    refused = 0
    refused_lock = threading.Lock()

    def worker(seed: int) -> None:
        global refused
        rng = random.Random(seed)
        for _ in range(25):
            src, dst = rng.sample(ids, 2)
            try:
                reg.submit(
                    Transfer(
                        targets=(src, dst),
                        amount=rng.randint(1, 60),
                        requested_by=f"worker-{seed}",
                        reason="settlement",
                    )
                )
            except InsufficientFunds:
                with refused_lock:
                    refused += 1  # apply() raised: nothing was written to either account

    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(worker, seed) for seed in range(4)]:
            f.result()
    balances = {reg.get(i).name: reg.get(i).balance for i in ids}
    print(
        f"2. transfers: balances {balances}, total {sum(balances.values())}; "
        f"{refused} refused for lack of funds"
    )
    # every transfer wrote both accounts in one transaction, under one op_id
    last = reg.submit(
        Transfer(targets=(ids[0], ids[1]), amount=1, requested_by="audit", op_id="transfer-final")
    )
    pair = reg.store.get_by_op_id("transfer-final")  # the versions an op_id wrote
    print(
        f"   one transfer wrote {[f'{reg.get(r.lineage_id).name} v{r.version}' for r in pair]} "
        f"in one transaction"
    )

    # 3. ----------------------------------------------------------------------------------------
    board = reg.add(Board(name="release-notes"))
    gate = Gate()
    with ThreadPoolExecutor(5) as pool:
        running = pool.submit(reg.submit, Note(target=board, text="first (running)", gate=gate))
        assert gate.entered.wait(10)  # the first note is inside apply(): the board is busy
        normal = []
        for i in range(3):
            normal.append(pool.submit(reg.submit, Note(target=board, text=f"normal-{i + 1}")))
            wait_until_pending(reg, board.lineage_id, i + 1)  # one at a time: FIFO is defined
        urgent = pool.submit(
            reg.submit, Note(target=board, text="urgent", priority=fs.Priority.HIGH)
        )
        wait_until_pending(reg, board.lineage_id, 4)
        queue = [op.text for op in reg.scheduler.pending(board.lineage_id)]
        print(f"3. priorities: queued behind the running note: {queue}")

        # 4. ----------------------------------------------------------------------------------
        # The board is busy: a `reject` operation is refused instead of waiting.
        rejected = reg.submit(Note(target=board, text="optional", policy="reject"))
        print(f"4. reject: {rejected.status} ({rejected.reason})")
        gate.released.set()  # let the first note finish; the rest run in priority order
        results = [f.result() for f in (running, *normal, urgent)]
    notes = reg.get(board.lineage_id).notes
    print(f"   committed in this order: {list(notes)}")
    rejections = reg.events(topic=fs.OperationRejected)
    print(f"   logged: {[(s.event.op_id == rejected.op_id, s.event.reason) for s in rejections]}")

    # 5. ----------------------------------------------------------------------------------------
    pay = Transfer(
        targets=(ids[1], ids[2]),
        amount=5,
        requested_by="billing",
        op_id="invoice-2024-0042",
        reason="invoice 42",
    )
    first = reg.submit(pay)
    again = reg.submit(pay)  # e.g. a client retrying after a lost reply
    print(
        f"5. idempotent: first {first.status}, again {again.status}, "
        f"same versions: {first.versions == again.versions}"
    )
    # merge operations staged together fold into one commit; each op_id is remembered
    deposits = reg.submit_many(
        [Deposit(target=ids[0], amount=10, policy="merge", op_id=f"deposit-{i}") for i in range(3)]
    )
    replayed = reg.submit(Deposit(target=ids[0], amount=10, policy="merge", op_id="deposit-2"))
    print(
        f"   3 merge deposits -> {len({r.versions for r in deposits})} commit; deposit-2 again: "
        f"{replayed.status}, same version: {replayed.versions == deposits[2].versions}"
    )
    # the decorator takes op_id= too
    call = increment(page, registry=reg, op_id="visit-7")
    replay = increment(page, registry=reg, op_id="visit-7")
    print(f"   decorated call with op_id twice: n={call.n}, then n={replay.n}")

    # 6. ----------------------------------------------------------------------------------------
    # OperationCommitted is written in the commit's own transaction: who, what, why, how.
    audit = reg.events(topic=fs.OperationCommitted)
    names = {i: reg.get(i).name for i in (*ids, page.lineage_id)}
    print("6. audit trail (a few of the commits):")
    for stored in audit:
        e = stored.event
        assert isinstance(e, fs.OperationCommitted)
        if e.op_id in ("invoice-2024-0042", "deposit-0", "deposit-1", "visit-7"):
            print(
                f"   {e.op_id:<17} {e.kind.rsplit('.', 1)[-1]:<9} on "
                f"{[names[t] for t in e.targets]} {e.parameters} reason={e.reason!r} "
                f"merged_into={e.merged_into}"
            )
    print(f"   operation events seen on the bus: {dict(sorted(seen.items()))}")

    reg.close()

    # What this script showed, checked.
    assert final.n == THREADS * CALLS  # no lost update
    assert commits <= THREADS * CALLS
    assert sum(balances.values()) == 300 and all(b >= 0 for b in balances.values())
    assert last.status == "committed" and len(last.versions) == 2
    assert sorted(r.lineage_id for r in pair) == sorted(ids[:2])
    assert queue == ["urgent", "normal-1", "normal-2", "normal-3"]
    assert notes == ("first (running)", "urgent", "normal-1", "normal-2", "normal-3")
    assert [r.entity.version for r in results] == [2, 4, 5, 6, 3]
    assert rejected.status == "rejected" and rejected.versions == ()
    assert [s.event.op_id for s in rejections] == [rejected.op_id]
    assert (first.status, again.status) == ("committed", "replayed")
    assert again.versions == first.versions
    assert len({r.versions for r in deposits}) == 1 and deposits[0].merged
    assert replayed.status == "replayed" and replayed.versions == deposits[2].versions
    assert replay == call and call.n == THREADS * CALLS + 1
    committed_ids = {s.event.op_id for s in audit}
    assert {"transfer-final", "invoice-2024-0042", "visit-7"} <= committed_ids
    assert seen["OperationRejected"] == 1
    assert seen.get("OperationFailed", 0) == refused  # the refused transfers
