"""Bad input fails with a typed error and leaves the store exactly as it was.

Also: corrupted rows, unregistered types, bad URLs and a schema from a newer Forseti.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit
from uuid import UUID, uuid4

import msgspec
import pytest

import forseti as fs
from forseti.registry import SCHEMA_VERSION

# -- a seeded store and its snapshot ----------------------------------------------------------


@dataclass
class Seed:
    model: fs.ModelEntity  # head (version 3)
    model_v1: fs.ModelEntity
    config: fs.ConfigEntity
    run: fs.TrainingRunEntity
    checkpoint: fs.CheckpointEntity
    blob: fs.BlobRef

    @property
    def lineages(self) -> list[UUID]:
        return [x.lineage_id for x in (self.model, self.config, self.run, self.checkpoint)]


def seed(reg: fs.EntityRegistry) -> Seed:
    m1 = reg.add(fs.ModelEntity(name="m", hidden_size=1))
    m2 = reg.commit(m1.evolve(hidden_size=2))
    m3 = reg.commit(m2.evolve(hidden_size=3))
    cfg = reg.add(fs.ConfigEntity(name="cfg", params={"lr": 0.1, "layers": [1, 2]}))
    run = reg.add(fs.TrainingRunEntity(name="run", model=m2.ref, config=cfg.ref, total_steps=9))
    blob = reg.put_blob(b"weights!", format="safetensors")
    ck = reg.add(
        fs.CheckpointEntity(
            run=run.ref, model=m2.ref, step=3, weights=blob, derived_from=(cfg.ref,)
        )
    )
    reg.move_alias(m1.lineage_id, "prod", 2, expected_revision=None)
    return Seed(m3, m1, cfg, run, ck, blob)


def snapshot(reg: fs.EntityRegistry, s: Seed) -> dict[str, Any]:
    return {
        "history": {lid: [e.to_state() for e in reg.history(lid)] for lid in s.lineages},
        "find": [e.to_state() for e in reg.find(fs.Entity)],
        "aliases": {lid: reg.aliases(lid) for lid in s.lineages},
        "ancestors": sorted(map(str, reg.ancestors(s.checkpoint))),
        "descendants": sorted(map(str, reg.descendants(s.model_v1))),
        "blob": reg.read_blob(s.blob),
        # the event log is part of the store: a failed call appends nothing to it either
        "events": [(e.seq, e.event.topic, e.event.id) for e in reg.events()],
    }


@pytest.fixture
def seeded(reg: fs.EntityRegistry) -> Seed:
    return seed(reg)


@pytest.fixture
def fresh_snapshot(
    store_url: str, tmp_path: Path, reg: fs.EntityRegistry
) -> Iterator[Callable[[Seed], dict[str, Any]]]:
    """A snapshot through the registry and, for stores that persist, through a fresh one.

    The fresh registry has no cache, so it sees exactly what the store holds.
    """
    opened: list[fs.EntityRegistry] = []

    def take(s: Seed) -> dict[str, Any]:
        snap = {"reg": snapshot(reg, s)}
        if not store_url.startswith("memory"):
            fresh = fs.open(store_url, blob_dir=tmp_path / "blobs")
            opened.append(fresh)
            snap["store"] = snapshot(fresh, s)
        return snap

    yield take
    for r in opened:
        r.close()


# -- bad calls --------------------------------------------------------------------------------

Call = Callable[[fs.EntityRegistry, Seed], Any]

BAD_CALLS: list[tuple[str, Call, type[Exception] | tuple[type[Exception], ...]]] = [
    # get
    ("get-not-a-uuid", lambda r, s: r.get("not-a-uuid"), fs.ValidationError),
    ("get-int", lambda r, s: r.get(12345), fs.ValidationError),
    ("get-none", lambda r, s: r.get(None), fs.ValidationError),
    ("get-version-0", lambda r, s: r.get(s.model.lineage_id, version=0), fs.ValidationError),
    ("get-version-neg", lambda r, s: r.get(s.model.lineage_id, version=-1), fs.ValidationError),
    ("get-version-str", lambda r, s: r.get(s.model.lineage_id, version="1"), fs.ValidationError),
    ("get-version-float", lambda r, s: r.get(s.model.lineage_id, version=1.0), fs.ValidationError),
    ("get-version-bool", lambda r, s: r.get(s.model.lineage_id, version=True), fs.ValidationError),
    ("get-ref-and-version", lambda r, s: r.get(s.model.ref, version=1), fs.ValidationError),
    ("get-ref-and-alias", lambda r, s: r.get(s.model.ref, alias="prod"), fs.ValidationError),
    (
        "get-version-and-alias",
        lambda r, s: r.get(s.model.lineage_id, 1, alias="prod"),
        fs.ValidationError,
    ),
    ("get-unknown-lineage", lambda r, s: r.get(uuid4()), fs.NotFoundError),
    ("get-unknown-version", lambda r, s: r.get(s.model.lineage_id, version=99), fs.NotFoundError),
    ("get-unknown-ref", lambda r, s: r.get(fs.EntityRef(uuid4(), 1)), fs.NotFoundError),
    ("get-unknown-alias", lambda r, s: r.get(s.model.lineage_id, alias="nope"), fs.NotFoundError),
    (
        "get-bad-alias",
        lambda r, s: r.get(s.model.lineage_id, alias="bad alias"),
        fs.ValidationError,
    ),
    ("get_by_id-bad", lambda r, s: r.get_by_id("nope"), fs.ValidationError),
    ("get_by_id-int", lambda r, s: r.get_by_id(7), fs.ValidationError),
    ("get_by_id-unknown", lambda r, s: r.get_by_id(uuid4()), fs.NotFoundError),
    ("get_by_id-lineage-id", lambda r, s: r.get_by_id(s.config.lineage_id), fs.NotFoundError),
    ("history-bad", lambda r, s: r.history("nope"), fs.ValidationError),
    ("history-unknown", lambda r, s: r.history(uuid4()), fs.NotFoundError),
    # writes
    ("add-dict", lambda r, s: r.add({"name": "x"}), fs.ValidationError),
    ("add-none", lambda r, s: r.add(None), fs.ValidationError),
    ("add-class", lambda r, s: r.add(fs.ModelEntity), fs.ValidationError),
    ("add-later-version", lambda r, s: r.add(s.model.evolve(hidden_size=9)), fs.ValidationError),
    ("add-existing", lambda r, s: r.add(s.model_v1), fs.ConflictError),
    (
        "add-existing-id",
        lambda r, s: r.add(fs.ModelEntity(name="dup", id=s.config.id)),
        fs.ValidationError,
    ),
    (
        "add-dangling-ref",
        lambda r, s: r.add(fs.TrainingRunEntity(name="x", model=fs.EntityRef(uuid4(), 1))),
        fs.NotFoundError,
    ),
    ("commit-none", lambda r, s: r.commit(None), fs.ValidationError),
    ("commit-dict", lambda r, s: r.commit(s.model.to_state()), fs.ValidationError),
    ("commit-first-version", lambda r, s: r.commit(fs.ModelEntity(name="x")), fs.ValidationError),
    ("commit-stale", lambda r, s: r.commit(s.model_v1.evolve(hidden_size=7)), fs.ConflictError),
    (
        "commit-unknown-lineage",
        lambda r, s: r.commit(fs.ModelEntity(name="x", version=2, previous_id=uuid4())),
        fs.NotFoundError,
    ),
    (
        "commit-forged-parent",
        lambda r, s: r.commit(
            fs.ModelEntity(name="x", lineage_id=s.model.lineage_id, version=4, previous_id=uuid4())
        ),
        fs.ValidationError,
    ),
    (
        "commit-other-type",
        lambda r, s: r.commit(
            fs.ConfigEntity(
                name="x", lineage_id=s.model.lineage_id, version=4, previous_id=s.model.id
            )
        ),
        fs.ValidationError,
    ),
    (
        "commit-dangling-derived",
        lambda r, s: r.commit(s.model.evolve(derived_from=(fs.EntityRef(s.config.lineage_id, 5),))),
        fs.NotFoundError,
    ),
    ("commit_many-empty", lambda r, s: r.commit_many([]), fs.ValidationError),
    ("commit_many-none", lambda r, s: r.commit_many(None), fs.ValidationError),
    ("commit_many-str", lambda r, s: r.commit_many("abc"), fs.ValidationError),
    (
        "commit_many-with-none",
        lambda r, s: r.commit_many([s.model.evolve(hidden_size=9), None]),
        fs.ValidationError,
    ),
    (
        "commit_many-one-stale",
        lambda r, s: r.commit_many(
            [
                s.model.evolve(hidden_size=9),
                fs.DatasetEntity(name="new"),
                s.model_v1.evolve(hidden_size=8),
            ]
        ),
        fs.ConflictError,
    ),
    (
        "commit_many-bad-op-id",
        lambda r, s: r.commit_many([fs.DatasetEntity(name="n")], op_id=""),
        fs.ValidationError,
    ),
    (
        "commit_many-int-op-id",
        lambda r, s: r.commit_many([fs.DatasetEntity(name="n")], op_id=5),
        fs.ValidationError,
    ),
    (
        "commit_many-long-op-id",
        lambda r, s: r.commit_many([fs.DatasetEntity(name="n")], op_id="x" * 129),
        fs.ValidationError,
    ),
    # queries
    ("find-int", lambda r, s: r.find(int), fs.ValidationError),
    ("find-str", lambda r, s: r.find("forseti.Model"), fs.ValidationError),
    ("find-instance", lambda r, s: r.find(s.model), fs.ValidationError),
    ("find-unknown-field", lambda r, s: r.find(fs.ModelEntity, colour="red"), fs.ValidationError),
    ("ancestors-str", lambda r, s: r.ancestors("x"), fs.ValidationError),
    ("ancestors-unknown", lambda r, s: r.ancestors(fs.EntityRef(uuid4(), 1)), fs.NotFoundError),
    ("ancestors-depth-0", lambda r, s: r.ancestors(s.checkpoint, max_depth=0), fs.ValidationError),
    (
        "descendants-depth-str",
        lambda r, s: r.descendants(s.model, max_depth="2"),
        fs.ValidationError,
    ),
    # aliases
    ("alias-bad-name", lambda r, s: r.alias(s.model.lineage_id, "bad name"), fs.ValidationError),
    ("alias-bad-lineage", lambda r, s: r.alias("x", "prod"), fs.ValidationError),
    ("alias-missing", lambda r, s: r.alias(s.model.lineage_id, "staging"), fs.NotFoundError),
    ("aliases-bad-lineage", lambda r, s: r.aliases(3.5), fs.ValidationError),
    (
        "move-version-0",
        lambda r, s: r.move_alias(s.model.lineage_id, "prod", 0, expected_revision=1),
        fs.ValidationError,
    ),
    (
        "move-version-str",
        lambda r, s: r.move_alias(s.model.lineage_id, "prod", "3", expected_revision=1),
        fs.ValidationError,
    ),
    (
        "move-revision-str",
        lambda r, s: r.move_alias(s.model.lineage_id, "prod", 3, expected_revision="1"),
        fs.ValidationError,
    ),
    (
        "move-revision-bool",
        lambda r, s: r.move_alias(s.model.lineage_id, "prod", 3, expected_revision=True),
        fs.ValidationError,
    ),
    (
        "move-stale-revision",
        lambda r, s: r.move_alias(s.model.lineage_id, "prod", 3, expected_revision=7),
        fs.ConflictError,
    ),
    (
        "move-create-existing",
        lambda r, s: r.move_alias(s.model.lineage_id, "prod", 3, expected_revision=None),
        fs.ConflictError,
    ),
    (
        "move-missing-version",
        lambda r, s: r.move_alias(s.model.lineage_id, "prod", 4, expected_revision=1),
        fs.NotFoundError,
    ),
    (
        "move-unknown-lineage",
        lambda r, s: r.move_alias(uuid4(), "prod", 1, expected_revision=None),
        fs.NotFoundError,
    ),
    # blobs
    ("put_blob-int", lambda r, s: r.put_blob(123), fs.ValidationError),
    ("put_blob-none", lambda r, s: r.put_blob(None), fs.ValidationError),
    ("put_blob-list", lambda r, s: r.put_blob([1, 2]), fs.ValidationError),
    (
        "put_blob-missing-file",
        lambda r, s: r.put_blob("/nonexistent/forseti/file.bin"),
        fs.NotFoundError,
    ),
    ("put_blob-directory", lambda r, s: r.put_blob(Path("/")), fs.NotFoundError),
    (
        "put_blob-bad-format",
        lambda r, s: r.put_blob(b"data", format="Not A Format"),
        fs.ValidationError,
    ),
    ("read_blob-str", lambda r, s: r.read_blob(s.blob.sha256), fs.ValidationError),
    (
        "read_blob-missing",
        lambda r, s: r.read_blob(fs.BlobRef(sha256=hashlib.sha256(b"never").hexdigest(), size=5)),
        fs.NotFoundError,
    ),
    (
        "read_blob-wrong-size",
        lambda r, s: r.read_blob(fs.BlobRef(sha256=s.blob.sha256, size=s.blob.size + 1)),
        fs.IntegrityError,
    ),
    ("open_blob-none", lambda r, s: r.open_blob(None), fs.ValidationError),
    ("blob_path-dict", lambda r, s: r.blob_path({"sha256": s.blob.sha256}), fs.ValidationError),
]


# Integers beyond what the stores hold (int32 columns on PostgreSQL, int64 in SQLite and msgpack):
# such a version or revision cannot exist, so the answer is NotFoundError, ConflictError or
# ValidationError, never a driver's OverflowError or DataError.
_MISSING = (fs.NotFoundError, fs.ValidationError)
for _bits in (31, 70):
    _n = 2**_bits
    BAD_CALLS += [
        (
            f"get-version-2^{_bits}",
            lambda r, s, n=_n: r.get(s.model.lineage_id, version=n),
            _MISSING,
        ),
        (
            f"get-ref-2^{_bits}",
            lambda r, s, n=_n: r.get(fs.EntityRef(s.model.lineage_id, n)),
            _MISSING,
        ),
        (
            f"move-to-version-2^{_bits}",
            lambda r, s, n=_n: r.move_alias(s.model.lineage_id, "prod", n, expected_revision=1),
            _MISSING,
        ),
        (
            f"move-with-revision-2^{_bits}",
            lambda r, s, n=_n: r.move_alias(s.model.lineage_id, "prod", 3, expected_revision=n),
            (fs.ConflictError, fs.ValidationError),
        ),
        (
            f"derived-from-version-2^{_bits}",
            lambda r, s, n=_n: r.add(
                fs.DatasetEntity(name="d", derived_from=(fs.EntityRef(s.model.lineage_id, n),))
            ),
            _MISSING,
        ),
    ]


@pytest.mark.parametrize(("call", "error"), [pytest.param(c, e, id=i) for i, c, e in BAD_CALLS])
def test_bad_call_raises_typed_error_and_changes_nothing(
    reg: fs.EntityRegistry,
    seeded: Seed,
    fresh_snapshot: Callable[[Seed], dict[str, Any]],
    call: Call,
    error: type[Exception] | tuple[type[Exception], ...],
) -> None:
    before = fresh_snapshot(seeded)
    with pytest.raises(error):
        call(reg, seeded)
    assert fresh_snapshot(seeded) == before
    # and the registry still works afterwards
    head = reg.get(seeded.model.lineage_id)
    assert head == seeded.model
    assert reg.commit(head.evolve(hidden_size=42)).version == head.version + 1


NUL_CALLS: list[tuple[str, Call]] = [
    ("name", lambda r, s: r.add(fs.ModelEntity(name="nul\x00name"))),
    ("renamed", lambda r, s: r.commit(s.model.evolve(name="nul\x00name"))),
    ("op_id", lambda r, s: r.commit_many([fs.DatasetEntity(name="d")], op_id="op\x00id")),
    ("find", lambda r, s: r.find(fs.ModelEntity, name="nul\x00name")),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=i) for i, c in NUL_CALLS])
def test_nul_characters_are_stored_or_refused_with_a_typed_error(
    reg: fs.EntityRegistry,
    seeded: Seed,
    fresh_snapshot: Callable[[Seed], dict[str, Any]],
    call: Call,
) -> None:
    """PostgreSQL text cannot hold NUL; no backend may leak a driver error for it."""
    before = fresh_snapshot(seeded)
    try:
        result = call(reg, seeded)
    except fs.ValidationError:
        assert fresh_snapshot(seeded) == before
        return
    if isinstance(result, list) and not result:  # find: nothing has that name
        return
    stored = result[0] if isinstance(result, list) else result
    assert reg.get(stored.lineage_id) == stored


def test_blob_path_needs_a_file_blob_store() -> None:
    with fs.open("memory://") as reg:  # blobs in memory
        ref = reg.put_blob(b"in memory")
        with pytest.raises(fs.ValidationError):
            reg.blob_path(ref)
        assert reg.read_blob(ref) == b"in memory"


def test_typed_errors_are_also_builtin_errors() -> None:
    assert issubclass(fs.ValidationError, ValueError)
    assert issubclass(fs.NotFoundError, LookupError)
    assert issubclass(fs.UnknownEntityTypeError, fs.NotFoundError)
    assert issubclass(fs.ConfigError, ValueError)
    assert issubclass(fs.SchemaVersionError, fs.ConfigError)
    assert issubclass(fs.StoreClosedError, RuntimeError)
    for err in (
        fs.ValidationError,
        fs.ConflictError,
        fs.NotFoundError,
        fs.IntegrityError,
        fs.ConfigError,
        fs.StoreClosedError,
    ):
        assert issubclass(err, fs.ForsetiError)


def test_missing_fields_are_validation_errors_naming_them() -> None:
    cases = {
        fs.ModelEntity: {"name"},
        fs.CheckpointEntity: {"run", "model", "step", "weights"},
        fs.TrainingStageEntity: {"name", "kind"},
    }
    for cls, required in cases.items():
        with pytest.raises(fs.ValidationError) as info:
            cls()
        assert {e["loc"][0] for e in info.value.errors} == required


def test_integers_beyond_64_bits_are_refused_and_nothing_is_written(
    reg: fs.EntityRegistry, seeded: Seed, fresh_snapshot: Callable[[Seed], dict[str, Any]]
) -> None:
    """The store encodes state as msgpack (64-bit ints); a larger int must be a ValidationError."""
    before = fresh_snapshot(seeded)
    with pytest.raises(fs.ValidationError):
        reg.add(fs.ConfigEntity(name="huge", params={"seed": 2**64}))
    with pytest.raises(fs.ValidationError):
        reg.commit(seeded.config.evolve(params={"seed": -(2**63) - 1}))
    assert fresh_snapshot(seeded) == before


# -- corrupted rows ---------------------------------------------------------------------------


def _pg_dsn_and_schema(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    schema = parse_qs(parts.query)["schema"][0]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), schema


def _pg_execute(url: str, sql: str, *args: Any) -> None:
    import asyncpg

    dsn, schema = _pg_dsn_and_schema(url)

    async def run() -> None:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            status = await conn.execute(sql, *args)
            assert not status.endswith(" 0"), f"{sql!r} changed no row"
        finally:
            await conn.close()

    asyncio.run(run())


def _fetch_row(url: str, lineage_id: UUID, version: int) -> tuple[bytes, str]:
    if url.startswith("sqlite"):
        with sqlite3.connect(urlsplit(url).path[1:]) as db:
            row = db.execute(
                "SELECT state, state_hash FROM entity_versions WHERE lineage_id=? AND version=?",
                (lineage_id.hex, version),
            ).fetchone()
        db.close()
        return bytes(row[0]), row[1]
    import asyncpg

    dsn, schema = _pg_dsn_and_schema(url)

    async def run() -> tuple[bytes, str]:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            row = await conn.fetchrow(
                "SELECT state, state_hash FROM entity_versions WHERE lineage_id=$1 AND version=$2",
                lineage_id,
                version,
            )
            return bytes(row[0]), row[1]
        finally:
            await conn.close()

    return asyncio.run(run())


def _update_row(url: str, lineage_id: UUID, version: int, **columns: Any) -> None:
    """Change columns of one ``entity_versions`` row behind Forseti's back."""
    names = list(columns)
    if url.startswith("sqlite"):
        columns = {k: v.hex if isinstance(v, UUID) else v for k, v in columns.items()}
        with sqlite3.connect(urlsplit(url).path[1:]) as db:
            cur = db.execute(
                f"UPDATE entity_versions SET {', '.join(f'{n}=?' for n in names)} "
                "WHERE lineage_id=? AND version=?",
                (*columns.values(), lineage_id.hex, version),
            )
            assert cur.rowcount == 1
        db.close()
        return
    sets = ", ".join(f"{n}=${i}" for i, n in enumerate(names, start=1))
    _pg_execute(
        url,
        f"UPDATE entity_versions SET {sets} WHERE lineage_id=${len(names) + 1} "
        f"AND version=${len(names) + 2}",
        *columns.values(),
        lineage_id,
        version,
    )


