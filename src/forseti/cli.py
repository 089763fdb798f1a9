"""The ``forseti`` command.

``forseti demo``     the end-to-end demo (what ``make demo`` runs) on the embedded default store
``forseti info``     where a store lives, its schema version, how many lineages of each type
``forseti history``  every version of one lineage and what changed in each

Each takes ``--url`` (default: ``$FORSETI_URL``, else ``sqlite:///.forseti/forseti.db``) and
``--plain``. Output uses ``rich`` when it is installed and plain text otherwise. Exit status: 0 on
success, 1 when Forseti reports an error (printed on stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import forseti as fs

from .entities import BlobRef, Entity, EntityRef, entity_types, thaw, utcnow
from .errors import ConflictError, ForsetiError, NotFoundError
from .registry import SCHEMA_VERSION, FileBlobStore

__all__ = ["main"]

_DEMO_PREFIX = "demo-"


# -- output ----------------------------------------------------------------------------------


class _Printer:
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

    def line(self, text: str = "", *, style: str | None = None) -> None:
        if self._console is not None:
            self._console.print(text, style=style)
        else:
            print(text)

    def fields(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``name: value`` lines, the names aligned."""
        width = max((len(k) for k, _ in pairs), default=0)
        for key, value in pairs:
            self.line(f"  {key + ':':<{width + 1}}  {value}")

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


def _kind(entity: Entity | type[Entity]) -> str:
    """A short type name: ``ModelEntity`` -> ``Model``."""
    cls = entity if isinstance(entity, type) else type(entity)
    name = cls.__name__
    return name[: -len("Entity")] if name.endswith("Entity") and name != "Entity" else name


def _label(entity: Entity) -> str:
    """What a person calls this entity: its name, or the step of a checkpoint."""
    name = getattr(entity, "name", None)
    if isinstance(name, str):
        return name
    step = getattr(entity, "step", None)
    if isinstance(step, int):
        return f"step {step}"
    return "-"


def _describe(reg: fs.EntityRegistry, ref: EntityRef) -> str:
    try:
        entity = reg.get(ref)
    except ForsetiError:
        return str(ref)
    return f"{_kind(entity)} {_label(entity)!r} v{ref.version}"


