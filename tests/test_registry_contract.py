"""One contract suite for every backend (memory, SQLite file, PostgreSQL) through ``reg``."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from uuid import uuid4

import pytest

import forseti as fs
from forseti.errors import DuplicateOperationError
from forseti.registry import AsyncEntityRegistry

# -- helpers ---------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_ref(reg: fs.EntityRegistry, data: bytes = b"w" * 32) -> fs.BlobRef:
    return reg.put_blob(data, format="safetensors")


def lineage_states(reg: fs.EntityRegistry, lineage_id: Any) -> list[dict[str, Any]]:
    return [e.to_state() for e in reg.history(lineage_id)]


def assert_missing(reg: fs.EntityRegistry, entity: fs.Entity) -> None:
    """``entity`` (a version) was never stored."""
    with pytest.raises(fs.NotFoundError):
        reg.get_by_id(entity.id)
    try:
        stored = reg.get(entity.lineage_id, version=entity.version)
    except fs.NotFoundError:
        return
    assert stored.id != entity.id


def depth_groups(refs: list[fs.EntityRef], expected: list[set[fs.EntityRef]]) -> None:
    """``refs`` lists each expected node once, every group before the next (nearest first)."""
    assert len(refs) == len(set(refs)), f"a node was listed twice: {refs}"
    position = 0
    for group in expected:
        assert set(refs[position : position + len(group)]) == group, (refs, expected)
        position += len(group)
    assert position == len(refs), (refs, expected)


class Lineage:
    """A small provenance graph used by several tests.

    dataset D, config C, model M; run R1 (refs M, C, D), R2 = R1.evolve(step=5);
    checkpoint K (run=R2, model=M, derived_from=(C,)); M2 = M.evolve().
    """

    def __init__(self, reg: fs.EntityRegistry) -> None:
        self.D = reg.add(fs.DatasetEntity(name="data", num_examples=100))
        self.C = reg.add(fs.ConfigEntity(name="cfg", params={"lr": 1e-3}))
        self.M = reg.add(fs.ModelEntity(name="tiny", hidden_size=8))
        self.R1 = reg.add(
            fs.TrainingRunEntity(
                name="run", model=self.M.ref, config=self.C.ref, dataset=self.D.ref, total_steps=10
            )
        )
        self.R2 = reg.commit(self.R1.evolve(step=5, status="running"))
        self.K = reg.add(
            fs.CheckpointEntity(
                run=self.R2.ref,
                model=self.M.ref,
                step=5,
                weights=blob_ref(reg),
                derived_from=(self.C.ref,),
            )
        )
        self.M2 = reg.commit(self.M.evolve(hidden_size=16))


# -- add / get / history / commit ---------------------------------------------------------------


def test_add_then_read_back_every_way(reg: fs.EntityRegistry) -> None:
    m = fs.ModelEntity(name="tiny", hidden_size=64)
    stored = reg.add(m)
    assert stored == m and stored.version == 1
    assert reg.get(m.lineage_id) == m
    assert reg.get(str(m.lineage_id)) == m
    assert reg.get(m.lineage_id, version=1) == m
    assert reg.get(m.ref) == m
    assert reg.get_by_id(m.id) == m
    assert reg.get_by_id(str(m.id)) == m
    assert reg.history(m.lineage_id) == [m]
    assert type(reg.get(m.lineage_id)) is fs.ModelEntity


def test_commit_appends_versions_and_history_is_oldest_first(reg: fs.EntityRegistry) -> None:
    v1 = reg.add(fs.ModelEntity(name="tiny", hidden_size=1))
    versions = [v1]
    for size in range(2, 7):
        versions.append(reg.commit(versions[-1].evolve(hidden_size=size)))
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]
    history = reg.history(v1.lineage_id)
    assert history == versions
    assert [h.previous_id for h in history[1:]] == [h.id for h in history[:-1]]
    head = reg.get(v1.lineage_id)
    assert head == versions[-1] and head.hidden_size == 6
    for v in versions:
        assert reg.get(v1.lineage_id, version=v.version) == v
        assert reg.get(v.ref) == v
        assert reg.get_by_id(v.id) == v


def test_get_with_entity_ref_names_an_exact_version(reg: fs.EntityRegistry) -> None:
    v1 = reg.add(fs.ConfigEntity(name="c", params={"a": 1}))
    v2 = reg.commit(v1.evolve(params={"a": 2}))
    assert reg.get(fs.EntityRef(v1.lineage_id, 1)).params == {"a": 1}
    assert reg.get(fs.EntityRef(v1.lineage_id, 2)) == v2
    with pytest.raises(fs.NotFoundError):
        reg.get(fs.EntityRef(v1.lineage_id, 3))
    with pytest.raises(fs.ValidationError):
        reg.get(v1.ref, version=1)


def test_stale_draft_conflicts_and_writes_nothing(reg: fs.EntityRegistry) -> None:
    v1 = reg.add(fs.ModelEntity(name="tiny", hidden_size=1))
    first = v1.evolve(hidden_size=2)
    second = v1.evolve(hidden_size=3)  # made from the same head
    reg.commit(first)
    with pytest.raises(fs.ConflictError) as info:
        reg.commit(second)
    err = info.value
    assert err.expected == 1
    assert err.actual == 2
    assert err.lineage_id == v1.lineage_id
    assert_missing(reg, second)
    assert reg.history(v1.lineage_id) == [v1, first]
    assert reg.get(v1.lineage_id) == first
    # the loser recovers by evolving the current head
    third = reg.commit(reg.get(v1.lineage_id).evolve(hidden_size=3))
    assert third.version == 3 and reg.get(v1.lineage_id).hidden_size == 3


def test_committing_the_same_draft_twice_conflicts(reg: fs.EntityRegistry) -> None:
    v1 = reg.add(fs.ModelEntity(name="tiny"))
    draft = v1.evolve(hidden_size=4)
    reg.commit(draft)
    with pytest.raises(fs.ConflictError) as info:
        reg.commit(draft)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert reg.history(v1.lineage_id) == [v1, draft]


def test_add_twice_conflicts(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="tiny"))
    with pytest.raises(fs.ConflictError) as info:
        reg.add(m)
    assert info.value.actual == 1
    with pytest.raises(fs.ConflictError):
        reg.add(fs.ModelEntity(name="other", lineage_id=m.lineage_id))
    assert reg.history(m.lineage_id) == [m]
    assert [e.name for e in reg.find(fs.ModelEntity)] == ["tiny"]


def test_add_later_version_and_commit_first_version_are_refused(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="tiny"))
    draft = m.evolve(hidden_size=2)
    with pytest.raises(fs.ValidationError):
        reg.add(draft)
    fresh = fs.ModelEntity(name="fresh")
    with pytest.raises(fs.ValidationError):
        reg.commit(fresh)
    assert_missing(reg, draft)
    assert_missing(reg, fresh)
    assert reg.history(m.lineage_id) == [m]


def test_draft_of_another_type_or_with_forged_parent_is_refused(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="tiny"))
    other_type = fs.ConfigEntity(name="tiny", lineage_id=m.lineage_id, version=2, previous_id=m.id)
    with pytest.raises(fs.ValidationError):
        reg.commit(other_type)
    forged = fs.ModelEntity(name="tiny", lineage_id=m.lineage_id, version=2, previous_id=uuid4())
    with pytest.raises(fs.ValidationError):
        reg.commit(forged)
    assert_missing(reg, other_type)
    assert_missing(reg, forged)
    assert reg.history(m.lineage_id) == [m]
    assert reg.find(fs.ConfigEntity) == []


def test_commit_to_an_unknown_lineage_is_not_found(reg: fs.EntityRegistry) -> None:
    ghost = fs.ModelEntity(name="ghost", version=2, previous_id=uuid4())
    with pytest.raises(fs.NotFoundError):
        reg.commit(ghost)
    with pytest.raises(fs.NotFoundError):
        reg.get(ghost.lineage_id)


# -- commit_many ------------------------------------------------------------------------------


def test_commit_many_writes_all_lineages_together(reg: fs.EntityRegistry) -> None:
    a = reg.add(fs.ModelEntity(name="a"))
    b = reg.add(fs.ConfigEntity(name="b"))
    c = fs.DatasetEntity(name="c")
    a2 = a.evolve(hidden_size=2)
    a3 = a2.evolve(hidden_size=3)  # two versions of one lineage in one batch
    b2 = b.evolve(params={"x": 1})
    out = reg.commit_many([a2, a3, b2, c])
    assert out == [a2, a3, b2, c]
    assert reg.history(a.lineage_id) == [a, a2, a3]
    assert reg.history(b.lineage_id) == [b, b2]
    assert reg.get(c.lineage_id) == c


def test_commit_many_is_all_or_nothing(reg: fs.EntityRegistry) -> None:
    a = reg.add(fs.ModelEntity(name="a"))
    b = reg.add(fs.ConfigEntity(name="b"))
    stale_b = b.evolve(params={"stale": True})
    b2 = reg.commit(b.evolve(params={"won": True}))
    before = {lid: lineage_states(reg, lid) for lid in (a.lineage_id, b.lineage_id)}
    new_lineage = fs.DatasetEntity(name="new")
    good_a = a.evolve(hidden_size=5)
    for batch in ([good_a, stale_b], [stale_b, good_a], [new_lineage, good_a, stale_b]):
        with pytest.raises(fs.ConflictError) as info:
            reg.commit_many(batch)
        assert info.value.lineage_id == b.lineage_id
        assert (info.value.expected, info.value.actual) == (1, 2)
        after = {lid: lineage_states(reg, lid) for lid in (a.lineage_id, b.lineage_id)}
        assert after == before
        assert_missing(reg, good_a)
        assert_missing(reg, new_lineage)
    assert reg.get(a.lineage_id) == a and reg.get(b.lineage_id) == b2
    assert reg.find(fs.DatasetEntity) == []
    # the same good draft still commits afterwards: the failed batches left no trace
    assert reg.commit(good_a).version == 2


def test_an_operation_id_commits_once(reg: fs.EntityRegistry) -> None:
    """A replayed operation is recognised as such (DuplicateOperationError), never as a conflict.

    The operation scheduler turns DuplicateOperationError into an idempotent replay; a replay
    reported as a ConflictError would be re-applied and committed twice.
    """
    a = reg.add(fs.ModelEntity(name="a", hidden_size=1))
    draft = a.evolve(hidden_size=2)
    new = fs.DatasetEntity(name="d")
    assert reg.commit_many([draft, new], op_id="op-1") == [draft, new]
    before = (lineage_states(reg, a.lineage_id), lineage_states(reg, new.lineage_id))
    with pytest.raises(DuplicateOperationError) as info:
        reg.commit_many([draft, new], op_id="op-1")  # the very same batch, replayed
    assert info.value.op_id == "op-1"
    other = draft.evolve(hidden_size=3)
    with pytest.raises(DuplicateOperationError):
        reg.commit_many([other], op_id="op-1")  # new work under a used id
    with pytest.raises(DuplicateOperationError):
        reg.commit_many([a.evolve()], op_id="op-1")  # a stale draft under a used id
    assert (lineage_states(reg, a.lineage_id), lineage_states(reg, new.lineage_id)) == before
    assert_missing(reg, other)
    # several versions may share one operation id, and a fresh id commits
    more = reg.commit_many([other, other.evolve(hidden_size=4)], op_id="op-2")
    assert [m.version for m in more] == [3, 4]
    assert reg.get(a.lineage_id).hidden_size == 4


# -- find -------------------------------------------------------------------------------------


class FindModel(fs.ModelEntity):
    entity_type: ClassVar[str] = "tests.contract.FindModel"
    adapter: str = ""


def test_find_by_type_subclass_and_fields(reg: fs.EntityRegistry) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    at = [t0 + timedelta(seconds=i) for i in range(6)]
    a = reg.add(fs.ModelEntity(name="a", hidden_size=8, created_at=at[0]))
    b = reg.add(fs.ModelEntity(name="b", hidden_size=8, created_at=at[1]))
    a_again = reg.add(fs.ModelEntity(name="a", hidden_size=16, created_at=at[2]))
    sub = reg.add(FindModel(name="a", hidden_size=8, adapter="lora", created_at=at[3]))
    cfg = reg.add(fs.ConfigEntity(name="a", created_at=at[4]))
    a2 = reg.commit(a.evolve(num_layers=2))  # find returns heads

    assert reg.find(fs.ModelEntity) == [a2, b, a_again, sub]
    assert reg.find(fs.ModelEntity, name="a") == [a2, a_again, sub]
    assert type(reg.find(fs.ModelEntity, name="a")[2]) is FindModel
    assert reg.find(fs.ModelEntity, name="a", hidden_size=8) == [a2, sub]
    assert reg.find(fs.ModelEntity, hidden_size=16) == [a_again]
    assert reg.find(FindModel) == [sub]
    assert reg.find(FindModel, adapter="lora") == [sub]
    assert reg.find(fs.ConfigEntity, name="a") == [cfg]
    assert reg.find(fs.ModelEntity, name="zzz") == []
    assert reg.find(fs.ModelEntity, num_layers=None) == [b, a_again, sub]
    assert reg.find(fs.DatasetEntity) == []
    assert reg.find(fs.Entity) == [a2, b, a_again, sub, cfg]
    with pytest.raises(fs.ValidationError):
        reg.find(fs.ModelEntity, colour="red")
    with pytest.raises(fs.ValidationError):
        reg.find(fs.ConfigEntity, adapter="lora")  # a subclass field is not a field of the base


def test_find_uses_the_head_name_after_a_rename(reg: fs.EntityRegistry) -> None:
    """find() matches heads: a lineage renamed by a later version is found by its new name."""
    old = reg.add(fs.ModelEntity(name="draft-model"))
    renamed = reg.commit(old.evolve(name="final-model"))
    assert reg.find(fs.ModelEntity, name="draft-model") == []
    assert reg.find(fs.ModelEntity, name="final-model") == [renamed]


def test_find_matches_json_map_fields_given_as_plain_values(reg: fs.EntityRegistry) -> None:
    """The dict a config was made from finds it, lists inside included."""
    params = {"layers": [64, 64], "optim": {"betas": [0.9, 0.99]}}
    cfg = reg.add(fs.ConfigEntity(name="c", params=params))
    assert reg.find(fs.ConfigEntity, params={"scalar": 1}) == []
    assert reg.find(fs.ConfigEntity, params=params) == [cfg]


class LongRefReport(fs.Entity):
    entity_type: ClassVar[str] = "tests.contract.LongRefReport"

    the_checkpoint_this_evaluation_report_was_computed_from_at_the_end: fs.EntityRef


def test_long_reference_field_names_are_stored_on_every_backend(reg: fs.EntityRegistry) -> None:
    """A ref field's name is the provenance relation; any Python field name must be storable."""
    src = reg.add(fs.DatasetEntity(name="d"))
    report = reg.add(
        LongRefReport(the_checkpoint_this_evaluation_report_was_computed_from_at_the_end=src.ref)
    )
    assert reg.ancestors(report) == [src.ref]
    assert reg.get(report.lineage_id) == report


