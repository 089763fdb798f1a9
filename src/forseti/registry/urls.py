"""Turning a store URL (or ``FORSETI_URL``) into a store and a blob store."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError
from .blobs import BlobStore, FileBlobStore, MemoryBlobStore
from .stores.base import Store

__all__ = ["DEFAULT_URL", "resolve_url", "open_store", "redact"]

DEFAULT_URL = "sqlite:///.forseti/forseti.db"
"""The embedded default: a SQLite file under ``./.forseti/``."""


def resolve_url(url: str | None) -> str:
    """The URL to open: the argument, else ``$FORSETI_URL``, else :data:`DEFAULT_URL`."""
    if url is None:
        url = os.environ.get("FORSETI_URL") or DEFAULT_URL
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"a store URL is a non-empty string, got {url!r}")
    return url.strip()


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def open_store(url: str, blob_dir: str | os.PathLike[str] | None = None) -> tuple[Store, BlobStore]:
    """Open the store named by ``url`` and the blob store that goes with it."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    blob_dir = blob_dir or os.environ.get("FORSETI_BLOB_DIR") or None
    if scheme == "memory":
        from .stores.memory import MemoryStore

        if url.rstrip("/") != "memory:":
            raise ConfigError(f"{url!r}: the memory store takes no path or options; use 'memory://'")

        blobs: BlobStore = FileBlobStore(blob_dir) if blob_dir else MemoryBlobStore()
        return MemoryStore(), blobs
    if scheme == "sqlite":
        from .stores.sqlite import SQLiteStore

        parts = urlsplit(url)
        if parts.netloc:
            raise ConfigError(
                f"{url!r}: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path or path == ":memory:":
            raise ConfigError(f"{url!r}: give a file path; use 'memory://' for a throwaway store")
        options = _options(parts.query, {"timeout"})
        timeout = _float(options.get("timeout", "30"), "timeout")
        store = SQLiteStore(Path(path), timeout=timeout)
        return store, FileBlobStore(blob_dir or store.path.parent / "blobs")
    if scheme in ("postgresql", "postgres"):
        try:
            from .stores.postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                f"PostgreSQL support needs asyncpg: pip install 'forseti[postgres]' ({exc})"
            ) from None
        store_pg = PostgresStore(url)
        return store_pg, FileBlobStore(blob_dir or Path(".forseti") / "blobs")
    raise ConfigError(
        f"unknown store URL {redact(url)!r}: use memory://, sqlite:///path.db or "
        f"postgresql://user@host/db"
    )


def _options(query: str, allowed: set[str]) -> dict[str, str]:
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(
            f"unknown URL option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}"
        )
    return options


def _float(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"URL option {name}={text!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"URL option {name} must be positive")
    return value
