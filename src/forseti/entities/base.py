"""The :class:`Entity` base: system fields (defined here, once), drafts, and the type registry."""

from __future__ import annotations

import importlib
import logging
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from uuid import UUID

import pydantic
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from ..errors import UnknownEntityTypeError, ValidationError
from .refs import EntityRef, fast_ref, new_uuid4
from .typenames import register_name

__all__ = ["Entity", "SYSTEM_FIELDS", "MAX_VERSION", "entity_type", "entity_types", "utcnow"]

MAX_VERSION = 2**31 - 1
"""The largest version number a lineage can reach (stores keep versions as 32-bit integers)."""

logger = logging.getLogger(__name__)

_TYPES: dict[str, type[Entity]] = {}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Entity(BaseModel):
    """A versioned, immutable entity with lineage.

    Subclass it and add fields; give the subclass a stable ``entity_type`` name (stored with every
    version so it loads back as the right class). Without one, the type name is
    ``"<module>.<qualname>"``.

    The system fields below are set by Forseti: ``evolve()`` makes the next version's draft, and only
    the registry turns a draft into a committed version.

    ``child_fields`` names the reference fields (typed :class:`EntityRef` or a tuple of them) whose
    targets this entity *owns*, such as a pipeline's ``stages``: :mod:`forseti.trees` draws them as
    ``hierarchical`` edges. Every other reference field is a ``reference`` edge (something used,
    not owned, such as a stage's ``config``), and ``derived_from`` entries are ``derived_from``
    edges. A name that is not a reference field of the class is a ``TypeError`` when the class is
    defined.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, ser_json_inf_nan="strings"
    )

    entity_type: ClassVar[str] = "forseti.Entity"
    child_fields: ClassVar[tuple[str, ...]] = ()

    id: UUID = Field(default_factory=new_uuid4, description="this version's id")
    lineage_id: UUID = Field(default_factory=new_uuid4, description="stable identity across versions")
    version: int = Field(default=1, ge=1, le=2**31 - 1, description="1, 2, 3 … within the lineage")
    previous_id: UUID | None = Field(default=None, description="the version this one came from")
    created_at: AwareDatetime = Field(default_factory=utcnow, description="UTC")
    derived_from: tuple[EntityRef, ...] = Field(
        default=(), description="provenance: the exact input versions that produced this one"
    )

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ValidationError.from_pydantic(exc, type(self).__name__) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise ValidationError(
            f"{type(self).__name__} versions are immutable; make the next version with "
            f"evolve({name}=...) and commit it"
        )

    def __delattr__(self, name: str) -> None:
        raise ValidationError(f"{type(self).__name__} versions are immutable")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _check_child_fields(cls)
        register_name(_TYPES, cls, "entity_type", "entity type name")

    @model_validator(mode="after")
    def _check_system_fields(self) -> Self:
        if self.created_at.utcoffset() != UTC.utcoffset(None):
            object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))
        if (self.version == 1) != (self.previous_id is None):
            raise ValueError("previous_id is set exactly when version > 1")
        return self

    # -- identity ----------------------------------------------------------------------------

    @property
    def ref(self) -> EntityRef:
        """This exact version as an :class:`EntityRef`."""
        # the fields are validated already: skip EntityRef's checks (hot path)
        return fast_ref(self.lineage_id, self.version)

    @classmethod
    def user_fields(cls) -> tuple[str, ...]:
        """The fields a user sets (everything except the system fields)."""
        return tuple(f for f in cls.model_fields if f not in SYSTEM_FIELDS)

    def references(self) -> Iterator[tuple[str, EntityRef]]:
        """Every ``(relation, ref)`` this version points at: ``derived_from`` and ref fields.

        The registry records each as a provenance edge, so a checkpoint's ``run`` and ``model``
        show up in ``ancestors()`` without being repeated in ``derived_from``.
        """
        for ref in self.derived_from:
            yield "derived_from", ref
        for name in _ref_fields(type(self)):
            value = getattr(self, name)
            if isinstance(value, EntityRef):
                yield name, value
            elif isinstance(value, tuple):
                for item in value:
                    if isinstance(item, EntityRef):
                        yield name, item

    # -- versions ----------------------------------------------------------------------------

    def evolve(self, **changes: Any) -> Self:
        """Return a draft of the next version with ``changes`` applied.

        The draft has a new ``id``, ``version + 1``, ``previous_id = self.id`` and a fresh
        ``created_at``; ``derived_from`` is empty unless given. Nothing is stored until
        ``registry.commit(draft)``.
        """
        fixed = (set(changes) & set(SYSTEM_FIELDS)) - {"derived_from"}
        if fixed:
            raise ValidationError(
                f"{', '.join(sorted(fixed))} {'is a system field' if len(fixed) == 1 else 'are system fields'}"
                " set by evolve(); only derived_from may be given"
            )
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise ValidationError(
                f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}; "
                f"fields are: {', '.join(self.user_fields())}"
            )
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(changes)
        data.update(
            id=new_uuid4(),
            version=self.version + 1,
            previous_id=self.id,
            created_at=utcnow(),
            derived_from=changes.get("derived_from", ()),
        )
        return type(self)(**data)

    # -- storage -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """This version as plain JSON-compatible data (system fields included).

        Infinite floats become the strings ``"Infinity"``/``"-Infinity"``, which
        :meth:`from_state` reads back.
        """
        return self.model_dump(mode="json")

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Entity:
        """Rebuild a stored version as ``cls`` (the registry looks ``cls`` up by the stored type name)."""
        try:
            return cls.model_validate(state)
        except pydantic.ValidationError as exc:
            raise ValidationError.from_pydantic(exc, cls.__name__) from None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("id", "lineage_id", "previous_id") and isinstance(value, UUID):
                yield name, f"{str(value)[:8]}…"
            elif name == "created_at":
                continue
            else:
                yield name, value


def _mentions_ref(annotation: Any) -> bool:
    if annotation is EntityRef:
        return True
    return any(_mentions_ref(arg) for arg in typing.get_args(annotation))


_REF_FIELDS: dict[type[Entity], tuple[str, ...]] = {}


def _check_child_fields(cls: type[Entity]) -> None:
    """``cls.child_fields`` must be a tuple of the names of ``cls``'s reference fields."""
    names = cls.child_fields
    if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{cls.__name__}.child_fields must be a tuple of field names")
    for name in names:
        info = cls.model_fields.get(name)
        if info is None or name in SYSTEM_FIELDS:
            raise TypeError(
                f"{cls.__name__}.child_fields names {name!r}, which is not a user field of "
                f"{cls.__name__}; user fields are: {', '.join(cls.user_fields()) or '(none)'}"
            )
        # an annotation pydantic could not resolve yet is checked when it is used, not here
        if cls.__pydantic_complete__ and not _mentions_ref(info.annotation):
            raise TypeError(
                f"{cls.__name__}.child_fields names {name!r}, which is not a reference field "
                f"(type EntityRef, or a tuple of EntityRef)"
            )