def _when(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt(reg: fs.EntityRegistry, value: Any) -> str:
    """A short, human-readable rendering of a field value."""
    if value is None:
        return "none"
    if isinstance(value, BlobRef):
        return f"{value.format} blob, {value.size} B, sha256 {value.sha256[:12]}"
    if isinstance(value, EntityRef):
        return _describe(reg, value)
    if isinstance(value, tuple) and value and all(isinstance(v, EntityRef) for v in value):
        return ", ".join(_describe(reg, v) for v in value)
    if isinstance(value, datetime):
        return _when(value)
    if isinstance(value, Mapping | tuple):
        text = json.dumps(thaw(value), default=str)
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _changes(reg: fs.EntityRegistry, prev: Entity | None, cur: Entity) -> str:
    """What ``cur`` changed relative to ``prev`` (or, for a first version, what it was set to)."""
    parts: list[str] = []
    for name in cur.user_fields():
        new = getattr(cur, name)
        if prev is None:
            info = type(cur).model_fields[name]
            if info.is_required() or new != info.get_default(call_default_factory=True):
                parts.append(f"{name}={_fmt(reg, new)}")
        else:
            old = getattr(prev, name)
            if old != new:
                parts.append(f"{name}: {_fmt(reg, old)} -> {_fmt(reg, new)}")
    if cur.derived_from:
        parts.append(f"derived from {_fmt(reg, cur.derived_from)}")
    if prev is None:
        return "created: " + ("; ".join(parts) or "(all defaults)")
    return "; ".join(parts) or "(no field changed)"


def _history_table(out: _Printer, reg: fs.EntityRegistry, versions: list[Entity]) -> None:
    rows = []
    prev: Entity | None = None
    for v in versions:
        rows.append([f"v{v.version}", _when(v.created_at), _changes(reg, prev, v)])
        prev = v
    out.table(["version", "created", "what changed"], rows)


def _blob_location(reg: fs.EntityRegistry, ref: BlobRef) -> str:
    if isinstance(reg.blobs, FileBlobStore):
        return str(reg.blob_path(ref))  # verified against the ref on the way
    reg.read_blob(ref)  # verified
    return "in memory (gone when this process exits)"


def _blob_root(reg: fs.EntityRegistry) -> str:
    if isinstance(reg.blobs, FileBlobStore):
        return str(reg.blobs.root)
    return "in memory (gone when this process exits)"


# -- forseti info / history ------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace, out: _Printer) -> int:
    with fs.open(args.url) as reg:
        heads = reg.store.find_heads(sorted(entity_types()))
        counts = Counter(rec.type_name for rec in heads)
        out.title("Forseti store")
        out.fields(
            [
                ("store", reg.url),
                ("blobs", _blob_root(reg)),
                ("schema version", str(SCHEMA_VERSION)),
                ("forseti", fs.__version__),
            ]
        )
        out.section(f"Lineages by type ({sum(counts.values())} in all)")
        if counts:
            out.table(["type", "lineages"], sorted(([t, str(n)] for t, n in counts.items())))
        else:
            out.line("  (none yet: try `forseti demo`)")
        out.line()
        out.line("Counted: lineages of the entity types this process knows, i.e. Forseti's own;")
        out.line("lineages of types defined in your modules are not included.")
    return 0


def _cmd_history(args: argparse.Namespace, out: _Printer) -> int:
    with fs.open(args.url) as reg:
        versions = reg.history(args.lineage_id)
        head = versions[-1]
        out.title(f"{_kind(head)} {_label(head)!r}: {len(versions)} version(s)")
        out.line(f"lineage {head.lineage_id} in {reg.url}")
        out.line()
        _history_table(out, reg, versions)
        aliases = reg.aliases(head.lineage_id)
        if aliases:
            out.line()
            out.line(
                "aliases: "
                + ", ".join(f"{a.alias} -> v{a.version} (revision {a.revision})" for a in aliases)
            )
    return 0


# -- forseti demo ----------------------------------------------------------------------------


class _DemoFailure(Exception):
    """The library did not behave as the demo shows it does."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise _DemoFailure(what)


def _demo_number(reg: fs.EntityRegistry) -> int:
    """1 + the highest demo number already used in this store."""
    highest = 0
    for ds in reg.find(fs.DatasetEntity):
        head, _, rest = ds.name.partition(_DEMO_PREFIX)
        number = rest.split("-", 1)[0]
        if not head and number.isdigit():
            highest = max(highest, int(number))
    return highest + 1


def _toy_dataset(n_examples: int) -> bytes:
    """JSON lines of toy arithmetic problems (the dataset's content)."""
    lines = []
    for i in range(n_examples):
        a, b = i % 10, (i * 7) % 10
        lines.append(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}))
    return ("\n".join(lines) + "\n").encode()


