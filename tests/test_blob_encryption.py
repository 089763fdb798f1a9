"""Blobs encrypted at rest (AES-GCM): round trips on every backend, wrong or missing keys,
tampered ciphertexts, bad keys, plain blobs beside encrypted ones, checkpoints and exports."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from export_helpers import flip, logits, rewrite, tiny

import forseti as fs
from forseti.errors import (
    ConfigError,
    DecryptionError,
    IntegrityError,
    NotFoundError,
    ValidationError,
)
from forseti.export import (
    export_safetensors,
    load_checkpoint,
    load_safetensors_file,
    read_safetensors,
    save_checkpoint,
)
from forseti.gspo import TinyCausalLM
from forseti.registry import BlobCipher, FileBlobStore, MemoryBlobStore
from forseti.registry.encryption import ENCRYPTED_SUFFIX, HEADER_SIZE, MAGIC

torch.set_num_threads(1)

MARKER = hashlib.sha512(b"forseti plaintext marker").digest()  # 64 distinctive bytes
assert len(MARKER) == 64
PLAIN = MARKER * 256  # 16 KiB of it
TAG = 16
OVERHEAD = HEADER_SIZE + 32 + TAG  # magic 8 + key id 8 + nonce 12, the sealed sha256, the tag




def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def files_under(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"
    )




def key_id(key: bytes) -> str:
    return BlobCipher(key).key_id.hex()


@pytest.fixture
def key() -> bytes:
    return fs.generate_blob_key()


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def ereg(store_url: str, key: bytes, blob_dir: Path) -> Iterator[fs.EntityRegistry]:
    """A registry of each backend (memory, SQLite, PostgreSQL) whose blob files are encrypted."""
    registry = fs.open(store_url, blob_key=key, blob_dir=blob_dir)
    yield registry
    registry.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'enc.db'}"


# --------------------------------------------------------------------------------------------
# round trips


def test_round_trip_on_every_backend(
    ereg: fs.EntityRegistry, key: bytes, blob_dir: Path, tmp_path: Path
) -> None:
    ref = ereg.put_blob(PLAIN, format="bin")
    assert ref.encrypted is True
    assert ref.sha256 == hashlib.sha256(PLAIN).hexdigest()  # the hash stays the plaintext's
    assert ref.size == len(PLAIN)
    assert ereg.read_blob(ref) == PLAIN
    with ereg.open_blob(ref) as fh:
        assert fh.read() == PLAIN

    path = blob_dir / ref.sha256[:2] / (ref.sha256 + ENCRYPTED_SUFFIX)
    assert files_under(blob_dir) == [path]
    stored = path.read_bytes()
    assert stored.startswith(MAGIC) and stored[8:16] == bytes.fromhex(key_id(key))
    assert len(stored) == len(PLAIN) + OVERHEAD
    assert MARKER not in stored and MARKER[:16] not in stored
    assert (path.stat().st_mode & 0o777) == 0o444
    assert not (blob_dir / ref.sha256[:2] / ref.sha256).exists()  # no plaintext copy

    source = tmp_path / "source.bin"
    source.write_bytes(PLAIN[::-1])
    from_file = ereg.put_blob(source, format="bin")
    assert from_file.encrypted and ereg.read_blob(from_file) == PLAIN[::-1]
    assert source.exists()
    staged = ereg.blobs.tmp_dir / "staged.bin"
    staged.write_bytes(PLAIN[1:])
    moved = ereg.put_blob(staged, format="bin", move=True)
    assert moved.encrypted and ereg.read_blob(moved) == PLAIN[1:]
    assert not staged.exists()
    for p in files_under(blob_dir):
        assert MARKER not in p.read_bytes() and MARKER[::-1][:32] not in p.read_bytes()


def test_checkpoints_round_trip_under_a_key(
    ereg: fs.EntityRegistry, blob_dir: Path
) -> None:
    model = tiny(1)
    ckpt = save_checkpoint(ereg, model, step=3)
    assert ckpt.weights.encrypted is True
    for p in files_under(blob_dir):  # nothing of the safetensors file is readable at rest
        data = p.read_bytes()
        assert b"__metadata__" not in data and b"forseti.sha256" not in data
    target = tiny(2)
    loaded = load_checkpoint(ereg, ckpt, module=target)
    assert loaded.module is target and loaded.step == 3
    assert torch.equal(logits(target), logits(model))
    rebuilt = load_checkpoint(ereg, ckpt.lineage_id).module
    assert isinstance(rebuilt, TinyCausalLM)
    assert torch.equal(logits(rebuilt), logits(model))


def test_a_reopened_store_reads_with_the_same_key(
    persistent_url: str, key: bytes, blob_dir: Path
) -> None:
    model = tiny(3)
    with fs.open(persistent_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        ckpt = save_checkpoint(reg, model)
    with fs.open(persistent_url, blob_key=bytearray(key), blob_dir=blob_dir) as reg:
        assert reg.read_blob(ref) == PLAIN
        assert torch.equal(logits(load_checkpoint(reg, ckpt.ref).module), logits(model))  # type: ignore[arg-type]


def test_a_memory_blob_store_encrypts_too(key: bytes) -> None:
    with fs.open("memory://", blob_key=key) as reg:
        assert isinstance(reg.blobs, MemoryBlobStore)
        ref = reg.put_blob(PLAIN)
        assert ref.encrypted
        stored = reg.blobs._data[ref.sha256 + ENCRYPTED_SUFFIX]
        assert MARKER not in stored and stored.startswith(MAGIC)
        assert len(stored) == len(PLAIN) + OVERHEAD
        assert ref.sha256 not in reg.blobs._data
        assert reg.read_blob(ref) == PLAIN
        model = tiny(4)
        ckpt = save_checkpoint(reg, model)
        assert ckpt.weights.encrypted
        assert torch.equal(logits(load_checkpoint(reg, ckpt).module), logits(model))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, (3 << 20) + 5])
def test_sizes_around_the_chunk_size(sqlite_url: str, key: bytes, blob_dir: Path, size: int) -> None:
    data = (MARKER * (size // 64 + 1))[:size]
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(data)
        assert ref.size == size and reg.read_blob(ref) == data
        assert reg.blobs.path(ref).stat().st_size == size + OVERHEAD  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# wrong or missing key


def test_a_wrong_key_or_no_key_is_a_decryption_error(
    persistent_url: str, key: bytes, blob_dir: Path
) -> None:
    with fs.open(persistent_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        ckpt = save_checkpoint(reg, tiny(0))
    other = fs.generate_blob_key()
    with fs.open(persistent_url, blob_key=other, blob_dir=blob_dir) as reg:
        with pytest.raises(DecryptionError) as exc:
            reg.read_blob(ref)
        message = str(exc.value)
        assert "key id" in message
        assert key_id(key) in message and key_id(other) in message
        assert key.hex() not in message and other.hex() not in message
        with pytest.raises(DecryptionError):
            reg.open_blob(ref)
        target = tiny(1)
        before = snapshot(target)
        with pytest.raises(DecryptionError):
            load_checkpoint(reg, ckpt, module=target)
        assert same_state(snapshot(target), before)
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        with pytest.raises(DecryptionError, match="blob_key"):
            reg.read_blob(ref)
        with pytest.raises(DecryptionError, match="blob_key"):
            load_checkpoint(reg, ckpt)
        with pytest.raises(DecryptionError):
            export_safetensors(reg, ckpt)
    assert issubclass(DecryptionError, IntegrityError)


def test_a_wrong_key_in_memory_is_a_decryption_error(key: bytes) -> None:
    other = fs.generate_blob_key()
    with fs.open("memory://", blob_key=key) as a, fs.open("memory://", blob_key=other) as b:
        ref = a.put_blob(PLAIN)
        b.blobs._data.update(a.blobs._data)  # the same stored bytes, another key
        with pytest.raises(DecryptionError, match=key_id(key)):
            b.read_blob(ref)
    with fs.open("memory://") as plain:
        plain.blobs._data.update(a.blobs._data)
        with pytest.raises(DecryptionError, match="blob_key"):
            plain.read_blob(ref)


# --------------------------------------------------------------------------------------------
# tampering: IntegrityError, never DecryptionError (the key is right; the bytes are not)

DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "ciphertext-byte": lambda d: flip(d, HEADER_SIZE + 100),
    "last-ciphertext-byte": lambda d: flip(d, len(d) - TAG - 1),
    "tag-byte": lambda d: flip(d, len(d) - 1),
    "magic-byte": lambda d: flip(d, 0),
    "nonce-byte": lambda d: flip(d, 16 + 5),
    "truncate-1": lambda d: d[:-1],
    "truncate-the-tag": lambda d: d[:-TAG],
    "truncate-into-header": lambda d: d[: HEADER_SIZE + TAG - 1],
    "empty": lambda d: b"",
    "append-1": lambda d: d + b"\0",
    "append-block": lambda d: d + d[HEADER_SIZE : HEADER_SIZE + 64],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_tampering_with_a_blob_file_is_an_integrity_error(
    sqlite_url: str, key: bytes, blob_dir: Path, damage: str
) -> None:
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        ckpt = save_checkpoint(reg, tiny(0))
        for blob in (ref, ckpt.weights):
            rewrite(reg.blobs.path(blob), DAMAGE[damage])  # type: ignore[attr-defined]
            with pytest.raises(IntegrityError) as exc:
                reg.read_blob(blob)
            assert not isinstance(exc.value, DecryptionError), exc.value
        target = tiny(1)
        before = snapshot(target)
        with pytest.raises(IntegrityError) as exc:
            load_checkpoint(reg, ckpt, module=target)
        assert not isinstance(exc.value, DecryptionError)
        assert same_state(snapshot(target), before)
        with pytest.raises(IntegrityError):
            export_safetensors(reg, ckpt)

        again = reg.put_blob(PLAIN)  # storing the content again repairs the damaged copy
        assert again == ref and reg.read_blob(ref) == PLAIN


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_tampering_in_memory_is_an_integrity_error(key: bytes, damage: str) -> None:
    with fs.open("memory://", blob_key=key) as reg:
        ref = reg.put_blob(PLAIN)
        name = ref.sha256 + ENCRYPTED_SUFFIX
        reg.blobs._data[name] = DAMAGE[damage](reg.blobs._data[name])
        with pytest.raises(IntegrityError) as exc:
            reg.read_blob(ref)
        assert not isinstance(exc.value, DecryptionError)


def test_an_edited_key_id_reads_as_another_key(
    sqlite_url: str, key: bytes, blob_dir: Path
) -> None:
    """The key id is how a wrong key is recognised, so an edited one is reported as a key
    mismatch (still an IntegrityError subclass), never decrypted."""
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        rewrite(reg.blobs.path(ref), lambda d: flip(d, 8))  # type: ignore[attr-defined]
        with pytest.raises(DecryptionError, match="another key"):
            reg.read_blob(ref)


def test_a_ciphertext_copied_over_another_blob_is_an_integrity_error(
    sqlite_url: str, key: bytes, blob_dir: Path
) -> None:
    a, b = PLAIN, PLAIN[::-1]  # the same size: only the associated data tells them apart
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref_a, ref_b = reg.put_blob(a), reg.put_blob(b)
        path_a = reg.blobs.path(ref_a)  # type: ignore[attr-defined]
        rewrite(reg.blobs.path(ref_b), lambda _: path_a.read_bytes())  # type: ignore[attr-defined]
        with pytest.raises(IntegrityError) as exc:
            reg.read_blob(ref_b)
        assert not isinstance(exc.value, DecryptionError)
        assert reg.read_blob(ref_a) == a

        ckpt_a, ckpt_b = save_checkpoint(reg, tiny(0)), save_checkpoint(reg, tiny(1))
        assert ckpt_a.weights.size == ckpt_b.weights.size
        src = reg.blobs.path(ckpt_a.weights)  # type: ignore[attr-defined]
        rewrite(reg.blobs.path(ckpt_b.weights), lambda _: src.read_bytes())  # type: ignore[attr-defined]
        with pytest.raises(IntegrityError) as exc:
            load_checkpoint(reg, ckpt_b)
        assert not isinstance(exc.value, DecryptionError)


def test_a_blob_file_that_is_gone_is_not_found(sqlite_url: str, key: bytes, blob_dir: Path) -> None:
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        reg.blobs.path(ref).unlink()  # type: ignore[attr-defined]
        with pytest.raises(NotFoundError):
            reg.read_blob(ref)


# --------------------------------------------------------------------------------------------
# keys


@pytest.mark.parametrize(
    "bad",
    [b"", b"k" * 15, b"k" * 31, b"k" * 33, b"k" * 64, "k" * 32, 12345, [0] * 32],
    ids=["empty", "15", "31", "33", "64", "str", "int", "list"],
)
def test_a_bad_key_is_a_config_error_and_opens_nothing(
    sqlite_url: str, tmp_path: Path, bad: object
) -> None:
    with pytest.raises(ConfigError, match="16, 24 or 32"):
        fs.open(sqlite_url, blob_key=bad, blob_dir=tmp_path / "blobs")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BlobCipher(bad)  # type: ignore[arg-type]
    assert not (tmp_path / "enc.db").exists() and not (tmp_path / "blobs").exists()


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_128_192_256_keys_work(sqlite_url: str, blob_dir: Path, size: int) -> None:
    key = bytes(range(size))
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        assert reg.read_blob(ref) == PLAIN
    wrong = bytes(range(1, size + 1))
    with (
        fs.open(sqlite_url, blob_key=wrong, blob_dir=blob_dir) as reg,
        pytest.raises(DecryptionError),
    ):
        reg.read_blob(ref)


def test_the_cipher_never_shows_its_key(key: bytes) -> None:
    cipher = BlobCipher(key)
    assert key.hex() not in repr(cipher) and key.hex()[:16] not in repr(cipher)
    assert cipher.key_id.hex() in repr(cipher)
    assert len(cipher.key_id) == 8
    assert BlobCipher(key).key_id == cipher.key_id
    assert BlobCipher(fs.generate_blob_key()).key_id != cipher.key_id
    assert len(fs.generate_blob_key()) == 32
    assert fs.generate_blob_key() != fs.generate_blob_key()


def test_each_blob_gets_its_own_nonce(key: bytes, tmp_path: Path) -> None:
    dirs = [tmp_path / "one", tmp_path / "two"]
    stored = []
    for d in dirs:
        with fs.open("memory://", blob_key=key, blob_dir=d) as reg:
            refs = [reg.put_blob(PLAIN), reg.put_blob(PLAIN[::-1])]
            stored += [reg.blobs.path(r).read_bytes() for r in refs]  # type: ignore[attr-defined]
    nonces = {s[16:HEADER_SIZE] for s in stored}
    assert len(nonces) == 4
    assert stored[0] != stored[2]  # the same plaintext, key and address: another ciphertext


# --------------------------------------------------------------------------------------------
# plain and encrypted blobs side by side; the store API


def test_an_encrypted_blob_has_no_plaintext_path(sqlite_url: str, key: bytes, blob_dir: Path) -> None:
    with fs.open(sqlite_url, blob_dir=blob_dir) as plain_reg:
        plain = plain_reg.put_blob(b"plain bytes")
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        with pytest.raises(ValidationError, match="encrypted"):
            reg.blob_path(ref)
        path = reg.blob_path(plain)
        assert path.read_bytes() == b"plain bytes"


def test_plain_blobs_stay_readable_with_a_key(sqlite_url: str, key: bytes, blob_dir: Path) -> None:
    model = tiny(5)
    with fs.open(sqlite_url, blob_dir=blob_dir) as reg:
        plain = reg.put_blob(PLAIN)
        ckpt = save_checkpoint(reg, model)
    assert plain.encrypted is False and ckpt.weights.encrypted is False
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        assert reg.read_blob(plain) == PLAIN
        assert torch.equal(logits(load_checkpoint(reg, ckpt).module), logits(model))  # type: ignore[arg-type]
        again = reg.put_blob(PLAIN)  # under a key the same content is stored encrypted beside
        assert again.encrypted and again.sha256 == plain.sha256 and again != plain
        assert reg.read_blob(again) == reg.read_blob(plain) == PLAIN
        names = {p.name for p in files_under(blob_dir)}
        assert {plain.sha256, plain.sha256 + ENCRYPTED_SUFFIX} <= names


def test_putting_the_same_content_twice_is_idempotent(
    ereg: fs.EntityRegistry, blob_dir: Path
) -> None:
    first = ereg.put_blob(PLAIN, format="bin")
    files = files_under(blob_dir)
    stored = files[0].read_bytes()
    second = ereg.put_blob(bytearray(PLAIN), format="bin")
    assert second == first
    assert files_under(blob_dir) == files and len(files) == 1
    assert files[0].read_bytes() == stored  # kept, not encrypted again under a new nonce
    assert list(ereg.blobs.tmp_dir.iterdir()) == []


def test_the_same_content_under_another_key_does_not_lock_the_first_key_out(
    sqlite_url: str, key: bytes, blob_dir: Path
) -> None:
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        ref = reg.put_blob(PLAIN)
        stored = reg.blobs.path(ref).read_bytes()  # type: ignore[attr-defined]
    with fs.open(sqlite_url, blob_key=fs.generate_blob_key(), blob_dir=blob_dir) as reg:
        with pytest.raises(DecryptionError):
            reg.put_blob(PLAIN)
        assert reg.blobs.path(ref).read_bytes() == stored  # type: ignore[attr-defined]
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        assert reg.read_blob(ref) == PLAIN


def test_the_registry_wires_the_cipher_into_its_blob_store(
    sqlite_url: str, key: bytes, blob_dir: Path
) -> None:
    with fs.open(sqlite_url, blob_key=key, blob_dir=blob_dir) as reg:
        assert isinstance(reg.blobs, FileBlobStore)
        assert reg.blobs.cipher is not None and reg.blobs.cipher.key_id == BlobCipher(key).key_id
    with fs.open(sqlite_url, blob_dir=blob_dir) as reg:
        assert reg.blobs.cipher is None


# --------------------------------------------------------------------------------------------
# exports of encrypted checkpoints are plaintext files


def test_exporting_an_encrypted_checkpoint_writes_a_plaintext_file(
    ereg: fs.EntityRegistry, tmp_path: Path, blob_dir: Path
) -> None:
    model = tiny(6)
    ckpt = save_checkpoint(ereg, model, step=8, metadata={"note": "secret-weights"})
    out = tmp_path / "out.safetensors"
    entity = export_safetensors(ereg, ckpt, out=out)
    assert entity.artifact.encrypted  # in the store: encrypted too
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entity.artifact.sha256
    assert b"__metadata__" in data and b"secret-weights" in data
    loaded = load_safetensors_file(out)
    assert loaded.step == 8 and loaded.metadata["note"] == "secret-weights"
    assert torch.equal(logits(loaded.module), logits(model))  # type: ignore[arg-type]

    half = tmp_path / "half.safetensors"
    cast = export_safetensors(ereg, ckpt, dtype="f16", out=half)
    assert cast.artifact.encrypted is True  # the new blob is encrypted at rest too
    at_rest = blob_dir / cast.artifact.sha256[:2] / (cast.artifact.sha256 + ENCRYPTED_SUFFIX)
    assert at_rest.is_file() and b"secret-weights" not in at_rest.read_bytes()
    assert hashlib.sha256(half.read_bytes()).hexdigest() == cast.artifact.sha256
    tensors, _ = read_safetensors(bytearray(half.read_bytes()), require_digest=True)
    for name, t in model.state_dict().items():
        assert tensors[name].dtype == torch.float16
        assert torch.equal(tensors[name], t.to(torch.float16)), name
    for p in files_under(blob_dir):
        assert b"secret-weights" not in p.read_bytes()
