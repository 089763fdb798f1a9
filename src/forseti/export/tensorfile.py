"""safetensors, written in a stream and read back strictly.

**Writing** never builds the file in memory: the header is computed from shapes and dtypes, then
each tensor's bytes go straight from its storage to the file (a non-contiguous tensor is made
contiguous one at a time), hashed on the way in a second thread. Extra memory is one tensor at
most, and none for contiguous CPU tensors.

**Self-digest.** The header metadata carries ``forseti.sha256``: the sha256 of a manifest of the
whole file — every tensor's name, dtype, shape, offsets and the sha256 of its bytes, and every
other metadata entry. A file that leaves the store can be checked on its own
(:func:`read_safetensors` with ``require_digest=True``): editing a value, a shape, a dtype or a
metadata entry, or truncating it, fails with :class:`~forseti.errors.IntegrityError`.

**Reading** validates the header before any tensor exists: known dtypes, shapes that match their
byte ranges, ranges that tile the data exactly (no gaps, overlaps or trailing bytes). Tensors are
views into one verified buffer (no pickle, no code).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from ..errors import IntegrityError, ValidationError

__all__ = [
    "write_safetensors",
    "read_safetensors",
    "check_tensors",
    "header_of",
    "DIGEST_KEY",
    "DTYPES_KEY",
    "DTYPES",
    "DTYPE_CODES",
    "TensorFile",
]

DIGEST_KEY = "forseti.sha256"
DTYPES_KEY = "forseti.dtypes"
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_CODES = DTYPE_CODES
_PIECE = 64 << 20  # bytes hashed or written per call
_MAX_HEADER = 100 << 20


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    if flat.stride(0) != 1:  # a one-element view torch calls contiguous (any stride goes)
        flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
    data: Any = flat.view(torch.uint8).numpy()
    return memoryview(data).cast("B")


def _pieces(view: memoryview) -> Iterator[memoryview]:
    for start in range(0, len(view), _PIECE):
        yield view[start : start + _PIECE]


def _tensor_digest(view: memoryview) -> str:
    h = hashlib.sha256()
    for piece in _pieces(view):
        h.update(piece)
    return h.hexdigest()


def _manifest_digest(entries: Mapping[str, dict[str, object]], meta: Mapping[str, str]) -> str:
    """The self-digest: a canonical JSON of the index (with per-tensor hashes) and metadata."""
    body = {"tensors": entries, "metadata": {k: v for k, v in meta.items() if k != DIGEST_KEY}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_tensors(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
    """Raise :class:`ValidationError` unless :func:`write_safetensors` can write ``tensors``."""
    if not isinstance(tensors, Mapping):
        raise ValidationError(f"expected a mapping of names to tensors, got {type(tensors).__name__}")
    _prepare(tensors, dtype)


class _Item(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # the dtype to write


def _prepare(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> list[_Item]:
    """Name, shape and dtype to write of each tensor (floating ones cast to ``dtype``), without
    holding the tensors (a :class:`TensorFile` reads each when it is asked for)."""
    if dtype is not None and (not dtype.is_floating_point or dtype not in _CODES):
        raise ValidationError(f"dtype must be a floating-point type safetensors holds, got {dtype}")
    out = []
    for name in tensors:
        if isinstance(tensors, TensorFile):  # a validated file: dense tensors it can hold
            shape, src = tensors.shape_of(name), tensors.dtype_of(name)
        else:
            shape, src = _checked(name, tensors[name])
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValidationError(f"tensor names are non-empty strings, got {name!r}")
        out.append(_Item(name, shape, dtype if dtype is not None and src.is_floating_point else src))
    return out


def _checked(name: str, t: object) -> tuple[tuple[int, ...], torch.dtype]:
    if not isinstance(t, torch.Tensor):
        raise ValidationError(f"{name!r} is a {type(t).__name__}, not a tensor")
    if t.dtype not in _CODES:
        raise ValidationError(f"{name!r} has dtype {t.dtype}, which safetensors cannot hold")
    if t.is_sparse or t.layout != torch.strided:
        raise ValidationError(f"{name!r} is not a dense tensor")
    return tuple(t.shape), t.dtype


def _cpu_contiguous(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to("cpu").to(dtype).contiguous()


def _digest_as(t: torch.Tensor, dtype: torch.dtype) -> str:
    return _tensor_digest(_raw(_cpu_contiguous(t, dtype)))


def _needs_copy(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous()


class Writer(Protocol):
    """Anything with ``write(bytes-like)``: a binary file, a blob writer."""

    def write(self, data: memoryview | bytes, /) -> int | None: ...


def write_safetensors(
    out: Writer,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    self_digest: bool = True,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``tensors`` (any device; copied to CPU one at a time) as safetensors to ``out``.

    ``out`` is any binary writer: a file, or ``reg.blob_writer(...)`` to stream straight into
    the blob store. ``dtype`` casts the floating-point tensors (one at a time, as they are
    written). ``metadata`` (str → str) goes to the header, with ``forseti.dtypes`` (how many
    tensors of each dtype the file holds) set, and the self-digest added when
    ``self_digest`` (it costs a hashing pass before the write: a blob in the store, verified by
    its address, does not need it; a file that leaves the store does). Returns the number of
    bytes written; ``progress`` is called with each piece's size.
    """
    items = _prepare(tensors, dtype)
    meta = {str(k): str(v) for k, v in (metadata or {}).items() if k != DIGEST_KEY}
    counts = Counter(_CODES[item.dtype] for item in items)  # what is written, after any cast
    meta[DTYPES_KEY] = json.dumps(dict(sorted(counts.items())))
    entries: dict[str, dict[str, object]] = {}
    offset = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests: dict[str, Future[str] | str] = {}
        for name, shape, dt in items:  # pass 1: per-tensor hashes, two at a time
            nbytes = math.prod(shape) * torch.empty((), dtype=dt).element_size()
            entries[name] = {
                "dtype": _CODES[dt],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            if not self_digest:
                continue
            t = tensors[name].detach()
            if _needs_copy(t, dt) or isinstance(tensors, TensorFile):
                # a copy (or a tensor just read from disk): one at a time, so memory stays bounded
                digests[name] = _digest_as(t, dt)
            else:  # a view of the tensor's own storage: hash it beside the others
                digests[name] = pool.submit(_digest_as, t, dt)
            del t
        if self_digest:
            hashed = {
                n: {**entry, "sha256": d if isinstance(d, str) else d.result()}
                for n, entry in entries.items()
                for d in (digests[n],)
            }
            meta[DIGEST_KEY] = _manifest_digest(hashed, meta)
        header = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
        header += b" " * (-(len(header) + 8) % 8)  # data starts 8-byte aligned
        head = struct.pack("<Q", len(header)) + header
        out.write(head)
        written = len(head)
        for name, _, dt in items:  # pass 2: the bytes, straight from each tensor's storage
            written += _write_tensor(out, tensors[name].detach(), dt, progress)
    return written


def _write_tensor(
    out: Writer, t: torch.Tensor, dtype: torch.dtype, progress: Callable[[int], None] | None
) -> int:
    """Write one tensor's bytes; a copy it needed dies on return, before the next is made."""
    written = 0
    for piece in _pieces(_raw(_cpu_contiguous(t, dtype))):
        out.write(piece)
        written += len(piece)
        if progress is not None:
            progress(len(piece))
    return written


def header_of(
    data: memoryview | bytes | bytearray, total: int | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Parse and validate a safetensors header: (tensor index, metadata, data start).

    ``data`` is the file, or only its beginning (at least the header) when ``total`` gives the
    file's size.
    """
    view = memoryview(data).cast("B")
    total = len(view) if total is None else total
    if len(view) < 8 or total < 8:
        raise IntegrityError("not a safetensors file: shorter than its header length")
    (size,) = struct.unpack("<Q", view[:8])
    if size > min(total - 8, _MAX_HEADER):
        raise IntegrityError("not a safetensors file (or truncated): its header runs past the end")
    if len(view) < 8 + size:
        raise ValidationError(f"header_of() needs the first {8 + size} bytes of the file")
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IntegrityError(f"not a safetensors file: bad header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise IntegrityError("not a safetensors file: the header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise IntegrityError("bad safetensors header: __metadata__ must map strings to strings")
    data_len = total - 8 - size
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise IntegrityError(f"bad safetensors header entry for {name!r}")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise IntegrityError(f"{name!r} has an unknown dtype {dtype!r}")
        ok_shape = isinstance(shape, list) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        )
        ok_offs = (
            isinstance(offs, list)
            and len(offs) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in offs)
        )
        if not ok_shape or not ok_offs:
            raise IntegrityError(f"{name!r} has a malformed shape or data_offsets")
        nbytes = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        if offs[1] - offs[0] != nbytes:
            raise IntegrityError(
                f"{name!r} is mislabelled: {dtype}{shape} needs {nbytes} bytes, its range holds "
                f"{offs[1] - offs[0]}"
            )
        spans.append((offs[0], offs[1], name))
    spans.sort()
    end = 0
    for start, stop, name in spans:
        if start != end:
            raise IntegrityError(f"{name!r} overlaps another tensor or leaves a gap before it")
        end = stop
    if end != data_len:
        raise IntegrityError(
            f"the file is truncated or padded: the header indexes {end} data bytes, the file "
            f"holds {data_len}"
        )
    return header, meta, 8 + size


def read_safetensors(
    data: bytearray | memoryview,
    *,
    require_digest: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (views into ``data``; keep it alive and do not change it) and header metadata.

    The self-digest is checked when the file has one; ``require_digest`` also rejects a file
    without one (use it for files that left the store, whose hash is not known otherwise).
    """
    view = memoryview(data).cast("B")
    index, meta, start = header_of(view)
    tensors: dict[str, torch.Tensor] = {}
    hashed: dict[str, dict[str, object]] = {}
    check = DIGEST_KEY in meta
    if require_digest and not check:
        raise IntegrityError("the file carries no forseti.sha256 self-digest to verify it by")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {}
        for name, entry in index.items():
            lo, hi = entry["data_offsets"]
            raw = view[start + lo : start + hi]
            if check:
                futures[name] = pool.submit(_tensor_digest, raw)
            tensors[name] = _tensor(raw, DTYPES[entry["dtype"]], list(entry["shape"]))
        if check:
            hashed = {n: {**index[n], "sha256": f.result()} for n, f in futures.items()}
    if check and _manifest_digest(hashed, meta) != meta[DIGEST_KEY]:
        raise IntegrityError(
            "the file does not match its forseti.sha256 self-digest: a tensor, shape, dtype or "
            "metadata entry was changed"
        )
    return tensors, meta


def _tensor(raw: memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if len(raw) == 0:
        return torch.empty(shape, dtype=dtype)
    if raw.readonly:
        raise ValidationError("read_safetensors needs a writable buffer (a bytearray)")
    flat = torch.frombuffer(raw, dtype=torch.uint8)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if flat.data_ptr() % itemsize:  # unaligned (the format does not pad): copy this one
        flat = flat.clone()
    return flat.view(dtype).reshape(shape)


class TensorFile(Mapping[str, torch.Tensor]):
    """The tensors of a safetensors file on disk, each read when it is asked for (one at a time:
    memory is what the caller keeps). The caller verifies the file first (e.g. by its hash);
    the header is validated here, before any tensor is read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with self.path.open("rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            first = fh.read(8)
            size = struct.unpack("<Q", first)[0] if len(first) == 8 else 0
            head = first + fh.read(min(size, _MAX_HEADER))
        self.index, self.metadata, self._start = header_of(head, total)

    def __getitem__(self, name: str) -> torch.Tensor:
        """The tensor, mapped from the file (copy-on-write: no copy is made, and the pages go
        back to the page cache when the tensor is freed)."""
        entry = self.index[name]
        lo, hi = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        if hi == lo:
            return torch.empty(entry["shape"], dtype=dtype)
        start = self._start + lo
        base = start - start % mmap.ALLOCATIONGRANULARITY  # offsets must be page-aligned
        with self.path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size < start + (hi - lo):
                raise IntegrityError(f"{self.path} is truncated: {name!r} runs past its end")
            mapped = mmap.mmap(fh.fileno(), start + (hi - lo) - base, offset=base,
                               access=mmap.ACCESS_COPY)  # fmt: skip
        flat = torch.frombuffer(mapped, dtype=torch.uint8, offset=start - base, count=hi - lo)
        if flat.data_ptr() % flat.new_empty((), dtype=dtype).element_size():
            flat = flat.clone()  # the format does not pad: an unaligned tensor is copied
        return flat.view(dtype).reshape(entry["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def shape_of(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, without reading it."""
        return tuple(self.index[name]["shape"])

    def dtype_of(self, name: str) -> torch.dtype:
        """A tensor's dtype, without reading it."""
        return DTYPES[self.index[name]["dtype"]]
