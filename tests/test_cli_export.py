"""``forseti export REF --format safetensors [--quant ...] -o PATH [--key-file ...]``."""

from __future__ import annotations

import hashlib
import importlib.util
import uuid
from pathlib import Path

import pytest
import torch
from export_helpers import logits, tiny

import forseti as fs
from forseti.cli import main
from forseti.export import (
    ExportEntity,
    load_safetensors_file,
    read_safetensors,
    save_checkpoint,
)
from forseti.registry import BlobCipher

torch.set_num_threads(1)





def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class Store:
    """A SQLite store (blobs beside it, where the CLI looks) holding one TinyCausalLM checkpoint."""

    def __init__(self, root: Path, key: bytes | None = None) -> None:
        self.url = f"sqlite:///{root / 'runs.db'}"
        self.model = tiny(7)
        with fs.open(self.url, blob_key=key) as reg:
            self.ckpt = save_checkpoint(reg, self.model, step=12, metadata={"note": "cli"})
            self.other = reg.add(fs.ModelEntity(name="not-a-checkpoint"))

    @property
    def lineage(self) -> str:
        return str(self.ckpt.lineage_id)

    def exports(self, key: bytes | None = None) -> list[ExportEntity]:
        with fs.open(self.url, blob_key=key) as reg:
            return reg.find(ExportEntity)


@pytest.fixture(autouse=True)
def _no_store_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORSETI_URL", raising=False)
    monkeypatch.delenv("FORSETI_BLOB_DIR", raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


@pytest.fixture
def key() -> bytes:
    return fs.generate_blob_key()


@pytest.fixture
def encrypted(tmp_path: Path, key: bytes) -> Store:
    return Store(tmp_path, key)


def _safetensors(store: Store, out: Path, *extra: str) -> list[str]:
    return ["export", store.lineage, "--url", store.url, "--format", "safetensors",
            "-o", str(out), "--plain", *extra]  # fmt: skip


# --------------------------------------------------------------------------------------------
# success


def test_export_as_stored(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.safetensors"
    status, stdout, stderr = run_cli(capsys, *_safetensors(store, out))
    assert status == 0, stderr
    assert stderr == ""
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() in stdout  # the artifact's sha256 is printed
    loaded = load_safetensors_file(out)
    assert loaded.step == 12 and loaded.metadata["note"] == "cli"
    assert torch.equal(logits(loaded.module), logits(store.model))  # type: ignore[arg-type]

    assert "exported safetensors (as stored)" in stdout
    assert str(out.resolve()) in stdout
    assert str(store.ckpt.ref) in stdout
    assert f"{len(data):,} bytes" in stdout
    [entity] = store.exports()
    assert entity.path == str(out.resolve())
    assert entity.derived_from == (store.ckpt.ref,) and entity.checkpoint == store.ckpt.ref
    assert entity.format == "safetensors" and entity.dtype == ""
    assert str(entity.ref) in stdout


def test_export_by_lineage_at_version_and_f16(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "half.safetensors"
    argv = _safetensors(store, out, "--quant", "f16")
    argv[1] = f"{store.lineage}@1"
    status, stdout, stderr = run_cli(capsys, *argv)
    assert status == 0, stderr
    assert "exported safetensors (f16)" in stdout
    tensors, meta = read_safetensors(bytearray(out.read_bytes()), require_digest=True)
    for name, t in store.model.state_dict().items():
        assert tensors[name].dtype == torch.float16
        assert torch.equal(tensors[name], t.to(torch.float16)), name
    assert meta["forseti.step"] == "12"
    [entity] = store.exports()
    assert entity.dtype == "f16" and entity.artifact.sha256 != store.ckpt.weights.sha256
    assert hashlib.sha256(out.read_bytes()).hexdigest() == entity.artifact.sha256
    assert entity.artifact.sha256 in stdout


def test_an_existing_output_file_is_replaced(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"stale")
    status, stdout, stderr = run_cli(capsys, *_safetensors(store, out))
    assert status == 0, stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() in stdout


# --------------------------------------------------------------------------------------------
# errors: exit 1 with the error on stderr, no file, nothing recorded


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        (str(uuid.uuid4()), "NotFoundError"),
        (f"{uuid.uuid4()}@1", "NotFoundError"),
        ("not-a-ref", "error"),
        ("{lineage}@9", "NotFoundError"),
        ("{lineage}@one", "ValidationError"),
        ("{other}", "ValidationError"),
    ],
    ids=[
        "unknown-lineage",
        "unknown-at-version",
        "garbage",
        "missing-version",
        "bad-version",
        "not-a-checkpoint",
    ],
)
def test_a_bad_ref_fails_cleanly(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], ref: str, error: str
) -> None:
    out = tmp_path / "out.safetensors"
    argv = _safetensors(store, out)
    argv[1] = ref.format(lineage=store.lineage, other=store.other.lineage_id)
    status, _, stderr = run_cli(capsys, *argv)
    assert status == 1
    assert stderr.startswith("forseti: error") and error in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".out.safetensors*"))
    assert store.exports() == []