class FreeTextNote(fs.Entity):
    entity_type: ClassVar[str] = "tests.contract.FreeTextNote"

    name: str  # a custom type's name need not be a (length-limited) forseti Name


def test_long_names_of_custom_types_are_stored_and_found(reg: fs.EntityRegistry) -> None:
    long_name = "n" * 1000
    note = reg.add(FreeTextNote(name=long_name))
    assert reg.get(note.lineage_id) == note
    assert reg.find(FreeTextNote, name=long_name) == [note]


def test_long_type_names_are_refused_up_front_or_stored(reg: fs.EntityRegistry) -> None:
    """A type name the store cannot hold must be refused when the class is defined, not later."""
    try:

        class VeryLongTypeName(fs.Entity):
            entity_type: ClassVar[str] = "tests.contract." + "T" * 300

    except TypeError:
        return
    e = reg.add(VeryLongTypeName())
    assert reg.get(e.lineage_id) == e
    assert reg.find(VeryLongTypeName) == [e]


# -- provenance -------------------------------------------------------------------------------


def test_ancestors_follow_refs_derived_from_and_versions(reg: fs.EntityRegistry) -> None:
    g = Lineage(reg)
    D, C, M, R1, R2, K = (x.ref for x in (g.D, g.C, g.M, g.R1, g.R2, g.K))
    # K -> R2 (run), M (model), C (derived_from); R2 -> R1 (previous), M, C, D (ref fields)
    depth_groups(reg.ancestors(g.K), [{R2, M, C}, {R1, D}])
    depth_groups(reg.ancestors(g.K, max_depth=1), [{R2, M, C}])
    depth_groups(reg.ancestors(K, max_depth=2), [{R2, M, C}, {R1, D}])
    depth_groups(reg.ancestors(g.R2), [{R1, M, C, D}])
    assert reg.ancestors(g.D) == []
    assert reg.ancestors(g.M2) == [M]  # the version chain is provenance too
    # descendants: the other direction
    M2 = g.M2.ref
    depth_groups(reg.descendants(g.M), [{R1, R2, K, M2}])
    depth_groups(reg.descendants(g.D), [{R1, R2}, {K}])
    depth_groups(reg.descendants(g.D, max_depth=1), [{R1, R2}])
    depth_groups(reg.descendants(g.C), [{R1, R2, K}])
    depth_groups(reg.descendants(g.R1), [{R2}, {K}])
    assert reg.descendants(g.K) == []


