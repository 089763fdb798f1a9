"""Entity <-> stored record: encoding, hashing, and verified decoding."""

from __future__ import annotations

import hashlib

import msgspec
from pydantic_core import to_jsonable_python

from ..entities import Entity, entity_type
from ..errors import IntegrityError, ValidationError
from .records import VersionRecord

__all__ = ["encode_version", "decode_version"]

# python-mode dumps keep floats (inf included), UUIDs and datetimes for msgspec to encode natively;
# anything else a user-defined field holds goes through pydantic's JSON conversion
_encode = msgspec.msgpack.Encoder(enc_hook=to_jsonable_python).encode
_decode = msgspec.msgpack.decode


def encode_version(entity: Entity, op_id: str | None = None) -> VersionRecord:
    """The record stored for ``entity``: msgpack state plus its sha256."""
    try:
        state = _encode(entity.__pydantic_serializer__.to_python(entity))
    except (OverflowError, TypeError, ValueError) as exc:
        raise ValidationError(
            f"{type(entity).__name__} version {entity.version} cannot be stored: {exc}"
        ) from None
    name = getattr(entity, "name", None)
    if not isinstance(name, str):
        name = None
    elif "\x00" in name:
        raise ValidationError(f"{type(entity).__name__}.name contains a NUL character")
    return VersionRecord(
        id=entity.id,
        lineage_id=entity.lineage_id,
        version=entity.version,
        previous_id=entity.previous_id,
        type_name=type(entity).entity_type,
        name=name,
        state=state,
        state_hash=hashlib.sha256(state).hexdigest(),
        created_at=entity.created_at,
        op_id=op_id,
    )


def decode_version(rec: VersionRecord) -> Entity:
    """Rebuild the entity of a stored record, verifying its hash and its identity columns.

    Raises :class:`IntegrityError` for a row whose bytes do not match their hash or whose content
    disagrees with its key, and :class:`~forseti.errors.UnknownEntityTypeError` for a type that is
    not registered in this process.
    """
    where = f"version {rec.version} of lineage {rec.lineage_id}"
    if hashlib.sha256(rec.state).hexdigest() != rec.state_hash:
        raise IntegrityError(f"{where} is corrupted: its state does not match its stored hash")
    cls = entity_type(rec.type_name)
    try:
        state = _decode(rec.state)
        entity = cls.from_state(state)
    except (msgspec.DecodeError, ValidationError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{where} no longer decodes as {rec.type_name}: {exc}") from None
    if (entity.id, entity.lineage_id, entity.version) != (rec.id, rec.lineage_id, rec.version):
        raise IntegrityError(f"{where} is corrupted: its state names a different version")
    return entity
