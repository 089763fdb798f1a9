"""Verifying ONNX bytes before anything runs them, and comparing onnxruntime with torch.

:func:`parse_onnx` turns bytes into a checked ``ModelProto`` or raises
:class:`~forseti.errors.IntegrityError`: a truncated, padded, garbage or mislabelled file fails
there, never with a raw protobuf/onnx error. It also refuses what a self-contained export never
holds and a loader should not follow: tensors stored in external files (paths read from the model),
and operators from domains that are neither standard ONNX nor functions defined in the model
itself (custom-op libraries). :func:`open_session` builds an onnxruntime session from the verified
bytes, CPU only by default, with no custom-op library registered. ONNX has no pickle: a model is
a protobuf graph of declared operators, so loading one executes no code from the file.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, IntegrityError, ValidationError

__all__ = [
    "DIGEST_KEY",
    "STANDARD_DOMAINS",
    "InputMaker",
    "Inputs",
    "as_inputs",
    "check_sha256",
    "lm_maker",
    "max_abs_diff",
    "open_session",
    "outputs_of",
    "parity_cases",
    "parse_onnx",
    "require_onnx",
    "run_parity",
    "sample_like",
    "seal",
]

logger = logging.getLogger(__name__)

Inputs = Tensor | Sequence[Tensor]
"""One call's inputs: a tensor, or a sequence of tensors (positional arguments)."""
InputMaker = Callable[[str, tuple[int, ...], Tensor, torch.Generator], Tensor]
"""Makes one input tensor for a parity case: (input name, shape, example tensor, generator)."""

DIGEST_KEY = "forseti.sha256"
"""The ``metadata_props`` key of an ONNX file's self-digest (see :func:`seal`)."""

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
"""Operator domains an ONNX file may use without defining them itself."""


def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules (ConfigError naming the install if missing)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - both are installed with the export extra
        raise ConfigError(
            f"ONNX export needs the onnx and onnxruntime packages ({exc.name} is missing)"
        ) from None
    return onnx, onnxruntime


def check_sha256(data: bytes, sha256: str, what: str) -> None:
    """IntegrityError unless ``data`` hashes to ``sha256`` (ValidationError if that is no hash)."""
    expected = sha256.strip().lower() if isinstance(sha256, str) else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValidationError(f"sha256 must be 64 hex digits, got {sha256!r}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(
            f"{what} is corrupted or tampered with: it hashes to {actual[:12]}…, "
            f"expected {expected[:12]}…"
        )


def _digest_tail(hexdigest: str) -> bytes:
    onnx, _ = require_onnx()
    tail = onnx.ModelProto()
    entry = tail.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, hexdigest
    return bytes(tail.SerializeToString())


def seal(data: bytes, metadata: Mapping[str, str] | None = None) -> bytes:
    """ONNX bytes with ``metadata`` added to ``metadata_props`` and a self-digest appended.

    The digest is the sha256 of everything before it, stored as one more ``metadata_props``
    entry (``forseti.sha256``) serialized *after* the body: protobuf merges the two, so any
    ONNX tool reads the file as usual, and :func:`parse_onnx` can tell a truncated or damaged
    file from a whole one without an outside hash. It guards against accidents, not forgers:
    that is what the blob store's recorded hash (or ``sha256=``) is for.
    """
    onnx, _ = require_onnx()
    if metadata:
        model = onnx.ModelProto()
        model.ParseFromString(bytes(data))
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        data = model.SerializeToString()
    body = bytes(data)
    return body + _digest_tail(hashlib.sha256(body).hexdigest())


def _check_digest(data: bytes, model: Any, what: str, required: bool) -> None:
    values = [p.value for p in model.metadata_props if p.key == DIGEST_KEY]
    if not values:
        if required:
            raise IntegrityError(
                f"{what} carries no {DIGEST_KEY} self-digest, so it cannot be verified: "
                "pass its sha256"
            )
        return
    tail = _digest_tail(values[-1])
    body = data[: len(data) - len(tail)]
    if (
        len(values) != 1
        or not data.endswith(tail)
        or (hashlib.sha256(body).hexdigest() != values[-1])
    ):
        raise IntegrityError(f"{what} does not match its {DIGEST_KEY} self-digest: damaged")


