"""Content-addressed blob storage for tensors and other large payloads.

Blobs are named by the sha256 of their content, written atomically (temporary file, fsync,
rename) and verified against their :class:`~forseti.entities.BlobRef` on every read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO

from ..entities import BlobRef
from ..errors import IntegrityError, NotFoundError, ValidationError

__all__ = ["BlobStore", "FileBlobStore", "MemoryBlobStore", "BlobSource"]

logger = logging.getLogger(__name__)

BlobSource = bytes | bytearray | memoryview | str | os.PathLike[str]
_CHUNK = 1 << 20


def _mismatch(ref: BlobRef, sha: str, size: int) -> IntegrityError:
    return IntegrityError(
        f"blob {ref.sha256} is corrupted or tampered with: expected {ref.size} bytes with that "
        f"sha256, found {size} bytes hashing to {sha}"
    )


class BlobStore(ABC):
    """Where blob bytes live. ``put`` is idempotent: the same content gives the same ref."""

    @abstractmethod
    def put(self, source: BlobSource, format: str = "bin") -> BlobRef:
        """Store bytes, or the content of a file path; return its ref."""

    @abstractmethod
    def open(self, ref: BlobRef) -> BinaryIO:
        """A readable binary file of the blob, verified against ``ref`` before it is returned."""

    def read(self, ref: BlobRef) -> bytes:
        """The blob's bytes, verified against ``ref``."""
        with self.open(ref) as fh:
            return fh.read()

    @abstractmethod
    def exists(self, ref: BlobRef) -> bool:
        """Whether content with this hash is stored (without verifying it)."""


class MemoryBlobStore(BlobStore):
    """Blobs in a dict; for ``memory://`` registries."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, source: BlobSource, format: str = "bin") -> BlobRef:
        data = _read_source(source)
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._data.setdefault(sha, data)
        return BlobRef(sha256=sha, size=len(data), format=format)

    def open(self, ref: BlobRef) -> BinaryIO:
        data = self._data.get(ref.sha256)
        if data is None:
            raise NotFoundError(f"no blob {ref.sha256} in this store")
        sha = hashlib.sha256(data).hexdigest()
        if sha != ref.sha256 or len(data) != ref.size:
            raise _mismatch(ref, sha, len(data))
        return io.BytesIO(data)

    def exists(self, ref: BlobRef) -> bool:
        return ref.sha256 in self._data


class FileBlobStore(BlobStore):
    """Blobs as read-only files ``<root>/<sha[:2]>/<sha>``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def path(self, ref: BlobRef) -> Path:
        """Where the blob's file is (or would be); not verified."""
        return self.root / ref.sha256[:2] / ref.sha256

    def put(self, source: BlobSource, format: str = "bin") -> BlobRef:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, (bytes, bytearray, memoryview)):
                    view = memoryview(source).cast("B")
                    digest.update(view)
                    out.write(view)
                    size = len(view)
                else:
                    src = Path(source)
                    if not src.is_file():
                        raise NotFoundError(f"cannot store {src}: no such file")
                    with src.open("rb") as fh:
                        while chunk := fh.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            ref = BlobRef(sha256=digest.hexdigest(), size=size, format=format)
            final = self.path(ref)
            if self._intact(final, ref):
                os.unlink(tmp_name)  # same content already stored
            else:  # absent, or a damaged copy that this put repairs
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o444)
                os.replace(tmp_name, final)
            return ref
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    @staticmethod
    def _intact(path: Path, ref: BlobRef) -> bool:
        try:
            with path.open("rb") as fh:
                return _digest(fh) == (ref.sha256, ref.size)
        except FileNotFoundError:
            return False

    def open(self, ref: BlobRef) -> BinaryIO:
        path = self.path(ref)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"no blob {ref.sha256} under {self.root}") from None
        try:
            sha, size = _digest(fh)
            if (sha, size) != (ref.sha256, ref.size):
                raise _mismatch(ref, sha, size)
            fh.seek(0)
            return fh
        except BaseException:
            fh.close()
            raise

    def exists(self, ref: BlobRef) -> bool:
        return self.path(ref).is_file()


def _digest(fh: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _read_source(source: BlobSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise NotFoundError(f"cannot store {path}: no such file")
        return path.read_bytes()
    raise ValidationError(
        f"a blob is bytes or a file path, not {type(source).__name__}"
    )
