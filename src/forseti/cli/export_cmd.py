"""``forseti export REF --format safetensors|onnx|gguf [--quant q8_0] -o PATH``."""

from __future__ import annotations

import argparse
import json

import forseti as fs

from .output import Printer

__all__ = ["add_export_parser"]


def _cmd_export(args: argparse.Namespace, out: Printer) -> int:
    from ..export import export  # imports torch: only when asked for

    options = {}
    if args.format == "onnx" and args.opset is not None:
        options["opset"] = args.opset
    with fs.open(args.url, blob_key=_key(args.key_file)) as reg:
        entity = export(reg, args.ref, args.format, out=args.output, dtype=args.quant, **options)
        out.title(f"exported {args.format} ({entity.dtype or 'as stored'})")
        out.fields(
            [
                ("file", entity.path),
                ("size", f"{entity.artifact.size:,} bytes"),
                ("sha256", entity.artifact.sha256),
                ("checkpoint", str(entity.checkpoint)),
                ("export", str(entity.ref)),
                ("checks", json.dumps(dict(entity.checks)) if entity.checks else "-"),
            ]
        )
    return 0


def _key(path: str | None) -> bytes | None:
    if path is None:
        return None
    from pathlib import Path

    from ..errors import ConfigError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the blob key file {path}: {exc.strerror}") from None


def add_export_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``forseti export``."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a checkpoint as safetensors, ONNX or GGUF (verified, recorded with its "
        "provenance)",
    )
    p.add_argument(
        "ref", metavar="REF", help="the checkpoint: a lineage UUID (its head) or LINEAGE@VERSION"
    )
    p.add_argument(
        "--format", required=True, choices=("safetensors", "onnx", "gguf"), help="file format"
    )
    p.add_argument(
        "--quant",
        default=None,
        choices=("f32", "f16", "bf16", "q8_0"),
        help="tensor type: gguf f32|f16|q8_0 (default f16); safetensors f32|f16|bf16 "
        "(default: as stored); onnx is f32",
    )
    p.add_argument("-o", "--output", required=True, help="the file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument(
        "--key-file",
        default=None,
        help="file holding the raw AES key the store's blobs are encrypted with, if any",
    )
    p.set_defaults(func=_cmd_export)
