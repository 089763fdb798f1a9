"""Folding operations into drafts: apply each in turn, check what it returned, squash merges."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from uuid import UUID

from ..entities import Entity
from ..errors import ValidationError
from .model import Operation

__all__ = ["fold", "ApplyFailed"]


def checked_drafts(op: Operation, drafts: object, current: Mapping[UUID, Entity]) -> list[Entity]:
    """``drafts`` if they are drafts of ``op``'s targets made from the heads it was given."""
    if not isinstance(drafts, (list, tuple)):
        raise ValidationError(f"{op.kind}.apply() must return a list of drafts")
    for draft in drafts:
        if not isinstance(draft, Entity):
            raise ValidationError(f"{op.kind}.apply() returned {type(draft).__name__}")
        if draft.version == 1 and draft.lineage_id not in current:
            continue
        base = current.get(draft.lineage_id)
        if draft.lineage_id not in op.targets or base is None:
            raise ValidationError(
                f"{op.kind}.apply() returned a draft of lineage {draft.lineage_id}, which is "
                f"not one of its targets"
            )
        if draft.previous_id != base.id:
            raise ValidationError(
                f"{op.kind}.apply() must return drafts made with evolve() from the heads it "
                f"was given"
            )
    return list(drafts)


class ApplyFailed(Exception):
    """``apply`` of the operation at ``index`` of a batch raised ``cause``."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(str(cause))
        self.index, self.cause = index, cause


def fold(ops: list[Operation], heads: Mapping[UUID, Entity]) -> list[Entity]:
    """Apply ``ops`` in turn and squash what each lineage became into one draft of its head."""
    current = dict(heads)
    touched: dict[UUID, list[Entity]] = {}
    created: list[Entity] = []
    for index, op in enumerate(ops):
        try:
            for draft in checked_drafts(op, op.apply(MappingProxyType(current)), current):
                if draft.version == 1 and draft.lineage_id not in current:
                    created.append(draft)  # a new lineage
                    continue
                current[draft.lineage_id] = draft
                touched.setdefault(draft.lineage_id, []).append(draft)
        except Exception as exc:
            raise ApplyFailed(index, exc) from exc
    out = []
    for lineage, steps in touched.items():
        if len(steps) == 1:
            out.append(steps[0])
            continue
        head, last = heads[lineage], steps[-1]
        provenance = tuple(dict.fromkeys(ref for d in steps for ref in d.derived_from))
        changes = {f: getattr(last, f) for f in type(last).user_fields()}
        out.append(head.evolve(**changes, derived_from=provenance))
    if not out and not created:
        raise ValidationError(
            f"{', '.join(op.kind for op in ops)}: apply() returned no drafts, so there is nothing "
            f"to commit"
        )
    return out + created
