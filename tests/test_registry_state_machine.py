"""A Hypothesis state machine: each persistent backend against the in-memory reference store.

The same entity objects (and so the same ids) are written to both registries; every step must
have the same outcome on both (the same result, or the same error type and OCC details), and after
every step both must hold the same content.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import forseti as fs

NAMES = st.sampled_from(["alpha", "beta", "gamma"])
ALIASES = st.sampled_from(["prod", "staging"])
PARAMS = st.dictionaries(
    st.sampled_from(["lr", "depth", "tags", "opt"]),
    st.integers(-5, 5) | st.floats(-1, 1) | st.lists(st.integers(0, 3), max_size=3) | st.none(),
    max_size=3,
)

MACHINE_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """``("ok", result)`` or ``(error type name, OCC details)`` of one call."""
    try:
        return "ok", fn(*args, **kwargs)
    except fs.ConflictError as exc:
        return "ConflictError", (exc.lineage_id, exc.expected, exc.actual)
    except fs.ForsetiError as exc:
        return type(exc).__name__, None


class RegistryAgainstReference(RuleBasedStateMachine):
    """Subclassed per backend with ``make_url`` set."""

    def make_url(self) -> tuple[str, Path]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.url, self.tmp = self.make_url()
        self.real = fs.open(self.url, blob_dir=self.tmp / "blobs")
        self.ref = fs.open("memory://")
        self.lineages: list[UUID] = []
        self.stale: dict[UUID, list[fs.Entity]] = {}  # heads that have since moved
        self.blobs: list[fs.BlobRef] = []
        self.operations: list[tuple[str, list[fs.Entity]]] = []
        self.commits = 0

    def teardown(self) -> None:
        try:
            if self.lineages:
                # a fresh registry (no cache) reads back exactly what the reference holds
                with fs.open(self.url, blob_dir=self.tmp / "blobs") as fresh:
                    self._compare(fresh)
        finally:
            self.real.close()
            self.ref.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    def _both(self, method: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        got = outcome(getattr(self.real, method), *args, **kwargs)
        want = outcome(getattr(self.ref, method), *args, **kwargs)
        assert got[0] == want[0], (method, got, want)
        if got[0] == "ConflictError":
            lid, expected, actual = got[1]
            assert (lid, expected) == want[1][:2]
            assert actual in (want[1][2], None)  # a store may not know the winner's version
        elif got[0] == "ok":
            assert _content(got[1]) == _content(want[1]), method
        return want

    def _compare(self, reg: fs.EntityRegistry) -> None:
        ref = self.ref
        for lid in self.lineages:
            assert [e.to_state() for e in reg.history(lid)] == [
                e.to_state() for e in ref.history(lid)
            ]
            assert reg.get(lid).to_state() == ref.get(lid).to_state()
            assert reg.aliases(lid) == ref.aliases(lid)
        assert _content(reg.find(fs.Entity)) == _content(ref.find(fs.Entity))
        for blob in self.blobs:
            assert reg.read_blob(blob) == ref.read_blob(blob)

    def _head(self, index: int) -> fs.Entity:
        return self.ref.get(self.lineages[index % len(self.lineages)])

    def _with_stale(self) -> list[UUID]:
        # insertion order, never the (random) ids' order: replays must draw the same way
        return [lid for lid in self.lineages if self.stale.get(lid)]

    def _advance(self, head: fs.Entity, draft: fs.Entity) -> None:
        kind, _ = self._both("commit", draft)
        assert kind == "ok"
        self.stale.setdefault(head.lineage_id, []).append(head)
        self.commits += 1

    # -- rules ---------------------------------------------------------------------------------

    @rule(name=NAMES, size=st.integers(1, 512))
    def add_model(self, name: str, size: int) -> None:
        m = fs.ModelEntity(name=name, hidden_size=size)
        assert self._both("add", m)[0] == "ok"
        self.lineages.append(m.lineage_id)

    @rule(name=NAMES, params=PARAMS, data=st.data())
    def add_config(self, name: str, params: dict[str, Any], data: st.DataObject) -> None:
        derived: tuple[fs.EntityRef, ...] = ()
        if self.lineages and data.draw(st.booleans(), label="derived"):
            head = self._head(data.draw(st.integers(0, 99), label="source"))
            version = data.draw(st.integers(1, head.version), label="source_version")
            derived = (fs.EntityRef(head.lineage_id, version),)
        c = fs.ConfigEntity(name=name, params=params, derived_from=derived)
        assert self._both("add", c)[0] == "ok"
        self.lineages.append(c.lineage_id)

    @precondition(lambda self: self.lineages)
    @rule(index=st.integers(0, 99), size=st.integers(1, 512), params=PARAMS)
    def commit_fresh_draft(self, index: int, size: int, params: dict[str, Any]) -> None:
        head = self._head(index)
        if isinstance(head, fs.ModelEntity):
            draft = head.evolve(hidden_size=size)
        else:
            draft = head.evolve(params=params)
        self._advance(head, draft)

    @precondition(lambda self: any(self.stale.values()))
    @rule(data=st.data())
    def commit_stale_draft(self, data: st.DataObject) -> None:
        lid = data.draw(st.sampled_from(self._with_stale()), label="lid")
        old = data.draw(st.sampled_from(self.stale[lid]), label="old")
        kind, details = self._both("commit", old.evolve())
        assert kind == "ConflictError"
        assert details[1] == old.version and details[2] == self.ref.get(lid).version

    @precondition(lambda self: len(self.lineages) >= 2 and any(self.stale.values()))
    @rule(data=st.data())
    def commit_many_with_one_stale_draft(self, data: st.DataObject) -> None:
        stale_lid = data.draw(st.sampled_from(self._with_stale()), label="stale")
        fresh_lid = data.draw(
            st.sampled_from([lid for lid in self.lineages if lid != stale_lid]), label="fresh"
        )
        fresh = self.ref.get(fresh_lid).evolve()
        stale = data.draw(st.sampled_from(self.stale[stale_lid]), label="old").evolve()
        batch = data.draw(st.permutations([fresh, stale, fs.DatasetEntity(name="new")]))
        kind, _ = self._both("commit_many", batch)
        assert kind == "ConflictError"

    @precondition(lambda self: self.lineages)
    @rule(index=st.integers(0, 99))
    def commit_many_across_lineages(self, index: int) -> None:
        a = self._head(index)
        b = self._head(index + 1)
        if a.lineage_id == b.lineage_id:
            return
        kind, _ = self._both("commit_many", [a.evolve(), b.evolve()])
        assert kind == "ok"
        for head in (a, b):
            self.stale.setdefault(head.lineage_id, []).append(head)
        self.commits += 2

    @precondition(lambda self: self.lineages)
    @rule(index=st.integers(0, 99))
    def commit_operation(self, index: int) -> None:
        head = self._head(index)
        op_id = f"op-{len(self.operations)}"
        batch = [head.evolve()]
        kind, _ = self._both("commit_many", batch, op_id=op_id)
        assert kind == "ok"
        self.operations.append((op_id, batch))
        self.stale.setdefault(head.lineage_id, []).append(head)
        self.commits += 1

    @precondition(lambda self: self.operations)
    @rule(data=st.data())
    def replay_operation(self, data: st.DataObject) -> None:
        op_id, batch = data.draw(st.sampled_from(self.operations), label="operation")
        kind, _ = self._both("commit_many", batch, op_id=op_id)
        assert kind == "DuplicateOperationError"

    @precondition(lambda self: self.lineages)
    @rule(
        index=st.integers(0, 99),
        alias=ALIASES,
        revision=st.sampled_from(["right", "right", "wrong", "none"]),
        data=st.data(),
    )
    def move_alias(self, index: int, alias: str, revision: str, data: st.DataObject) -> None:
        head = self._head(index)
        lid = head.lineage_id
        version = data.draw(st.integers(1, head.version + 1), label="version")  # +1: missing
        current = next((a.revision for a in self.ref.aliases(lid) if a.alias == alias), None)
        if revision == "right":
            expected = current
        elif revision == "wrong":
            expected = (current or 0) + 1
        else:
            expected = None
        kind, result = self._both("move_alias", lid, alias, version, expected_revision=expected)
        if kind == "ok":
            assert result.revision == (current or 0) + 1
            assert (
                self.real.get(lid, alias=alias).to_state()
                == self.ref.get(lid, version=version).to_state()
            )

    @rule(data=st.binary(max_size=256), fmt=st.sampled_from(["bin", "safetensors"]))
    def put_blob(self, data: bytes, fmt: str) -> None:
        kind, ref = self._both("put_blob", data, format=fmt)
        assert kind == "ok"
        assert self.real.put_blob(data, format=fmt) == ref  # idempotent
        assert ref.sha256 == hashlib.sha256(data).hexdigest()
        self.blobs.append(ref)

    @precondition(lambda self: self.lineages)
    @rule(index=st.integers(0, 99), up=st.booleans())
    def walk_provenance(self, index: int, up: bool) -> None:
        head = self._head(index)
        method = "ancestors" if up else "descendants"
        got = getattr(self.real, method)(head)
        want = getattr(self.ref, method)(head)
        assert sorted(got) == sorted(want)
        assert len(got) == len(set(got))

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def same_content(self) -> None:
        self._compare(self.real)

    @invariant()
    def same_find_results(self) -> None:
        for cls in (fs.ModelEntity, fs.ConfigEntity, fs.DatasetEntity):
            assert _content(self.real.find(cls)) == _content(self.ref.find(cls))
        for name in ("alpha", "beta"):
            assert _content(self.real.find(fs.ConfigEntity, name=name)) == _content(
                self.ref.find(fs.ConfigEntity, name=name)
            )
            assert _content(self.real.find(fs.ModelEntity, name=name)) == _content(
                self.ref.find(fs.ModelEntity, name=name)
            )

    @invariant()
    def versions_are_gapless(self) -> None:
        total = 0
        for lid in self.lineages:
            versions = [e.version for e in self.real.history(lid)]
            assert versions == list(range(1, len(versions) + 1))
            total += len(versions)
        assert total == len(self.lineages) + self.commits


def _content(value: Any) -> Any:
    """Compare on content, never on object identity."""
    if isinstance(value, fs.Entity):
        return (type(value).entity_type, value.to_state())
    if isinstance(value, list):
        return [_content(v) for v in value]
    return value


def test_sqlite_matches_the_reference() -> None:
    class SQLiteMachine(RegistryAgainstReference):
        def make_url(self) -> tuple[str, Path]:
            tmp = Path(tempfile.mkdtemp(prefix="forseti-sm-"))
            return f"sqlite:///{tmp / 'store.db'}", tmp

    run_state_machine_as_test(SQLiteMachine, settings=MACHINE_SETTINGS)


@pytest.mark.postgres
def test_postgres_matches_the_reference(pg_server: Any) -> None:
    class PostgresMachine(RegistryAgainstReference):
        def make_url(self) -> tuple[str, Path]:
            tmp = Path(tempfile.mkdtemp(prefix="forseti-sm-"))
            return pg_server.new_schema_url(f"sm_{uuid4().hex[:12]}"), tmp

    run_state_machine_as_test(PostgresMachine, settings=MACHINE_SETTINGS)