def test_diamond_lists_each_node_once_nearest_first(reg: fs.EntityRegistry) -> None:
    a = reg.add(fs.DatasetEntity(name="a"))
    b = reg.add(fs.DatasetEntity(name="b", derived_from=(a.ref,)))
    c = reg.add(fs.DatasetEntity(name="c", derived_from=(a.ref,)))
    d = reg.add(fs.DatasetEntity(name="d", derived_from=(b.ref, c.ref)))
    e = reg.add(fs.DatasetEntity(name="e", derived_from=(d.ref, a.ref)))  # a shortcut edge
    depth_groups(reg.ancestors(d), [{b.ref, c.ref}, {a.ref}])
    depth_groups(reg.descendants(a), [{b.ref, c.ref, e.ref}, {d.ref}])
    depth_groups(reg.ancestors(e), [{d.ref, a.ref}, {b.ref, c.ref}])
    depth_groups(reg.descendants(b), [{d.ref}, {e.ref}])


def test_derived_from_inside_one_batch(reg: fs.EntityRegistry) -> None:
    src = fs.DatasetEntity(name="raw")
    out = fs.DatasetEntity(name="clean", derived_from=(src.ref,))
    reg.commit_many([src, out])
    assert reg.ancestors(out) == [src.ref]
    assert reg.descendants(src) == [out.ref]