@pytest.mark.parametrize(
    ("extra", "error"),
    [(["--quant", "q8_0"], "ValidationError")],
    ids=["q8_0-is-not-for-safetensors"],
)
def test_a_bad_option_value_fails_cleanly(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], error: str
) -> None:
    out = tmp_path / "out.safetensors"
    status, _, stderr = run_cli(capsys, *_safetensors(store, out, *extra))
    assert status == 1 and error in stderr and "dtype" in stderr
    assert not out.exists() and store.exports() == []


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_a_bad_output_path_fails_cleanly(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    out = tmp_path / "nope" / "out.safetensors" if where == "missing-dir" else tmp_path
    status, _, stderr = run_cli(capsys, *_safetensors(store, out))
    assert status == 1 and "ValidationError" in stderr
    assert store.exports() == []
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "drop",
    [("-o",), ("--format",), ("ref",)],
    ids=["no-output", "no-format", "no-ref"],
)
def test_usage_errors_exit_2(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], drop: tuple[str]
) -> None:
    out = tmp_path / "out.safetensors"
    argv = _safetensors(store, out)
    if drop[0] == "ref":
        argv.remove(store.lineage)
    else:
        i = argv.index(drop[0])
        del argv[i : i + 2]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err
    assert not out.exists() and store.exports() == []


@pytest.mark.parametrize(
    ("option", "value"), [("--format", "pickle"), ("--quant", "int4"), ("--opset", "x")]
)
def test_bad_choices_exit_2(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    out = tmp_path / "out.safetensors"
    argv = _safetensors(store, out)
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# encrypted stores


def test_the_right_key_file_exports_a_plaintext_file(
    encrypted: Store, key: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert encrypted.ckpt.weights.encrypted
    key_file = tmp_path / "blob.key"
    key_file.write_bytes(key)
    out = tmp_path / "out.safetensors"
    status, stdout, stderr = run_cli(
        capsys, *_safetensors(encrypted, out, "--key-file", str(key_file))
    )
    assert status == 0, stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() in stdout
    loaded = load_safetensors_file(out)
    assert torch.equal(logits(loaded.module), logits(encrypted.model))  # type: ignore[arg-type]
    assert key.hex() not in stdout + stderr
    [entity] = encrypted.exports(key)
    assert entity.artifact.encrypted


def test_a_wrong_or_missing_key_fails_with_a_decryption_error(
    encrypted: Store, key: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.safetensors"
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(fs.generate_blob_key())
    status, _, stderr = run_cli(capsys, *_safetensors(encrypted, out, "--key-file", str(wrong)))
    assert status == 1
    assert "DecryptionError" in stderr
    assert BlobCipher(key).key_id.hex() in stderr and key.hex() not in stderr
    assert not out.exists()

    status, _, stderr = run_cli(capsys, *_safetensors(encrypted, out))  # no key at all
    assert status == 1 and "DecryptionError" in stderr and "blob_key" in stderr
    assert not out.exists()
    assert encrypted.exports(key) == []


@pytest.mark.parametrize("content", ["missing", "newline", "short"])
def test_an_unusable_key_file_is_a_config_error(
    encrypted: Store,
    key: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
) -> None:
    key_file = tmp_path / "blob.key"
    if content == "newline":
        key_file.write_bytes(key + b"\n")  # a key file is the raw key, nothing else
    elif content == "short":
        key_file.write_bytes(key[:20])
    out = tmp_path / "out.safetensors"
    status, _, stderr = run_cli(capsys, *_safetensors(encrypted, out, "--key-file", str(key_file)))
    assert status == 1 and "ConfigError" in stderr
    assert ("cannot read" in stderr) if content == "missing" else ("16, 24 or 32" in stderr)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# the other formats, once their exporters exist


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")


def test_export_onnx(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs("forseti.export.onnx")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    status, stdout, stderr = run_cli(
        capsys, "export", store.lineage, "--url", store.url, "--format", "onnx", "-o", str(out),
        "--plain",
    )  # fmt: skip
    assert status == 0, stderr
    onnx.checker.check_model(onnx.load(str(out)))
    [entity] = store.exports()
    assert entity.format == "onnx" and entity.derived_from == (store.ckpt.ref,)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == entity.artifact.sha256
    assert "exported onnx" in stdout


def test_export_gguf(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs("forseti.export.gguf")
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "model.gguf"
    status, stdout, stderr = run_cli(
        capsys, "export", store.lineage, "--url", store.url, "--format", "gguf",
        "--quant", "q8_0", "-o", str(out), "--plain",
    )  # fmt: skip
    assert status == 0, stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert len(gguf.GGUFReader(str(out)).tensors) > 0
    [entity] = store.exports()
    assert entity.format == "gguf" and entity.dtype == "q8_0"
    assert entity.derived_from == (store.ckpt.ref,)
    assert "exported gguf (q8_0)" in stdout