def _toy_safetensors(seed: int) -> bytes:
    """A tiny weights file in the safetensors layout, built by hand (no torch needed).

    The layout: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
    shape and byte range, then the raw tensor bytes.
    """
    values = [((seed * 31 + i * 7) % 17) / 17.0 for i in range(4 * 8)]
    data = struct.pack(f"<{len(values)}f", *values)
    header = {
        "__metadata__": {"format": "pt", "producer": "forseti demo"},
        "embed.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, len(data)]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _cmd_demo(args: argparse.Namespace, out: _Printer) -> int:
    with fs.open(args.url) as reg:
        return _demo(reg, out)


def _demo(reg: fs.EntityRegistry, out: _Printer) -> int:  # noqa: PLR0915 - a script, top to bottom
    n = _demo_number(reg)
    p = f"{_DEMO_PREFIX}{n}"
    out.title(f"Forseti demo #{n}")
    out.line(f"Store: {reg.url}")
    out.line(
        f"This run's entities are named {p}-*; each run of the demo adds fresh ones "
        f"(numbered by a counter kept in the store), so it can be run again."
    )

    # 1. inputs ---------------------------------------------------------------------------
    out.section("1. Register a dataset, a config and a model")
    content = _toy_dataset(200)
    data_blob = reg.put_blob(content, format="jsonl")
    dataset = reg.add(
        fs.DatasetEntity(
            name=f"{p}-dataset",
            format="jsonl",
            num_examples=200,
            size_bytes=len(content),
            splits={"train": 180, "test": 20},
            data=data_blob,
            description="toy arithmetic problems",
        )
    )
    config = reg.add(
        fs.ConfigEntity(
            name=f"{p}-config",
            params={"learning_rate": 3e-4, "batch_size": 16, "total_steps": 100},
        )
    )
    model = reg.add(
        fs.ModelEntity(
            name=f"{p}-model", architecture="tiny-transformer", hidden_size=64, num_layers=2,
            vocab_size=256,
        )
    )
    out.line(f"  dataset  {dataset.name} v1: 200 examples, content stored as a blob")
    out.line(f"  config   {config.name} v1: {_fmt(reg, config.params)}")
    out.line(f"  model    {model.name} v1: hidden_size=64, num_layers=2, vocab_size=256")

    # 2. run ------------------------------------------------------------------------------
    out.section("2. Start a training run that references them")
    run = reg.add(
        fs.TrainingRunEntity(
            name=f"{p}-run",
            algorithm="sft",
            model=model.ref,
            config=config.ref,
            dataset=dataset.ref,
            status="running",
            total_steps=100,
            started_at=utcnow(),
        )
    )
    out.line(f"  run      {run.name} v1: status=running, inputs: model v1, config v1, dataset v1")

    # 3. evolve the model -------------------------------------------------------------------
    out.section("3. Evolve the model twice (each commit adds a version; old ones never change)")
    model_v2 = reg.commit(model.evolve(hidden_size=128))
    out.line(f"  model v{model_v2.version}: hidden_size 64 -> 128")
    weights = reg.put_blob(_toy_safetensors(n), format="safetensors")
    model_v3 = reg.commit(
        model_v2.evolve(weights=weights, num_parameters=32, derived_from=(run.ref,))
    )
    out.line(
        f"  model v{model_v3.version}: weights attached ({_fmt(reg, weights)}), "
        f"derived from run v{run.version}"
    )
    _check(model.hidden_size == 64, "version 1 was changed by evolve()")

    # 4. finish the run, checkpoint --------------------------------------------------------
    out.section("4. Finish the run and record a checkpoint")
    run_v2 = reg.commit(
        run.evolve(status="completed", step=100, finished_at=utcnow(), metrics={"loss": 0.42})
    )
    checkpoint = reg.add(
        fs.CheckpointEntity(
            run=run_v2.ref, model=model_v3.ref, step=100, weights=weights, metrics={"loss": 0.42}
        )
    )
    out.line(f"  run v{run_v2.version}: status=completed, step 100/100, loss 0.42")
    out.line(f"  checkpoint v1: step 100, run v{run_v2.version}, model v{model_v3.version}")

    # 5. alias by compare-and-set ---------------------------------------------------------
    out.section("5. Point a 'production' alias at the model, by compare-and-set")
    alias = reg.move_alias(model.lineage_id, "production", 2, expected_revision=None)
    out.line(f"  created:  production -> v{alias.version} (revision {alias.revision})")
    alias = reg.move_alias(model.lineage_id, "production", 3, expected_revision=alias.revision)
    out.line(f"  moved:    production -> v{alias.version} (revision {alias.revision})")
    try:
        reg.move_alias(model.lineage_id, "production", 2, expected_revision=1)
    except ConflictError as exc:
        out.line(
            f"  refused:  a writer still holding revision {exc.expected} tried to move it back; "
            f"ConflictError (expected revision {exc.expected}, actual {exc.actual})"
        )
    else:
        raise _DemoFailure("a stale alias move was accepted")
    _check(reg.get(model.lineage_id, alias="production").version == 3, "the alias moved")

    # 6. a stale draft ----------------------------------------------------------------------
    out.section("6. A stale draft is refused, and nothing is written")
    stale = model_v2.evolve(description="edited from an old copy of v2")
    out.line(f"  someone still holds v2 and commits a draft of v{stale.version} from it ...")
    try:
        reg.commit(stale)
    except ConflictError as exc:
        out.line(
            f"  ConflictError: the draft expected head v{exc.expected}, the store has "
            f"v{exc.actual}"
        )
    else:
        raise _DemoFailure("a stale draft was committed")
    versions = reg.history(model.lineage_id)
    head = reg.get(model.lineage_id)
    try:
        reg.get_by_id(stale.id)
    except NotFoundError:
        pass
    else:
        raise _DemoFailure("the stale draft was stored")
    _check(len(versions) == 3 and head.version == 3 and head.description == "", "history intact")
    out.line(
        f"  nothing was written: the model still has {len(versions)} versions, head "
        f"v{head.version}. To apply the change, reload the head and evolve it again:"
    )
    out.line("  reg.commit(reg.get(lineage_id).evolve(...))")

    # what the store now knows ------------------------------------------------------------
    out.title("What the store now knows")

    out.section(f"Model history: {model.name} (lineage {model.lineage_id})")
    _history_table(out, reg, versions)
    out.line(
        "  aliases: "
        + ", ".join(f"{a.alias} -> v{a.version}" for a in reg.aliases(model.lineage_id))
    )

    out.section("Checkpoint provenance: which run, config and dataset produced it?")
    out.line("  reg.ancestors(checkpoint), nearest first:")
    direct = set(reg.ancestors(checkpoint, max_depth=1))
    ancestors = reg.ancestors(checkpoint)
    rows = []
    found: dict[str, Entity] = {}
    for ref in ancestors:
        entity = reg.get(ref)
        found.setdefault(_kind(entity), entity)
        rows.append([
            _kind(entity), _label(entity), f"v{ref.version}",
            "direct input" if ref in direct else "further back",
        ])
    out.table(["type", "name", "version", "link"], rows)
    want = ("TrainingRun", "Model", "Config", "Dataset")
    _check(all(k in found for k in want), f"the checkpoint's ancestors include {want}")
    r, m, c, d = (found[k] for k in want)
    out.line(
        f"  In short: run {_label(r)} v{r.version} trained model {_label(m)} v{m.version} "
        f"with config {_label(c)} v{c.version} on dataset {_label(d)} v{d.version}."
    )

    out.section(f"Descendants of the dataset: everything derived from {dataset.name} v1")
    out.line("  reg.descendants(dataset), nearest first:")
    rows = []
    for ref in reg.descendants(dataset):
        entity = reg.get(ref)
        rows.append([_kind(entity), _label(entity), f"v{ref.version}"])
    out.table(["type", "name", "version"], rows)
    _check(any(row[0] == "Checkpoint" for row in rows), "the checkpoint descends from the dataset")

    out.section("Where the data lives")
    out.line(f"  entity versions, provenance and aliases: {reg.url}")
    out.line(f"  blobs (content-addressed, verified on every read): {_blob_root(reg)}")
    out.line(f"    model v3 weights:  {_blob_location(reg, weights)}")
    out.line(f"    dataset content:   {_blob_location(reg, data_blob)}")

    out.section("Try next")
    if reg.store.dialect == "memory":
        out.line("  This store was memory://, so it is gone when the demo exits. Run it on a file:")
        out.line("  forseti demo --url sqlite:///demo.db")
    else:
        out.line(f"  forseti history {model.lineage_id} --url {reg.url}")
        out.line(f"  forseti info --url {reg.url}")
    return 0


# -- entry point ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=None,
        help="store URL: memory://, sqlite:///path.db or postgresql://user@host/db "
        "(default: $FORSETI_URL, else sqlite:///.forseti/forseti.db)",
    )
    common.add_argument("--plain", action="store_true", help="plain text, even if rich is installed")

    parser = argparse.ArgumentParser(
        prog="forseti",
        description="Forseti: entity-first, event-sourced AI training.",
    )
    parser.add_argument("--version", action="version", version=f"forseti {fs.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", parents=[common], help="run the end-to-end demo (what `make demo` runs)"
    )
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser(
        "info", parents=[common], help="store URL, schema version, lineages by type"
    )
    info.set_defaults(func=_cmd_info)

    history = sub.add_parser(
        "history", parents=[common], help="every version of a lineage and what changed"
    )
    history.add_argument("lineage_id", metavar="LINEAGE_ID", help="the lineage's UUID")
    history.set_defaults(func=_cmd_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``forseti`` command with ``argv`` (default: ``sys.argv[1:]``); return its status."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace, _Printer], int] = args.func
    try:
        return func(args, _Printer(plain=args.plain))
    except ForsetiError as exc:
        print(f"forseti: error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    except _DemoFailure as exc:
        print(f"forseti: the demo found a bug: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `forseti demo | head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the exit-time flush quiet
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
