"""What the callable registry stores: function versions and call records, both entities."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field, NonNegativeFloat, PositiveInt

from ...entities import Entity, EntityRef, JSONMap, JSONValue, Name

__all__ = ["FunctionEntity", "CallRecord", "CallStatus"]

CallStatus = Literal["completed", "failed"]


class FunctionEntity(Entity):
    """A registered function: one lineage per name, one version per distinct body.

    Re-registering a name with different code (a hot swap) commits the next version;
    re-registering the same code (a notebook cell run twice) keeps the current one. The code
    itself is never stored (no pickle): ``code_hash`` identifies it, ``module`` and ``qualname``
    say where it lives.
    """

    entity_type: ClassVar[str] = "forseti.Function"

    name: Name
    module: str = ""
    qualname: str = ""
    signature: str = ""
    code_hash: str = Field(description="sha256 of the function's source (or bytecode)")
    is_async: bool = False
    description: str = ""


class CallRecord(Entity):
    """One call of a registered function: which version ran, on what, producing what, how long.

    ``inputs`` are the exact versions the call read (entity arguments, and the versions addressed
    fields were read from); ``outputs`` the versions it committed or returned. Both are
    provenance edges, so ``reg.descendants(input)`` finds the call and ``reg.ancestors(record)``
    its inputs. ``arguments`` shows every argument as JSON (entity arguments as
    ``"lineage@version"``); ``result`` holds a plain (non-entity) return value when it is
    JSON-like.
    """

    entity_type: ClassVar[str] = "forseti.CallRecord"

    name: Name = Field(description="the function's registered name")
    function_version: PositiveInt
    function: EntityRef | None = Field(default=None, description="the FunctionEntity version")
    inputs: tuple[EntityRef, ...] = ()
    outputs: tuple[EntityRef, ...] = ()
    arguments: JSONMap = Field(default_factory=dict)
    result: JSONValue = None
    status: CallStatus = "completed"
    error: str | None = None
    duration_s: NonNegativeFloat = 0.0
    started_at: AwareDatetime | None = None
