"""Checkpoints as verified safetensors blobs: ``save_checkpoint`` and ``load_checkpoint``.

``save_checkpoint`` streams a module's (or a state dict's) tensors into the content-addressed
blob store with the architecture, dtypes, step and provenance in the safetensors header, and
commits a :class:`~forseti.entities.CheckpointEntity` naming the blob. ``load_checkpoint`` reads
the blob into one buffer while hashing it and compares the hash with the entity's
:class:`~forseti.entities.BlobRef` *before* any tensor is made from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from ..entities import BlobRef, CheckpointEntity, Entity, EntityRef, ModelEntity, TrainingRunEntity
from ..errors import IntegrityError, NotFoundError, ValidationError
from ..registry.blobs import FileBlobStore
from .architectures import ARCH_KEY, CONFIG_KEY, build_module, describe, is_registered
from .artifacts import CheckpointLike, resolve_checkpoint
from .tensorfile import (
    TensorFile,
    check_tensors,
    read_safetensors,
    write_safetensors,
)

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "load_safetensors_file",
    "read_verified",
    "LoadedCheckpoint",
    "FORMAT_TAG",
    "verify_blob_file",
]

FORMAT_TAG = "forseti.checkpoint/1"
E = TypeVar("E", bound=Entity)
_CHUNK = 16 << 20


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read: tensors, header metadata, the entity, and the module
    (the one passed in, or one rebuilt from a registered architecture; ``None`` otherwise)."""

    entity: CheckpointEntity | None
    state_dict: Mapping[str, torch.Tensor]
    metadata: dict[str, str]
    module: nn.Module | None = None
    buffer: Any = field(default=None, repr=False)  # keeps the verified bytes alive
    #: ``forseti.architecture`` and ``forseti.config``: from the header, or else from the
    #: checkpoint's :class:`ModelEntity` (how ``GSPOTrainer``'s checkpoints name them)
    described: dict[str, str] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """The training step the checkpoint was taken at (0 when unknown)."""
        if self.entity is not None:
            return self.entity.step
        return int(self.metadata.get("forseti.step", "0"))


def _entity(
    reg: EntityRegistry, value: Entity | EntityRef | None, cls: type[E], what: str
) -> E | None:
    """The stored ``cls`` entity ``value`` names (ValidationError for another type)."""
    if value is None:
        return None
    if isinstance(value, EntityRef):
        value = reg.get(value)
    if not isinstance(value, cls):
        raise ValidationError(
            f"{what} must be a {cls.__name__} (or its EntityRef), got {type(value).__name__}"
        )
    return value


