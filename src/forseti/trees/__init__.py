"""Entity trees: versions joined by typed edges, traversed, versioned at O(changed) and drawn.

* :class:`EntityTree` (build from stored references, or from explicit edges), :class:`TreeEdge`,
  :data:`EdgeKind` (``hierarchical``, ``reference``, ``derived_from``; see
  ``Entity.child_fields``), :class:`CycleError`.
* :func:`pipeline_tree` (pipeline -> stages -> runs -> checkpoints) and :func:`model_lineage`
  (a model's evolution through runs and checkpoints).
* :func:`commit_change`: commit one node and only the versions that must change with it.
* :func:`to_text`, :func:`to_mermaid`, :func:`to_dot`.

See ``docs/trees.md``.
"""

from __future__ import annotations

from .builders import model_lineage, pipeline_tree
from .edges import EdgeKind, TreeEdge
from .errors import CycleError
from .model import EntityTree
from .render import to_dot, to_mermaid, to_text
from .update import commit_change

__all__ = [
    "EntityTree",
    "TreeEdge",
    "EdgeKind",
    "CycleError",
    "pipeline_tree",
    "model_lineage",
    "commit_change",
    "to_text",
    "to_mermaid",
    "to_dot",
]
