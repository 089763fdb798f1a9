"""Drawing a tree: as text (a ``rich`` tree, or plain ASCII), as Mermaid, as Graphviz DOT.

Nodes are labelled ``Type 'name' v3``. In text, each line says how it hangs from its parent
(``stages: ...``, ``config (ref): ...``, ``previous (derived): ...``), and a shared child is drawn
in full where it first appears and as ``(shown above)`` elsewhere, so a DAG never blows up.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .labels import node_label

if TYPE_CHECKING:
    from rich.tree import Tree

    from .model import EntityTree

__all__ = ["to_text", "to_rich", "to_mermaid", "to_dot"]

_MARK = {"hierarchical": "", "reference": " (ref)", "derived_from": " (derived)"}
_SHOWN = "  (shown above)"


def _preorder(tree: EntityTree) -> list[tuple[int, int, int, str, str, bool]]:
    """``(parent_line, node, depth, kind, relation, repeated)`` for every line, in display order.

    ``parent_line`` is the index of the parent's line (-1 for the root); ``repeated`` marks a
    node already drawn above (its subtree is not drawn again).
    """
    out = tree._out
    shown = bytearray(len(tree))
    shown[0] = 1
    lines: list[tuple[int, int, int, str, str, bool]] = [(-1, 0, 0, "", "", False)]
    stack = [(0, c, 1, k, r) for c, k, r in reversed(out[0])]
    while stack:
        parent_line, i, depth, kind, relation = stack.pop()
        repeated = bool(shown[i])
        lines.append((parent_line, i, depth, kind, relation, repeated))
        if not repeated:
            shown[i] = 1
            line = len(lines) - 1
            stack.extend((line, c, depth + 1, k, r) for c, k, r in reversed(out[i]))
    return lines


def _line_text(tree: EntityTree, i: int, kind: str, relation: str, repeated: bool) -> str:
    head = f"{relation}{_MARK[kind]}: " if relation else ""
    return head + node_label(tree._entities[i]) + (_SHOWN if repeated else "")


def to_rich(tree: EntityTree) -> Tree:
    """The tree as a :class:`rich.tree.Tree` (names are never read as rich markup)."""
    from rich.text import Text
    from rich.tree import Tree

    styles = {"hierarchical": "", "reference": "dim", "derived_from": "italic"}
    rich_nodes: list[Tree] = []
    for parent_line, i, _, kind, relation, repeated in _preorder(tree):
        if parent_line < 0:
            rich_nodes.append(Tree(Text(node_label(tree._entities[i]), style="bold")))
            continue
        text = Text()
        text.append(f"{relation}{_MARK[kind]}: ", style="cyan")
        text.append(node_label(tree._entities[i]), style=styles[kind])
        if repeated:
            text.append(_SHOWN, style="dim")
        rich_nodes.append(rich_nodes[parent_line].add(text))
    return rich_nodes[0]


def to_text(tree: EntityTree, *, plain: bool = False, width: int = 120) -> str:
    """The tree as text: drawn by ``rich`` (box-drawing guides), or in ASCII with ``plain=True``."""
    if not plain:
        from rich.console import Console

        console = Console(
            file=io.StringIO(), record=True, width=width, color_system=None, emoji=False
        )
        console.print(to_rich(tree))
        return console.export_text()
    lines = _preorder(tree)
    last_child: dict[int, int] = {}  # parent line -> its last child line
    for n, (parent_line, *_) in enumerate(lines):
        last_child[parent_line] = n
    prefixes = [""] * len(lines)
    out = []
    for n, (parent_line, i, _, kind, relation, repeated) in enumerate(lines):
        if parent_line < 0:
            out.append(node_label(tree._entities[i]))
            continue
        last = last_child[parent_line] == n
        prefix = prefixes[parent_line]
        out.append(
            prefix + ("`-- " if last else "|-- ") + _line_text(tree, i, kind, relation, repeated)
        )
        prefixes[n] = prefix + ("    " if last else "|   ")
    return "\n".join(out) + "\n"


def _mermaid_escape(text: str) -> str:
    for char, code in (
        ("#", "#35;"),
        ('"', "#quot;"),
        ("<", "#lt;"),
        (">", "#gt;"),
        ("|", "#124;"),
    ):
        text = text.replace(char, code)
    return " ".join(text.splitlines())


def to_mermaid(tree: EntityTree) -> str:
    """A Mermaid flowchart (``graph TD``): ``hierarchical`` edges solid, ``reference`` edges
    dashed, ``derived_from`` edges dotted, each labelled with its relation."""
    lines = ["graph TD"]
    for i, entity in enumerate(tree._entities):
        lines.append(f'    n{i}["{_mermaid_escape(node_label(entity))}"]')
    styled: dict[str, list[str]] = {"reference": [], "derived_from": []}
    n_edge = 0
    for p, links in enumerate(tree._out):
        for c, kind, relation in links:
            arrow = "-->" if kind == "hierarchical" else "-.->"
            lines.append(f"    n{p} {arrow}|{_mermaid_escape(relation)}| n{c}")
            if kind in styled:
                styled[kind].append(str(n_edge))
            n_edge += 1
    if styled["reference"]:
        lines.append(f"    linkStyle {','.join(styled['reference'])} stroke-dasharray: 6 4")
    if styled["derived_from"]:
        lines.append(f"    linkStyle {','.join(styled['derived_from'])} stroke-dasharray: 1 3")
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return text.replace("\r", "").replace("\n", "\\n")


def to_dot(tree: EntityTree) -> str:
    """A Graphviz ``digraph``: one box per version (tooltip: ``LINEAGE@VERSION``), edges labelled
    with their relation, ``reference`` edges dashed and ``derived_from`` edges dotted."""
    style = {"hierarchical": "", "reference": ", style=dashed", "derived_from": ", style=dotted"}
    lines = [
        "digraph entity_tree {",
        "    rankdir=TB;",
        '    node [shape=box, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for i, entity in enumerate(tree._entities):
        label = _dot_escape(node_label(entity))
        lines.append(f'    n{i} [label="{label}", tooltip="{entity.ref}"];')
    for p, links in enumerate(tree._out):
        for c, kind, relation in links:
            lines.append(f'    n{p} -> n{c} [label="{_dot_escape(relation)}"{style[kind]}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