def test_provenance_cannot_form_a_cycle(reg: fs.EntityRegistry) -> None:
    """Provenance is a DAG: no version derives from itself, nor two drafts from each other."""
    la, lb = uuid4(), uuid4()
    itself = fs.DatasetEntity(name="self", lineage_id=la, derived_from=(fs.EntityRef(la, 1),))
    with pytest.raises(fs.ValidationError):
        reg.add(itself)
    assert_missing(reg, itself)
    a = fs.DatasetEntity(name="a", lineage_id=la, derived_from=(fs.EntityRef(lb, 1),))
    b = fs.DatasetEntity(name="b", lineage_id=lb, derived_from=(fs.EntityRef(la, 1),))
    with pytest.raises(fs.ValidationError):
        reg.commit_many([a, b])
    assert_missing(reg, a)
    assert_missing(reg, b)
    assert reg.find(fs.DatasetEntity) == []


def test_reference_to_a_missing_version_is_not_found_and_writes_nothing(
    reg: fs.EntityRegistry,
) -> None:
    real = reg.add(fs.DatasetEntity(name="real"))
    dangling = [
        fs.DatasetEntity(name="x", derived_from=(fs.EntityRef(uuid4(), 1),)),
        fs.DatasetEntity(name="y", derived_from=(fs.EntityRef(real.lineage_id, 2),)),
        fs.TrainingRunEntity(name="z", model=fs.EntityRef(uuid4(), 1)),
    ]
    for entity in dangling:
        with pytest.raises(fs.NotFoundError):
            reg.add(entity)
        assert_missing(reg, entity)
    with pytest.raises(fs.NotFoundError):
        reg.commit(real.evolve(derived_from=(fs.EntityRef(uuid4(), 3),)))
    assert reg.history(real.lineage_id) == [real]
    assert reg.find(fs.Entity) == [real]
    assert reg.descendants(real) == []


