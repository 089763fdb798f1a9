"""The :class:`EntityTree`: entity versions joined by typed edges, DAG-safe, cheap to traverse.

Nodes are entity versions (keyed by :class:`EntityRef`); a version reached from several parents
(a shared child) is one node with several parents. Internally every node has an integer index
(the root is 0) and the adjacency is plain lists of indices, so a walk over 10k nodes does no
hashing of refs and no pydantic work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from ..entities import Entity, EntityRef
from ..errors import NotFoundError, ValidationError
from ._graph import bfs, dfs, find_cycle, shortest_path, unreachable
from ._query import NodesView, field_filter, matches
from .edges import EDGE_KINDS, EdgeKind, TreeEdge, check_kinds
from .errors import CycleError
from .labels import node_label

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["EntityTree", "TreeEdge", "EdgeKind"]

Link = tuple[int, EdgeKind, str]  # (other node's index, kind, relation)


class EntityTree:
    """A rooted DAG of entity versions with typed edges (see :mod:`forseti.trees.edges`).

    Build one from stored references with :meth:`build` (or the builders
    :func:`~forseti.trees.pipeline_tree` and :func:`~forseti.trees.model_lineage`), or from
    explicit edges with :meth:`from_edges`. Every node is reachable from the root; a cycle is a
    :class:`~forseti.trees.CycleError`. ``len(tree)``, ``ref in tree`` and ``tree[ref]`` work as
    on a mapping from refs to versions.
    """

    __slots__ = ("_refs", "_entities", "_index", "_out", "_in", "_kids", "_by_kinds")

    def __init__(self, root: Entity, entities: Iterable[Entity], edges: Iterable[TreeEdge]) -> None:
        """Same as :meth:`from_edges`."""
        if not isinstance(root, Entity):
            raise ValidationError(f"a tree's root is an Entity, got {type(root).__name__}")
        self._refs: list[EntityRef] = [root.ref]
        self._entities: list[Entity] = [root]
        self._index: dict[EntityRef, int] = {root.ref: 0}
        for entity in entities:
            self._add_node(entity)
        n = len(self._refs)
        self._out: list[list[Link]] = [[] for _ in range(n)]
        self._in: list[list[Link]] = [[] for _ in range(n)]
        self._kids: list[list[int]] = [[] for _ in range(n)]
        # child lists of the edges of some kinds only; the shape never changes, so kept
        self._by_kinds: dict[frozenset[str], list[list[int]]] = {}
        seen: set[tuple[int, int, str, str]] = set()
        pairs: set[tuple[int, int]] = set()
        for edge in edges:
            p, c, kind, relation = self._check_edge(edge)
            if (p, c, kind, relation) in seen:
                continue
            seen.add((p, c, kind, relation))
            self._out[p].append((c, kind, relation))
            self._in[c].append((p, kind, relation))
            if (p, c) not in pairs:  # a set: a root with 10k children stays linear
                pairs.add((p, c))
                self._kids[p].append(c)
        self._validate()

    def _add_node(self, entity: Entity) -> None:
        if not isinstance(entity, Entity):
            raise ValidationError(f"tree nodes are Entity versions, got {type(entity).__name__}")
        ref = entity.ref
        known = self._index.get(ref)
        if known is None:
            self._index[ref] = len(self._refs)
            self._refs.append(ref)
            self._entities.append(entity)
        elif self._entities[known].id != entity.id:
            raise ValidationError(f"two different entities claim the version {ref}")

    def _check_edge(self, edge: TreeEdge) -> tuple[int, int, EdgeKind, str]:
        if not isinstance(edge, TreeEdge):
            raise ValidationError(f"tree edges are TreeEdge, got {type(edge).__name__}")
        if edge.kind not in EDGE_KINDS:
            raise ValidationError(f"edge kind {edge.kind!r} is not one of {', '.join(EDGE_KINDS)}")
        if not isinstance(edge.relation, str) or not edge.relation:
            raise ValidationError(
                f"an edge's relation is a non-empty string, got {edge.relation!r}"
            )
        ends = []
        for end in (edge.parent, edge.child):
            index = self._index.get(end) if isinstance(end, EntityRef) else None
            if index is None:
                raise ValidationError(f"edge {edge.relation!r} names {end!r}, which is not a node")
            ends.append(index)
        return ends[0], ends[1], edge.kind, edge.relation

    def _validate(self) -> None:
        cycle = find_cycle(self._kids)
        if cycle is not None:
            refs = tuple(self._refs[i] for i in cycle)
            path = " -> ".join(f"{node_label(self._entities[i])} ({self._refs[i]})" for i in cycle)
            raise CycleError(f"the edges close a cycle: {path}", refs)
        lost = unreachable(self._kids)
        if lost:
            names = ", ".join(node_label(self._entities[i]) for i in lost[:5])
            more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
            raise ValidationError(
                f"{len(lost)} node(s) cannot be reached from the root "
                f"{node_label(self._entities[0])}: {names}{more}"
            )

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_edges(
        cls, root: Entity, entities: Iterable[Entity], edges: Iterable[TreeEdge]
    ) -> EntityTree:
        """A tree of ``entities`` (the root may be among them) joined by ``edges``.

        Every edge must join two of the given versions and every version must be reachable from
        ``root``; a repeated edge counts once. Raises :class:`~forseti.trees.CycleError` (naming
        the cycle) if the edges close one, :class:`~forseti.errors.ValidationError` otherwise.
        """
        return cls(root, entities, edges)

    @classmethod
    def build(
        cls,
        reg: EntityRegistry,
        root: Entity | EntityRef | UUID | str,
        *,
        kinds: Iterable[EdgeKind] = ("hierarchical", "reference"),
        follow: Literal["exact", "head"] = "exact",
        max_depth: int | None = None,
    ) -> EntityTree:
        """The tree of what ``root`` references, loaded from ``reg``.

        ``root`` is an entity, an :class:`EntityRef`, a lineage id (its head) or a string
        ``"LINEAGE@VERSION"``. Edges of the given ``kinds`` are followed (see
        :func:`~forseti.trees.edges.edge_kind`): to the exact versions stored
        (``follow="exact"``, the default) or to the current head of each referenced lineage
        (``follow="head"``, which can meet a cycle: :class:`~forseti.trees.CycleError`).
        ``max_depth`` limits how many edges away from the root nodes may be.
        """
        from .discover import discover

        top, entities, edges = discover(reg, root, kinds, follow, max_depth)
        return cls(top, entities, edges)

    # -- mapping-like access -------------------------------------------------------------------

    @property
    def root(self) -> Entity:
        """The root version."""
        return self._entities[0]

    @property
    def root_ref(self) -> EntityRef:
        """The root version's ref."""
        return self._refs[0]

    @property
    def nodes(self) -> Mapping[EntityRef, Entity]:
        """A read-only view: ref -> version, for every node."""
        return NodesView(self)

    @property
    def edges(self) -> list[TreeEdge]:
        """Every edge, parents in node order, each parent's edges in field order."""
        refs = self._refs
        return [
            TreeEdge(refs[p], refs[c], kind, rel)
            for p, links in enumerate(self._out)
            for c, kind, rel in links
        ]

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Entity):
            index = self._index.get(item.ref)
            return index is not None and self._entities[index].id == item.id
        return item in self._index

    def __getitem__(self, ref: EntityRef) -> Entity:
        return self._entities[self._position(ref)]

    def __iter__(self) -> Iterator[EntityRef]:
        return iter(list(self._refs))

    def __repr__(self) -> str:
        n_edges = sum(len(links) for links in self._out)
        return f"EntityTree(root={node_label(self.root)}, {len(self)} nodes, {n_edges} edges)"

    def _position(self, ref: EntityRef | Entity) -> int:
        key = ref.ref if isinstance(ref, Entity) else ref
        index = self._index.get(key) if isinstance(key, EntityRef) else None
        if index is None:
            raise NotFoundError(f"{key!r} is not a node of this tree")
        return index

    # -- neighbours ----------------------------------------------------------------------------

    def children(
        self, ref: EntityRef | Entity, kinds: Iterable[EdgeKind] | None = None
    ) -> list[Entity]:
        """The versions ``ref`` points at (each once, in field order), optionally of ``kinds``."""
        return self._neighbours(self._out[self._position(ref)], check_kinds(kinds))

    def parents(
        self, ref: EntityRef | Entity, kinds: Iterable[EdgeKind] | None = None
    ) -> list[Entity]:
        """The versions that point at ``ref`` (each once), optionally through ``kinds`` only."""
        return self._neighbours(self._in[self._position(ref)], check_kinds(kinds))

    def out_edges(self, ref: EntityRef | Entity) -> list[TreeEdge]:
        """The edges from ``ref`` to its children, in field order."""
        i = self._position(ref)
        return [TreeEdge(self._refs[i], self._refs[c], k, r) for c, k, r in self._out[i]]

    def in_edges(self, ref: EntityRef | Entity) -> list[TreeEdge]:
        """The edges from ``ref``'s parents to it."""
        i = self._position(ref)
        return [TreeEdge(self._refs[p], self._refs[i], k, r) for p, k, r in self._in[i]]

    def _neighbours(self, links: Sequence[Link], kinds: frozenset[str] | None) -> list[Entity]:
        picked = dict.fromkeys(i for i, kind, _ in links if kinds is None or kind in kinds)
        return [self._entities[i] for i in picked]

    # -- traversal -----------------------------------------------------------------------------

    def walk(
        self, order: Literal["dfs", "bfs"] = "dfs", kinds: Iterable[EdgeKind] | None = None
    ) -> Iterator[tuple[int, Entity]]:
        """``(depth, version)`` for every node reachable from the root, each exactly once.

        ``"dfs"``: pre-order, children in field order; a shared child is visited where it is
        first reached, at that depth. ``"bfs"``: level by level, the depth is the shortest
        distance from the root. ``kinds`` follows only edges of those kinds.
        """
        if order not in ("dfs", "bfs"):
            raise ValidationError(f"order is 'dfs' or 'bfs', got {order!r}")
        wanted = check_kinds(kinds)
        adjacency = self._kids
        if wanted is not None and len(wanted) < len(EDGE_KINDS):
            cached = self._by_kinds.get(wanted)
            if cached is None:
                cached = [[c for c, kind, _ in links if kind in wanted] for links in self._out]
                self._by_kinds[wanted] = cached
            adjacency = cached
        return dfs(adjacency, self._entities) if order == "dfs" else bfs(adjacency, self._entities)

    def find(
        self,
        predicate: Callable[[Entity], bool] | None = None,
        *,
        type: type[Entity] | None = None,  # noqa: A002 - the natural name for a filter
        **fields: Any,
    ) -> list[Entity]:
        """The nodes (in walk order) of ``type`` whose ``fields`` equal the given values and for
        which ``predicate`` holds: ``tree.find(type=CheckpointEntity, step=100)``."""
        if type is not None and not (isinstance(type, builtin_type) and issubclass(type, Entity)):
            raise ValidationError(f"find(type=...) takes an Entity subclass, got {type!r}")
        wanted = field_filter(fields)
        out = []
        for _, entity in self.walk():
            if type is not None and not isinstance(entity, type):
                continue
            if wanted and not matches(entity, wanted):
                continue
            if predicate is None or predicate(entity):
                out.append(entity)
        return out

    def path_to(self, target: EntityRef | Entity) -> list[EntityRef]:
        """The refs from the root to ``target`` along a shortest path (root first).

        :class:`~forseti.errors.NotFoundError` if ``target`` is not in the tree.
        """
        path = shortest_path(self._kids, self._position(target))
        assert path is not None  # every node is reachable from the root
        return [self._refs[i] for i in path]

    # -- changes and rendering ---------------------------------------------------------------

    def commit_change(
        self, reg: EntityRegistry, target: EntityRef | Entity, **changes: Any
    ) -> EntityTree:
        """See :func:`forseti.trees.commit_change` (this tree is updated in place and returned)."""
        from .update import commit_change

        return commit_change(reg, self, target, **changes)

    def _replace(self, index: int, entity: Entity) -> None:
        """Put ``entity`` (a newer version) in node ``index``'s place; edges stay as they are."""
        del self._index[self._refs[index]]
        self._refs[index] = entity.ref
        self._entities[index] = entity
        self._index[entity.ref] = index

    def to_text(self, *, plain: bool = False, width: int = 120) -> str:
        """See :func:`forseti.trees.to_text`."""
        from .render import to_text

        return to_text(self, plain=plain, width=width)

    def to_mermaid(self) -> str:
        """See :func:`forseti.trees.to_mermaid`."""
        from .render import to_mermaid

        return to_mermaid(self)

    def to_dot(self) -> str:
        """See :func:`forseti.trees.to_dot`."""
        from .render import to_dot

        return to_dot(self)


builtin_type = type
