"""The ``forseti`` command.

``forseti demo``     GSPO teaches a tiny model to reverse digits, then its lineage (``make demo``)
``forseti tour``     a tour of the registry: provenance, aliases, conflicts, events, operations
``forseti info``     where a store lives, its schema version, how many lineages of each type
``forseti history``  every version of one lineage and what changed in each
``forseti lineage``  the tree of a version: a model's evolution, a pipeline's stages, runs and
                     checkpoints, or what anything else came from (text, Mermaid or DOT)
``forseti export``   a checkpoint as safetensors, ONNX or GGUF, verified and recorded

Each takes ``--url`` (default: ``$FORSETI_URL``, else ``sqlite:///.forseti/forseti.db``) and
``--plain``. Output uses ``rich`` when it is installed and plain text otherwise. Exit status: 0 on
success, 1 when Forseti reports an error (printed on stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import forseti as fs

from ..entities import Entity, ModelEntity, PipelineEntity, entity_types
from ..entities.base import LAZY_TYPE_PACKAGES, import_for
from ..errors import ForsetiError
from ..registry import SCHEMA_VERSION, EntityRegistry
from ..trees import EntityTree, model_lineage, pipeline_tree
from ..trees.discover import resolve
from ..trees.labels import node_label
from .demo import DemoFailure, run_tour
from .export_cmd import add_export_parser
from .output import Printer, blob_root, history_table, kind, label

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace, out: Printer) -> int:
    for prefix in LAZY_TYPE_PACKAGES:  # Forseti's own types that load on demand (GSPO's)
        import_for(prefix)
    with fs.open(args.url) as reg:
        heads = reg.store.find_heads(sorted(entity_types()))
        counts = Counter(rec.type_name for rec in heads)
        out.title("Forseti store")
        out.fields(
            [
                ("store", reg.url),
                ("blobs", blob_root(reg)),
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


def _cmd_history(args: argparse.Namespace, out: Printer) -> int:
    with fs.open(args.url) as reg:
        versions = reg.history(args.lineage_id)
        head = versions[-1]
        out.title(f"{kind(head)} {label(head)!r}: {len(versions)} version(s)")
        out.line(f"lineage {head.lineage_id} in {reg.url}")
        out.line()
        history_table(out, reg, versions)
        aliases = reg.aliases(head.lineage_id)
        if aliases:
            out.line()
            out.line(
                "aliases: "
                + ", ".join(f"{a.alias} -> v{a.version} (revision {a.revision})" for a in aliases)
            )
    return 0


def lineage_tree(reg: EntityRegistry, entity: Entity) -> tuple[str, EntityTree]:
    """What ``forseti lineage`` draws for ``entity``, and a heading saying what it is."""
    if isinstance(entity, ModelEntity):
        return "how the model evolved", model_lineage(reg, entity)
    if isinstance(entity, PipelineEntity):
        return "stages, runs and checkpoints", pipeline_tree(reg, entity)
    tree = EntityTree.build(reg, entity, kinds=("reference", "derived_from"))
    return "what it came from", tree


def _cmd_lineage(args: argparse.Namespace, out: Printer) -> int:
    with fs.open(args.url) as reg:
        entity = resolve(reg, args.ref)
        what, tree = lineage_tree(reg, entity)
        if args.format == "mermaid":
            print(tree.to_mermaid(), end="")
            print(f"%% {what}; stored in {reg.url}")
        elif args.format == "dot":
            print(tree.to_dot(), end="")
            print(f"// {what}; stored in {reg.url}")
        else:
            out.title(f"{node_label(entity)}: {what}")
            out.tree(tree)
            out.line()
            out.line(f"{len(tree)} version(s); stored in {reg.url}", soft_wrap=True)
    return 0


# -- forseti demo ----------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, out: Printer) -> int:
    from .gspo_demo import run_gspo_demo  # imports torch: only when asked for

    return run_gspo_demo(args, out)


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
        "demo",
        parents=[common],
        help="train a tiny model to reverse digits with GSPO, then show its lineage "
        "(what `make demo` runs)",
    )
    demo.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_cmd_demo)

    tour = sub.add_parser(
        "tour",
        parents=[common],
        help="a tour of the registry: entities, provenance, aliases, conflicts, events, operations",
    )
    tour.set_defaults(func=run_tour)

    info = sub.add_parser(
        "info", parents=[common], help="store URL, schema version, lineages by type"
    )
    info.set_defaults(func=_cmd_info)

    history = sub.add_parser(
        "history", parents=[common], help="every version of a lineage and what changed"
    )
    history.add_argument("lineage_id", metavar="LINEAGE_ID", help="the lineage's UUID")
    history.set_defaults(func=_cmd_history)

    lineage = sub.add_parser(
        "lineage",
        parents=[common],
        help="a model's evolution, a pipeline's stages, runs and checkpoints, or what a version "
        "came from",
    )
    lineage.add_argument(
        "ref",
        metavar="REF",
        help="a lineage UUID (its head), LINEAGE@VERSION, or a version id",
    )
    lineage.add_argument(
        "--format",
        choices=("text", "mermaid", "dot"),
        default="text",
        help="text (default), a Mermaid flowchart, or Graphviz DOT",
    )
    lineage.set_defaults(func=_cmd_lineage)
    add_export_parser(sub, common)
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
    func: Callable[[argparse.Namespace, Printer], int] = args.func
    try:
        return func(args, Printer(plain=args.plain))
    except ForsetiError as exc:
        print(f"forseti: error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    except DemoFailure as exc:
        print(f"forseti: the demo found a bug: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `forseti demo | head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the exit-time flush quiet
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
