"""ONNX export of a checkpoint, verified twice before it is stored, and a verified loader.

:func:`export_onnx` loads a checkpoint (hash-verified), rebuilds its module (``TinyCausalLM``
from the file's header, or the policy network you pass), exports it with torch's TorchScript
exporter (``dynamo=False``: no onnxscript needed, dynamic axes declared by name), then checks
the file with ``onnx.checker`` (full check) and runs it in onnxruntime against torch in fp32 at
the trace shape *and* at other sizes of every dynamic axis (1, a little larger, the model's
limit), so a size baked into the graph during tracing is caught. Only then is the file moved
into the blob store and recorded as an :class:`ExportEntity` derived from its checkpoint.

:func:`load_onnx` / :func:`load_onnx_file` verify the bytes (hash, parse, checker, no external
data, no custom-op domains) before onnxruntime sees them; see :mod:`.onnx_check`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import torch
from torch import Tensor, nn

from ..entities import Entity, EntityRef
from ..errors import ConfigError, IntegrityError, NotFoundError, ValidationError
from .architectures import build_module
from .artifacts import CheckpointLike, check_out, record_export, resolve_checkpoint
from .checkpoints import load_checkpoint
from .entities import ExportEntity
from .onnx_check import (
    InputMaker,
    Inputs,
    as_inputs,
    check_sha256,
    lm_maker,
    open_session,
    parity_cases,
    parse_onnx,
    require_onnx,
    run_parity,
    sample_like,
    seal,
)

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = [
    "DEFAULT_OPSET",
    "CausalLMLogits",
    "OnnxExportError",
    "OnnxParityError",
    "export_onnx",
    "load_onnx",
    "load_onnx_file",
    "module_to_onnx",
    "onnx_parity",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""ONNX opset written by default: native ``LayerNormalization``, run by every recent runtime."""
_OPSETS = range(9, 21)  # what torch's TorchScript exporter writes
_EXPORTER = "torchscript"

DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]
"""Per input/output name: ``{axis: "dim name"}`` (or a list of axes, named automatically)."""


class OnnxExportError(ValidationError):
    """The module could not be exported to a valid ONNX model; nothing was stored."""


class OnnxParityError(OnnxExportError):
    """onnxruntime disagrees with torch beyond ``atol`` (or fails) at some input shapes.

    Usually a size or value baked into the graph while tracing (a Python ``int(...)`` of a
    shape, data-dependent control flow). ``max_abs_diff`` is ``inf`` when shapes differ or
    onnxruntime failed; ``shapes`` are the input shapes of the worst case.
    """

    def __init__(
        self, message: str, *, max_abs_diff: float, atol: float, shapes: list[list[int]]
    ) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.atol = atol
        self.shapes = shapes


class CausalLMLogits(nn.Module):
    """A causal LM's forward as ONNX wants it: ``input_ids`` (and ``attention_mask``) → logits.

    Wraps anything with the Hugging Face causal-LM call (``TinyCausalLM``): no cache, positions
    derived from the mask, ``logits`` (B, T, V) returned as a plain tensor.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``input_ids`` (B, T) int64, ``attention_mask`` (B, T) (1 real, 0 pad) → (B, T, V)."""
        logits: Tensor = self.lm(input_ids, attention_mask=attention_mask).logits
        return logits


def _names(given: Sequence[str] | None, n: int, stem: str, what: str) -> list[str]:
    if given is None:
        return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]
    names = [given] if isinstance(given, str) else list(given)
    if len(names) != n or not all(isinstance(s, str) and s for s in names):
        raise ValidationError(f"{what} must be {n} non-empty string(s), got {given!r}")
    if len(set(names)) != len(names):
        raise ValidationError(f"{what} must be distinct, got {names}")
    return names


def _out_names(given: Sequence[str] | None) -> list[str]:
    if given is None:
        return ["output"]
    names = [given] if isinstance(given, str) else list(given)
    return _names(names, max(1, len(names)), "output", "output_names")


