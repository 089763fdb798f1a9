"""Scheduler tickets: one per submitted operation, and the deadlock check over them."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from uuid import UUID

from .model import Operation, OperationResult

__all__ = ["Ticket", "RUNNING", "would_deadlock"]

RUNNING: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "forseti_running_operation", default=None
)


@dataclass(eq=False)
class Ticket:
    """One submitted operation's place in the scheduler: priority, order, state, outcome."""

    op: Operation
    priority: int
    seq: int
    parent: Ticket | None = None  # the running operation that submitted it (nested)
    state: str = "pending"  # pending -> running | claimed (merged into another) -> done
    result: OperationResult | None = None
    error: BaseException | None = None
    done: threading.Event | None = None  # made when another operation claims it (merge)

    @property
    def key(self) -> tuple[int, int, int]:
        # an operation submitted from inside a running one goes first: its parent waits for it
        return (0 if self.parent is not None else 1, -self.priority, self.seq)

    def ancestors(self) -> list[Ticket]:
        chain, node = [], self.parent
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain


def would_deadlock(
    ticket: Ticket, holders: Mapping[UUID, Ticket], waiters: Iterable[Ticket]
) -> bool:
    """Whether ``ticket`` waits (through holders and their waiting nested operations) on one
    of its own ancestors: the wait could never end."""
    ancestors = {id(a) for a in ticket.ancestors()}
    seen: set[int] = set()
    frontier = [holders[t] for t in ticket.op.targets if t in holders]
    while frontier:
        holder = frontier.pop()
        if id(holder) in ancestors:
            return True
        if id(holder) in seen:
            continue
        seen.add(id(holder))
        for waiting in waiters:  # nested operations the holder is waiting for
            if waiting is not ticket and any(a is holder for a in waiting.ancestors()):
                frontier.extend(
                    holders[t] for t in waiting.op.targets if t in holders
                )
    return False