def _flip_byte(state: bytes) -> bytes:
    raw = bytearray(state)
    raw[len(raw) // 2] ^= 0x01
    return bytes(raw)


def _reencode(state: bytes, **changes: Any) -> tuple[bytes, str]:
    decoded = msgspec.msgpack.decode(state)
    decoded.update(changes)
    new = msgspec.msgpack.encode(decoded)
    return new, hashlib.sha256(new).hexdigest()


CORRUPTIONS: dict[str, Callable[[bytes, str], dict[str, Any]]] = {
    "flipped-byte": lambda state, h: {"state": _flip_byte(state)},
    "changed-hash": lambda state, h: {"state_hash": hashlib.sha256(b"other").hexdigest()},
    "truncated": lambda state, h: {"state": state[:-3]},
    "garbage-with-matching-hash": lambda state, h: {
        "state": b"\xc1garbage",
        "state_hash": hashlib.sha256(b"\xc1garbage").hexdigest(),
    },
    "invalid-state-with-matching-hash": lambda state, h: dict(
        zip(("state", "state_hash"), _reencode(state, hidden_size=-5), strict=True)
    ),
    "row-id-changed": lambda state, h: {"id": uuid4()},
    "state-of-another-version": lambda state, h: dict(
        zip(("state", "state_hash"), _reencode(state, id=str(uuid4())), strict=True)
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_row_is_an_integrity_error(
    persistent_url: str, tmp_path: Path, corruption: str
) -> None:
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as reg:
        m1 = reg.add(fs.ModelEntity(name="m", hidden_size=1))
        m2 = reg.commit(m1.evolve(hidden_size=2))
        other = reg.add(fs.ConfigEntity(name="untouched"))
    state, state_hash = _fetch_row(persistent_url, m1.lineage_id, 2)
    _update_row(persistent_url, m1.lineage_id, 2, **CORRUPTIONS[corruption](state, state_hash))
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as fresh:
        with pytest.raises(fs.IntegrityError):
            fresh.get(m1.lineage_id)
        with pytest.raises(fs.IntegrityError):
            fresh.get(m1.lineage_id, version=2)
        # a row whose id column was changed no longer answers to the old id at all
        by_id_error = fs.NotFoundError if corruption == "row-id-changed" else fs.IntegrityError
        with pytest.raises(by_id_error):
            fresh.get_by_id(m2.id)
        with pytest.raises(fs.IntegrityError):
            fresh.history(m1.lineage_id)
        # the rest of the store still reads
        assert fresh.get(m1.lineage_id, version=1) == m1
        assert fresh.get(other.lineage_id) == other
        assert fresh.find(fs.ConfigEntity) == [other]


def test_row_of_an_unregistered_type(persistent_url: str, tmp_path: Path) -> None:
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as reg:
        m = reg.add(fs.ModelEntity(name="m"))
    _update_row(persistent_url, m.lineage_id, 1, type="plugin.GoneAway")
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as fresh:
        with pytest.raises(fs.UnknownEntityTypeError) as info:
            fresh.get(m.lineage_id)
        assert "plugin.GoneAway" in str(info.value)
        with pytest.raises(fs.UnknownEntityTypeError):
            fresh.get_by_id(m.id)


def test_row_relabelled_as_another_known_type(persistent_url: str, tmp_path: Path) -> None:
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as reg:
        m = reg.add(fs.ModelEntity(name="m", hidden_size=4))
    _update_row(persistent_url, m.lineage_id, 1, type="forseti.Checkpoint")
    with fs.open(persistent_url, blob_dir=tmp_path / "b") as fresh:
        with pytest.raises(fs.IntegrityError):
            fresh.get(m.lineage_id)


# -- URLs and schema versions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "nope://",
        "http://example.com/db",
        "",
        "   ",
        "no-scheme-at-all",
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///{tmp}/x.db?colour=red",
        "sqlite:///{tmp}/x.db?timeout=abc",
        "sqlite:///{tmp}/x.db?timeout=0",
        "sqlite:///{tmp}/x.db?timeout=-1",
        "memory://?colour=red",
    ],
)
def test_bad_urls_are_config_errors(url: str, tmp_path: Path) -> None:
    url = url.replace("{tmp}", str(tmp_path))
    with pytest.raises(fs.ConfigError):
        fs.open(url, blob_dir=tmp_path / "b")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("url", [None, 42, b"sqlite:///x.db"])
def test_non_string_urls_are_config_errors(url: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("FORSETI_URL", raising=False)
    if url is None:
        monkeypatch.setenv("FORSETI_URL", "nope://")
    with pytest.raises(fs.ConfigError):
        fs.open(url, blob_dir=tmp_path / "b")


@pytest.mark.postgres
def test_unknown_postgres_option_is_a_config_error(pg_server: Any) -> None:
    with pytest.raises(fs.ConfigError):
        fs.open(pg_server.new_schema_url("t_bad_option") + "&colour=red")
    with pytest.raises(fs.ConfigError):
        fs.open(pg_server.url + "?schema=bad-name")


def test_newer_schema_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    url = f"sqlite:///{path}"
    with fs.open(url, blob_dir=tmp_path / "b") as reg:
        m = reg.add(fs.ModelEntity(name="m"))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE forseti_schema SET version=?", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(fs.SchemaVersionError) as info:
        fs.open(url, blob_dir=tmp_path / "b")
    assert str(SCHEMA_VERSION + 1) in str(info.value)
    # the refusal did not touch the file: still the newer schema, data intact
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM forseti_schema").fetchone()[0] == SCHEMA_VERSION + 1
        assert db.execute("SELECT count(*) FROM entity_versions").fetchone()[0] == 1
    db.close()
    # going back to the known version opens it again
    with sqlite3.connect(path) as db:
        db.execute("UPDATE forseti_schema SET version=?", (SCHEMA_VERSION,))
    db.close()
    with fs.open(url, blob_dir=tmp_path / "b") as reg:
        assert reg.get(m.lineage_id) == m


@pytest.mark.postgres
def test_newer_schema_refuses_to_open_on_postgres(pg_server: Any, tmp_path: Path) -> None:
    url = pg_server.new_schema_url(f"t_{uuid4().hex[:12]}")
    with fs.open(url, blob_dir=tmp_path / "b") as reg:
        reg.add(fs.ModelEntity(name="m"))
    _pg_execute(url, "UPDATE forseti_schema SET version=$1", SCHEMA_VERSION + 1)
    with pytest.raises(fs.SchemaVersionError):
        fs.open(url, blob_dir=tmp_path / "b")