def _axes(
    given: DynamicAxes | None, inputs: tuple[Tensor, ...], in_names: list[str], out_names: list[str]
) -> dict[str, dict[int, str]]:
    if given is None:
        return {name: {0: "batch"} for name in in_names + out_names}
    if not isinstance(given, Mapping):
        raise ValidationError(f"dynamic_axes must be a mapping, got {type(given).__name__}")
    axes: dict[str, dict[int, str]] = {}
    for name, spec in given.items():
        if name not in in_names and name not in out_names:
            raise ValidationError(f"dynamic_axes names {name!r}, which is no input or output")
        pairs = spec.items() if isinstance(spec, Mapping) else ((a, f"{name}_dim{a}") for a in spec)
        axes[name] = {}
        for axis, dim in pairs:
            if isinstance(axis, bool) or not isinstance(axis, int) or not isinstance(dim, str):
                raise ValidationError(f"dynamic_axes[{name!r}] must map int axes to names")
            if name in in_names and not 0 <= axis < inputs[in_names.index(name)].dim():
                raise ValidationError(f"{name!r} has no axis {axis}")
            axes[name][axis] = dim
    return axes


def module_to_onnx(
    module: nn.Module,
    example_inputs: Inputs,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Export ``module`` (traced in eval mode on ``example_inputs``) to ONNX bytes.

    ``metadata`` goes into the model's ``metadata_props``; a ``forseti.sha256`` self-digest is
    always appended (see :func:`~forseti.export.onnx_check.seal`).

    Names default to ``input``/``output`` (``input_0``, ... for several); ``dynamic_axes``
    defaults to axis 0 (``"batch"``) of every input and output. The module's train/eval mode is
    restored afterwards. Nothing is verified here: see :func:`onnx_parity` and
    :func:`~forseti.export.onnx_check.parse_onnx`. Raises :class:`OnnxExportError`.
    """
    if not isinstance(module, nn.Module):
        raise ValidationError(
            f"module_to_onnx() exports a torch module, not {type(module).__name__}"
        )
    args = as_inputs(example_inputs)
    in_names = _names(input_names, len(args), "input", "input_names")
    out_names = _out_names(output_names)
    axes = _axes(dynamic_axes, args, in_names, out_names)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in _OPSETS:
        raise ValidationError(f"opset must be an int in [{_OPSETS[0]}, {_OPSETS[-1]}]")
    was_training = module.training
    module.eval()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="forseti-onnx-") as tmp,
            warnings.catch_warnings(record=True) as caught,
            torch.no_grad(),
        ):
            warnings.simplefilter("always")
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(
                module, args, path, dynamo=False, input_names=in_names, output_names=out_names,
                dynamic_axes=dict(axes), opset_version=opset, do_constant_folding=True,
            )  # fmt: skip
            data = path.read_bytes()
            extra = sorted(p.name for p in Path(tmp).iterdir() if p.name != "model.onnx")
    except Exception as exc:
        raise OnnxExportError(f"torch could not export {type(module).__name__}: {exc}") from exc
    finally:
        module.train(was_training)
    for message in sorted({str(w.message).splitlines()[0] for w in caught}):
        logger.debug("torch.onnx.export: %s", message)
    if extra:
        raise OnnxExportError(f"the export wrote external data files {extra}: model too large")
    return seal(data, metadata)


def onnx_parity(model_bytes: bytes, module: nn.Module, inputs: Sequence[Inputs]) -> float:
    """Max abs difference between onnxruntime (CPU) running ``model_bytes`` and ``module``.

    ``inputs`` is a list of calls (each a tensor or a tuple of tensors, in the model's input
    order); outputs are compared in order (a module returning ``.logits`` is compared on them).
    ``inf`` if a shape differs or onnxruntime fails on some call. The bytes are verified first
    (:class:`~forseti.errors.IntegrityError` if they are no valid ONNX model).
    """
    if isinstance(inputs, Tensor) or not isinstance(inputs, Sequence) or not inputs:
        raise ValidationError("inputs must be a non-empty list of calls (tensors or tuples)")
    parse_onnx(model_bytes, "the ONNX model")
    return max(d for _, d in run_parity(open_session(model_bytes, threads=1), module, inputs))


def export_onnx(
    reg: EntityRegistry,
    checkpoint: CheckpointLike,
    *,
    module: nn.Module | None = None,
    example_inputs: Inputs | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-5,
    attention_mask: bool = False,
    check_inputs: Sequence[Inputs] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> ExportEntity:
    """Export a checkpoint to ONNX, verify it, store it, and record an :class:`ExportEntity`.

    Without ``module`` the checkpoint must name a registered architecture (``TinyCausalLM``):
    the graph then has ``input_ids`` int64 ``[batch, sequence]`` (plus ``attention_mask`` of
    the same shape when ``attention_mask=True``) and ``logits`` float32 ``[batch, sequence,
    vocab]``. With ``module`` (a policy network), the checkpoint's weights are loaded into it and
    ``example_inputs`` is required (names default to ``input``/``output``, dynamic axis 0
    ``"batch"``). The export must pass ``onnx.checker`` (full) and match torch within ``atol``
    (fp32) on the example and on other sizes of every dynamic axis (or on ``check_inputs``);
    otherwise :class:`OnnxExportError` / :class:`OnnxParityError` is raised and nothing is
    stored. ``out`` also writes a copy of the verified file there.
    """
    require_onnx()
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < math.inf:
        raise ValidationError(f"atol must be a finite number >= 0, got {atol!r}")
    if module is not None and not isinstance(module, nn.Module):
        raise ValidationError(f"module must be a torch nn.Module, not {type(module).__name__}")
    check_out(out)
    ckpt = resolve_checkpoint(reg, checkpoint)
    from ..gspo.model import TinyCausalLM

    if module is not None and example_inputs is None and not isinstance(module, TinyCausalLM):
        raise ValidationError(
            f"exporting a {type(module).__name__} needs example_inputs (what forward() takes)"
        )
    loaded = load_checkpoint(reg, ckpt, module=module)  # hash verified, weights loaded
    target = loaded.module
    if target is None:
        build_module(loaded.metadata)  # raises ConfigError naming the architecture
        raise ConfigError("the checkpoint names no buildable architecture: pass module=")
    for p in list(target.parameters()) + list(target.buffers()):
        if (p.is_floating_point() and p.dtype != torch.float32) or p.device.type != "cpu":
            raise ValidationError("ONNX export runs in fp32 on the CPU: call module.float().cpu()")

    limits: dict[str, int] = {}
    make: InputMaker = sample_like
    wrapped: nn.Module = target
    lm_names: tuple[list[str], list[str]] | None = None
    if isinstance(target, TinyCausalLM):
        cfg = target.config
        wrapped = CausalLMLogits(target)
        if example_inputs is None:
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(0, cfg.vocab_size, (2, min(5, cfg.max_seq_len)), generator=gen)
            example_inputs = (ids, torch.ones_like(ids)) if attention_mask else ids
        lm_names = (["input_ids", "attention_mask"][: 1 + attention_mask], ["logits"])
        limits["sequence"] = cfg.max_seq_len
        make = lm_maker(cfg.vocab_size)
    elif attention_mask:
        raise ValidationError("attention_mask=True is for causal LMs (TinyCausalLM) only")
    example = as_inputs(example_inputs)
    if lm_names is not None:
        input_names = lm_names[0] if input_names is None else input_names
        output_names = lm_names[1] if output_names is None else output_names
    in_names = _names(input_names, len(example), "input", "input_names")
    out_names = _out_names(output_names)
    if lm_names is not None and dynamic_axes is None:
        dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in in_names + out_names}
    axes = _axes(dynamic_axes, example, in_names, out_names)

    started = time.perf_counter()
    provenance = {"forseti.checkpoint": str(ckpt.ref), "forseti.weights": ckpt.weights.sha256}
    data = module_to_onnx(
        wrapped, example, input_names=in_names, output_names=out_names, dynamic_axes=axes,
        opset=opset, metadata=provenance,
    )  # fmt: skip
    try:
        model = parse_onnx(data, "the exported model", require_digest=True)
    except IntegrityError as exc:  # the exporter wrote something invalid: an export failure
        raise OnnxExportError(str(exc)) from None
    cases = (
        list(check_inputs)
        if check_inputs is not None
        else parity_cases(example, in_names, axes, limits, make)
    )
    report = run_parity(open_session(data, threads=1), wrapped, cases)
    shapes, worst = max(report, key=lambda r: r[1])
    if not worst <= atol:
        raise OnnxParityError(
            f"onnxruntime differs from torch by {worst:.3g} (> atol {atol:g}) at input shapes "
            f"{shapes}: something was baked into the graph while tracing; nothing was stored",
            max_abs_diff=worst, atol=float(atol), shapes=shapes,
        )  # fmt: skip
    onnx, ort = require_onnx()
    options = {
        "exporter": _EXPORTER,
        "opset": opset,
        "ir_version": int(model.ir_version),
        "input_names": in_names,
        "output_names": out_names,
        "dynamic_axes": {n: {str(a): d for a, d in ax.items()} for n, ax in axes.items()},
        "checked_shapes": [s for s, _ in report],
        "atol": float(atol),
        "module": type(target).__name__,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    }  # fmt: skip
    blob = reg.put_blob(data, format="onnx")  # encrypted on the way when the store has a key
    entity = record_export(
        reg, ckpt, "onnx", blob, dtype="f32", checks={"onnx_max_abs_diff": worst},
        options=options, out=out,
    )  # fmt: skip
    logger.info(
        "exported %s to ONNX (%d bytes, opset %d) in %.2fs; max |onnxruntime - torch| = %.3g "
        "over %d shape(s)", ckpt.ref, blob.size, opset, time.perf_counter() - started, worst,
        len(report),
    )  # fmt: skip
    return entity


def load_onnx(
    reg: EntityRegistry,
    export: ExportEntity | EntityRef | UUID | str,
    *,
    providers: Sequence[str] | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for an ONNX :class:`ExportEntity`, verified first.

    The artifact is read through the registry (sha256 and size checked: a tampered or truncated
    file raises :class:`~forseti.errors.IntegrityError`), then parsed and fully checked (a file
    that is no ONNX model, e.g. a safetensors blob recorded as ONNX, is an IntegrityError too).
    No code from the file runs; no custom-op library is loaded.
    """
    from ..trees.discover import resolve

    entity = export if isinstance(export, Entity) else resolve(reg, export)
    if not isinstance(entity, ExportEntity):
        raise ValidationError(f"{export} is a {type(entity).__name__}, not an export")
    if entity.format != "onnx":
        raise ValidationError(f"export {entity.ref} is {entity.format}, not onnx")
    if entity.artifact.format != "onnx":
        raise IntegrityError(
            f"export {entity.ref} is recorded as onnx but its blob is {entity.artifact.format!r}"
        )
    data = reg.read_blob(entity.artifact)
    parse_onnx(data, f"the ONNX file of export {entity.ref}")
    return open_session(data, providers=providers)


def load_onnx_file(
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    providers: Sequence[str] | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for an ONNX file outside the store, verified first.

    With ``sha256`` the bytes must hash to it; without, the file must carry its own
    ``forseti.sha256`` digest (every Forseti export does) and match it. Truncated, garbage or
    non-ONNX files, files
    keeping tensors in external files and files using non-standard operator domains all raise
    :class:`~forseti.errors.IntegrityError` before onnxruntime sees them.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"no file {p}")
    data = p.read_bytes()
    if sha256 is not None:
        check_sha256(data, sha256, str(p))
    parse_onnx(data, str(p), require_digest=sha256 is None)
    return open_session(data, providers=providers)
