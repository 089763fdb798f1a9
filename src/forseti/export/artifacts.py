"""What every exporter shares: finding the checkpoint, staging the file, recording the export.

An export is written to a staging file beside the blob store (same file system), moved into the
content-addressed store (hashed on the way), recorded as an :class:`ExportEntity` derived from
its checkpoint, and — when asked — copied out to a path of the caller's choosing, atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..entities import BlobRef, CheckpointEntity, Entity, EntityRef
from ..errors import ValidationError
from .entities import ExportEntity, ExportFormat

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = [
    "CheckpointLike",
    "resolve_checkpoint",
    "staging_file",
    "record_export",
    "write_out",
    "check_out",
]

CheckpointLike = CheckpointEntity | EntityRef | UUID | str
"""A checkpoint, or what names one: a ref, a lineage id (its head), ``"LINEAGE@VERSION"``."""


def resolve_checkpoint(reg: EntityRegistry, ref: CheckpointLike | Entity) -> CheckpointEntity:
    """The :class:`CheckpointEntity` ``ref`` names (ValidationError if it names something else)."""
    from ..trees.discover import resolve

    entity = resolve(reg, ref)
    if not isinstance(entity, CheckpointEntity):
        raise ValidationError(f"{ref} is a {type(entity).__name__}, not a checkpoint")
    return entity


@contextmanager
def staging_file(reg: EntityRegistry, suffix: str) -> Iterator[Path]:
    """A fresh path beside the blob store to write an export to; removed on the way out unless
    it was moved into the store (``reg.put_blob(path, move=True)``)."""
    fd, name = tempfile.mkstemp(dir=reg.blobs.tmp_dir, prefix="export-", suffix=suffix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def check_out(out: str | os.PathLike[str] | None) -> Path | None:
    """Validate an output path before any work is done (ValidationError if it cannot be one)."""
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise ValidationError(f"out must be a file path, got {type(out).__name__}")
    target = Path(out).expanduser()
    if target.is_dir():
        raise ValidationError(f"{target} is a directory; give the file to write")
    if not target.parent.is_dir():
        raise ValidationError(f"cannot write {target}: {target.parent} does not exist")
    return target


def write_out(reg: EntityRegistry, blob: BlobRef, out: str | os.PathLike[str]) -> Path:
    """Copy a verified blob to ``out`` atomically (a temporary file renamed into place)."""
    target = check_out(out)
    assert target is not None
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with reg.open_blob(blob) as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return target.resolve()


def record_export(
    reg: EntityRegistry,
    checkpoint: CheckpointEntity,
    format: ExportFormat,
    artifact: BlobRef,
    *,
    dtype: str = "",
    checks: Mapping[str, float] | None = None,
    options: Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> ExportEntity:
    """Copy the artifact to ``out`` (if given) and store the :class:`ExportEntity` for it."""
    path = "" if out is None else str(write_out(reg, artifact, out))
    entity = ExportEntity(
        checkpoint=checkpoint.ref,
        format=format,
        artifact=artifact,
        dtype=dtype,
        path=path,
        checks=dict(checks or {}),
        options=dict(options or {}),
        derived_from=(checkpoint.ref,),
    )
    return reg.add(entity)
