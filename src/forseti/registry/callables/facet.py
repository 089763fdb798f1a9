"""The registry's calling face: ``reg.callables``, ``reg.call(...)`` and ``reg.resolve(address)``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .addresses import resolve_address
from .catalog import CallableRegistry
from .invoke import prepare

if TYPE_CHECKING:
    from ..core import EntityRegistry

__all__ = ["CallablesMixin"]


class CallablesMixin:
    """Registered functions called with provenance (mixed into :class:`EntityRegistry`)."""

    _callables: CallableRegistry | None = None
    _callables_lock = threading.Lock()

    @property
    def callables(self) -> CallableRegistry:
        """This registry's :class:`CallableRegistry` (created on first use)."""
        if self._callables is None:
            with CallablesMixin._callables_lock:
                if self._callables is None:
                    self._callables = CallableRegistry(cast("EntityRegistry", self))
        return self._callables

    def call(
        self,
        target: str | Callable[..., Any],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Call a registered function with provenance; return what it returned, committed.

        ``target`` is a name (``"train"``, or ``"train@2"`` for an older version) or a function
        (registered on first use). Each argument may be an entity, an :class:`EntityRef`, a
        lineage or version id, or an address (``"@<id>"``, ``"@<id>.field.sub"``); parameters
        annotated with an entity type get that entity, plain values are validated against their
        annotations. Bad arguments raise before anything runs and change nothing.

        Entities in the return value are committed in one transaction with the call's
        :class:`CallRecord` and ``CallCompleted`` event: a draft (``x.evolve(...)``) becomes the
        next version of its lineage, a new entity starts a lineage, and each gets
        ``derived_from`` edges to the exact versions the call read. If the function raises, a
        failed record and ``CallFailed`` are written and the error propagates. Async functions
        run on a private loop thread, so this works inside a running event loop.
        """
        reg = cast("EntityRegistry", self)
        reg._check_open()
        spec = self.callables.lookup(target)
        inv = prepare(reg, spec, args, kwargs)
        inv.start()
        try:
            try:
                value, _ = inv.complete(inv.run())
            except BaseException as exc:
                inv.fail(exc)
                raise
            return value
        finally:
            inv.end()

    def resolve(self, address: str) -> Any:
        """The value an address names: ``"@<id>"`` (an entity) or ``"@<id>.field.sub"``.

        ``<id>`` is a lineage id (its head) or a version id; a segment is a field, a mapping key
        or a tuple index, and an :class:`EntityRef` on the way is followed. Only the versions on
        the path are read. :class:`NotFoundError` names the segment that does not exist.
        """
        reg = cast("EntityRegistry", self)
        reg._check_open()
        return resolve_address(reg, address).value