def test_ancestors_of_a_missing_version_is_not_found(reg: fs.EntityRegistry) -> None:
    with pytest.raises(fs.NotFoundError):
        reg.ancestors(fs.EntityRef(uuid4(), 1))
    with pytest.raises(fs.NotFoundError):
        reg.descendants(fs.ModelEntity(name="never stored"))


# -- aliases ----------------------------------------------------------------------------------


def test_alias_create_move_and_compare_and_set(reg: fs.EntityRegistry) -> None:
    v1 = reg.add(fs.ModelEntity(name="m", hidden_size=1))
    v2 = reg.commit(v1.evolve(hidden_size=2))
    v3 = reg.commit(v2.evolve(hidden_size=3))
    lid = v1.lineage_id

    created = reg.move_alias(lid, "prod", 1, expected_revision=None)
    assert (created.lineage_id, created.alias, created.version, created.revision) == (
        lid,
        "prod",
        1,
        1,
    )
    assert reg.alias(lid, "prod") == created
    assert reg.get(lid, alias="prod") == v1

    moved = reg.move_alias(lid, "prod", 3, expected_revision=1)
    assert (moved.version, moved.revision) == (3, 2)
    assert reg.get(lid, alias="prod") == v3

    with pytest.raises(fs.ConflictError) as info:
        reg.move_alias(lid, "prod", 2, expected_revision=1)  # stale revision
    assert (info.value.expected, info.value.actual) == (1, 2)
    with pytest.raises(fs.ConflictError):
        reg.move_alias(lid, "prod", 2, expected_revision=None)  # exists already
    with pytest.raises(fs.ConflictError):
        reg.move_alias(lid, "staging", 2, expected_revision=1)  # does not exist yet
    assert reg.alias(lid, "prod") == moved
    assert reg.get(lid, alias="prod") == v3

    with pytest.raises(fs.NotFoundError):
        reg.move_alias(lid, "prod", 4, expected_revision=2)  # no version 4
    with pytest.raises(fs.NotFoundError):
        reg.move_alias(lid, "new", 9, expected_revision=None)
    with pytest.raises(fs.NotFoundError):
        reg.move_alias(uuid4(), "prod", 1, expected_revision=None)
    assert reg.alias(lid, "prod") == moved

    staging = reg.move_alias(lid, "staging", 2, expected_revision=None)
    assert reg.aliases(lid) == [moved, staging]  # by name
    assert reg.get(lid, alias="staging") == v2
    with pytest.raises(fs.NotFoundError):
        reg.alias(lid, "canary")
    with pytest.raises(fs.NotFoundError):
        reg.get(lid, alias="canary")
    with pytest.raises(fs.ValidationError):
        reg.get(lid, version=1, alias="prod")


@pytest.mark.parametrize(
    "name", ["", "-lead", ".hidden", "with space", "x" * 129, "é", "a/b", 5, None]
)
def test_bad_alias_names_are_refused(reg: fs.EntityRegistry, name: Any) -> None:
    m = reg.add(fs.ModelEntity(name="m"))
    with pytest.raises(fs.ValidationError):
        reg.move_alias(m.lineage_id, name, 1, expected_revision=None)
    with pytest.raises(fs.ValidationError):
        reg.alias(m.lineage_id, name)
    assert reg.aliases(m.lineage_id) == []


# -- blobs ------------------------------------------------------------------------------------


