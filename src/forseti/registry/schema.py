"""The store schema, defined once with SQLAlchemy Core and rendered as DDL for each dialect.

Constraint names are part of the contract: stores tell a version conflict (``pk_entity_versions``)
from a replayed operation (``pk_operations``) by the name the database reports.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

__all__ = ["SCHEMA_VERSION", "metadata", "ddl_statements"]

SCHEMA_VERSION = 1
"""Bumped whenever the layout changes; a store written by a newer schema refuses to open."""

metadata = MetaData()

_seq_type = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is the rowid

schema_info = Table(
    "forseti_schema",
    metadata,
    Column("singleton", Integer, autoincrement=False, nullable=False),
    Column("version", Integer, nullable=False),
    PrimaryKeyConstraint("singleton", name="pk_forseti_schema"),
)

lineages = Table(
    "lineages",
    metadata,
    Column("lineage_id", Uuid, nullable=False),
    Column("kind", Text, nullable=False),
    Column("name", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("lineage_id", name="pk_lineages"),
)

entity_versions = Table(
    "entity_versions",
    metadata,
    Column("lineage_id", Uuid, nullable=False),
    Column("version", Integer, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("previous_id", Uuid),
    Column("op_id", Text),
    Column("type", Text, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("state_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("lineage_id", "version", name="pk_entity_versions"),
    UniqueConstraint("id", name="uq_entity_versions_id"),
    ForeignKeyConstraint(["lineage_id"], ["lineages.lineage_id"], name="fk_entity_versions_lineage"),
)

Index(
    "ix_entity_versions_op_id",
    entity_versions.c.op_id,
    sqlite_where=entity_versions.c.op_id.isnot(None),
    postgresql_where=entity_versions.c.op_id.isnot(None),
)

operations = Table(
    "operations",
    metadata,
    Column("op_id", Text, nullable=False),
    Column("merged_into", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("op_id", name="pk_operations"),
)
"""One row per committed operation id: the idempotency check (a replay hits the primary key)."""

provenance_edges = Table(
    "provenance_edges",
    metadata,
    Column("src_id", Uuid, nullable=False),
    Column("dst_id", Uuid, nullable=False),
    Column("relation", Text, nullable=False),
    PrimaryKeyConstraint("src_id", "dst_id", "relation", name="pk_provenance_edges"),
)
Index("ix_provenance_edges_dst", provenance_edges.c.dst_id)

aliases = Table(
    "aliases",
    metadata,
    Column("lineage_id", Uuid, nullable=False),
    Column("alias", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("revision", Integer, nullable=False),
    PrimaryKeyConstraint("lineage_id", "alias", name="pk_aliases"),
    ForeignKeyConstraint(["lineage_id"], ["lineages.lineage_id"], name="fk_aliases_lineage"),
)

events = Table(
    "events",
    metadata,
    Column("seq", _seq_type, autoincrement=True, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("lineage_id", Uuid),
    Column("version", Integer),
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("seq", name="pk_events"),
    UniqueConstraint("event_id", name="uq_events_event_id"),
)
Index("ix_events_topic_seq", events.c.topic, events.c.seq)
Index("ix_events_lineage_seq", events.c.lineage_id, events.c.seq)

tracking = Table(
    "tracking",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("consumer", name="pk_tracking"),
)

metrics = Table(
    "metrics",
    metadata,
    Column("run_lineage_id", Uuid, nullable=False),
    Column("key", Text, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("run_lineage_id", "key", "step", name="pk_metrics"),
)

Index("ix_lineages_kind_name", lineages.c.kind, lineages.c.name)


def ddl_statements(dialect_name: str) -> list[str]:
    """``CREATE TABLE/INDEX IF NOT EXISTS`` statements for ``"sqlite"`` or ``"postgresql"``."""
    dialects = {"sqlite": sqlite.dialect, "postgresql": postgresql.dialect}
    dialect = dialects[dialect_name]()
    out: list[str] = []
    for table in metadata.sorted_tables:
        create = CreateTable(table, if_not_exists=True)
        out.append(str(create.compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            out.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)).strip())
    return out