def parse_onnx(data: bytes, what: str = "the ONNX file", *, require_digest: bool = False) -> Any:
    """Parse and fully check ONNX bytes; the ``onnx.ModelProto``, or IntegrityError.

    Checks, in order: the bytes parse as a ``ModelProto`` that names an IR version, opsets and a
    graph with outputs; its ``forseti.sha256`` self-digest (see :func:`seal`) matches, when it
    has one (``require_digest``: it must); no tensor lives in an external file; every operator
    domain is standard ONNX or a function the model defines; and
    ``onnx.checker.check_model(full_check=True)`` (structure, operator schemas, strict shape
    inference) passes.
    """
    onnx, _ = require_onnx()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValidationError(f"ONNX bytes expected, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise IntegrityError(f"{what} is empty")
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, RuntimeWarning-as-error, ...
        raise IntegrityError(
            f"{what} is not an ONNX model (truncated or garbage?): {exc}"
        ) from None
    if model.ir_version <= 0 or not model.opset_import or not model.graph.output:
        raise IntegrityError(
            f"{what} is not an ONNX model: no IR version, opset or graph output "
            "(truncated, or a file of another format?)"
        )
    _check_digest(data, model, what, require_digest)
    _refuse_external_data(model, what)
    _refuse_custom_domains(model, what)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker.ValidationError, InferenceError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(f"{what} fails onnx.checker: {first}") from None
    return model


def _tensors(model: Any) -> list[Any]:
    graphs = [model.graph]
    tensors: list[Any] = []
    while graphs:
        graph = graphs.pop()
        tensors.extend(graph.initializer)
        tensors.extend(s.values for s in graph.sparse_initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    return tensors


def _refuse_external_data(model: Any, what: str) -> None:
    onnx, _ = require_onnx()
    external = [
        t.name or "<unnamed>"
        for t in _tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0
    ]
    if external:
        raise IntegrityError(
            f"{what} keeps tensors in external files ({', '.join(external[:3])}…): only "
            "self-contained ONNX files are loaded"
        )


def _refuse_custom_domains(model: Any, what: str) -> None:
    defined = {f.domain for f in model.functions}
    allowed = STANDARD_DOMAINS | defined
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    unknown = sorted({n.domain for n in nodes if n.domain not in allowed})
    if unknown:
        raise IntegrityError(
            f"{what} uses operators from {unknown}, which are neither standard ONNX nor defined "
            "in the file: custom-op libraries are never loaded"
        )


def open_session(
    data: bytes, *, providers: Sequence[str] | None = None, threads: int | None = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` over bytes that :func:`parse_onnx` accepted.

    ``providers`` defaults to ``["CPUExecutionProvider"]``; no custom-op library is registered
    and only the ONNX (protobuf) model format is accepted.
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    chosen = list(providers) if providers is not None else ["CPUExecutionProvider"]
    missing = [p for p in chosen if p not in ort.get_available_providers()]
    if missing:
        raise ConfigError(
            f"onnxruntime has no {missing}; available: {ort.get_available_providers()}"
        )
    try:
        return ort.InferenceSession(bytes(data), sess_options=options, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - onnxruntime Fail / InvalidGraph / NotImplemented
        raise ValidationError(f"onnxruntime cannot run the model: {exc}") from None


def max_abs_diff(expected: np.ndarray[Any, Any], got: np.ndarray[Any, Any]) -> float:
    """The largest absolute difference; ``inf`` for a shape mismatch or a NaN in one only."""
    if expected.shape != got.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    a = expected.astype(np.float64)
    b = got.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities too
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
    return float(diff.max())


def as_inputs(inputs: Any, what: str = "example_inputs") -> tuple[Tensor, ...]:
    """One call's inputs as a tuple (ValidationError unless a tensor or tensors)."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, Sequence) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return tuple(inputs)
    raise ValidationError(f"{what} must be a tensor or a non-empty sequence of tensors")


def outputs_of(out: Any) -> list[Tensor]:
    """A module's output as a flat list of tensors (a ``.logits`` output counts as its logits)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in outputs_of(item)]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return [logits]
    raise ValidationError(f"the module returned {type(out).__name__}, not tensors")


def run_parity(
    session: Any, module: nn.Module, cases: Sequence[Inputs]
) -> list[tuple[list[list[int]], float]]:
    """Per case: the input shapes and the max abs difference over all outputs."""
    names = [i.name for i in session.get_inputs()]
    report: list[tuple[list[list[int]], float]] = []
    was_training = module.training
    module.eval()
    try:
        for case in cases:
            args = as_inputs(case, "each parity input")
            shapes = [list(t.shape) for t in args]
            if len(args) != len(names):
                raise ValidationError(f"the model takes {names}, got {len(args)} tensor(s)")
            with torch.no_grad():
                expected = [t.detach().cpu().float().numpy() for t in outputs_of(module(*args))]
            try:
                feed = {n: t.detach().cpu().numpy() for n, t in zip(names, args, strict=True)}
                got = session.run(None, feed)
            except Exception as exc:  # noqa: BLE001 - e.g. a baked Reshape fails
                logger.warning("onnxruntime failed at input shapes %s: %s", shapes, exc)
                report.append((shapes, math.inf))
                continue
            diffs = [max_abs_diff(e, np.asarray(g)) for e, g in zip(expected, got, strict=False)]
            worst = max(diffs) if len(expected) == len(got) else math.inf
            report.append((shapes, worst))
    finally:
        module.train(was_training)
    return report


def sample_like(name: str, shape: tuple[int, ...], example: Tensor, gen: torch.Generator) -> Tensor:
    """Random floats, or integers/bools drawn from the example's own values (valid ids)."""
    if example.is_floating_point():
        return torch.randn(shape, generator=gen).to(example.dtype)
    flat = example.detach().cpu().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(shape, dtype=example.dtype)
    return flat[torch.randint(0, flat.numel(), shape, generator=gen)]


def lm_maker(vocab: int) -> InputMaker:
    """Inputs for a causal LM: token ids in ``[0, vocab)``, left-padded attention masks."""

    def make(name: str, shape: tuple[int, ...], example: Tensor, gen: torch.Generator) -> Tensor:
        if name == "input_ids":
            return torch.randint(0, vocab, shape, generator=gen, dtype=example.dtype)
        if name == "attention_mask" and len(shape) == 2:  # left padding, >= 1 real token a row
            pads = torch.randint(0, shape[1], (shape[0], 1), generator=gen)
            return (torch.arange(shape[1])[None, :] >= pads).to(example.dtype)
        return sample_like(name, shape, example, gen)

    return make


def parity_cases(
    example: tuple[Tensor, ...],
    in_names: list[str],
    axes: Mapping[str, Mapping[int, str]],
    limits: Mapping[str, int],
    make: InputMaker,
) -> list[tuple[Tensor, ...]]:
    """The example, then every dynamic axis at 1, at trace + 2, and at its limit (or 2n + 3)."""
    traced: dict[str, int] = {}
    for name, t in zip(in_names, example, strict=True):
        for axis, dim in axes.get(name, {}).items():
            traced.setdefault(dim, int(t.shape[axis]))

    def cap(dim: str, n: int) -> int:
        return max(1, min(n, limits[dim]) if dim in limits else n)

    plans = [
        {d: 1 for d in traced},
        {d: cap(d, n + 2) for d, n in traced.items()},
        {d: cap(d, limits.get(d, 2 * n + 3)) for d, n in traced.items()},
    ]
    gen = torch.Generator().manual_seed(0)
    cases = [example]
    seen = {tuple(tuple(t.shape) for t in example)}
    for plan in plans:
        call = []
        for name, t in zip(in_names, example, strict=True):
            shape = list(t.shape)
            for axis, dim in axes.get(name, {}).items():
                shape[axis] = plan[dim]
            call.append(make(name, tuple(shape), t, gen))
        key = tuple(tuple(t.shape) for t in call)
        if key not in seen:
            seen.add(key)
            cases.append(tuple(call))
    return cases