def test_blobs_put_read_open_and_dedupe(reg: fs.EntityRegistry, tmp_path: Path) -> None:
    data = os.urandom(3000)
    ref = reg.put_blob(data, format="safetensors")
    assert (ref.sha256, ref.size, ref.format) == (sha(data), len(data), "safetensors")
    assert reg.read_blob(ref) == data
    with reg.open_blob(ref) as fh:
        assert fh.read() == data
    src = tmp_path / "weights.bin"
    src.write_bytes(data)
    assert reg.put_blob(src, format="safetensors") == ref
    assert reg.put_blob(str(src), format="safetensors") == ref
    assert reg.put_blob(bytearray(data), format="safetensors") == ref
    assert reg.put_blob(memoryview(data), format="safetensors") == ref
    path = reg.blob_path(ref)
    assert path.read_bytes() == data
    assert [p for p in path.parent.iterdir() if p.name == ref.sha256] == [path]  # one copy
    empty = reg.put_blob(b"")
    assert empty.size == 0 and reg.read_blob(empty) == b""
    # a checkpoint holds the ref, never the bytes
    run = reg.add(fs.TrainingRunEntity(name="r"))
    model = reg.add(fs.ModelEntity(name="m"))
    ck = reg.add(fs.CheckpointEntity(run=run.ref, model=model.ref, step=0, weights=ref))
    assert reg.read_blob(reg.get(ck.lineage_id).weights) == data


def _tamper_flip(path: Path) -> None:
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _tamper_truncate(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 1)


def _tamper_append(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "ab") as fh:
        fh.write(b"!")


@pytest.mark.parametrize("tamper", [_tamper_flip, _tamper_truncate, _tamper_append])
def test_tampered_blob_is_an_integrity_error(
    reg: fs.EntityRegistry, tamper: Callable[[Path], None]
) -> None:
    data = os.urandom(1000)
    ref = reg.put_blob(data)
    path = reg.blob_path(ref)
    assert os.stat(path).st_mode & 0o222 == 0  # stored read-only
    tamper(path)
    with pytest.raises(fs.IntegrityError):
        reg.read_blob(ref)
    with pytest.raises(fs.IntegrityError):
        reg.open_blob(ref)
    with pytest.raises(fs.IntegrityError):
        reg.blob_path(ref)


def test_put_blob_repairs_a_tampered_copy(reg: fs.EntityRegistry) -> None:
    """Storing the same content again must leave a good copy, not keep a corrupted one."""
    data = os.urandom(1000)
    ref = reg.put_blob(data)
    _tamper_flip(reg.blob_path(ref))
    assert reg.put_blob(data) == ref
    assert reg.read_blob(ref) == data


def test_missing_blob_is_not_found(reg: fs.EntityRegistry, tmp_path: Path) -> None:
    never = fs.BlobRef(sha256=sha(b"never stored"), size=12)
    with pytest.raises(fs.NotFoundError):
        reg.read_blob(never)
    with pytest.raises(fs.NotFoundError):
        reg.open_blob(never)
    with pytest.raises(fs.NotFoundError):
        reg.put_blob(tmp_path / "no-such-file")
    ref = reg.put_blob(b"gone soon")
    path = reg.blob_path(ref)
    os.chmod(path, 0o644)
    path.unlink()
    with pytest.raises(fs.NotFoundError):
        reg.read_blob(ref)


def test_blob_ref_with_wrong_size_is_an_integrity_error(reg: fs.EntityRegistry) -> None:
    ref = reg.put_blob(b"twelve bytes")
    lying = fs.BlobRef(sha256=ref.sha256, size=ref.size + 1)
    with pytest.raises(fs.IntegrityError):
        reg.read_blob(lying)


# -- lifecycle, event loops -----------------------------------------------------------------


def test_closed_registry_refuses_every_call(store_url: str, tmp_path: Path) -> None:
    reg = fs.open(store_url, blob_dir=tmp_path / "blobs")
    m = reg.add(fs.ModelEntity(name="m"))
    data_ref = reg.put_blob(b"x")
    reg.close()
    reg.close()  # idempotent
    assert reg.closed
    calls: list[Callable[[], Any]] = [
        lambda: reg.add(fs.ModelEntity(name="n")),
        lambda: reg.commit(m.evolve(hidden_size=2)),
        lambda: reg.commit_many([fs.ModelEntity(name="n")]),
        lambda: reg.get(m.lineage_id),
        lambda: reg.get(m.lineage_id, version=1),
        lambda: reg.get_by_id(m.id),
        lambda: reg.history(m.lineage_id),
        lambda: reg.find(fs.ModelEntity),
        lambda: reg.ancestors(m),
        lambda: reg.descendants(m),
        lambda: reg.alias(m.lineage_id, "prod"),
        lambda: reg.aliases(m.lineage_id),
        lambda: reg.move_alias(m.lineage_id, "prod", 1, expected_revision=None),
        lambda: reg.put_blob(b"y"),
        lambda: reg.read_blob(data_ref),
        lambda: reg.open_blob(data_ref),
        lambda: reg.blob_path(data_ref),
    ]
    for call in calls:
        with pytest.raises(fs.StoreClosedError):
            call()