def _state_of(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        return dict(source)
    raise ValidationError(
        f"save_checkpoint() takes a module or a state dict, not {type(source).__name__}"
    )


def save_checkpoint(
    reg: EntityRegistry,
    source: nn.Module | Mapping[str, torch.Tensor],
    *,
    model: ModelEntity | EntityRef | None = None,
    run: TrainingRunEntity | EntityRef | None = None,
    step: int = 0,
    metrics: Mapping[str, float] | None = None,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    derived_from: Sequence[Entity | EntityRef] = (),
) -> CheckpointEntity:
    """Store ``source``'s tensors as a safetensors blob and commit a :class:`CheckpointEntity`.

    ``model`` is the :class:`ModelEntity` the weights belong to: by default the run's model, else
    a new one describing ``source`` (name, architecture, parameter count) is added with the
    checkpoint, in the same transaction. ``run`` is the training run it came from, if any.
    ``dtype`` casts floating-point tensors on the way (e.g. ``torch.bfloat16``). ``metadata``
    (str → str; keys must not start with ``forseti.``) goes into the file's header. The tensors
    are streamed into the blob store (hashed, and encrypted when the registry has a key, as they
    are written): extra memory is at most one tensor. Everything is validated first: bad input
    stores nothing.
    """
    state = _state_of(source)
    check_tensors(state, dtype)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValidationError(f"step must be a non-negative integer, got {step!r}")
    user = {str(k): str(v) for k, v in (metadata or {}).items()}
    if any(k.startswith("forseti.") for k in user):
        raise ValidationError("metadata keys starting with 'forseti.' are reserved")
    run_entity = _entity(reg, run, TrainingRunEntity, "run")
    model_entity = _entity(reg, model, ModelEntity, "model")
    model_ref = model_entity.ref if model_entity is not None else None
    if model_ref is None and run_entity is not None and run_entity.model is not None:
        model_ref = run_entity.model
    new_model: ModelEntity | None = None
    if model_ref is None:
        new_model = _describe_model(source, state)
        model_ref = new_model.ref
    run_ref = run_entity.ref if run_entity is not None else None
    inputs = tuple(_entity(reg, d, Entity, "derived_from") for d in derived_from)
    refs = tuple(e.ref for e in inputs if e is not None)
    draft = CheckpointEntity(  # validated now, so that bad input stores no blob
        run=run_ref,
        model=model_ref,
        step=step,
        weights=BlobRef(sha256="0" * 64, size=0, format="safetensors"),
        metrics=dict(metrics or {}),
        derived_from=refs,
    )
    meta = dict(user)
    meta.update(describe(source) if isinstance(source, nn.Module) else {})
    meta.update(
        {
            "forseti.format": FORMAT_TAG,
            "forseti.step": str(step),
            "forseti.model": str(model_ref),
        }
    )
    if run_ref is not None:
        meta["forseti.run"] = str(run_ref)
    if refs:
        meta["forseti.derived_from"] = json.dumps([str(r) for r in refs])
    with reg.blob_writer(format="safetensors") as sink:  # hashed (and encrypted) as written
        # one pass: the blob's address verifies it (exports add the self-digest)
        write_safetensors(sink, state, meta, dtype=dtype, self_digest=False)
    assert sink.ref is not None
    ckpt = CheckpointEntity(
        run=run_ref,
        model=model_ref,
        step=step,
        weights=sink.ref,
        metrics=draft.metrics,
        derived_from=refs,
        lineage_id=draft.lineage_id,
    )
    stored = reg.commit_many([new_model, ckpt] if new_model is not None else [ckpt])
    return stored[-1]  # type: ignore[return-value]


def _describe_model(
    source: nn.Module | Mapping[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> ModelEntity:
    params = sum(t.numel() for t in state.values())
    if isinstance(source, nn.Module):
        info = describe(source)
        config = json.loads(info[CONFIG_KEY]) if CONFIG_KEY in info else {}
        return ModelEntity(
            name=str(config.get("name") or type(source).__name__),
            architecture=info[ARCH_KEY],
            num_parameters=params or None,
            hyperparameters=config,
        )
    return ModelEntity(name="state-dict", num_parameters=params or None)


def read_verified(reg: EntityRegistry, blob: BlobRef) -> bytearray:
    """A blob's bytes in one writable buffer, hashed while read and checked against ``blob``."""
    store = reg.blobs
    if not isinstance(store, FileBlobStore) or blob.encrypted:
        return bytearray(reg.read_blob(blob))
    path = store.path(blob)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise NotFoundError(f"no blob {blob.sha256} under {store.root}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size != blob.size:
            raise IntegrityError(
                f"blob {blob.sha256[:12]}… is truncated or padded: {size} bytes, expected {blob.size}"
            )
        buf = bytearray(size)
        view = memoryview(buf)
        digest = hashlib.sha256()
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            pos = 0
            while pos < size:
                n = fh.readinto(view[pos : pos + _CHUNK])
                if not n:
                    raise IntegrityError(f"blob {blob.sha256[:12]}… is truncated")
                if pending is not None:
                    pending.result()
                pending = pool.submit(digest.update, view[pos : pos + n])  # overlaps the read
                pos += n
            if pending is not None:
                pending.result()
    if digest.hexdigest() != blob.sha256:
        raise IntegrityError(
            f"blob {blob.sha256[:12]}… is corrupted or tampered with: its content hashes to "
            f"{digest.hexdigest()[:12]}…"
        )
    return buf


def _into(module: nn.Module, state: Mapping[str, torch.Tensor], strict: bool) -> None:
    """Load ``state`` into ``module`` — after checking it fits, so a misfit changes nothing."""
    own = module.state_dict()

    def shape(k: str) -> tuple[int, ...]:  # without reading a lazily loaded tensor
        return state.shape_of(k) if isinstance(state, TensorFile) else tuple(state[k].shape)

    problems = [
        f"{k}: checkpoint {shape(k)}, module {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(own[k].shape) != shape(k)
    ]
    if strict:
        problems += [f"missing from the checkpoint: {k}" for k in own if k not in state]
        problems += [f"not in the module: {k}" for k in state if k not in own]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValidationError(f"the checkpoint's tensors do not fit this module: {shown}")
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:  # pragma: no cover - the checks above cover what torch checks
        raise ValidationError(f"the checkpoint's tensors do not fit this module: {exc}") from None


def load_checkpoint(
    reg: EntityRegistry,
    ref: CheckpointLike,
    *,
    module: nn.Module | None = None,
    strict: bool = True,
    build: bool = True,
    lazy: bool = False,
) -> LoadedCheckpoint:
    """Read a checkpoint's weights, verified against its hash before any tensor exists.

    ``ref`` is a :class:`CheckpointEntity`, an :class:`EntityRef`, a lineage id (its head) or
    ``"LINEAGE@VERSION"``. With ``module``, the weights are loaded into it (``strict`` as in
    ``load_state_dict``; a misfit raises :class:`ValidationError` and changes nothing);
    otherwise, when ``build`` and the header (or the checkpoint's :class:`ModelEntity`) names a
    registered architecture, a fresh module is built and loaded; else ``.module`` is ``None``.
    Raises :class:`IntegrityError` for a tampered, truncated or mislabelled file.

    ``lazy=True`` (exporters of large checkpoints): the file is verified in a streaming pass,
    then ``.state_dict`` reads each tensor from the read-only blob file when it is asked for, so
    memory is one tensor, not the checkpoint. (Encrypted and in-memory blobs load eagerly.)
    """
    ckpt = resolve_checkpoint(reg, ref)
    if ckpt.weights.format != "safetensors":
        raise IntegrityError(
            f"the checkpoint's weights are {ckpt.weights.format!r}, not safetensors"
        )
    buf: bytearray | None = None
    state: Mapping[str, torch.Tensor]
    if lazy and isinstance(reg.blobs, FileBlobStore) and not ckpt.weights.encrypted:
        verify_blob_file(reg.blobs, ckpt.weights)
        state = TensorFile(reg.blobs.path(ckpt.weights))
        meta = dict(state.metadata)
    else:
        buf = read_verified(reg, ckpt.weights)
        state, meta = read_safetensors(buf)
    described = {k: meta[k] for k in (ARCH_KEY, CONFIG_KEY) if k in meta}
    if CONFIG_KEY not in meta:
        described = _described_by_model(reg, ckpt) or described
    loaded = LoadedCheckpoint(ckpt, state, meta, None, buf, described)
    return _finish(loaded, module, strict, build)


def verify_blob_file(store: FileBlobStore, blob: BlobRef) -> None:
    """Hash a blob's file in a streaming pass (no buffer) and compare it with ``blob``."""
    try:
        with store.path(blob).open("rb") as fh:
            digest = hashlib.sha256()
            size = 0
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise NotFoundError(f"no blob {blob.sha256} under {store.root}") from None
    if (digest.hexdigest(), size) != (blob.sha256, blob.size):
        raise IntegrityError(
            f"blob {blob.sha256[:12]}… is corrupted or tampered with: {size} bytes hashing to "
            f"{digest.hexdigest()[:12]}…"
        )


def _described_by_model(reg: EntityRegistry, ckpt: CheckpointEntity) -> dict[str, str] | None:
    """Architecture metadata from the checkpoint's :class:`ModelEntity` (checkpoints written by
    other code, e.g. ``GSPOTrainer``'s, name the architecture and config there)."""
    try:
        model = reg.get(ckpt.model)
    except NotFoundError:
        return None
    if not isinstance(model, ModelEntity) or not is_registered(model.architecture):
        return None
    return {ARCH_KEY: model.architecture, CONFIG_KEY: json.dumps(dict(model.hyperparameters))}


def load_safetensors_file(
    path: str | os.PathLike[str],
    *,
    module: nn.Module | None = None,
    sha256: str | None = None,
    strict: bool = True,
    build: bool = True,
) -> LoadedCheckpoint:
    """Load a safetensors file outside the store (e.g. one ``forseti export`` wrote).

    It is verified by ``sha256`` when given, else by its ``forseti.sha256`` self-digest, which it
    must carry: a file that cannot be verified is refused with :class:`IntegrityError`.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"no file {p}")
    buf = bytearray(p.read_bytes())
    if sha256 is not None and hashlib.sha256(buf).hexdigest() != sha256.lower():
        raise IntegrityError(f"{p} does not match the expected sha256")
    state, meta = read_safetensors(buf, require_digest=sha256 is None)
    described = {k: meta[k] for k in (ARCH_KEY, CONFIG_KEY) if k in meta}
    return _finish(LoadedCheckpoint(None, state, meta, None, buf, described), module, strict, build)


def _finish(
    loaded: LoadedCheckpoint, module: nn.Module | None, strict: bool, build: bool
) -> LoadedCheckpoint:
    described = loaded.described
    if module is None and build and is_registered(described.get(ARCH_KEY, "")):
        module = build_module(described)
    if module is not None:
        _into(module, loaded.state_dict, strict)
        loaded.module = module
    return loaded
