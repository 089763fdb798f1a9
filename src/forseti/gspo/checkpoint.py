"""Checkpoints as safetensors blobs: the policy's weights, and the training state for a resume.

Two blobs per checkpoint, both content-addressed and verified on every read (no pickle):

* **weights**: the policy's ``state_dict``; the header metadata says what it is (architecture,
  step, run, dtypes), so other tools can load the file alone;
* **training state**: the optimizer's tensors (``optimizer.state.<param>.<key>``), its scalar
  settings as JSON in the header, and the random generators' states (``rng.<name>``), so a
  resumed run continues bit-exactly on CPU.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..entities import BlobRef
from ..errors import IntegrityError, ValidationError

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = [
    "save_weights",
    "load_weights",
    "save_training_state",
    "load_training_state",
    "safetensors_metadata",
]

_FORMAT = "safetensors"


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory (header only, no tensors)."""
    if len(data) < 8:
        raise IntegrityError("not a safetensors file: shorter than its header length")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise IntegrityError("not a safetensors file: its header runs past the end")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as exc:
        raise IntegrityError(f"not a safetensors file: bad header ({exc})") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return {str(k): str(v) for k, v in meta.items()}


def _tensors(data: bytes, what: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except Exception as exc:  # the library raises its own error types for bad files
        raise IntegrityError(f"the {what} blob is not a valid safetensors file: {exc}") from None


def save_weights(
    reg: EntityRegistry, module: torch.nn.Module, metadata: Mapping[str, str]
) -> BlobRef:
    """Store ``module``'s weights as a safetensors blob (metadata in its header)."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    data = st_save(state, metadata={str(k): str(v) for k, v in metadata.items()})
    return reg.put_blob(data, format=_FORMAT)


def load_weights(
    reg: EntityRegistry, blob: BlobRef, module: torch.nn.Module, *, data: bytes | None = None
) -> dict[str, str]:
    """Load weights into ``module`` (hash verified first); return the file's metadata.

    ``data`` is the blob's content when the caller has read (and so verified) it already.
    """
    if blob.format != _FORMAT:
        raise ValidationError(f"weights are stored as {blob.format!r}, not safetensors")
    if data is None:
        data = reg.read_blob(blob)
    state = _tensors(data, "weights")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValidationError(f"the checkpoint's weights do not fit this model: {exc}") from None
    return safetensors_metadata(data)


def save_training_state(
    reg: EntityRegistry,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator],
    metadata: Mapping[str, str],
    reference: torch.nn.Module | None = None,
) -> BlobRef:
    """Store the optimizer's state and the generators' states as one safetensors blob (and the
    frozen reference policy's weights, ``reference.<name>``, when there is one)."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    if reference is not None:
        for key, value in reference.state_dict().items():
            tensors[f"reference.{key}"] = value.detach().cpu().contiguous().clone()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state().clone()
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta["optimizer"] = json.dumps(
        {"param_groups": opt["param_groups"], "scalars": scalars}, sort_keys=True
    )
    return reg.put_blob(st_save(tensors, metadata=meta), format=_FORMAT)


def load_training_state(
    reg: EntityRegistry,
    blob: BlobRef,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator],
    *,
    data: bytes | None = None,
    reference: torch.nn.Module | None = None,
) -> dict[str, str]:
    """Restore what :func:`save_training_state` stored (hash verified first); return metadata.

    ``data`` is the blob's content when the caller has read (and so verified) it already.
    """
    if data is None:
        data = reg.read_blob(blob)
    tensors = _tensors(data, "training state")
    meta = safetensors_metadata(data)
    try:
        saved = json.loads(meta["optimizer"])
    except (KeyError, ValueError):
        raise IntegrityError("the training state has no optimizer settings") from None
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer.state."):
            index, key = name[len("optimizer.state.") :].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise ValidationError(f"the optimizer state does not fit this optimizer: {exc}") from None
    if reference is not None:
        prefix = "reference."
        ref_state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not ref_state:
            raise IntegrityError("the training state has no reference policy (beta > 0)")
        try:
            reference.load_state_dict(ref_state, strict=True)
        except RuntimeError as exc:
            raise ValidationError(f"the reference policy does not fit this model: {exc}") from None
    for name, gen in generators.items():
        stored = tensors.get(f"rng.{name}")
        if stored is None:
            raise IntegrityError(f"the training state has no state for generator {name!r}")
        gen.set_state(stored)
    return meta
