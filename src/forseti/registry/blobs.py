"""Content-addressed blob storage for tensors and other large payloads.

Blobs are named by the sha256 of their content, written atomically (temporary file, fsync,
rename) and verified against their :class:`~forseti.entities.BlobRef` on every read. A store
given a :class:`~forseti.registry.encryption.BlobCipher` encrypts what it stores (AES-GCM) and
records ``encrypted=True`` in the ref; the ref's hash stays the plaintext's.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

from ..entities import BlobRef
from ..errors import DecryptionError, IntegrityError, NotFoundError, ValidationError
from .encryption import ENCRYPTED_SUFFIX, BlobCipher

__all__ = ["BlobStore", "BlobWriter", "FileBlobStore", "MemoryBlobStore", "BlobSource"]

logger = logging.getLogger(__name__)

BlobSource = bytes | bytearray | memoryview | str | os.PathLike[str]
_CHUNK = 1 << 20


def _mismatch(ref: BlobRef, sha: str, size: int) -> IntegrityError:
    return IntegrityError(
        f"blob {ref.sha256} is corrupted or tampered with: expected {ref.size} bytes with that "
        f"sha256, found {size} bytes hashing to {sha}"
    )


class BlobWriter:
    """A blob being streamed into a store: ``write()`` its bytes inside ``with store.writer()``;
    when the block ends it is hashed, fsynced and stored (``.ref``), or discarded on an error.

    Content is hashed as it is written (large chunks in a second thread, overlapping the write),
    and encrypted on the way when the store has a cipher: plaintext never reaches the disk.
    """

    def __init__(
        self,
        out: BinaryIO,
        format: str,
        cipher: BlobCipher | None,
        install: Callable[[BlobRef], None],
    ) -> None:
        BlobRef(sha256="0" * 64, size=0, format=format)  # validates the format name
        self._out = out
        self._format = format
        self._install = install
        self._hash = hashlib.sha256()
        self._size = 0
        self._enc = cipher.encryptor() if cipher is not None else None
        if self._enc is not None:
            out.write(self._enc.header)
        self._pool: ThreadPoolExecutor | None = None
        self.ref: BlobRef | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` to the blob; returns its length."""
        view = memoryview(data).cast("B")
        pending = None
        if len(view) >= _CHUNK:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1)
            pending = self._pool.submit(self._hash.update, view)
        else:
            self._hash.update(view)
        self._out.write(self._enc.update(view) if self._enc is not None else view)
        if pending is not None:
            pending.result()
        self._size += len(view)
        return len(view)

    def _finish(self) -> BlobRef:
        sha = self._hash.hexdigest()
        if self._enc is not None:
            self._out.write(self._enc.finish(sha))
        self._out.flush()
        if hasattr(self._out, "fileno"):
            try:
                os.fsync(self._out.fileno())
            except io.UnsupportedOperation:
                pass
        ref = BlobRef(
            sha256=sha, size=self._size, format=self._format, encrypted=self._enc is not None
        )
        self._install(ref)
        self.ref = ref
        return ref

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._out.close()