def test_context_manager_closes(store_url: str, tmp_path: Path) -> None:
    with fs.open(store_url, blob_dir=tmp_path / "blobs") as reg:
        reg.add(fs.ModelEntity(name="m"))
    assert reg.closed
    with pytest.raises(fs.StoreClosedError):
        reg.find(fs.ModelEntity)


def test_sync_api_works_inside_a_running_event_loop(reg: fs.EntityRegistry) -> None:
    async def notebook_cell() -> tuple[fs.Entity, fs.Entity, list[fs.Entity], list[fs.EntityRef]]:
        m = reg.add(fs.ModelEntity(name="nb"))
        m2 = reg.commit(m.evolve(hidden_size=3))
        with pytest.raises(fs.ConflictError):
            reg.commit(m.evolve(hidden_size=4))
        reg.move_alias(m.lineage_id, "prod", 2, expected_revision=None)
        return (
            reg.get(m.lineage_id),
            reg.get(m.lineage_id, alias="prod"),
            reg.history(m.lineage_id),
            reg.ancestors(m2),
        )

    head, prod, history, ancestors = asyncio.run(notebook_cell())
    assert head == prod and head.version == 2
    assert [h.version for h in history] == [1, 2]
    assert ancestors == [history[0].ref]


async def _async_face(
    reg: fs.EntityRegistry, store_url: str, tmp_path: Path
) -> AsyncEntityRegistry:
    if store_url.startswith("memory"):
        return AsyncEntityRegistry(reg)
    return await fs.aopen(store_url, blob_dir=tmp_path / "blobs")


def test_async_face_gives_the_same_results(
    reg: fs.EntityRegistry, store_url: str, tmp_path: Path
) -> None:
    g = Lineage(reg)  # written through the sync face

    async def scenario() -> dict[str, Any]:
        areg = await _async_face(reg, store_url, tmp_path)
        try:
            out: dict[str, Any] = {}
            out["head"] = await areg.get(g.M.lineage_id)
            out["v1"] = await areg.get(g.M.lineage_id, version=1)
            out["by_ref"] = await areg.get(g.R1.ref)
            out["by_id"] = await areg.get_by_id(g.K.id)
            out["history"] = await areg.history(g.R1.lineage_id)
            out["find"] = await areg.find(fs.ModelEntity, name="tiny")
            out["anc"] = await areg.ancestors(g.K)
            out["anc1"] = await areg.ancestors(g.K, max_depth=1)
            out["desc"] = await areg.descendants(g.D)
            out["blob"] = await areg.read_blob(g.K.weights)
            with await areg.open_blob(g.K.weights) as fh:
                out["blob_open"] = fh.read()
            # writes through the async face
            c2 = await areg.commit(g.C.evolve(params={"lr": 1e-4}))
            new = await areg.add(fs.DatasetEntity(name="async", derived_from=(c2.ref,)))
            both = await areg.commit_many([c2.evolve(), new.evolve(num_examples=3)])
            with pytest.raises(fs.ConflictError):
                await areg.commit(g.C.evolve(params={"stale": 1}))
            with pytest.raises(fs.NotFoundError):
                await areg.get(uuid4())
            a = await areg.move_alias(g.M.lineage_id, "prod", 2, expected_revision=None)
            out["alias"] = await areg.alias(g.M.lineage_id, "prod")
            out["aliases"] = await areg.aliases(g.M.lineage_id)
            out["by_alias"] = await areg.get(g.M.lineage_id, alias="prod")
            out["a"] = a
            out["blob_ref"] = await areg.put_blob(b"async bytes")
            out["written"] = [c2, new, *both]
            return out
        finally:
            if areg.sync is not reg:
                await areg.close()

    out = asyncio.run(scenario())
    assert out["head"] == reg.get(g.M.lineage_id) == g.M2
    assert out["v1"] == g.M
    assert out["by_ref"] == g.R1
    assert out["by_id"] == g.K
    assert out["history"] == reg.history(g.R1.lineage_id) == [g.R1, g.R2]
    assert out["find"] == reg.find(fs.ModelEntity, name="tiny")
    depth_groups(out["anc"], [{g.R2.ref, g.M.ref, g.C.ref}, {g.R1.ref, g.D.ref}])
    assert set(out["anc1"]) == set(reg.ancestors(g.K, max_depth=1))
    assert set(out["desc"]) == set(reg.descendants(g.D))
    assert out["blob"] == out["blob_open"] == reg.read_blob(g.K.weights)
    assert out["alias"] == out["a"] == reg.alias(g.M.lineage_id, "prod")
    assert out["aliases"] == reg.aliases(g.M.lineage_id)
    assert out["by_alias"] == g.M2
    assert reg.read_blob(out["blob_ref"]) == b"async bytes"
    c2, new, c3, new2 = out["written"]
    assert reg.history(g.C.lineage_id) == [g.C, c2, c3]
    assert reg.history(new.lineage_id) == [new, new2]
    assert reg.ancestors(new, max_depth=1) == [c2.ref]


