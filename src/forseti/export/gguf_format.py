"""GGUF v3 at the byte level: encode a header, scan one with every bound checked, the self-digest.

Forseti's GGUF files carry ``forseti.sha256`` as their *first* key, so its 64 hex characters sit at
a fixed offset (:data:`DIGEST_AT`). It is the sha256 of the whole file with those 64 bytes read
as ``"0" * 64``: the writer hashes while it streams and patches the value in at the end; a
verifier recomputes it. :func:`scan_header` walks a header without trusting any count or length
in it, so a truncated or hostile file is an :class:`IntegrityError` before anything else parses it.
"""

from __future__ import annotations

import hashlib
import math
import queue
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, Self

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import IntegrityError
from .gguf_layout import DIGEST_KEY, KV

__all__ = [
    "ALIGNMENT",
    "DIGEST_AT",
    "HashPipe",
    "HeaderScan",
    "TensorInfo",
    "encode_header",
    "plan_tensors",
    "scan_header",
    "self_digest",
]

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32
ZERO_DIGEST = b"0" * 64
DIGEST_AT = 24 + 8 + len(DIGEST_KEY) + 4 + 8
"""Byte offset of the digest's 64 characters: after magic, version, counts, key, type, length."""

_V = GGUFValueType
_SCALAR = {
    _V.UINT8: "<B",
    _V.INT8: "<b",
    _V.UINT16: "<H",
    _V.INT16: "<h",
    _V.UINT32: "<I",
    _V.INT32: "<i",
    _V.FLOAT32: "<f",
    _V.BOOL: "<?",
    _V.UINT64: "<Q",
    _V.INT64: "<q",
    _V.FLOAT64: "<d",
}
_CHUNK = 8 << 20


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's entry: name, numpy-order shape, GGML type, offset in the data section, size."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    offset: int
    nbytes: int


@dataclass(frozen=True)
class HeaderScan:
    """What :func:`scan_header` checked: the tensors, where data starts, the recorded digest."""

    version: int
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    size: int
    digest: str | None


