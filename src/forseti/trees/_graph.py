"""Graph algorithms over integer adjacency lists (node 0 is the root); all iterative, O(n + e)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["find_cycle", "unreachable", "shortest_path", "dfs", "bfs"]

Adjacency = Sequence[Sequence[int]]
T = TypeVar("T")


def find_cycle(kids: Adjacency) -> list[int] | None:
    """A cycle as its nodes, first and last the same (``[a, b, a]``), or ``None`` for a DAG."""
    n = len(kids)
    color = bytearray(n)  # 0: not seen, 1: on the current path, 2: done
    for start in range(n):
        if color[start]:
            continue
        color[start] = 1
        path = [start]
        iters = [iter(kids[start])]
        while iters:
            for child in iters[-1]:
                state = color[child]
                if state == 1:
                    return path[path.index(child) :] + [child]
                if state == 0:
                    color[child] = 1
                    path.append(child)
                    iters.append(iter(kids[child]))
                    break
            else:
                color[path.pop()] = 2
                iters.pop()
    return None


def unreachable(kids: Adjacency) -> list[int]:
    """The nodes that cannot be reached from node 0."""
    seen = bytearray(len(kids))
    if not kids:
        return []
    seen[0] = 1
    stack = [0]
    while stack:
        for child in kids[stack.pop()]:
            if not seen[child]:
                seen[child] = 1
                stack.append(child)
    return [i for i, s in enumerate(seen) if not s]


def shortest_path(kids: Adjacency, target: int) -> list[int] | None:
    """The nodes from 0 to ``target`` along a shortest path (first found in child order)."""
    prev = [-1] * len(kids)
    prev[0] = 0
    frontier = [0]
    while frontier and prev[target] < 0:
        nxt = []
        for node in frontier:
            for child in kids[node]:
                if prev[child] < 0:
                    prev[child] = node
                    nxt.append(child)
        frontier = nxt
    if prev[target] < 0:
        return None
    path = [target]
    while path[-1] != 0:
        path.append(prev[path[-1]])
    return path[::-1]


def dfs(adjacency: Adjacency, entities: Sequence[T]) -> Iterator[tuple[int, T]]:
    seen = bytearray(len(entities))
    nodes, depths = [0], [0]  # two parallel stacks: extending them is cheaper than tuples
    pop_node, pop_depth = nodes.pop, depths.pop
    while nodes:
        i, depth = pop_node(), pop_depth()
        if seen[i]:
            continue
        seen[i] = 1
        yield depth, entities[i]
        kids = adjacency[i]
        if kids:
            nodes.extend(reversed(kids))  # the first child is popped first: pre-order
            depths.extend([depth + 1] * len(kids))


def bfs(adjacency: Adjacency, entities: Sequence[T]) -> Iterator[tuple[int, T]]:
    seen = bytearray(len(entities))
    seen[0] = 1
    frontier = [0]
    depth = 0
    while frontier:
        nxt = []
        for i in frontier:
            yield depth, entities[i]
            for c in adjacency[i]:
                if not seen[c]:
                    seen[c] = 1
                    nxt.append(c)
        frontier = nxt
        depth += 1
