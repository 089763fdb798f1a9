"""Printing for the ``forseti`` command: rich when installed, plain text otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import forseti as fs

from ..entities import BlobRef, Entity, EntityRef, thaw
from ..errors import ForsetiError
from ..registry import FileBlobStore
from ..trees import EntityTree, to_text
from ..trees.render import to_rich

__all__ = ["Printer"]


# -- output ----------------------------------------------------------------------------------


class Printer:
    """Headings, lines and tables: through ``rich`` when it is importable, else plain text."""

    def __init__(self, plain: bool = False) -> None:
        self._console: Any = None
        if not plain:
            try:
                from rich.console import Console
            except ImportError:
                pass
            else:
                self._console = Console(markup=False, highlight=False, emoji=False)

    def title(self, text: str) -> None:
        if self._console is not None:
            from rich.rule import Rule

            self._console.print(Rule(text, style="bold"))
        else:
            print(f"\n== {text} ==")

    def section(self, text: str) -> None:
        if self._console is not None:
            self._console.print()
            self._console.print(text, style="bold cyan")
        else:
            print(f"\n{text}")
            print("-" * min(len(text), 100))

    def line(self, text: str = "", *, style: str | None = None, soft_wrap: bool = False) -> None:
        """One line; ``soft_wrap=True`` never breaks it (for paths and URLs people copy)."""
        if self._console is not None:
            self._console.print(text, style=style, soft_wrap=soft_wrap)
        else:
            print(text)

    def fields(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``name: value`` lines, the names aligned."""
        width = max((len(k) for k, _ in pairs), default=0)
        for key, value in pairs:
            self.line(f"  {key + ':':<{width + 1}}  {value}")

    def tree(self, tree: EntityTree) -> None:
        """An entity tree: drawn by rich, or in plain ASCII."""
        if self._console is not None:
            self._console.print(to_rich(tree))
        else:
            print(to_text(tree, plain=True), end="")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        rows = [[str(c) for c in row] for row in rows]
        if self._console is not None:
            from rich.table import Table
            from rich.text import Text

            table = Table(*headers, show_lines=False, header_style="bold")
            for row in rows:
                table.add_row(*(Text(c) for c in row))
            self._console.print(table)
            return
        widths = [len(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row[:-1]):
                widths[i] = max(widths[i], len(cell))

        def fmt(cells: Sequence[str]) -> str:
            head = [c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
            return "  " + "  ".join([*head, cells[-1]]).rstrip()

        print(fmt(list(headers)))
        print(fmt(["-" * w for w in widths[:-1]] + ["-" * max(len(headers[-1]), 4)]))
        for row in rows:
            print(fmt(row))


# -- describing entities ---------------------------------------------------------------------


def kind(entity: Entity | type[Entity]) -> str:
    """A short type name: ``ModelEntity`` -> ``Model``."""
    cls = entity if isinstance(entity, type) else type(entity)
    name = cls.__name__
    return name[: -len("Entity")] if name.endswith("Entity") and name != "Entity" else name


def label(entity: Entity) -> str:
    """What a person calls this entity: its name, or the step of a checkpoint."""
    name = getattr(entity, "name", None)
    if isinstance(name, str):
        return name
    step = getattr(entity, "step", None)
    if isinstance(step, int):
        return f"step {step}"
    return "-"


def describe(reg: fs.EntityRegistry, ref: EntityRef) -> str:
    try:
        entity = reg.get(ref)
    except ForsetiError:
        return str(ref)
    return f"{kind(entity)} {label(entity)!r} v{ref.version}"


def when(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt(reg: fs.EntityRegistry, value: Any) -> str:
    """A short, human-readable rendering of a field value."""
    if value is None:
        return "none"
    if isinstance(value, BlobRef):
        return f"{value.format} blob, {value.size} B, sha256 {value.sha256[:12]}"
    if isinstance(value, EntityRef):
        return describe(reg, value)
    if isinstance(value, tuple) and value and all(isinstance(v, EntityRef) for v in value):
        return ", ".join(describe(reg, v) for v in value)
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, Mapping | tuple):
        text = json.dumps(thaw(value), default=str)
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def changes(reg: fs.EntityRegistry, prev: Entity | None, cur: Entity) -> str:
    """What ``cur`` changed relative to ``prev`` (or, for a first version, what it was set to)."""
    parts: list[str] = []
    for name in cur.user_fields():
        new = getattr(cur, name)
        if prev is None:
            info = type(cur).model_fields[name]
            if info.is_required() or new != info.get_default(call_default_factory=True):
                parts.append(f"{name}={fmt(reg, new)}")
        else:
            old = getattr(prev, name)
            if old != new:
                parts.append(f"{name}: {fmt(reg, old)} -> {fmt(reg, new)}")
    if cur.derived_from:
        parts.append(f"derived from {fmt(reg, cur.derived_from)}")
    if prev is None:
        return "created: " + ("; ".join(parts) or "(all defaults)")
    return "; ".join(parts) or "(no field changed)"


def history_table(out: Printer, reg: fs.EntityRegistry, versions: list[Entity]) -> None:
    rows = []
    prev: Entity | None = None
    for v in versions:
        rows.append([f"v{v.version}", when(v.created_at), changes(reg, prev, v)])
        prev = v
    out.table(["version", "created", "what changed"], rows)


def blob_location(reg: fs.EntityRegistry, ref: BlobRef) -> str:
    if isinstance(reg.blobs, FileBlobStore):
        return str(reg.blob_path(ref))  # verified against the ref on the way
    reg.read_blob(ref)  # verified
    return "in memory (gone when this process exits)"


def blob_root(reg: fs.EntityRegistry) -> str:
    if isinstance(reg.blobs, FileBlobStore):
        return str(reg.blobs.root)
    return "in memory (gone when this process exits)"


# -- forseti info / history ------------------------------------------------------------------


