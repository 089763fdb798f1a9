"""Store-side caches stay exact: the provenance graph index and the SQLite head cache."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    with pytest.raises(fs.ConflictError):
        reg.commit_many([fs.DatasetEntity(name="orphan", derived_from=(root.ref,)), stale])
    assert [ref.version for ref in reg.descendants(root)] == [2]


def test_head_cache_sees_a_commit_from_another_process(tmp_path: Path) -> None:
    """The SQLite head cache is checked against the WAL index: another process's commit shows."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'heads.db'}"
    with fs.open(url, blob_dir=tmp_path / "b") as reg:
        m = reg.add(fs.ModelEntity(name="shared", hidden_size=1))
        assert reg.get(m.lineage_id) == m  # cached now
        code = (
            "import forseti as fs, sys\n"
            f"reg = fs.open({url!r}, blob_dir={str(tmp_path / 'b')!r})\n"
            f"head = reg.get({str(m.lineage_id)!r})\n"
            "reg.commit(head.evolve(hidden_size=2))\n"
            "reg.close()\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        head = reg.get(m.lineage_id)
        assert (head.version, head.hidden_size) == (2, 2)
        assert reg.get(m.lineage_id) is head  # and cached again
