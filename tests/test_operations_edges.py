"""Edge cases of operations found late: an apply() with nothing to commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from uuid import UUID

import pytest

import forseti as fs


class Nothing(fs.Operation):
    def apply(self, heads: Mapping[UUID, fs.Entity]) -> Sequence[fs.Entity]:
        return []


def test_an_apply_with_no_drafts_is_a_clear_error_and_writes_nothing(
    reg: fs.EntityRegistry,
) -> None:
    cfg = reg.add(fs.ConfigEntity(name="c"))
    op = Nothing(targets=(cfg.lineage_id,))
    with pytest.raises(fs.ValidationError, match="returned no drafts"):
        reg.submit(op)
    assert reg.get(cfg.lineage_id).version == 1
    assert reg.store.get_by_op_id(op.op_id) == []
    assert reg.scheduler.pending(cfg.lineage_id) == []