def test_async_face_after_close(reg: fs.EntityRegistry, store_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        areg = await _async_face(reg, store_url, tmp_path)
        await areg.close()
        with pytest.raises(fs.StoreClosedError):
            await areg.find(fs.ModelEntity)

    asyncio.run(scenario())


# -- persistence -----------------------------------------------------------------------------


def _everything(reg: fs.EntityRegistry, g: Lineage) -> dict[str, Any]:
    lineages = [x.lineage_id for x in (g.D, g.C, g.M, g.R1, g.K)]
    return {
        "history": {lid: reg.history(lid) for lid in lineages},
        "heads": {lid: reg.get(lid) for lid in lineages},
        "by_id": {x.id: reg.get_by_id(x.id) for x in (g.D, g.C, g.M, g.R1, g.R2, g.K, g.M2)},
        "find": reg.find(fs.Entity),
        "anc": {x.id: sorted(reg.ancestors(x), key=str) for x in (g.K, g.R2, g.M2)},
        "anc1": {x.id: sorted(reg.ancestors(x, max_depth=1), key=str) for x in (g.K, g.R2)},
        "desc": {x.id: sorted(reg.descendants(x), key=str) for x in (g.D, g.M, g.C, g.R1)},
        "aliases": {lid: reg.aliases(lid) for lid in lineages},
        "by_alias": reg.get(g.M.lineage_id, alias="prod"),
        "blob": reg.read_blob(g.K.weights),
    }


def test_everything_survives_reopening(persistent_url: str, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    with fs.open(persistent_url, blob_dir=blobs) as first:
        g = Lineage(first)
        first.move_alias(g.M.lineage_id, "prod", 1, expected_revision=None)
        first.move_alias(g.M.lineage_id, "prod", 2, expected_revision=1)
        before = _everything(first, g)
    with fs.open(persistent_url, blob_dir=blobs) as second:
        after = _everything(second, g)
        assert after == before
        assert after["history"][g.R1.lineage_id] == [g.R1, g.R2]
        assert after["by_alias"] == g.M2
        assert second.alias(g.M.lineage_id, "prod").revision == 2
        # and it keeps working: OCC still holds against the reopened store
        with pytest.raises(fs.ConflictError):
            second.commit(g.M.evolve(hidden_size=99))
        assert second.commit(g.M2.evolve(hidden_size=99)).version == 3


def test_infinite_metrics_read_back_after_reopen(persistent_url: str, tmp_path: Path) -> None:
    """A version that commits must read back: infinities are valid metric values."""
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as first:
        run = first.add(fs.TrainingRunEntity(name="r", metrics={"best_loss": math.inf}))
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as second:
        assert second.get(run.lineage_id) == run


def test_second_registry_sees_commits_of_the_first(persistent_url: str, tmp_path: Path) -> None:
    with (
        fs.open(persistent_url, blob_dir=tmp_path / "b") as one,
        fs.open(persistent_url, blob_dir=tmp_path / "b") as two,
    ):
        m = one.add(fs.ModelEntity(name="shared", hidden_size=1))
        assert two.get(m.lineage_id) == m  # two caches the head now
        m2 = one.commit(m.evolve(hidden_size=2))
        assert two.get(m.lineage_id) == m2
        assert two.find(fs.ModelEntity, name="shared") == [m2]
        m3 = two.commit(two.get(m.lineage_id).evolve(hidden_size=3))
        assert one.get(m.lineage_id) == m3
        with pytest.raises(fs.ConflictError):
            one.commit(m2.evolve(hidden_size=4))
        assert one.history(m.lineage_id) == two.history(m.lineage_id) == [m, m2, m3]
        one.move_alias(m.lineage_id, "prod", 3, expected_revision=None)
        assert two.get(m.lineage_id, alias="prod") == m3


def test_second_registry_sees_commits_from_any_thread(persistent_url: str, tmp_path: Path) -> None:
    """The head cache must not go stale for a thread that starts after another registry wrote."""
    with (
        fs.open(persistent_url, blob_dir=tmp_path / "b") as one,
        fs.open(persistent_url, blob_dir=tmp_path / "b") as two,
    ):
        m = one.add(fs.ModelEntity(name="shared", hidden_size=1))
        assert two.get(m.lineage_id) == m
        m2 = one.commit(m.evolve(hidden_size=2))
        seen: list[fs.Entity] = []
        worker = threading.Thread(target=lambda: seen.append(two.get(m.lineage_id)))
        worker.start()
        worker.join()
        assert seen == [m2]