def _ref_fields(cls: type[Entity]) -> tuple[str, ...]:
    """The user fields of ``cls`` whose type can hold an :class:`EntityRef` (computed once)."""
    names = _REF_FIELDS.get(cls)
    if names is None:
        names = _REF_FIELDS[cls] = tuple(
            name
            for name, info in cls.model_fields.items()
            if name not in SYSTEM_FIELDS and _mentions_ref(info.annotation)
        )
    return names


SYSTEM_FIELDS: tuple[str, ...] = tuple(Entity.model_fields)
"""The system fields every version carries, in declaration order (the one definition)."""

_TYPES["forseti.Entity"] = Entity


#: Forseti's own types defined in packages that are not imported with ``forseti`` (they need
#: torch): a stored version of one imports its package on first read
LAZY_TYPE_PACKAGES: dict[str, str] = {
    "forseti.gspo.": "forseti.gspo",
    "forseti.consensus.": "forseti.consensus",
    "forseti.export.": "forseti.export",
    "forseti.rl.": "forseti.rl",
}


def import_for(name: str) -> bool:
    """Import the Forseti package that defines type or topic ``name``, if it is one of those
    loaded lazily; whether something was imported."""
    for prefix, package in LAZY_TYPE_PACKAGES.items():
        if name.startswith(prefix):
            try:
                importlib.import_module(package)
            except ImportError:  # e.g. torch is not installed: the type stays unknown
                logger.debug("could not import %s for %s", package, name, exc_info=True)
                return False
            return True
    return False


def entity_type(name: str) -> type[Entity]:
    """The entity class registered under ``name``; :class:`UnknownEntityTypeError` if none."""
    cls = _TYPES.get(name)
    if cls is None and import_for(name):
        cls = _TYPES.get(name)
    if cls is None:
        raise UnknownEntityTypeError(
            f"entity type {name!r} is not registered in this process; import the module that "
            f"defines it before loading versions of it"
        )
    return cls


def entity_types(base: type[Entity] = Entity) -> dict[str, type[Entity]]:
    """All registered type names whose class is ``base`` or a subclass of it."""
    return {name: cls for name, cls in _TYPES.items() if issubclass(cls, base)}
