"""The two blobs of an RL checkpoint, both safetensors streamed into the blob store (no pickle):
the policy's weights (``policy.state_dict()``: any tool that reads safetensors loads them), and
the training state (:mod:`forseti.rl.state`). Reads verify the blob's hash before parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn

from ..entities import BlobRef
from ..errors import IntegrityError, ValidationError
from ..export.checkpoints import read_verified
from ..export.tensorfile import read_safetensors, write_safetensors
from .state import capture, restore

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["POLICY_FORMAT", "write_policy", "write_state", "read_policy", "read_state"]

POLICY_FORMAT = "forseti.rl.policy/1"


def _write(reg: EntityRegistry, tensors: Mapping[str, object], meta: Mapping[str, str]) -> BlobRef:
    with reg.blob_writer(format="safetensors") as sink:
        write_safetensors(sink, tensors, meta, self_digest=False)  # type: ignore[arg-type]
    assert sink.ref is not None
    return sink.ref


def write_policy(reg: EntityRegistry, policy: nn.Module, meta: Mapping[str, str]) -> BlobRef:
    """Store ``policy``'s weights (its class named in the header)."""
    header = {**meta, "forseti.format": POLICY_FORMAT, "forseti.rl.policy": type(policy).__name__}
    return _write(reg, policy.state_dict(), header)


def write_state(
    reg: EntityRegistry,
    model: BaseAlgorithm,
    meta: Mapping[str, str],
    *,
    replay_buffer: bool = True,
) -> BlobRef:
    """Store ``model``'s training state (see :func:`forseti.rl.state.capture`)."""
    tensors, state_meta = capture(model, replay_buffer=replay_buffer)
    return _write(reg, tensors, {**meta, **state_meta})


def read_policy(reg: EntityRegistry, blob: BlobRef, policy: nn.Module) -> dict[str, str]:
    """Load the weights in ``blob`` into ``policy`` (hash verified first; names and shapes must
    match exactly, or ``ValidationError`` and the policy is unchanged). Returns the header."""
    data = read_verified(reg, blob)
    tensors, meta = read_safetensors(data)
    if meta.get("forseti.format") != POLICY_FORMAT:
        raise IntegrityError(
            f"{blob.sha256[:12]} is not an RL policy (format {meta.get('forseti.format')!r})"
        )
    own = policy.state_dict()
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        raise ValidationError(
            f"the checkpoint's policy does not fit this one (missing {missing[:5]}, unexpected "
            f"{extra[:5]}, or shapes differ)"
        )
    policy.load_state_dict(tensors, strict=True)
    return meta


def read_state(reg: EntityRegistry, blob: BlobRef, model: BaseAlgorithm) -> None:
    """Restore the training state in ``blob`` into ``model`` (hash verified first)."""
    data = read_verified(reg, blob)
    tensors, meta = read_safetensors(data)
    restore(model, tensors, meta)
