"""Turning drafts (and events) into one :class:`WriteBatch`: validation, encoding, provenance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID

from ..entities import Entity, EntityRef
from ..entities.refs import fast_ref
from ..errors import ValidationError
from ..events import EntityRegistered, EntityVersionCommitted, Event
from .checks import check_op_id
from .codec import encode_version
from .eventlog import to_record
from .records import EdgeRecord, TrackingUpdate, WriteBatch

__all__ = ["build_batch"]

Resolver = Callable[[EntityRef, str, Entity], UUID]


def build_batch(
    drafts: Sequence[Entity],
    *,
    op_id: str | None,
    events: Sequence[Event],
    tracking: TrackingUpdate | None,
    resolve: Resolver,
) -> tuple[WriteBatch, list[Event]]:
    """The batch that commits ``drafts`` and ``events``, and the events to announce afterwards.

    Every draft gets a ``previous`` edge and one edge per reference (``derived_from`` and ref
    fields); a reference may name a stored version (``resolve`` finds its id, or raises
    NotFoundError) or an earlier draft of the same batch — never itself or a later draft, so
    provenance stays acyclic. The registry's own events (``EntityRegistered``,
    ``EntityVersionCommitted``) come first, then ``events``.
    """
    if not isinstance(drafts, (list, tuple)) or (not drafts and tracking is None):
        raise ValidationError("commit_many() takes a non-empty sequence of entities")
    for d in drafts:
        if not isinstance(d, Entity):
            raise ValidationError(f"expected an Entity, got {type(d).__name__}")
    if op_id is not None:
        check_op_id(op_id)
    for e in events:
        if not isinstance(e, Event):
            raise ValidationError(f"expected an Event, got {type(e).__name__}")
    batch = WriteBatch(tracking=tracking)
    earlier: dict[EntityRef, UUID] = {}  # drafts before this one: the only ones it may cite
    batch_refs: set[EntityRef] | None = None
    announced: list[Event] = []
    for d in drafts:
        rec = encode_version(d, op_id)
        batch.versions.append(rec)
        if d.previous_id is not None:
            batch.edges.append(EdgeRecord(d.previous_id, d.id, "previous"))
            announced.append(
                EntityVersionCommitted(
                    subject=d.ref,
                    entity_type=rec.type_name,
                    previous=fast_ref(d.lineage_id, d.version - 1),
                    version_id=d.id,
                    op_id=op_id,
                )
            )
        else:
            announced.append(
                EntityRegistered(
                    subject=d.ref, entity_type=rec.type_name, name=rec.name, op_id=op_id
                )
            )
        for relation, ref in d.references():
            src = earlier.get(ref)
            if src is None:
                if batch_refs is None:
                    batch_refs = {x.ref for x in drafts}
                if ref.lineage_id == d.lineage_id and ref.version >= d.version or (
                    ref in batch_refs
                ):
                    raise ValidationError(
                        f"{type(d).__name__}.{relation} refers to {ref}, which is not an "
                        f"earlier version: provenance cannot form a cycle"
                    )
                src = resolve(ref, relation, d)
            batch.edges.append(EdgeRecord(src, d.id, relation))
        if len(drafts) > 1:
            earlier[d.ref] = d.id
    batch.events = [to_record(e, trusted=True) for e in announced]
    batch.events += [to_record(e) for e in events]
    announced.extend(events)
    return batch, announced