def _align(n: int, to: int = ALIGNMENT) -> int:
    return -(-n // to) * to


def tensor_nbytes(shape: Sequence[int], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of ``shape`` (numpy order) stored as ``qtype``."""
    block, size = GGML_QUANT_SIZES[qtype]
    if shape and shape[-1] % block:
        raise IntegrityError(f"a row of {shape[-1]} is not whole {qtype.name} blocks of {block}")
    return math.prod(shape) // block * size


def plan_tensors(
    specs: Sequence[tuple[str, tuple[int, ...], GGMLQuantizationType]],
) -> list[TensorInfo]:
    """Aligned data-section offsets for ``(name, shape, type)`` in order."""
    out, offset = [], 0
    for name, shape, qtype in specs:
        nbytes = tensor_nbytes(shape, qtype)
        out.append(TensorInfo(name, shape, qtype, offset, nbytes))
        offset = _align(offset + nbytes)
    return out


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: GGUFValueType, value: Any) -> bytes:
    if vtype == _V.STRING:
        return _string(value)
    if vtype in _SCALAR:
        return struct.pack(_SCALAR[vtype], value)
    item_type, items = value
    head = struct.pack("<IQ", int(item_type), len(items))
    if item_type == _V.STRING:
        return head + b"".join(_string(s) for s in items)
    dtype = np.dtype(_SCALAR[item_type])
    return head + np.asarray(items, dtype=dtype).tobytes()


def encode_header(kvs: Sequence[KV], tensors: Sequence[TensorInfo]) -> bytes:
    """Magic, version, counts, a zeroed ``forseti.sha256`` then ``kvs``, tensor infos, padding."""
    parts = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(kvs) + 1)]
    parts.append(_string(DIGEST_KEY) + struct.pack("<I", int(_V.STRING)) + _string("0" * 64))
    for key, vtype, value in kvs:
        parts.append(_string(key) + struct.pack("<I", int(vtype)) + _value(vtype, value))
    for t in tensors:
        dims = tuple(reversed(t.shape))  # GGUF lists the fastest-varying dimension first
        parts.append(
            _string(t.name)
            + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, int(t.qtype), t.offset)
        )
    header = b"".join(parts)
    return header + bytes(_align(len(header)) - len(header))


class _Cursor:
    """Reads a header front to back; any read past the end is an IntegrityError."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size, self.pos = f, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise IntegrityError(f"truncated GGUF: needs {n} bytes at offset {self.pos}")
        raw = self.f.read(n)
        if len(raw) != n:
            raise IntegrityError(f"truncated GGUF: short read at offset {self.pos}")
        self.pos += n
        return raw

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise IntegrityError(f"truncated GGUF: needs {n} bytes at offset {self.pos}")
        self.pos += n
        self.f.seek(self.pos)

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError(
                f"GGUF string at offset {self.pos - len(raw)} is not UTF-8"
            ) from None

    def vtype(self) -> GGUFValueType:
        raw = self.unpack("<I")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise IntegrityError(
                f"unknown GGUF value type {raw} at offset {self.pos - 4}"
            ) from None

    def value(self, vtype: GGUFValueType, depth: int = 0) -> Any:
        """Skip a value, bounds-checked; return it only when it is a string or u32."""
        if vtype == _V.STRING:
            return self.string()
        if vtype in _SCALAR:
            raw = self.take(struct.calcsize(_SCALAR[vtype]))
            return struct.unpack(_SCALAR[vtype], raw)[0] if vtype == _V.UINT32 else None
        item_type, count = self.vtype(), self.unpack("<Q")
        if item_type == _V.ARRAY and depth > 0:
            raise IntegrityError("GGUF arrays nested more than once")
        if item_type in _SCALAR:
            self.skip(count * struct.calcsize(_SCALAR[item_type]))
            return None
        if count * 8 > self.size - self.pos:  # every string or array item takes ≥ 8 bytes
            raise IntegrityError(f"truncated GGUF: an array of {count} items at offset {self.pos}")
        for _ in range(count):
            self.value(item_type, depth + 1)
        return None


def scan_header(f: BinaryIO, size: int) -> HeaderScan:
    """Check a GGUF header against the file's ``size``: magic, version, every count and length,
    value types, tensor types, shapes, alignment, and that all tensor data lies inside the file.
    """
    f.seek(0)
    cur = _Cursor(f, size)
    if size < 24 or cur.take(4) != MAGIC:
        raise IntegrityError("not a GGUF file (no GGUF magic)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", cur.take(20))
    if version not in (2, 3):
        raise IntegrityError(f"unsupported GGUF version {version}")
    if n_kv * 13 + n_tensors * 25 > size:  # the smallest possible entries
        raise IntegrityError(f"GGUF counts ({n_tensors} tensors, {n_kv} keys) exceed the file")
    keys: set[str] = set()
    digest: str | None = None
    alignment = ALIGNMENT
    for i in range(n_kv):
        key, vtype = cur.string(), cur.vtype()
        if key in keys:
            raise IntegrityError(f"duplicate GGUF key {key!r}")
        keys.add(key)
        start = cur.pos
        value = cur.value(vtype)
        if key == DIGEST_KEY:
            if i != 0 or vtype != _V.STRING or start + 8 != DIGEST_AT or len(value) != 64:
                raise IntegrityError(f"malformed {DIGEST_KEY} entry")
            digest = value
        elif key == "general.alignment":
            if vtype != _V.UINT32 or value <= 0 or value & (value - 1):
                raise IntegrityError("general.alignment must be a power of two (u32)")
            alignment = value
    infos = []
    for _ in range(n_tensors):
        name, n_dims = cur.string(), cur.unpack("<I")
        if not 1 <= n_dims <= 4:
            raise IntegrityError(f"tensor {name!r} has {n_dims} dimensions")
        dims = struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims))
        raw_type, offset = struct.unpack("<IQ", cur.take(12))
        try:
            qtype = GGMLQuantizationType(raw_type)
            GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise IntegrityError(f"tensor {name!r} has unknown type {raw_type}") from None
        shape = tuple(reversed(dims))
        if offset % alignment or math.prod(shape) > size * 64:
            raise IntegrityError(f"tensor {name!r} has a bad offset or shape")
        infos.append(TensorInfo(name, shape, qtype, offset, tensor_nbytes(shape, qtype)))
    data_offset = _align(cur.pos, alignment)
    end = data_offset
    for t in sorted(infos, key=lambda t: t.offset):
        if data_offset + t.offset < end:
            raise IntegrityError(f"tensor {t.name!r} overlaps another")
        end = data_offset + t.offset + t.nbytes
    if end > size:
        raise IntegrityError(f"truncated GGUF: tensor data ends at {end}, the file at {size}")
    if len({t.name for t in infos}) != len(infos):
        raise IntegrityError("duplicate GGUF tensor names")
    return HeaderScan(version, tuple(infos), data_offset, size, digest)


def self_digest(f: BinaryIO) -> str:
    """The file's self-digest: sha256 with the 64 digest characters read as zeros."""
    f.seek(0)
    head = bytearray(f.read(DIGEST_AT + 64))
    head[DIGEST_AT:] = ZERO_DIGEST
    h = hashlib.sha256(head)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):  # type: ignore[attr-defined]
        h.update(view[:n])
    return h.hexdigest()


class HashPipe:
    """Hashes (and, given a file, writes) chunks on a background thread, so converting or
    comparing the next chunk overlaps hashing and I/O (both release the GIL). At most ``depth``
    chunks wait in between, which bounds the extra memory. Chunks must not change once put."""

    def __init__(self, f: BinaryIO | None = None, depth: int = 2) -> None:
        self._f, self._h = f, hashlib.sha256()
        self._q: queue.Queue[bytes | bytearray | memoryview | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, name="forseti-gguf-io", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self._error is None:
                try:
                    if self._f is not None:
                        self._f.write(item)
                    self._h.update(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised by put() / hexdigest()
                    self._error = exc

    def put(self, chunk: bytes | bytearray | memoryview) -> None:
        """Queue ``chunk`` (blocks while ``depth`` chunks wait)."""
        if self._error is not None:
            raise self._error
        self._q.put(chunk)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._q.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        """Wait for every chunk; the sha256 of all of them (re-raises a write error)."""
        self._finish()
        if self._error is not None:
            raise self._error
        return self._h.hexdigest()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish()
