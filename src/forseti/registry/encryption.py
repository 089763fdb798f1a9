"""Encryption at rest for blobs: AES-GCM with a key the caller supplies.

An encrypted blob is stored as one authenticated message::

    magic (8 B) | key id (8 B) | nonce (12 B) | ciphertext of (content | sha256(content)) | tag (16 B)

* the **key id** is an HMAC of a fixed label under the key, so a wrong key is recognised at once
  and reported as :class:`~forseti.errors.DecryptionError` (the key itself is never stored);
* the header is the GCM **associated data**, and the content's own sha256 is encrypted after it:
  the message is bound to its blob address (a ciphertext copied to another blob's file fails),
  and it is encrypted in one streaming pass, before the hash is known — no plaintext ever
  touches the disk;
* every read decrypts in chunks, checks the GCM tag, *then* compares the hash inside the message
  and the hash of the plaintext with the :class:`~forseti.entities.BlobRef`: no plaintext leaves
  the store before all three checks pass.

The nonce is 96 random bits per message (the store is content-addressed, so one blob address
gets one message per key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, BinaryIO

from ..errors import ConfigError, DecryptionError, IntegrityError

__all__ = ["BlobCipher", "Encryptor", "generate_blob_key", "ENCRYPTED_SUFFIX"]

MAGIC = b"FSTENC\x00\x01"
ENCRYPTED_SUFFIX = ".enc"
_KEY_ID_LABEL = b"forseti blob key id v1"
_NONCE = 12
_TAG = 16
_HASH = 32
HEADER_SIZE = len(MAGIC) + 8 + _NONCE
_CHUNK = 1 << 20


def generate_blob_key() -> bytes:
    """A fresh random 256-bit AES key (keep it safe: blobs stored under it need it to be read)."""
    return os.urandom(32)


class Encryptor:
    """One message being encrypted (see :meth:`BlobCipher.encryptor`)."""

    def __init__(self, header: bytes, enc: Any) -> None:
        self.header = header
        self._enc = enc

    def update(self, chunk: bytes | memoryview) -> bytes:
        """The ciphertext of the next chunk of content."""
        return bytes(self._enc.update(chunk))

    def finish(self, sha256: str) -> bytes:
        """The encrypted content hash, then the tag: the end of the message."""
        tail = self._enc.update(bytes.fromhex(sha256)) + self._enc.finalize()
        return bytes(tail + self._enc.tag)


class BlobCipher:
    """AES-GCM encryption of blob content under one key (16, 24 or 32 bytes)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) not in (16, 24, 32):
            raise ConfigError(
                "a blob key is 16, 24 or 32 raw bytes (AES-128/192/256); "
                "make one with forseti.generate_blob_key()"
            )
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                f"encrypted blobs need the cryptography package: pip install cryptography ({exc})"
            ) from None
        self._key = bytes(key)
        self.key_id = hmac.new(self._key, _KEY_ID_LABEL, hashlib.sha256).digest()[:8]

    def __repr__(self) -> str:  # never show the key
        return f"BlobCipher(key_id={self.key_id.hex()})"

    def _cipher(self, nonce: bytes, tag: bytes | None = None) -> Any:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        return Cipher(algorithms.AES(self._key), modes.GCM(nonce, tag))

    def encryptor(self) -> Encryptor:
        """A streaming encryption of one message: ``header``, then ``update(chunk)`` for each
        chunk of content, then ``finish(sha256)`` for the trailer and the tag."""
        nonce = os.urandom(_NONCE)
        header = MAGIC + self.key_id + nonce
        enc = self._cipher(nonce).encryptor()
        enc.authenticate_additional_data(header)
        return Encryptor(header, enc)

    def decrypt(
        self, fh: BinaryIO, size: int, sha256: str, plain_size: int, what: str
    ) -> bytearray:
        """Decrypt a stored message of ``size`` bytes; verify its tag, then its plaintext hash."""
        from cryptography.exceptions import InvalidTag

        if size < HEADER_SIZE + _TAG:
            raise IntegrityError(f"{what} is truncated: {size} bytes is shorter than its header")
        header = fh.read(HEADER_SIZE)
        if header[: len(MAGIC)] != MAGIC:
            raise IntegrityError(f"{what} is not a Forseti encrypted blob (bad magic)")
        key_id = header[len(MAGIC) : len(MAGIC) + 8]
        if key_id != self.key_id:
            raise DecryptionError(
                f"{what} was encrypted under another key (key id {key_id.hex()}); "
                f"this registry's key has id {self.key_id.hex()}"
            )
        if size - HEADER_SIZE - _TAG - _HASH != plain_size:
            raise IntegrityError(
                f"{what} is truncated or padded: {size} bytes cannot hold {plain_size} bytes"
            )
        nonce = header[len(MAGIC) + 8 :]
        fh.seek(size - _TAG)
        tag = fh.read(_TAG)
        fh.seek(HEADER_SIZE)
        dec = self._cipher(nonce, tag).decryptor()
        dec.authenticate_additional_data(header)
        plain = bytearray()
        left = plain_size + _HASH
        while left:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                raise IntegrityError(f"{what} is truncated")
            left -= len(chunk)
            plain += dec.update(chunk)
        try:
            dec.finalize()
        except InvalidTag:
            raise IntegrityError(
                f"{what} failed authentication: the ciphertext was tampered with"
            ) from None
        inner = bytes(plain[plain_size:])
        del plain[plain_size:]
        if inner.hex() != sha256 or hashlib.sha256(plain).hexdigest() != sha256:
            raise IntegrityError(f"{what} holds another blob's content, not {sha256[:12]}…")
        return plain
