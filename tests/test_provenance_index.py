"""Provenance walks stay exact when other writers add edges after a walk built the graph index."""

from __future__ import annotations

from pathlib import Path

import forseti as fs


def test_walks_see_edges_committed_by_another_registry(persistent_url: str, tmp_path: Path) -> None:
    with (
        fs.open(persistent_url, blob_dir=tmp_path / "b") as one,
        fs.open(persistent_url, blob_dir=tmp_path / "b") as two,
    ):
        root = one.add(fs.DatasetEntity(name="root"))
        child = one.add(fs.DatasetEntity(name="child", derived_from=(root.ref,)))
        assert one.descendants(root) == [child.ref]  # the first walk loads the graph
        grandchild = two.add(fs.DatasetEntity(name="grandchild", derived_from=(child.ref,)))
        v2 = two.commit(two.get(root.lineage_id).evolve(description="v2"))
        assert one.descendants(root) == [child.ref, v2.ref, grandchild.ref]
        assert one.descendants(root, max_depth=1) == [child.ref, v2.ref]
        assert one.ancestors(grandchild) == [child.ref, root.ref]
        assert two.ancestors(v2) == [root.ref]


def test_a_walk_after_a_failed_commit_sees_no_phantom_edges(reg: fs.EntityRegistry) -> None:
    root = reg.add(fs.DatasetEntity(name="root"))
    assert reg.descendants(root) == []
    stale = root.evolve(description="stale")
    reg.commit(root.evolve(description="wins"))
    try:
        reg.commit_many([fs.DatasetEntity(name="orphan", derived_from=(root.ref,)), stale])
    except fs.ConflictError:
        pass
    else:  # pragma: no cover - the stale draft must be refused
        raise AssertionError("a stale draft was committed")
    assert [ref.version for ref in reg.descendants(root)] == [2]