class BlobStore(ABC):
    """Where blob bytes live. ``put`` is idempotent: the same content gives the same ref."""

    cipher: BlobCipher | None = None

    def _cipher_for(self, ref: BlobRef) -> BlobCipher:
        if self.cipher is None:
            raise DecryptionError(
                f"blob {ref.sha256[:12]}… is encrypted: open the registry with its blob_key"
            )
        return self.cipher

    @property
    @abstractmethod
    def tmp_dir(self) -> Path:
        """Where to write a file that :meth:`adopt` will take in (same file system)."""

    def adopt(
        self, path: str | os.PathLike[str], format: str = "bin", *, sha256: str | None = None
    ) -> BlobRef:
        """Store a finished file's content and delete the file (moved when possible).

        ``sha256`` is the file's hash when the caller computed it while writing the file (the
        store then skips hashing it again); it must be right: reads verify it.
        """
        try:
            return self.put(path, format)
        finally:
            Path(path).unlink(missing_ok=True)

    @abstractmethod
    def writer(self, format: str = "bin") -> AbstractContextManager[BlobWriter]:
        """Stream a blob in: ``with store.writer("safetensors") as w: w.write(...)``; then
        ``w.ref``. Nothing is stored if the block raises."""

    def put(self, source: BlobSource, format: str = "bin") -> BlobRef:
        """Store bytes, or the content of a file path; return its ref."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            with self.writer(format) as w:
                w.write(source)
        elif isinstance(source, (str, os.PathLike)):
            src = Path(source)
            if not src.is_file():
                raise NotFoundError(f"cannot store {src}: no such file")
            with src.open("rb") as fh, self.writer(format) as w:
                while chunk := fh.read(8 * _CHUNK):
                    w.write(chunk)
        else:
            raise ValidationError(f"a blob is bytes or a file path, not {type(source).__name__}")
        assert w.ref is not None
        return w.ref

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

    def __init__(self, cipher: BlobCipher | None = None) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.cipher = cipher
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def tmp_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="forseti-blobs-")
        return Path(self._tmp.name)

    @staticmethod
    def _key(sha: str, encrypted: bool) -> str:
        return sha + ENCRYPTED_SUFFIX if encrypted else sha

    @contextmanager
    def writer(self, format: str = "bin") -> Iterator[BlobWriter]:
        buf = io.BytesIO()

        def install(ref: BlobRef) -> None:
            with self._lock:
                self._data.setdefault(self._key(ref.sha256, ref.encrypted), buf.getvalue())

        w = BlobWriter(buf, format, self.cipher, install)
        try:
            yield w
            w._finish()
        finally:
            w._close()

    def open(self, ref: BlobRef) -> BinaryIO:
        data = self._data.get(self._key(ref.sha256, ref.encrypted))
        if data is None:
            raise NotFoundError(f"no blob {ref.sha256} in this store")
        if ref.encrypted:
            what = f"blob {ref.sha256[:12]}…"
            plain = self._cipher_for(ref).decrypt(
                io.BytesIO(data), len(data), ref.sha256, ref.size, what
            )
            return io.BytesIO(plain)
        sha = hashlib.sha256(data).hexdigest()
        if sha != ref.sha256 or len(data) != ref.size:
            raise _mismatch(ref, sha, len(data))
        return io.BytesIO(data)

    def exists(self, ref: BlobRef) -> bool:
        return self._key(ref.sha256, ref.encrypted) in self._data


class FileBlobStore(BlobStore):
    """Blobs as read-only files ``<root>/<sha[:2]>/<sha>`` (``<sha>.enc`` when encrypted)."""

    def __init__(self, root: str | os.PathLike[str], cipher: BlobCipher | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.cipher = cipher

    @property
    def tmp_dir(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def path(self, ref: BlobRef) -> Path:
        """Where the blob's file is (or would be); not verified."""
        name = ref.sha256 + ENCRYPTED_SUFFIX if ref.encrypted else ref.sha256
        return self.root / ref.sha256[:2] / name

    @contextmanager
    def writer(self, format: str = "bin") -> Iterator[BlobWriter]:
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="put-")
        w = BlobWriter(
            os.fdopen(fd, "wb"), format, self.cipher, lambda ref: self._install(tmp_name, ref)
        )
        try:
            yield w
            w._finish()
        finally:
            w._close()
            Path(tmp_name).unlink(missing_ok=True)  # gone already once installed

    def adopt(
        self, path: str | os.PathLike[str], format: str = "bin", *, sha256: str | None = None
    ) -> BlobRef:
        """Move a finished file into the store (hashed on the way unless ``sha256`` is given;
        streamed through the cipher, then deleted, if the store encrypts)."""
        src = Path(path)
        if self.cipher is not None or src.parent.resolve() != self.tmp_dir:
            return super().adopt(src, format)
        try:
            with src.open("rb") as fh:
                if sha256 is None:
                    sha, size = _digest(fh)
                else:
                    sha, size = sha256, os.fstat(fh.fileno()).st_size
                os.fsync(fh.fileno())
            ref = BlobRef(sha256=sha, size=size, format=format)
            self._install(str(src), ref)
            return ref
        finally:
            src.unlink(missing_ok=True)

    def _install(self, tmp_name: str, ref: BlobRef) -> None:
        final = self.path(ref)
        if self._intact(final, ref):
            os.unlink(tmp_name)  # same content already stored
        else:  # absent, or a damaged copy that this put repairs
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, final)

    def _intact(self, path: Path, ref: BlobRef) -> bool:
        try:
            with path.open("rb") as fh:
                if not ref.encrypted:
                    return _digest(fh) == (ref.sha256, ref.size)
                self._cipher_for(ref).decrypt(fh, path.stat().st_size, ref.sha256, ref.size, "")
                return True
        except FileNotFoundError:
            return False
        except DecryptionError:  # another key's copy: replacing it would lock that key out
            raise
        except IntegrityError:  # damaged: this put repairs it
            return False

    def open(self, ref: BlobRef) -> BinaryIO:
        path = self.path(ref)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"no blob {ref.sha256} under {self.root}") from None
        try:
            if ref.encrypted:
                what = f"blob {ref.sha256[:12]}… ({path})"
                size = os.fstat(fh.fileno()).st_size
                plain = self._cipher_for(ref).decrypt(fh, size, ref.sha256, ref.size, what)
                fh.close()
                return io.BytesIO(plain)
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
    """sha256 and size of what is left in ``fh``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
