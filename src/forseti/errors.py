"""Typed errors raised by every public entry point of Forseti.

Every error derives from :class:`ForsetiError`, and each also derives from the builtin exception
a Python user would expect (``ValueError``, ``LookupError``, ...), so both ``except
forseti.NotFoundError`` and ``except LookupError`` work.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ForsetiError",
    "ValidationError",
    "ConflictError",
    "NotFoundError",
    "UnknownEntityTypeError",
    "IntegrityError",
    "DecryptionError",
    "ConfigError",
    "SchemaVersionError",
    "StoreClosedError",
    "DuplicateOperationError",
    "BackpressureError",
]


class ForsetiError(Exception):
    """Base class of every error Forseti raises on purpose."""


class ValidationError(ForsetiError, ValueError):
    """Input failed validation; nothing was written.

    ``errors`` holds pydantic-style error dicts (``loc``, ``msg``, ``type``) when the failure came
    from field validation, and is empty otherwise.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors: list[dict[str, Any]] = list(errors or [])

    @classmethod
    def from_pydantic(cls, exc: Any, title: str | None = None) -> ValidationError:
        """Wrap a ``pydantic.ValidationError`` without losing its structured details."""
        errors = [
            {"loc": tuple(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        lines = [f"{title or exc.title}: {len(errors)} invalid field(s)"]
        lines += [f"  {'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors]
        return cls("\n".join(lines), errors)


class ConflictError(ForsetiError):
    """An optimistic-concurrency check failed: the head moved since the draft was made.

    ``expected`` is the head version the writer assumed, ``actual`` the head found in the store
    (``None`` when it could not be read inside the failed transaction).
    """

    def __init__(
        self,
        message: str,
        *,
        lineage_id: Any = None,
        expected: int | None = None,
        actual: int | None = None,
    ) -> None:
        super().__init__(message)
        self.lineage_id = lineage_id
        self.expected = expected
        self.actual = actual


class NotFoundError(ForsetiError, LookupError):
    """The lineage, version, id, alias or blob asked for does not exist."""


class UnknownEntityTypeError(NotFoundError):
    """A stored entity names a type that is not registered in this process."""


class IntegrityError(ForsetiError):
    """Stored bytes do not match their recorded hash: tampered, truncated or corrupted data."""


class DecryptionError(IntegrityError):
    """An encrypted blob cannot be read: no key was given, or the key is not the one it was
    encrypted under. (A tampered ciphertext is a plain :class:`IntegrityError`.)"""


class ConfigError(ForsetiError, ValueError):
    """A URL, option or environment setting is invalid."""


class SchemaVersionError(ConfigError):
    """The store was written by a schema this version of Forseti does not understand."""


class StoreClosedError(ForsetiError, RuntimeError):
    """The registry or store was used after ``close()``."""


class DuplicateOperationError(ForsetiError):
    """An operation id (``op_id``) was already committed; nothing new was written.

    The operation scheduler turns this into an idempotent replay that returns the stored result.
    """

    def __init__(self, message: str, *, op_id: str) -> None:
        super().__init__(message)
        self.op_id = op_id


class BackpressureError(ForsetiError):
    """The event bus's dispatch queue is full; ``await bus.apublish(...)`` waits instead."""
