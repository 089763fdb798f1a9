"""Operations in one process: staging, priorities, policies, merging, idempotency, events.

Every behaviour runs on memory, SQLite and PostgreSQL (the ``reg`` fixture). Ordering under
contention is made deterministic without sleeps: a first operation holds its target (its ``apply``
blocks on a ``threading.Event``) while the others are submitted from their own threads; the test
waits, with a bound, until ``reg.scheduler.pending(target)`` lists them all, then releases the
first one and reads the order the others committed in (their version numbers).

A test that could hang on a scheduler bug runs the calls on daemon threads and fails after
``HUNG`` seconds instead of blocking the session.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from pydantic import Field

import forseti as fs
from forseti.events import EntityVersionCommitted
from forseti.operations import OperationEvent
from forseti.registry import AsyncEntityRegistry

WAIT = 30.0  # seconds a test waits for something that must happen before it fails
HUNG = 5.0  # seconds after which a call that should have returned is declared deadlocked


# -- entities and operations ------------------------------------------------------------------


class Counter(fs.Entity):
    n: int = 0


class Account(fs.Entity):
    balance: int = 0


class Boom(Exception):
    """An apply() that fails on purpose."""


class InsufficientFunds(Exception):
    pass


Hook = Callable[[fs.Operation, Mapping[UUID, fs.Entity]], None]


class Add(fs.Operation):
    """Adds ``amount`` to ``n`` of every target; ``hook`` runs first (to block or interfere)."""

    amount: int = 1
    fail: bool = False
    hook: Hook | None = Field(default=None, exclude=True)

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        if self.hook is not None:
            self.hook(self, heads)
        if self.fail:
            raise Boom(f"{self.op_id} fails on purpose")
        return [heads[t].evolve(n=heads[t].n + self.amount) for t in self.targets]  # type: ignore[attr-defined]


class OtherAdd(Add):
    """Same effect as Add, another kind: never merged with Add."""


class Transfer(fs.Operation):
    """Moves ``amount`` from ``targets[0]`` to ``targets[1]``; refuses to overdraw."""

    amount: int
    hook: Hook | None = Field(default=None, exclude=True)

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        if self.hook is not None:
            self.hook(self, heads)
        src, dst = (heads[t] for t in self.targets)
        if src.balance < self.amount:  # type: ignore[attr-defined]
            raise InsufficientFunds(f"{src.balance} < {self.amount}")  # type: ignore[attr-defined]
        return [
            src.evolve(balance=src.balance - self.amount),  # type: ignore[attr-defined]
            dst.evolve(balance=dst.balance + self.amount),  # type: ignore[attr-defined]
        ]


class Withdraw(fs.Operation):
    amount: int

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        head = heads[self.targets[0]]
        if head.balance < self.amount:  # type: ignore[attr-defined]
            raise InsufficientFunds(f"{head.balance} < {self.amount}")  # type: ignore[attr-defined]
        return [head.evolve(balance=head.balance - self.amount)]  # type: ignore[attr-defined]


class Returns(fs.Operation):
    """An apply() that returns whatever ``make(heads)`` gives (for bad-output tests)."""

    make: Callable[[Mapping[UUID, fs.Entity]], Any] = Field(exclude=True)

    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        return self.make(heads)  # type: ignore[no-any-return]


# -- helpers ----------------------------------------------------------------------------------


class Recorder:
    """Every operation event and EntityVersionCommitted published on a bus, in order."""

    def __init__(self, reg: fs.EntityRegistry) -> None:
        self.events: list[fs.Event] = []
        self._lock = threading.Lock()
        self.subs = [
            reg.bus.subscribe(OperationEvent, self._add),
            reg.bus.subscribe(EntityVersionCommitted, self._add),
        ]

    def _add(self, event: fs.Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, cls: type[Any], op_id: str | None = None) -> list[Any]:
        with self._lock:
            return [
                e
                for e in self.events
                if isinstance(e, cls) and (op_id is None or getattr(e, "op_id", None) == op_id)
            ]

    def kinds(self, op_id: str, only_operations: bool = False) -> list[str]:
        with self._lock:
            return [
                type(e).__name__
                for e in self.events
                if getattr(e, "op_id", None) == op_id
                and (isinstance(e, OperationEvent) or not only_operations)
            ]


class Call(threading.Thread):
    """Runs ``fn()`` on a daemon thread; ``outcome()`` is its result or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self, timeout: float = WAIT) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"the call did not return within {timeout} s (deadlock?)"
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Re-check ``predicate`` until it holds; fail after ``timeout`` seconds.

    ``OperationSubmitted`` is published before the operation joins its queue, so an event alone
    cannot say that an operation is queued; ``pending()`` can.
    """
    ticker = threading.Event()
    for _ in range(int(timeout / 0.001)):
        if predicate():
            return
        ticker.wait(0.001)
    raise AssertionError(f"timed out waiting until {what}")


class Gate:
    """A hook that makes an operation hold its targets until ``release()``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()

    def __call__(self, op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
        self.entered.set()
        assert self._release.wait(WAIT), "the gate was never released"

    def release(self) -> None:
        self._release.set()


def hold(reg: fs.EntityRegistry, target: UUID, **fields: Any) -> tuple[Gate, Call, Add]:
    """Start an operation that holds ``target`` until the gate is released."""
    gate = Gate()
    op = Add(targets=(target,), hook=gate, **fields)
    call = Call(lambda: reg.submit(op))
    assert gate.entered.wait(WAIT), "the holding operation never started"
    return gate, call, op


def counter(reg: fs.EntityRegistry, n: int = 0) -> UUID:
    return reg.add(Counter(n=n)).lineage_id


def logged(reg: fs.EntityRegistry, cls: type[fs.Event]) -> list[Any]:
    return [s.event for s in reg.events(topic=cls)]


def other_writer(reg: fs.EntityRegistry, store_url: str, tmp_path: Path) -> fs.EntityRegistry:
    """A second registry on the same store (the same registry for the in-memory store)."""
    if store_url.startswith("memory"):
        return reg
    return fs.open(store_url, blob_dir=tmp_path / "blobs")


# -- bad input -----------------------------------------------------------------------------------


def test_submit_refuses_what_is_not_an_operation(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    rec = Recorder(reg)
    for bad in (None, "op", 3, Counter(), {"targets": [lid]}):
        with pytest.raises(fs.ValidationError):
            reg.submit(bad)  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        reg.submit_many("not a list")  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        reg.submit_many(Add(targets=(lid,)))  # type: ignore[arg-type]
    good = Add(targets=(lid,))
    with pytest.raises(fs.ValidationError):
        reg.submit_many([good, "op"])  # type: ignore[list-item]
    # nothing was staged, announced or written; the lineage is free
    assert reg.scheduler.pending(lid) == []
    assert rec.events == []
    assert reg.get(lid).version == 1
    assert reg.submit_many([]) == []
    assert reg.submit(good).status == "committed"


def test_operation_fields_are_validated(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    other = counter(reg)
    head = reg.get(lid)
    bad: list[dict[str, Any]] = [
        {},
        {"targets": ()},
        {"targets": []},
        {"targets": (lid, lid)},
        {"targets": (head, lid)},  # the same lineage, once as an entity
        {"targets": ("not a uuid",)},
        {"targets": (None,)},
        {"targets": lid},  # not a sequence
        {"target": lid, "targets": (other,)},
        {"targets": (lid,), "priority": 5},
        {"targets": (lid,), "priority": -1},
        {"targets": (lid,), "priority": "HIGH"},
        {"targets": (lid,), "priority": None},
        {"targets": (lid,), "policy": "bogus"},
        {"targets": (lid,), "policy": None},
        {"targets": (lid,), "max_retries": -1},
        {"targets": (lid,), "max_retries": 10_001},
        {"targets": (lid,), "op_id": ""},
        {"targets": (lid,), "op_id": "a\x00b"},
        {"targets": (lid,), "op_id": "x" * 129},
        {"targets": (lid,), "op_id": 7},
        {"targets": (lid,), "unknown_field": 1},
    ]
    for fields in bad:
        with pytest.raises(fs.ValidationError) as info:
            Add(**fields)
        assert isinstance(info.value, ValueError), fields
    # what is accepted: one target by `target`, entities as targets, priorities as names
    assert Add(target=lid).targets == (lid,)
    assert Add(targets=[head, other]).targets == (lid, other)
    assert Add(targets=(lid,), priority=fs.Priority.CRITICAL).priority is fs.Priority.CRITICAL
    assert Add(targets=(lid,), priority=0).priority is fs.Priority.BACKGROUND
    assert fs.StructuralOperation(targets=(lid,)).priority is fs.Priority.HIGH
    assert fs.LowPriorityOperation(targets=(lid,)).priority is fs.Priority.LOW
    with pytest.raises(NotImplementedError):
        reg.submit(fs.NormalOperation(targets=(lid,)))
    assert reg.get(lid).version == 1


def test_bool_is_neither_a_priority_nor_a_retry_budget(reg: fs.EntityRegistry) -> None:
    """``True``/``False`` are ints to Python but never a meaningful priority or retry count.

    The rest of Forseti refuses bools where integers are expected (bus priority, since_seq,
    expected_revision); an Operation silently takes ``priority=True`` as LOW.
    """
    lid = counter(reg)
    for fields in ({"priority": True}, {"priority": False}, {"max_retries": True}):
        with pytest.raises(fs.ValidationError):
            Add(targets=(lid,), **fields)


def test_apply_must_return_drafts_of_its_targets(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    other = counter(reg)
    stale = reg.get(lid)
    reg.commit(stale.evolve(n=5))
    rec = Recorder(reg)
    outputs: list[Callable[[Mapping[UUID, fs.Entity]], Any]] = [
        lambda heads: heads[lid].evolve(n=1),  # a draft, not a list
        lambda heads: None,
        lambda heads: [heads[lid].evolve(n=1), "x"],
        lambda heads: [reg.get(other).evolve(n=1)],  # not one of its targets
        lambda heads: [stale.evolve(n=1)],  # not made from the head it was given
    ]
    for make in outputs:
        op = Returns(targets=(lid,), make=make)
        with pytest.raises(fs.ValidationError):
            reg.submit(op)
        failed = rec.of(fs.OperationFailed, op.op_id)
        assert [e.error_type for e in failed] == ["ValidationError"]
    assert [e.version for e in reg.history(lid)] == [1, 2]
    assert [e.version for e in reg.history(other)] == [1]
    assert logged(reg, fs.OperationCommitted) == []


def test_decorator_bad_input(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)

    @fs.with_conflict_resolution
    def bump(c: Counter) -> Counter:
        return c.evolve(n=c.n + 1)

    @fs.with_conflict_resolution
    def not_a_draft(c: Counter) -> int:
        return 3

    for target in ("not-a-uuid", 3, None, [lid]):
        with pytest.raises(fs.ValidationError):
            bump(target, registry=reg)
    with pytest.raises(fs.ConfigError):
        bump(lid)  # no registry=, none active
    with pytest.raises(fs.ValidationError):
        not_a_draft(lid, registry=reg)
    bad_options: list[dict[str, Any]] = [
        {"priority": 9}, {"priority": True}, {"policy": "sometimes"}, {"max_retries": -2},
    ]  # fmt: skip
    for options in bad_options:  # refused when decorating, or at the latest when called
        with pytest.raises(fs.ValidationError):
            deco = fs.with_conflict_resolution(**options)  # type: ignore[call-overload]
            deco(lambda c: c.evolve(n=0))(lid, registry=reg)
    with pytest.raises(fs.ValidationError):
        bump(lid, registry=reg, op_id="")
    assert reg.get(lid).version == 1
    # a target given as an entity, an EntityRef or a lineage id
    head = reg.get(lid)
    assert bump(head, registry=reg).n == 1
    assert bump(head.ref, registry=reg).n == 2
    assert bump(lid, registry=reg).n == 3


def test_result_entity_needs_exactly_one_version(reg: fs.EntityRegistry) -> None:
    a, b = counter(reg), counter(reg)
    result = reg.submit(Add(targets=(a, b)))
    assert len(result.versions) == 2
    with pytest.raises(fs.ValidationError):
        _ = result.entity


# -- committing, apply errors ------------------------------------------------------------------


def test_submit_commits_and_reports(reg: fs.EntityRegistry) -> None:
    lid = counter(reg, 10)
    op = Add(targets=(lid,), amount=5, reason="top up")
    result = reg.submit(op)
    assert result.status == "committed"
    assert result.op_id == op.op_id
    assert result.attempts == 1
    assert result.merged == ()
    assert result.entity == reg.get(lid)
    assert (result.entity.version, result.entity.n) == (2, 15)
    assert [r.id for r in reg.store.get_by_op_id(op.op_id)] == [result.entity.id]
    (audit,) = logged(reg, fs.OperationCommitted)
    assert (audit.op_id, audit.kind, audit.reason, audit.policy) == (
        op.op_id, op.kind, "top up", "retry",
    )  # fmt: skip
    assert audit.parameters == {"amount": 5, "fail": False}
    assert audit.targets == (lid,)
    assert audit.merged_into is None


def test_async_registry_submits(store_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        areg = AsyncEntityRegistry(fs.open(store_url, blob_dir=tmp_path / "b"))
        try:
            lid = (await areg.add(Counter())).lineage_id
            result = await areg.submit(Add(targets=(lid,)))
            assert (result.status, result.entity.n) == ("committed", 1)
            results = await areg.submit_many([Add(targets=(lid,)) for _ in range(3)])
            assert [r.entity.n for r in results] == [2, 3, 4]
            again = await areg.submit(Add(targets=(lid,), op_id=result.op_id))
            assert again.status == "replayed"
            assert (await areg.get(lid)).n == 4
        finally:
            await areg.close()

    asyncio.run(scenario())


def test_apply_errors_reach_the_caller_and_change_nothing(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    rec = Recorder(reg)
    op = Add(targets=(lid,), fail=True)
    with pytest.raises(Boom, match="fails on purpose"):
        reg.submit(op)
    assert reg.history(lid) == [reg.get(lid)]
    assert reg.store.get_by_op_id(op.op_id) == []
    assert rec.kinds(op.op_id) == ["OperationSubmitted", "OperationStarted", "OperationFailed"]
    (failed,) = rec.of(fs.OperationFailed, op.op_id)
    assert (failed.error_type, failed.attempts) == ("Boom", 1)
    assert "fails on purpose" in failed.error_message
    assert logged(reg, fs.OperationCommitted) == []
    assert [e.op_id for e in logged(reg, fs.OperationFailed)] == [op.op_id]
    # the lineage is free again, and the failed op_id was not used up
    assert reg.scheduler.pending(lid) == []
    again = reg.submit(Add(targets=(lid,), op_id=op.op_id))
    assert (again.status, again.entity.n) == ("committed", 1)


def test_a_multi_target_transfer_commits_both_lineages_at_once(reg: fs.EntityRegistry) -> None:
    a = reg.add(Account(balance=100)).lineage_id
    b = reg.add(Account(balance=0)).lineage_id
    result = reg.submit(Transfer(targets=(a, b), amount=30))
    assert [(e.lineage_id, e.version, e.balance) for e in result.versions] == [
        (a, 2, 70), (b, 2, 30),
    ]  # fmt: skip
    assert sorted(r.lineage_id for r in reg.store.get_by_op_id(result.op_id)) == sorted((a, b))
    with pytest.raises(InsufficientFunds):
        reg.submit(Transfer(targets=(b, a), amount=31))
    assert (reg.get(a).balance, reg.get(b).balance) == (70, 30)
    assert (reg.get(a).version, reg.get(b).version) == (2, 2)


def test_a_multi_target_commit_is_all_or_nothing(
    reg: fs.EntityRegistry, store_url: str, tmp_path: Path
) -> None:
    """The second target's write fails (another writer moved it): the first is not written."""
    a = reg.add(Account(balance=100)).lineage_id
    b = reg.add(Account(balance=0)).lineage_id
    other = other_writer(reg, store_url, tmp_path)
    try:

        def interfere(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
            other.commit(heads[b].evolve(balance=heads[b].balance + 1000))  # type: ignore[attr-defined]

        op = Transfer(targets=(a, b), amount=10, hook=interfere, max_retries=0)
        with pytest.raises(fs.ConflictError) as info:
            reg.submit(op)
        assert (info.value.lineage_id, info.value.expected) == (b, 1)
        assert [e.balance for e in reg.history(a)] == [100]
        assert [e.balance for e in reg.history(b)] == [0, 1000]
        assert reg.store.get_by_op_id(op.op_id) == []
        assert logged(reg, fs.OperationCommitted) == []
        # the same through commit_many directly
        heads = reg.get(a), reg.get(b)
        other.commit(heads[1].evolve(balance=1))
        with pytest.raises(fs.ConflictError):
            reg.commit_many([heads[0].evolve(balance=0), heads[1].evolve(balance=100)])
        assert reg.get(a).version == 1
    finally:
        if other is not reg:
            other.close()


def test_commit_many_records_merged_op_ids(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    (v2,) = reg.commit_many([reg.get(lid).evolve(n=1)], op_id="lead", merged_op_ids=["m1", "m2"])
    for op_id in ("lead", "m1", "m2"):
        assert [r.id for r in reg.store.get_by_op_id(op_id)] == [v2.id]
        with pytest.raises(fs.DuplicateOperationError) as info:
            reg.commit_many([reg.get(lid).evolve(n=9)], op_id=op_id)
        assert info.value.op_id == op_id
    with pytest.raises(fs.DuplicateOperationError):
        reg.commit_many([reg.get(lid).evolve(n=9)], op_id="fresh", merged_op_ids=["m2"])
    assert reg.store.get_by_op_id("fresh") == []
    with pytest.raises(fs.ValidationError):  # merged ids need an op_id to be folded into
        reg.commit_many([reg.get(lid).evolve(n=9)], merged_op_ids=["m3"])
    assert reg.get(lid) == v2


# -- idempotency ----------------------------------------------------------------------------


def test_resubmitting_an_op_id_returns_the_stored_result(
    reg: fs.EntityRegistry, store_url: str, tmp_path: Path
) -> None:
    lid = counter(reg)
    op = Add(targets=(lid,), amount=3)
    first = reg.submit(op)
    rec = Recorder(reg)
    committed_before = len(logged(reg, fs.OperationCommitted))
    for again in (op, Add(targets=(lid,), amount=100, op_id=op.op_id)):
        replay = reg.submit(again)
        assert replay.status == "replayed"
        assert replay.op_id == op.op_id
        assert replay.versions == first.versions
    (replay,) = reg.submit_many([Add(targets=(lid,), op_id=op.op_id, policy="merge")])
    assert (replay.status, replay.versions) == ("replayed", first.versions)
    assert [e.n for e in reg.history(lid)] == [0, 3]
    assert rec.of(EntityVersionCommitted) == []
    assert len(logged(reg, fs.OperationCommitted)) == committed_before
    # and from another registry on the same store
    if not store_url.startswith("memory"):
        with fs.open(store_url, blob_dir=tmp_path / "blobs") as other:
            replay = other.submit(Add(targets=(lid,), op_id=op.op_id))
            assert (replay.status, replay.versions) == ("replayed", first.versions)
        assert reg.get(lid).version == 2


def test_resubmitting_a_merged_op_id_replays_the_merged_commit(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    ops = [Add(targets=(lid,), amount=i + 1, policy="merge") for i in range(3)]
    results = reg.submit_many(ops)
    (commit,) = {r.versions for r in results}
    assert commit[0].n == 6 and commit[0].version == 2
    for op in ops:
        replay = reg.submit(Add(targets=(lid,), op_id=op.op_id, policy="merge"))
        assert (replay.status, replay.versions) == ("replayed", commit)
        replay = reg.submit(Add(targets=(lid,), op_id=op.op_id))
        assert (replay.status, replay.versions) == ("replayed", commit)
    assert [e.n for e in reg.history(lid)] == [0, 6]


def test_a_replayed_merge_lead_does_not_swallow_fresh_partners(reg: fs.EntityRegistry) -> None:
    """A re-submitted (already committed) merge op heads the queue; fresh ones fold behind it.

    The replay must not take the fresh operations with it: they were never committed.
    """
    lid = counter(reg)
    done = reg.submit(Add(targets=(lid,), policy="merge"))
    fresh = [Add(targets=(lid,), policy="merge") for _ in range(2)]
    results = reg.submit_many([Add(targets=(lid,), op_id=done.op_id, policy="merge"), *fresh])
    assert results[0].status == "replayed"
    assert [r.status for r in results[1:]] == ["committed", "committed"], results
    assert all(r.versions for r in results[1:]), results
    assert reg.get(lid).n == 3
    for op in fresh:
        assert reg.store.get_by_op_id(op.op_id), f"{op.op_id} reported done, never written"


def test_a_replayed_merge_partner_is_left_out_of_the_commit(reg: fs.EntityRegistry) -> None:
    """A fresh merge op heads the queue; a re-submitted one folds into it. The store refuses the
    re-submitted op_id, so the commit is retried without it and the re-submission is replayed:
    both callers get their answer."""
    lid = counter(reg)
    done = reg.submit(Add(targets=(lid,), policy="merge", amount=10))
    lead = Add(targets=(lid,), policy="merge")
    again = Add(targets=(lid,), op_id=done.op_id, policy="merge", amount=10)
    results = Call(lambda: reg.submit_many([lead, again])).outcome(HUNG)
    assert [r.status for r in results] == ["committed", "replayed"]
    assert results[1].versions == done.versions
    assert reg.get(lid).n == 11
    assert [e.version for e in reg.history(lid)] == [1, 2, 3]


def test_one_op_id_twice_in_a_batch_is_applied_once(reg: fs.EntityRegistry) -> None:
    """Two copies of one operation in one submit_many: one effect, whatever the policy."""
    for policy in ("retry", "merge"):
        lid = counter(reg)
        op = Add(targets=(lid,), policy=policy)
        try:
            results = reg.submit_many([op, op])
        except fs.ValidationError:
            assert reg.get(lid).version == 1  # refused as a whole: fine too
            continue
        assert reg.get(lid).n == 1, f"{policy}: one op_id applied {reg.get(lid).n} times"
        assert all(r.versions == (reg.get(lid),) for r in results), (policy, results)


def test_commit_many_refuses_one_op_id_twice(reg: fs.EntityRegistry) -> None:
    """The store contract: an op_id is recorded once, within one batch as across batches (the
    SQL stores refuse it; every store must)."""
    lid = counter(reg)
    for op_id, merged in (("dup", ["dup"]), ("lead", ["m", "m"])):
        with pytest.raises((fs.DuplicateOperationError, fs.ValidationError)):
            reg.commit_many([reg.get(lid).evolve(n=1)], op_id=op_id, merged_op_ids=merged)
        assert reg.get(lid).version == 1
        for o in (op_id, *merged):
            assert reg.store.get_by_op_id(o) == []


@pytest.mark.parametrize("policy", ["retry", "merge"])
def test_the_same_op_id_from_two_callers_is_applied_once(
    reg: fs.EntityRegistry, policy: str
) -> None:
    """A client retries a request (same op_id) while the first try is still queued: one effect,
    and both callers get the version it wrote."""
    lid = counter(reg)
    gate, holder, _ = hold(reg, lid)
    op = Add(targets=(lid,), policy=policy)
    calls = []
    try:
        for i in range(2):
            calls.append(Call(lambda: reg.submit(op)))
            wait_until(lambda i=i: len(reg.scheduler.pending(lid)) == i + 1, f"{i + 1} queued")
    finally:
        gate.release()
    holder.outcome()
    results = [c.outcome(HUNG) for c in calls]
    assert reg.get(lid).n == 2, f"one op_id applied {reg.get(lid).n - 1} times"
    assert sorted(r.status for r in results) == ["committed", "replayed"], results
    assert results[0].versions == results[1].versions == (reg.get(lid),), results


def test_a_replay_does_not_depend_on_apply_succeeding_again(reg: fs.EntityRegistry) -> None:
    """Retrying a request after a lost reply must return the stored result, even when running
    ``apply`` again on today's head would fail (the classic use of an idempotency key)."""
    lid = reg.add(Account(balance=50)).lineage_id
    op = Withdraw(targets=(lid,), amount=50)
    first = reg.submit(op)
    assert first.entity.balance == 0
    replay = reg.submit(op)  # apply() on balance 0 would raise InsufficientFunds
    assert (replay.status, replay.versions) == ("replayed", first.versions)


# -- conflicts with other writers ------------------------------------------------------------------


def test_a_conflict_is_retried_on_the_new_head(
    reg: fs.EntityRegistry, store_url: str, tmp_path: Path
) -> None:
    lid = counter(reg)
    other = other_writer(reg, store_url, tmp_path)
    try:
        calls = itertools.count()

        def interfere_once(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
            if next(calls) == 0:
                other.commit(heads[lid].evolve(n=100))

        rec = Recorder(reg)
        op = Add(targets=(lid,), hook=interfere_once)
        result = reg.submit(op)
        assert (result.status, result.attempts, result.entity.n) == ("committed", 2, 101)
        assert [e.n for e in reg.history(lid)] == [0, 100, 101]
        assert rec.kinds(op.op_id, only_operations=True) == [
            "OperationSubmitted", "OperationStarted", "OperationConflicted", "OperationRetried",
            "OperationStarted", "OperationCommitted",
        ]  # fmt: skip
        (conflict,) = rec.of(fs.OperationConflicted, op.op_id)
        assert (conflict.attempt, conflict.lineage_id, conflict.expected) == (1, lid, 1)
        assert conflict.actual in (2, None)
        (retried,) = rec.of(fs.OperationRetried, op.op_id)
        assert retried.attempt == 1 and retried.delay_s > 0
        assert [e.attempt for e in rec.of(fs.OperationStarted, op.op_id)] == [1, 2]
        (audit,) = logged(reg, fs.OperationCommitted)
        assert audit.attempts == 2
    finally:
        if other is not reg:
            other.close()


def test_conflict_error_with_attempt_history_after_max_retries(
    reg: fs.EntityRegistry, store_url: str, tmp_path: Path
) -> None:
    lid = counter(reg)
    other = other_writer(reg, store_url, tmp_path)
    try:

        def interfere(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
            other.commit(heads[lid].evolve(n=heads[lid].n + 1000))  # type: ignore[attr-defined]

        rec = Recorder(reg)
        op = Add(targets=(lid,), hook=interfere, max_retries=2)
        with pytest.raises(fs.ConflictError, match="gave up after 3 attempts") as info:
            reg.submit(op)
        err = info.value
        history = err.attempts  # type: ignore[attr-defined]
        assert [(attempt, expected) for attempt, expected, _ in history] == [(1, 1), (2, 2), (3, 3)]
        assert all(actual in (expected + 1, None) for _, expected, actual in history)
        assert (err.lineage_id, err.expected) == (lid, 3)
        # only the other writer's versions exist; the operation wrote nothing
        assert [e.n for e in reg.history(lid)] == [0, 1000, 2000, 3000]
        assert reg.store.get_by_op_id(op.op_id) == []
        assert len(rec.of(fs.OperationStarted, op.op_id)) == 3
        assert len(rec.of(fs.OperationConflicted, op.op_id)) == 3
        assert len(rec.of(fs.OperationRetried, op.op_id)) == 2
        (failed,) = rec.of(fs.OperationFailed, op.op_id)
        assert (failed.error_type, failed.attempts) == ("ConflictError", 3)
        assert logged(reg, fs.OperationCommitted) == []
        # max_retries=0: a single attempt
        op = Add(targets=(lid,), hook=interfere, max_retries=0)
        with pytest.raises(fs.ConflictError) as info:
            reg.submit(op)
        assert len(info.value.attempts) == 1  # type: ignore[attr-defined]
    finally:
        if other is not reg:
            other.close()


# -- priority, grace period, reject ----------------------------------------------------------


def test_priority_order_under_contention(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    gate, holder, _ = hold(reg, lid, priority=fs.Priority.BACKGROUND)
    P = fs.Priority
    waiting = [
        Add(targets=(lid,), priority=P.LOW, reason="low"),
        Add(targets=(lid,), priority=P.NORMAL, reason="normal-1"),
        Add(targets=(lid,), priority=P.BACKGROUND, reason="background"),
        Add(targets=(lid,), priority=P.CRITICAL, reason="critical"),
        Add(targets=(lid,), priority=P.NORMAL, reason="normal-2"),
        Add(targets=(lid,), priority=P.HIGH, reason="high"),
    ]
    calls = []
    try:
        for i, op in enumerate(waiting):  # one at a time, so FIFO within a priority is defined
            calls.append(Call(lambda op=op: reg.submit(op)))
            wait_until(lambda i=i: len(reg.scheduler.pending(lid)) == i + 1, f"{i + 1} queued")
        expected = ["critical", "high", "normal-1", "normal-2", "low", "background"]
        assert [op.reason for op in reg.scheduler.pending(lid)] == expected
    finally:
        gate.release()
    assert holder.outcome().entity.version == 2  # the running one finished first
    results = [c.outcome() for c in calls]
    order = sorted(zip(results, waiting, strict=True), key=lambda rw: rw[0].entity.version)
    assert [op.reason for _, op in order] == expected
    assert [r.entity.version for r, _ in order] == [3, 4, 5, 6, 7, 8]
    assert reg.get(lid).n == 7


def test_a_running_operation_finishes_before_a_higher_priority_one_starts(
    reg: fs.EntityRegistry,
) -> None:
    """The grace period: a started operation is never pre-empted, whatever comes in."""
    lid = counter(reg)
    rec = Recorder(reg)
    gate, holder, low = hold(reg, lid, priority=fs.Priority.BACKGROUND, amount=1)
    urgent = Add(targets=(lid,), priority=fs.Priority.CRITICAL, amount=10)
    try:
        call = Call(lambda: reg.submit(urgent))
        wait_until(lambda: reg.scheduler.pending(lid) == [urgent], "the urgent op is queued")
        assert rec.of(fs.OperationStarted, urgent.op_id) == []
    finally:
        gate.release()
    first, second = holder.outcome(), call.outcome()
    assert (first.entity.version, first.attempts) == (2, 1)  # never restarted
    assert (second.entity.version, second.entity.n) == (3, 11)
    assert rec.of(fs.OperationConflicted) == []
    with rec._lock:
        order = [(type(e).__name__, e.op_id) for e in rec.events if isinstance(e, OperationEvent)]
    assert order.index(("OperationCommitted", low.op_id)) < order.index(
        ("OperationStarted", urgent.op_id)
    )


def test_reject_policy_rejects_with_events_and_changes_nothing(reg: fs.EntityRegistry) -> None:
    lid, other = counter(reg), counter(reg)
    rec = Recorder(reg)
    gate, holder, _ = hold(reg, lid)
    try:
        busy = Add(targets=(lid,), policy="reject")
        result = reg.submit(busy)  # returns at once, while lid is still held
        assert (result.status, result.versions) == ("rejected", ())
        assert str(lid) in result.reason
        both = Add(targets=(other, lid), policy="reject")  # one of two targets busy is enough
        assert reg.submit(both).status == "rejected"
        assert reg.get(other).version == 1
    finally:
        gate.release()
    holder.outcome()
    for op in (busy, both):
        assert rec.kinds(op.op_id) == ["OperationSubmitted", "OperationRejected"]
        (rejected,) = rec.of(fs.OperationRejected, op.op_id)
        assert str(lid) in rejected.reason
    assert {e.op_id for e in logged(reg, fs.OperationRejected)} >= {busy.op_id, both.op_id}
    # a pending operation ahead of it is enough too
    ahead = Add(targets=(other,))
    queued_behind = Add(targets=(other,), policy="reject")
    results = reg.submit_many([ahead, queued_behind])
    assert [r.status for r in results] == ["committed", "rejected"]
    # on a free target, reject commits like any other policy
    assert reg.submit(Add(targets=(other,), policy="reject")).status == "committed"
    assert reg.get(lid).n == 1  # only the holder's change
    assert reg.get(other).n == 2
    for op in (busy, both, queued_behind):
        assert reg.store.get_by_op_id(op.op_id) == []


def test_rejected_decorated_call_raises(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)

    @fs.with_conflict_resolution(policy="reject")
    def bump(c: Counter) -> Counter:
        return c.evolve(n=c.n + 1)

    gate, holder, _ = hold(reg, lid)
    try:
        with pytest.raises(fs.OperationRejectedError, match="rejected"):
            bump(lid, registry=reg)
    finally:
        gate.release()
    holder.outcome()
    assert bump(lid, registry=reg).n == 2


# -- merge -----------------------------------------------------------------------------------------


def test_merge_folds_waiting_operations_into_one_commit(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    rec = Recorder(reg)
    gate, holder, _ = hold(reg, lid)
    ops = [Add(targets=(lid,), policy="merge", amount=i + 1) for i in range(5)]
    calls = []
    try:
        for i, op in enumerate(ops):
            calls.append(Call(lambda op=op: reg.submit(op)))
            wait_until(lambda i=i: len(reg.scheduler.pending(lid)) == i + 1, f"{i + 1} queued")
    finally:
        gate.release()
    holder.outcome()
    results = [c.outcome() for c in calls]
    assert {r.status for r in results} == {"committed"}
    (versions,) = {r.versions for r in results}
    assert [(v.version, v.n) for v in versions] == [(3, 1 + 15)]
    assert [e.version for e in reg.history(lid)] == [1, 2, 3]
    ids = {op.op_id for op in ops}
    for r in results:
        assert set(r.merged) == ids - {r.op_id}
    lead = ops[0].op_id  # FIFO: the first queued heads the queue and takes the rest
    (started,) = rec.of(fs.OperationStarted, lead)
    assert set(started.merged) == ids - {lead}
    audits = {e.op_id: e for e in logged(reg, fs.OperationCommitted) if e.op_id in ids}
    assert set(audits) == ids
    assert {op_id: e.merged_into for op_id, e in audits.items()} == {
        op.op_id: (None if op.op_id == lead else lead) for op in ops
    }
    for op in ops:
        assert [r.id for r in reg.store.get_by_op_id(op.op_id)] == [versions[0].id]


def test_merge_only_folds_compatible_operations(reg: fs.EntityRegistry) -> None:
    """A merge lead takes the compatible merge operations queued right behind it (same kind,
    same targets), up to the first one that is not: nothing jumps ahead of an operation that
    was due before it."""
    x, y = counter(reg), counter(reg)
    m1, m2, m3, m4, m5 = (Add(targets=(x,), policy="merge") for _ in range(5))
    retry = Add(targets=(x,))
    other_kind = OtherAdd(targets=(x,), policy="merge")
    other_target = Add(targets=(y,), policy="merge")
    two_targets = Add(targets=(x, y), policy="merge")
    ops = [m1, m2, m3, retry, m4, other_kind, m5, other_target, two_targets]
    results = reg.submit_many(ops)
    merged = {r.op_id: set(r.merged) for r in results}
    assert merged[m1.op_id] == {m2.op_id, m3.op_id}
    assert results[0].versions == results[1].versions == results[2].versions
    for op in (retry, m4, other_kind, m5, other_target, two_targets):
        assert merged[op.op_id] == set(), op
    # x: m1+m2+m3, retry, m4, other_kind, m5, two_targets -> 6 commits; y: 2
    assert (reg.get(x).version, reg.get(x).n) == (7, 8)
    assert (reg.get(y).version, reg.get(y).n) == (3, 2)


def test_a_failing_merge_partner_fails_alone(reg: fs.EntityRegistry) -> None:
    """An operation's error reaches its own caller; the operations merged with it still commit."""
    lid = counter(reg)
    good_1 = Add(targets=(lid,), policy="merge")
    bad = Add(targets=(lid,), policy="merge", fail=True)
    good_2 = Add(targets=(lid,), policy="merge")
    gate, holder, _ = hold(reg, lid)
    calls = []
    try:
        for i, op in enumerate((good_1, bad, good_2)):
            calls.append(Call(lambda op=op: reg.submit(op)))
            wait_until(lambda i=i: len(reg.scheduler.pending(lid)) == i + 1, f"{i + 1} queued")
    finally:
        gate.release()
    holder.outcome()
    with pytest.raises(Boom):
        calls[1].outcome()
    outcomes: list[Any] = []
    for c in (calls[0], calls[2]):
        try:
            outcomes.append(c.outcome().status)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes.append(f"{type(exc).__name__}: {exc}")
    assert outcomes == ["committed", "committed"]
    assert reg.get(lid).n == 3


def test_a_merge_partner_returning_bad_drafts_fails_alone(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)

    def good(heads: Mapping[UUID, fs.Entity]) -> Any:
        return [heads[lid].evolve(n=heads[lid].n + 1)]  # type: ignore[attr-defined]

    ops = [
        Returns(targets=(lid,), policy="merge", make=good),
        Returns(targets=(lid,), policy="merge", make=lambda heads: "not a list"),
        Returns(targets=(lid,), policy="merge", make=good),
    ]
    with pytest.raises(fs.ValidationError):
        reg.submit_many(ops)  # raises the failure once every operation is done
    assert reg.get(lid).n == 2
    assert reg.store.get_by_op_id(ops[0].op_id) and reg.store.get_by_op_id(ops[2].op_id)
    assert reg.store.get_by_op_id(ops[1].op_id) == []
    assert reg.scheduler.pending(lid) == []


# -- nesting: priority inheritance, held targets ---------------------------------------------------


def test_a_nested_operation_inherits_the_parents_priority(reg: fs.EntityRegistry) -> None:
    x, y, z = counter(reg), counter(reg), counter(reg)
    rec = Recorder(reg)
    children: list[fs.Operation] = []

    def submit_children(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
        low = Add(targets=(y,), priority=fs.Priority.LOW)
        crit = Add(targets=(z,), priority=fs.Priority.CRITICAL)
        children.extend((low, crit))
        assert reg.submit(low).status == "committed"
        assert reg.submit(crit).status == "committed"

    parent = Add(targets=(x,), priority=fs.Priority.HIGH, hook=submit_children)
    result = reg.submit(parent)
    assert result.status == "committed"
    low, crit = children
    (low_submitted,) = rec.of(fs.OperationSubmitted, low.op_id)
    assert low_submitted.priority == fs.Priority.HIGH  # raised to the parent's
    (crit_submitted,) = rec.of(fs.OperationSubmitted, crit.op_id)
    assert crit_submitted.priority == fs.Priority.CRITICAL  # never lowered
    (low_commit,) = rec.of(fs.OperationCommitted, low.op_id)
    assert low_commit.priority == fs.Priority.HIGH
    # the children are caused by the parent's Started event
    (parent_started,) = rec.of(fs.OperationStarted, parent.op_id)
    assert low_submitted.causation_id == parent_started.id
    assert low_submitted.correlation_id == (parent_started.correlation_id or parent_started.id)
    assert (reg.get(x).n, reg.get(y).n, reg.get(z).n) == (1, 1, 1)


def test_submitting_on_a_target_the_running_operation_holds_raises(reg: fs.EntityRegistry) -> None:
    x, y = counter(reg), counter(reg)
    seen: list[BaseException] = []

    def nested(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
        for targets in ((x,), (y, x)):
            try:
                reg.submit(Add(targets=targets))
            except fs.ValidationError as exc:
                seen.append(exc)
        try:
            reg.submit_many([Add(targets=(y,)), Add(targets=(x,))])
        except fs.ValidationError as exc:
            seen.append(exc)

    call = Call(lambda: reg.submit(Add(targets=(x,), hook=nested)))
    assert call.outcome(HUNG).status == "committed"
    assert len(seen) == 3
    assert reg.get(x).n == 1 and reg.get(y).n == 0  # the refused batch staged nothing
    # uncaught, the error fails the parent, which writes nothing
    call = Call(
        lambda: reg.submit(Add(targets=(x,), hook=lambda op, heads: reg.submit(Add(targets=(x,)))))
    )
    with pytest.raises(fs.ValidationError):
        call.outcome(HUNG)
    assert reg.get(x).n == 1
    assert reg.scheduler.pending(x) == [] and reg.scheduler.pending(y) == []


def test_a_grandchild_on_a_target_its_grandparent_holds_raises(reg: fs.EntityRegistry) -> None:
    """x's operation submits one on y, which submits one on x: x is held up the chain."""
    x, y = counter(reg), counter(reg)

    def grandchild(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
        reg.submit(Add(targets=(x,)))

    def child(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
        reg.submit(Add(targets=(y,), hook=grandchild))

    call = Call(lambda: reg.submit(Add(targets=(x,), hook=child)))
    with pytest.raises(fs.ValidationError):
        call.outcome(HUNG)
    assert (reg.get(x).version, reg.get(y).version) == (1, 1)


def test_a_nested_operation_is_not_queued_behind_one_waiting_for_its_parent(
    reg: fs.EntityRegistry,
) -> None:
    """P holds x and, from its apply, submits C on y. Meanwhile W on (x, y) was queued: W waits
    for x (held by P), C must not wait behind W (P waits for C): no deadlock."""
    x, y = counter(reg), counter(reg)
    entered, proceed = threading.Event(), threading.Event()

    def parent_apply(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
        entered.set()
        assert proceed.wait(WAIT)
        reg.submit(Add(targets=(y,)))

    parent = Add(targets=(x,), hook=parent_apply)
    p_call = Call(lambda: reg.submit(parent))
    assert entered.wait(WAIT), "the parent never started"
    w_call = Call(lambda: reg.submit(Add(targets=(x, y))))
    wait_until(lambda: len(reg.scheduler.pending(y)) == 1, "W is queued")
    proceed.set()
    assert p_call.outcome(HUNG).status == "committed"
    assert w_call.outcome(HUNG).status == "committed"
    assert (reg.get(x).n, reg.get(y).n) == (2, 2)


def test_crossed_nested_operations_do_not_deadlock(reg: fs.EntityRegistry) -> None:
    """P holds x and submits on y; Q holds y and submits on x. One of them must get an error
    instead of both waiting for ever; nothing is half-written."""
    x, y = counter(reg), counter(reg)
    both_running = threading.Barrier(2, timeout=WAIT)

    def nested_on(target: UUID) -> Hook:
        def hook(op: fs.Operation, heads: Mapping[UUID, fs.Entity]) -> None:
            both_running.wait()
            reg.submit(Add(targets=(target,)))

        return hook

    p = Call(lambda: reg.submit(Add(targets=(x,), hook=nested_on(y))))
    q = Call(lambda: reg.submit(Add(targets=(y,), hook=nested_on(x))))
    outcomes = []
    for call in (p, q):
        call.join(HUNG)
        assert not call.is_alive(), "crossed nested operations deadlocked"
        outcomes.append(call.error)
    assert any(e is not None for e in outcomes)
    for e in outcomes:
        assert e is None or isinstance(e, fs.ForsetiError), e
    # every committed op wrote whole versions: x and y hold 0, 1 or 2 increments, no gaps
    for lid in (x, y):
        assert [e.n for e in reg.history(lid)] == list(range(reg.get(lid).version))


def test_a_failed_operation_in_submit_many_leaves_no_orphans(reg: fs.EntityRegistry) -> None:
    """submit_many raises the first failure; the other operations it staged must not stay
    queued for ever (everyone submitting on their targets afterwards would wait for ever)."""
    x, y = counter(reg), counter(reg)
    with pytest.raises(Boom):
        reg.submit_many(
            [Add(targets=(x,), fail=True, priority=fs.Priority.HIGH), Add(targets=(y,))]
        )
    assert reg.scheduler.pending(y) == []
    later = Call(lambda: reg.submit(Add(targets=(y,))))
    assert later.outcome(HUNG).status == "committed"


# -- events and causality ---------------------------------------------------------------------------


def test_operation_events_and_causal_links(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    rec = Recorder(reg)
    op = Add(targets=(lid,), priority=fs.Priority.HIGH, reason="because")
    result = reg.submit(op)
    assert rec.kinds(op.op_id) == [
        "OperationSubmitted", "OperationStarted", "EntityVersionCommitted", "OperationCommitted",
    ]  # fmt: skip
    (submitted,) = rec.of(fs.OperationSubmitted, op.op_id)
    assert (submitted.kind, submitted.targets, submitted.priority, submitted.policy) == (
        op.kind, (lid,), fs.Priority.HIGH, "retry",
    )  # fmt: skip
    assert submitted.reason == "because"
    (started,) = rec.of(fs.OperationStarted, op.op_id)
    assert (started.attempt, started.merged, started.priority) == (1, (), fs.Priority.HIGH)
    (version_event,) = rec.of(EntityVersionCommitted, op.op_id)
    assert version_event.subject == result.entity.ref
    assert version_event.causation_id == started.id
    assert version_event.correlation_id == (started.correlation_id or started.id)
    (audit,) = rec.of(fs.OperationCommitted, op.op_id)
    assert audit.causation_id == started.id
    assert (audit.attempts, audit.reason) == (1, "because")
    # all of them reach the log, the registry's and the operation's events with their links
    logged_events = {s.event.id: s.event for s in reg.events()}
    for e in (submitted, started, version_event, audit):
        assert logged_events[e.id] == e


def test_operations_submitted_while_handling_an_event_are_caused_by_it(
    reg: fs.EntityRegistry,
) -> None:
    class Trigger(fs.Event, frozen=True):
        topic = "tests.operations.Trigger"
        lineage: UUID

    lid = counter(reg)
    rec = Recorder(reg)
    results: list[fs.OperationResult] = []
    reg.bus.subscribe(Trigger, lambda e: results.append(reg.submit(Add(targets=(e.lineage,)))))
    trigger = Trigger(lineage=lid)
    reg.bus.publish(trigger)
    (result,) = results
    (submitted,) = rec.of(fs.OperationSubmitted, result.op_id)
    assert submitted.causation_id == trigger.id
    (version_event,) = rec.of(EntityVersionCommitted, result.op_id)
    assert version_event.correlation_id == trigger.id


def test_operation_committed_is_written_in_the_commit_transaction(
    store_url: str, tmp_path: Path
) -> None:
    """The audit record is part of the commit (outbox), not of the buffered event writer."""
    with fs.open(
        store_url, blob_dir=tmp_path / "b", event_interval=3600, event_batch_size=1_000_000
    ) as reg:
        lid = counter(reg)
        op = Add(targets=(lid,))
        reg.submit(op)
        # read the store directly: the buffered writer has flushed nothing yet
        topics = [r.topic for r in reg.store.read_events(0, None, None, None)]
        assert fs.OperationSubmitted.topic not in topics
        assert fs.OperationStarted.topic not in topics
        i = topics.index(fs.EntityVersionCommitted.topic)
        assert topics[i + 1] == fs.OperationCommitted.topic
        if not store_url.startswith("memory"):
            with fs.open(store_url, blob_dir=tmp_path / "b") as other:
                assert [e.op_id for e in logged(other, fs.OperationCommitted)] == [op.op_id]
        failing = Add(targets=(lid,), fail=True)
        with pytest.raises(Boom):
            reg.submit(failing)
        committed = [r for r in reg.store.read_events(0, fs.OperationCommitted.topic, None, None)]
        assert len(committed) == 1


# -- the decorator ---------------------------------------------------------------------------------


@fs.with_conflict_resolution
def bump(c: Counter, by: int = 1) -> Counter:
    return c.evolve(n=c.n + by)


@fs.with_conflict_resolution(priority=fs.Priority.HIGH, policy="merge", reason="async bump")
async def abump(c: Counter, by: int = 1) -> Counter:
    await asyncio.sleep(0)
    return c.evolve(n=c.n + by)


def test_decorator_sync_many_calls_with_registry_and_activate(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    for i in range(30):
        assert bump(lid, registry=reg).n == i + 1
    with reg.activate():
        for i in range(30):
            assert bump(lid, by=2).n == 30 + 2 * (i + 1)
        again = bump(lid, op_id="fixed")
        assert bump(lid, op_id="fixed") == again  # replayed, nothing new
    assert reg.get(lid).n == 30 + 60 + 1
    assert reg.get(lid).version == 62
    with pytest.raises(fs.ConfigError):
        bump(lid)  # the activation ended


def test_decorator_async_many_calls_and_concurrent_tasks(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    rec = Recorder(reg)

    async def scenario() -> None:
        start = reg.get(lid).n
        for i in range(20):
            assert (await abump(lid, registry=reg)).n == start + i + 1
        with reg.activate():
            await asyncio.gather(*(abump(lid, by=1) for _ in range(16)))
            # tasks inherit the activation
            await asyncio.gather(*(asyncio.create_task(abump(lid)) for _ in range(4)))

    asyncio.run(scenario())
    asyncio.run(scenario())  # a second event loop works as well as the first
    assert reg.get(lid).n == 80
    submitted = rec.of(fs.OperationSubmitted)
    assert len(submitted) == 80
    assert {(e.priority, e.policy, e.reason) for e in submitted} == {
        (fs.Priority.HIGH, "merge", "async bump")
    }
    assert abump.__name__ == "abump" and inspect.iscoroutinefunction(abump)


def test_sync_decorator_inside_a_running_event_loop(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)
    seen: list[int] = []

    async def handler(event: fs.OperationCommitted) -> None:
        seen.append(event.attempts)

    reg.bus.subscribe(fs.OperationCommitted, handler)

    async def notebook_cell() -> int:
        with reg.activate():
            for _ in range(10):
                bump(lid)  # a plain call while this loop runs
        return reg.get(lid).n

    assert asyncio.run(notebook_cell()) == 10
    assert asyncio.run(notebook_cell()) == 20
    assert seen == [1] * 20  # async handlers still run after the first loop ended


def test_decorated_apply_errors_reach_the_caller(reg: fs.EntityRegistry) -> None:
    lid = counter(reg)

    @fs.with_conflict_resolution
    def explode(c: Counter) -> Counter:
        raise Boom("no")

    @fs.with_conflict_resolution
    async def aexplode(c: Counter) -> Counter:
        raise Boom("no, async")

    with pytest.raises(Boom, match="no"):
        explode(lid, registry=reg)
    with pytest.raises(Boom, match="no, async"):
        asyncio.run(aexplode(lid, registry=reg))
    assert reg.get(lid).version == 1


# -- the scheduler against a sequential model (Hypothesis) ------------------------------------------


AMOUNTS = st.integers(1, 5)
POLICIES = st.sampled_from(["retry", "merge", "reject"])
PRIORITIES = st.sampled_from(list(fs.Priority))
STEP_HUNG = 5.0  # a step that has not returned after this long is a deadlock


def mergeable(a: fs.Operation, b: fs.Operation) -> bool:
    return a.policy == b.policy == "merge" and type(a) is type(b) and a.targets == b.targets


class SchedulerMachine(RuleBasedStateMachine):
    """One registry, called from one thread: every call's outcome is predictable.

    The model keeps each lineage's value and version and the versions every committed op_id
    wrote. A batch (``submit_many``) follows the rules of the scheduler's docstring: staged in
    order (a ``reject`` op behind one staged earlier on one of its targets is rejected), then run
    by priority, FIFO within a priority; a ``merge`` lead takes the compatible merge ops queued
    right behind it (up to the first op that is not, or that another op is due before); an
    op_id committed before is replayed and the others of its commit still commit.

    Every call runs on a daemon thread and must return within ``STEP_HUNG`` seconds.
    """

    url: str = "memory://"
    tmp: Path = Path(".")

    lineages = Bundle("lineages")

    def __init__(self) -> None:
        super().__init__()
        self.reg = fs.open(self.url, blob_dir=self.tmp / "blobs")
        self.value: dict[UUID, int] = {}
        self.version: dict[UUID, int] = {}
        self.ops: dict[str, tuple[tuple[UUID, int], ...]] = {}  # op_id -> (lineage, version)s

    def teardown(self) -> None:
        self.reg.close()

    @initialize(target=lineages)
    def first(self) -> UUID:
        return self._new()

    @rule(target=lineages)
    def add_lineage(self) -> UUID:
        return self._new()

    def _new(self) -> UUID:
        lid = self.reg.add(Counter()).lineage_id
        self.value[lid], self.version[lid] = 0, 1
        return lid

    def _op(self, data: st.DataObject, lineages: list[UUID], failing: bool = False) -> Add:
        first = data.draw(st.sampled_from(lineages))
        targets = [first]
        others = [x for x in dict.fromkeys(lineages) if x != first]  # a stable order
        if others and data.draw(st.booleans()):
            targets.append(data.draw(st.sampled_from(others)))
        fields: dict[str, Any] = {
            "targets": tuple(targets),
            "amount": data.draw(AMOUNTS),
            "priority": data.draw(PRIORITIES),
            "policy": data.draw(POLICIES),
        }
        if self.ops and data.draw(st.integers(0, 4)) == 0:
            fields["op_id"] = data.draw(st.sampled_from(list(self.ops)))  # a re-submission
        elif failing and fields["policy"] != "merge":
            fields["fail"] = data.draw(st.integers(0, 3)) == 0
        return Add(**fields)

    def _commit(self, ops: list[Add]) -> tuple[tuple[UUID, int], ...]:
        for op in ops:
            for t in op.targets:
                self.value[t] += op.amount
        for t in ops[0].targets:
            self.version[t] += 1
        written = tuple(sorted((t, self.version[t]) for t in ops[0].targets))
        for op in ops:
            self.ops[op.op_id] = written
        return written

    @staticmethod
    def _written(result: fs.OperationResult) -> tuple[tuple[UUID, int], ...]:
        return tuple(sorted((v.lineage_id, v.version) for v in result.versions))

    @rule(data=st.data(), lineage=lineages)
    def submit_one(self, data: st.DataObject, lineage: UUID) -> None:
        op = self._op(data, [lineage, *self.value], failing=True)
        call = Call(lambda: self.reg.submit(op))
        if op.op_id in self.ops:
            result = call.outcome(STEP_HUNG)
            assert result.status == "replayed"
            assert self._written(result) == self.ops[op.op_id]
        elif op.fail:
            with pytest.raises(Boom):
                call.outcome(STEP_HUNG)
        else:
            result = call.outcome(STEP_HUNG)
            assert (result.status, result.attempts, result.merged) == ("committed", 1, ())
            assert self._written(result) == self._commit([op])

    @rule(data=st.data(), lineage=lineages)
    def submit_batch(self, data: st.DataObject, lineage: UUID) -> None:
        pool = [lineage, *self.value]
        ops = [self._op(data, pool) for _ in range(data.draw(st.integers(1, 5)))]
        if len({op.op_id for op in ops}) < len(ops):
            return  # one op_id twice in a batch: see test_one_op_id_twice_in_a_batch...
        key = {i: (-int(op.priority), i) for i, op in enumerate(ops)}
        # staging, in list order
        queued: set[UUID] = set()
        staged: list[int] = []
        expected: dict[int, tuple[str, Any]] = {}
        for i, op in enumerate(ops):
            if op.policy == "reject" and queued & set(op.targets):
                expected[i] = ("rejected", ())
                continue
            queued |= set(op.targets)
            staged.append(i)
        # running: the first pending op overall leads; merge partners queue right behind it
        pending = sorted(staged, key=key.__getitem__)
        while pending:
            lead = pending[0]
            batch = [lead]
            if ops[lead].policy == "merge":
                first = ops[lead].targets[0]
                behind = [j for j in pending[1:] if first in ops[j].targets]
                for j in behind:
                    if not mergeable(ops[lead], ops[j]):
                        break
                    due_before = [
                        k for k in pending
                        if k not in batch and key[k] < key[j]
                        and set(ops[k].targets) & set(ops[lead].targets)
                    ]  # fmt: skip
                    if due_before:
                        break
                    batch.append(j)
            pending = [j for j in pending if j not in batch]
            replays = [j for j in batch if ops[j].op_id in self.ops]
            for j in replays:
                expected[j] = ("replayed", self.ops[ops[j].op_id])
            fresh = [j for j in batch if j not in replays]
            if fresh:
                written = self._commit([ops[j] for j in fresh])
                for j in fresh:
                    expected[j] = ("committed", written)
        results = Call(lambda: self.reg.submit_many(ops)).outcome(STEP_HUNG)
        got = {i: (r.status, self._written(r)) for i, r in enumerate(results)}
        assert got == expected, (ops, results)

    @invariant()
    def store_matches_model(self) -> None:
        for lid, value in self.value.items():
            head = self.reg.get(lid)
            assert (head.version, head.n) == (self.version[lid], value)
            assert self.reg.scheduler.pending(lid) == []


MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    # a deadlocked step costs STEP_HUNG seconds: report the first failure found, unshrunk
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_scheduler_matches_a_sequential_model(store_url: str, tmp_path: Path) -> None:
    """Memory: a new store per example; SQLite: a new file; PostgreSQL: one schema, new lineages
    and op_ids per example."""
    examples = itertools.count()

    class Machine(SchedulerMachine):
        def __init__(self) -> None:
            n = next(examples)
            if store_url.startswith("sqlite"):
                self.url = f"sqlite:///{tmp_path}/machine-{n}.db"
            else:
                self.url = store_url
            self.tmp = tmp_path / f"m{n}"
            super().__init__()

    run_state_machine_as_test(Machine, settings=MACHINE_SETTINGS)
