"""The :class:`OperationScheduler`: pre-ECS staging per target, then OCC commits with retry.

Staging ("pre-ECS"): before anything is written, a submitted operation waits in the queue of each
of its targets, ordered by priority (higher first) then submission (FIFO). It runs when it heads
every one of its queues and none of its targets is busy; a running operation is never pre-empted.
A ``reject`` operation that would have to wait is rejected instead. ``merge`` operations that head
a queue take every compatible pending ``merge`` operation with them into one commit. Because every
queue follows one total order (priority, then submission), the operation that comes first overall
can always run: there is no deadlock.

Committing: the heads are read, the operation's ``apply`` makes drafts, and the registry commits
them in one transaction, whose primary key checks the expected versions. Another writer (another
process, another registry) makes that fail with ConflictError; the scheduler reloads, re-applies
and retries with jittered exponential backoff, up to ``max_retries``.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from ..entities import Entity
from ..errors import ConflictError, DuplicateOperationError, ValidationError
from ..events import caused_by
from .events import (
    OperationCommitted,
    OperationConflicted,
    OperationFailed,
    OperationRejected,
    OperationRetried,
    OperationStarted,
    OperationSubmitted,
)
from .fold import ApplyFailed, fold
from .model import Operation, OperationResult
from .tickets import RUNNING, Ticket, would_deadlock

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["OperationScheduler"]

logger = logging.getLogger(__name__)

class OperationScheduler:
    """Orders, merges and commits operations for one registry (``reg.submit(op)``)."""

    def __init__(
        self,
        registry: EntityRegistry,
        *,
        backoff_base: float = 0.001,
        backoff_cap: float = 0.1,
    ) -> None:
        self._reg = registry
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._cond = threading.Condition()
        self._queues: dict[UUID, list[Ticket]] = {}
        self._busy: set[UUID] = set()
        self._holders: dict[UUID, Ticket] = {}  # busy lineage -> the operation running on it
        self._waiting: set[Ticket] = set()
        self._seq = itertools.count()
        self._random = random.Random()

    # -- public ----------------------------------------------------------------------------------

    def submit(self, op: Operation) -> OperationResult:
        """Stage, run and commit ``op``; see the module docstring for the rules."""
        return self._finish(self._stage([op])[0])

    def submit_many(self, ops: Sequence[Operation]) -> list[OperationResult]:
        """Stage every operation first (so they are ordered and merged together), then run them."""
        if not isinstance(ops, (list, tuple)):
            raise ValidationError("submit_many() takes a list of operations")
        tickets = self._stage(list(ops))
        order = sorted(range(len(tickets)), key=lambda i: tickets[i].key)
        results: dict[int, OperationResult] = {}
        first_error: BaseException | None = None
        for i in order:  # every staged operation runs (or fails) even if an earlier one failed
            try:
                results[i] = self._finish(tickets[i])
            except Exception as exc:  # noqa: BLE001 - raised once all are done
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return [results[i] for i in range(len(tickets))]

    def pending(self, lineage_id: UUID) -> list[Operation]:
        """The operations waiting for a lineage, in the order they will run."""
        with self._cond:
            return [t.op for t in self._queues.get(lineage_id, ())]

    # -- staging ---------------------------------------------------------------------------------

    def _stage(self, ops: list[Operation]) -> list[Ticket]:
        parent = RUNNING.get()
        if len({op.op_id for op in ops if isinstance(op, Operation)}) != len(ops):
            raise ValidationError("the same op_id is submitted twice in one call")
        tickets = []
        for op in ops:
            if not isinstance(op, Operation):
                raise ValidationError(f"expected an Operation, got {type(op).__name__}")
            priority = int(op.priority)
            if parent is not None:
                for holder in (parent, *parent.ancestors()):
                    held = set(op.targets) & set(holder.op.targets)
                    if held:
                        raise ValidationError(
                            f"operation {op.op_id} targets {sorted(map(str, held))}, which the "
                            f"running operation {holder.op.op_id} holds; return all the drafts "
                            f"from one apply()"
                        )
                priority = max(priority, parent.priority)  # priority inheritance
            tickets.append(Ticket(op, priority, -1, parent))
        for ticket in tickets:
            op = ticket.op
            self._publish(
                OperationSubmitted(
                    op_id=op.op_id, kind=op.kind, targets=op.targets, priority=ticket.priority,
                    policy=op.policy, reason=op.reason,
                )
            )  # fmt: skip
        with self._cond:
            for ticket in tickets:
                ticket.seq = next(self._seq)
                op = ticket.op
                if op.policy == "reject":
                    blocked = [t for t in op.targets if t in self._busy or self._queues.get(t)]
                    if blocked:
                        ticket.state = "done"
                        ticket.result = OperationResult(
                            op_id=op.op_id,
                            status="rejected",
                            reason=f"lineage {blocked[0]} is busy with another operation",
                        )
                        continue
                for target in op.targets:
                    queue = self._queues.setdefault(target, [])
                    bisect.insort(queue, ticket, key=lambda t: t.key)
        for ticket in tickets:
            if ticket.result is not None and ticket.result.status == "rejected":
                op = ticket.op
                self._publish(
                    OperationRejected(
                        op_id=op.op_id, kind=op.kind, targets=op.targets,
                        priority=ticket.priority, reason=ticket.result.reason,
                    )
                )  # fmt: skip
        return tickets

    def _runnable(self, ticket: Ticket) -> bool:
        for target in ticket.op.targets:
            if target in self._busy:
                return False
            queue = self._queues.get(target)
            if not queue or queue[0] is not ticket:
                return False
        return True

    def _finish(self, ticket: Ticket) -> OperationResult:
        if ticket.state == "done":
            return self._outcome(ticket)
        with self._cond:
            while ticket.state == "pending" and not self._runnable(ticket):
                if ticket.parent is not None and would_deadlock(ticket, self._holders, self._waiting):
                    self._unqueue(ticket)
                    ticket.state = "done"
                    self._cond.notify_all()
                    raise ConflictError(
                        f"operation {ticket.op.op_id} was submitted from inside operation "
                        f"{ticket.parent.op.op_id} and needs a lineage held by an operation that "
                        f"is itself waiting for one of its ancestors: refused instead of deadlocking"
                    )
                self._waiting.add(ticket)
                try:
                    self._cond.wait()
                finally:
                    self._waiting.discard(ticket)
            mine = ticket.state == "pending"  # else another operation merged it into its commit
            partners = self._claim(ticket) if mine else []
        if not mine:
            assert ticket.done is not None
            ticket.done.wait()
            return self._outcome(ticket)
        batch = [ticket, *partners]
        try:
            self._execute(list(batch))  # it drops replayed tickets from its copy
        finally:
            with self._cond:
                self._busy.difference_update(ticket.op.targets)
                for target in ticket.op.targets:
                    self._holders.pop(target, None)
                for t in batch:
                    t.state = "done"
                    if t.done is not None:
                        t.done.set()
                self._cond.notify_all()
        return self._outcome(ticket)

    def _claim(self, ticket: Ticket) -> list[Ticket]:
        """Take ``ticket`` (and its merge partners) off the queues and mark the targets busy."""
        op = ticket.op
        partners: list[Ticket] = []
        if op.policy == "merge":
            # take the compatible merge operations that come right after it in every queue: a
            # partner never jumps ahead of an operation that was due before it
            taken = {id(ticket)}
            taken_ids = {op.op_id}
            for other in self._queues.get(op.targets[0], ())[1:]:
                if not op.can_merge(other.op) or other.op.op_id in taken_ids:
                    break  # (a re-submitted op_id is left to run after, as a replay)
                ahead = [
                    t for target in op.targets for t in self._queues[target]
                    if t.key < other.key and id(t) not in taken
                ]  # fmt: skip
                if ahead:
                    break
                partners.append(other)
                taken.add(id(other))
                taken_ids.add(other.op.op_id)
        for t in (ticket, *partners):
            t.state = "claimed" if t is not ticket else "running"
            if t is not ticket:
                t.done = threading.Event()
            self._unqueue(t)
        self._busy.update(op.targets)
        for target in op.targets:
            self._holders[target] = ticket
        return partners

    def _unqueue(self, ticket: Ticket) -> None:
        for target in ticket.op.targets:
            queue = self._queues.get(target)
            if queue and ticket in queue:
                queue.remove(ticket)
                if not queue:
                    del self._queues[target]

    @staticmethod
    def _outcome(ticket: Ticket) -> OperationResult:
        if ticket.error is not None:
            raise ticket.error
        if ticket.result is None:  # pragma: no cover - every finished ticket has one or the other
            raise RuntimeError(f"operation {ticket.op.op_id} finished without a result")
        return ticket.result

    # -- execution -------------------------------------------------------------------------------

    def _execute(self, batch: list[Ticket]) -> None:
        lead = batch[0]
        op = lead.op
        attempts = 0
        conflicts: list[tuple[int, int | None, int | None]] = []
        token = RUNNING.set(lead)
        try:
            while True:
                attempts += 1
                lead, op = batch[0], batch[0].op
                merged = tuple(t.op.op_id for t in batch[1:])
                started = OperationStarted(
                    op_id=op.op_id, kind=op.kind, targets=op.targets, priority=lead.priority,
                    attempt=attempts, merged=merged,
                )  # fmt: skip
                self._publish(started)
                try:
                    with caused_by(started):
                        versions = self._attempt(batch, attempts)
                except DuplicateOperationError as exc:
                    # that one was committed before: it gets the stored result, and the rest of
                    # the batch (each checked the same way) tries again without it
                    replayed = next((t for t in batch if t.op.op_id == exc.op_id), lead)
                    replayed.result = self._replay(replayed.op, attempts)
                    batch.remove(replayed)
                    if not batch:
                        return
                    continue
                except ApplyFailed as failed:
                    if len(batch) > 1:  # its own caller gets the error; the others go on
                        culprit = batch.pop(failed.index)
                        if self._reg.store.get_by_op_id(culprit.op.op_id):
                            culprit.result = self._replay(culprit.op, attempts)
                        else:
                            self._fail([culprit], attempts, failed.cause)
                        continue
                    if self._reg.store.get_by_op_id(op.op_id):
                        lead.result = self._replay(op, attempts)
                    else:
                        self._fail(batch, attempts, failed.cause)
                    return
                except ConflictError as exc:
                    conflicts.append((attempts, exc.expected, exc.actual))
                    self._publish(
                        OperationConflicted(
                            op_id=op.op_id, kind=op.kind, targets=op.targets,
                            priority=lead.priority, attempt=attempts,
                            lineage_id=exc.lineage_id, expected=exc.expected, actual=exc.actual,
                        )
                    )  # fmt: skip
                    if attempts > op.max_retries:
                        error = ConflictError(
                            f"operation {op.op_id} ({op.kind}) gave up after {attempts} attempts, "
                            f"each conflicting with another writer (expected/actual per attempt: "
                            f"{[(e, a) for _, e, a in conflicts]})",
                            lineage_id=exc.lineage_id,
                            expected=exc.expected,
                            actual=exc.actual,
                        )
                        error.attempts = conflicts  # type: ignore[attr-defined]
                        self._fail(batch, attempts, error)
                        return
                    delay = self.backoff_base * 2 ** (attempts - 1)
                    delay = min(self.backoff_cap, delay * self._random.uniform(0.5, 1.5))
                    self._publish(
                        OperationRetried(
                            op_id=op.op_id, kind=op.kind, targets=op.targets,
                            priority=lead.priority, attempt=attempts, delay_s=delay,
                        )
                    )  # fmt: skip
                    # backoff between attempts; the targets stay held, so operations of this
                    # registry queued on them wait too (they would conflict the same way)
                    time.sleep(delay)
                    continue
                except Exception as exc:  # noqa: BLE001 - reported, then raised to every caller
                    # a retried request whose first try committed must get the stored result,
                    # even if apply() would fail on today's heads: the op_id decides
                    stored = [t for t in batch if self._reg.store.get_by_op_id(t.op.op_id)]
                    for t in stored:
                        t.result = self._replay(t.op, attempts)
                        batch.remove(t)
                    if stored and batch:
                        continue
                    if not batch:
                        return
                    self._fail(batch, attempts, exc)
                    return
                for t in batch:
                    t.result = OperationResult(
                        op_id=t.op.op_id,
                        status="committed",
                        versions=tuple(versions),
                        attempts=attempts,
                        merged=tuple(x.op.op_id for x in batch if x is not t),
                    )
                return
        finally:
            RUNNING.reset(token)

    def _attempt(self, batch: list[Ticket], attempt: int) -> list[Entity]:
        lead = batch[0]
        op = lead.op
        heads = {target: self._reg.get(target) for target in op.targets}
        drafts = fold([t.op for t in batch], heads)
        events = [
            OperationCommitted(
                op_id=t.op.op_id, kind=t.op.kind, targets=t.op.targets, priority=t.priority,
                attempts=attempt, policy=t.op.policy, reason=t.op.reason,
                parameters=t.op.describe(), merged_into=None if t is lead else op.op_id,
            )
            for t in batch
        ]  # fmt: skip
        return self._reg.commit_many(
            drafts, op_id=op.op_id, events=events, merged_op_ids=[t.op.op_id for t in batch[1:]]
        )

    def _replay(self, op: Operation, attempts: int) -> OperationResult:
        order = {target: i for i, target in enumerate(op.targets)}
        records = sorted(
            self._reg.store.get_by_op_id(op.op_id),
            key=lambda r: (order.get(r.lineage_id, len(order)), r.version),
        )  # the order the commit returned them in: targets first, in the operation's order
        versions = tuple(self._reg.get_by_id(r.id) for r in records)
        return OperationResult(
            op_id=op.op_id, status="replayed", versions=versions, attempts=attempts
        )

    def _fail(self, batch: list[Ticket], attempts: int, error: BaseException) -> None:
        for t in batch:
            t.error = error
            self._publish(
                OperationFailed(
                    op_id=t.op.op_id, kind=t.op.kind, targets=t.op.targets, priority=t.priority,
                    attempts=attempts, error_type=type(error).__name__, error_message=str(error),
                )
            )  # fmt: skip

    def _publish(self, event: OperationSubmitted | OperationStarted | OperationConflicted
                 | OperationRetried | OperationRejected | OperationFailed) -> None:  # fmt: skip
        try:
            self._reg.bus.publish(event)
        except Exception:  # noqa: BLE001 - a strict handler must not break the scheduler
            logger.exception("a handler failed on %s", event.topic)
