"""The :class:`CallableRegistry`: named, versioned functions a registry can call with provenance."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ...errors import ConflictError, NotFoundError, ValidationError
from ...events.runner import AsyncRunner
from ...events.subscriptions import marked
from .records import CallRecord, FunctionEntity
from .spec import FunctionSpec, analyse, code_hash

if TYPE_CHECKING:
    from ..core import EntityRegistry

__all__ = ["CallableRegistry", "callable", "CallableMark"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,199}$")


@dataclass(frozen=True, slots=True)
class CallableMark:
    """What ``@fs.callable`` attaches to a function (``fn.__forseti_callable__``)."""

    name: str
    description: str


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            f"a callable's name is 1-200 letters, digits and '_.:/-', starting with a letter or "
            f"'_' (no '@': it separates the version), got {name!r}"
        )
    return name


@overload
def callable(name: F, /) -> F: ...  # noqa: A001
@overload
def callable(name: str | None = None, /, *, description: str = "") -> Callable[[F], F]: ...  # noqa: A001


def callable(  # noqa: A001 - the public name is forseti.callable
    name: str | F | None = None, /, *, description: str = ""
) -> Any:
    """Mark a function as a registered callable named ``name`` (default: its ``__qualname__``).

    ``@fs.callable("train")``. A registry picks marked functions up with
    ``reg.callables.include(module_or_function)``, or when the function is passed to
    ``reg.call(fn, ...)``; inside ``with reg.activate():`` the function is registered with that
    registry at once. The function itself is returned unchanged.
    """

    def mark(fn: F) -> F:
        if not builtins.callable(fn):
            raise ValidationError(f"@callable decorates a function, got {type(fn).__name__}")
        label = _check_name(name) if isinstance(name, str) else _default_name(fn)
        fn.__forseti_callable__ = CallableMark(label, description)  # type: ignore[attr-defined]
        from ..core import active_registry

        reg = active_registry()
        if reg is not None:
            reg.callables.register(fn)
        return fn

    if builtins.callable(name) and not isinstance(name, str):
        fn, name = name, None
        return mark(fn)
    return mark


def _default_name(fn: Callable[..., Any]) -> str:
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return _check_name(qualname.rpartition("<locals>.")[2])


class CallableRegistry:
    """Named, versioned functions of one registry (``reg.callables``).

    Register with :meth:`register` (or ``@fs.callable`` and :meth:`include`), call with
    ``reg.call("name", ...)``. Each name is a :class:`FunctionEntity` lineage in the store, one
    version per distinct code: registering new code under a name commits its next version (a hot
    swap); code that a version already has (the current one, or an older one swapped back in)
    registers as that version. ``reg.call("name@2", ...)`` calls an older version registered in this
    process. Every call leaves a :class:`CallRecord` naming the version that ran.
    """

    def __init__(self, registry: EntityRegistry) -> None:
        self._reg = registry
        self._lock = threading.RLock()
        self._versions: dict[str, dict[int, FunctionSpec]] = {}
        self._current: dict[str, FunctionSpec] = {}
        self._by_fn: dict[int, tuple[Callable[..., Any], FunctionSpec]] = {}
        self._runner: AsyncRunner | None = None

    # -- registering ---------------------------------------------------------------------------

    def register(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        *,
        description: str | None = None,
    ) -> FunctionSpec:
        """Register ``fn`` under ``name`` (default: its ``@fs.callable`` name, else its
        ``__qualname__``) and return the version that is now current."""
        if isinstance(fn, str) or not builtins.callable(fn):
            raise ValidationError(f"register() takes a function, got {type(fn).__name__}")
        draft = self.preview(fn, name, description=description, registered=False)
        with self._lock:
            current = self._current.get(draft.name)
            if current is not None and current.code_hash == draft.code_hash and current.fn is fn:
                return current
            version, ref = self._persist(
                draft.name, fn, draft.code_hash, draft.is_async, draft.description
            )
            spec = dataclasses.replace(draft, version=version, function_ref=ref)
            self._versions.setdefault(spec.name, {})[version] = spec
            self._current[spec.name] = spec
            self._by_fn[id(fn)] = (fn, spec)
        if current is not None and current.version != version:
            logger.info(
                "callable %r hot-swapped: version %d -> %d", spec.name, current.version, version
            )
        return spec

    def preview(
        self,
        target: str | Callable[..., Any],
        name: str | None = None,
        *,
        description: str | None = None,
        registered: bool = True,
    ) -> FunctionSpec:
        """What :meth:`lookup` would run, without registering anything.

        For a function that is not registered yet, the analysed spec has ``version`` 0 and no
        ``function_ref``: enough to check a call's arguments before anything is written.
        """
        if isinstance(target, str):
            return self.get(target)
        fn = target
        if not builtins.callable(fn):
            raise ValidationError(f"expected a function, got {type(fn).__name__}")
        if registered and name is None:
            hit = self._by_fn.get(id(fn))
            if hit is not None and hit[0] is fn:
                return hit[1]
        mark: CallableMark | None = getattr(fn, "__forseti_callable__", None)
        label = _check_name(name) if name is not None else (mark.name if mark else _default_name(fn))
        about = description if description is not None else (mark.description if mark else "")
        params, var_kw, returns = analyse(fn, label)
        is_async = inspect.iscoroutinefunction(fn) or (
            not inspect.isfunction(fn) and inspect.iscoroutinefunction(type(fn).__call__)
        )
        return FunctionSpec(
            name=label,
            version=0,
            fn=fn,
            is_async=is_async,
            params=params,
            by_name={p.name: p for p in params},
            var_keyword=var_kw,
            returns=returns,
            signature=_signature(fn),
            code_hash=code_hash(fn),
            description=about,
            function_ref=None,
        )

    def _persist(
        self, name: str, fn: Callable[..., Any], digest: str, is_async: bool, about: str
    ) -> tuple[int, Any]:
        """The version of ``name`` whose code is ``digest``: the head if it matches, else the next."""
        fields: dict[str, Any] = {
            "module": getattr(fn, "__module__", "") or "",
            "qualname": getattr(fn, "__qualname__", "") or "",
            "signature": _signature(fn),
            "code_hash": digest,
            "is_async": is_async,
            "description": about,
        }
        for _ in range(10):  # another process may register the same name meanwhile
            heads = self._reg.find(FunctionEntity, name=name)
            try:
                if not heads:
                    entity = self._reg.add(FunctionEntity(name=name, **fields))
                elif heads[0].code_hash == digest:
                    entity = heads[0]
                else:
                    # code an earlier version had (swapped back, or a resumed workflow's pinned
                    # version) is that version again; new code is the next one
                    earlier = [
                        v
                        for v in self._reg.history(heads[0].lineage_id)
                        if isinstance(v, FunctionEntity) and v.code_hash == digest
                    ]
                    entity = earlier[-1] if earlier else self._reg.commit(heads[0].evolve(**fields))
            except ConflictError:
                continue
            return entity.version, entity.ref
        raise ConflictError(f"could not register {name!r}: other writers kept moving its lineage")

    def include(self, *sources: Any) -> list[FunctionSpec]:
        """Register every ``@fs.callable`` function in ``sources`` (functions, modules, classes,
        instances)."""
        specs = []
        for source in sources:
            for fn in marked(source, "__forseti_callable__"):
                specs.append(self.register(fn))
        return specs

    # -- looking up ----------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> FunctionSpec:
        """The current version of ``name``, or ``version``; ``"name@3"`` works too."""
        if not isinstance(name, str):
            raise ValidationError(f"a callable is named by a string, got {type(name).__name__}")
        if "@" in name:
            if version is not None:
                raise ValidationError(f"{name!r} names a version already")
            name, _, text = name.partition("@")
            if not text.isdigit():
                raise ValidationError(f"{name}@{text}: the version after '@' is a number")
            version = int(text)
        with self._lock:
            if version is None:
                spec = self._current.get(name)
                if spec is None:
                    raise NotFoundError(self._unknown(name))
                return spec
            spec = self._versions.get(name, {}).get(version)
            if spec is None:
                raise NotFoundError(self._missing_version(name, version))
            return spec

    def lookup(self, target: str | Callable[..., Any]) -> FunctionSpec:
        """What ``reg.call(target)`` runs: a name (``"name"``/``"name@3"``) or a function,
        registered on first use."""
        if isinstance(target, str):
            return self.get(target)
        if not builtins.callable(target):
            raise ValidationError(
                f"call() takes a callable's name or a function, got {type(target).__name__}"
            )
        hit = self._by_fn.get(id(target))
        if hit is not None and hit[0] is target:
            return hit[1]
        return self.register(target)

    def versions(self, name: str) -> list[FunctionSpec]:
        """The versions of ``name`` registered in this process, oldest first."""
        with self._lock:
            return [v for _, v in sorted(self._versions.get(name, {}).items())]

    def history(self, name: str) -> list[FunctionEntity]:
        """Every stored version of ``name`` (from any process), oldest first."""
        heads = self._reg.find(FunctionEntity, name=name)
        if not heads:
            raise NotFoundError(self._unknown(name))
        return self._reg.history(heads[0].lineage_id)  # type: ignore[return-value]

    def records(self, name: str | None = None, *, status: str | None = None) -> list[CallRecord]:
        """Stored call records (of ``name``, with ``status``), oldest first."""
        fields: dict[str, Any] = {}
        if name is not None:
            fields["name"] = name
        if status is not None:
            fields["status"] = status
        return self._reg.find(CallRecord, **fields)

    def names(self) -> list[str]:
        """The names registered in this process, sorted."""
        with self._lock:
            return sorted(self._current)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.partition("@")[0] in self._current

    def __iter__(self) -> Iterator[FunctionSpec]:
        return iter([self._current[n] for n in self.names()])

    def __len__(self) -> int:
        return len(self._current)

    def __repr__(self) -> str:
        return f"CallableRegistry({', '.join(self.names()) or 'empty'})"

    # -- running async functions from sync code -------------------------------------------------

    @property
    def runner(self) -> AsyncRunner:
        """The loop thread that runs async functions for the sync ``reg.call``."""
        with self._lock:
            if self._runner is None:
                self._runner = AsyncRunner()
            return self._runner

    def close(self) -> None:
        """Stop the loop thread, if one was started."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    # -- errors --------------------------------------------------------------------------------

    def _unknown(self, name: str) -> str:
        known = ", ".join(self.names()) or "none"
        return f"no callable named {name!r} is registered here (registered: {known})"

    def _missing_version(self, name: str, version: int) -> str:
        loaded = sorted(self._versions.get(name, {}))
        if not loaded:
            return self._unknown(name)
        return (
            f"{name}@{version} is not loaded in this process (loaded: "
            f"{', '.join(f'{name}@{v}' for v in loaded)}); versions registered by another "
            f"process are recorded in the store (reg.callables.history({name!r})) but their code "
            f"must be registered here to run"
        )


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"
