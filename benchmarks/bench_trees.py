"""Entity trees: traversal of a 10k-node tree, and the O(changed) cost of versioning one leaf.

1. ``tree.walk()`` (depth first, pre-order) and ``tree.walk("bfs")`` over a 10k-node tree with
   fan-out 32, stored on ``memory://`` and loaded with ``EntityTree.build``. Target: p50 <= 10 ms.
   Baseline: a plain-Python BFS over a ``dict`` of ``list`` of ints of the same shape (the floor
   for visiting every node once in Python).
2. ``tree.commit_change(reg, leaf, ...)`` on ``memory://`` trees of 1,111 and 10,201 nodes in
   which the changed leaves have the same path above them (a grandchild, a child and the root,
   10 children each); the bigger tree has 9,090 more nodes elsewhere. Each change commits the
   leaf and its 3 ancestors in one batch (4 versions, checked, as is the total number of stored
   versions). Baseline: a single ``reg.commit(leaf.evolve(...))`` of a leaf alone, in the same
   registry. A last row compares the sizes: the 10k tree's p50 over the 1k tree's, target
   <= 1.5x (the cost does not grow with the tree; it grows with the path's depth and the fan-out
   of the nodes on it, whose reference tuples are rewritten).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from typing import ClassVar

from common import Result, error_result, setup_paths, summarize, time_calls, time_each

setup_paths()

import forseti as fs  # noqa: E402
from forseti.trees import EntityTree  # noqa: E402


class BenchNode(fs.Entity):
    """A tree node that owns its ``children``."""

    entity_type: ClassVar[str] = "bench.TreeNode"
    child_fields: ClassVar[tuple[str, ...]] = ("children",)

    name: str
    children: tuple[fs.EntityRef, ...] = ()
    value: int = 0


def _shape(n: int, fanout: int) -> list[list[int]]:
    """Node ``i``'s children are ``fanout*i + 1 ... fanout*i + fanout`` (those below ``n``)."""
    return [list(range(fanout * i + 1, min(fanout * i + fanout + 1, n))) for i in range(n)]


def store_tree(reg: fs.EntityRegistry, kids: list[list[int]]) -> list[BenchNode]:
    """Commit one version per node (children first, one batch); node ``i`` is ``out[i]``."""
    out: list[BenchNode | None] = [None] * len(kids)
    for i in range(len(kids) - 1, -1, -1):
        refs = tuple(out[c].ref for c in kids[i])  # type: ignore[union-attr]
        out[i] = BenchNode(name=f"n{i}", children=refs)
    nodes = [n for n in out if n is not None]
    reg.commit_many(nodes[::-1])
    return nodes


# -- 1. traversal ------------------------------------------------------------------------------

_BASE_WALK = "plain-Python BFS over a dict of lists of ints, same shape"


def baseline_bfs(adjacency: dict[int, list[int]]) -> Callable[[], int]:
    def bfs() -> int:
        seen = {0}
        frontier = [0]
        count = 0
        while frontier:
            nxt = []
            for node in frontier:
                count += 1
                for child in adjacency[node]:
                    if child not in seen:
                        seen.add(child)
                        nxt.append(child)
            frontier = nxt
        return count

    return bfs


def bench_walk(quick: bool) -> list[Result]:
    n, fanout, reps = 10_000, 32, (30 if quick else 200)
    kids = _shape(n, fanout)
    with fs.open("memory://") as reg:
        nodes = store_tree(reg, kids)
        t0 = time.perf_counter()
        tree = EntityTree.build(reg, nodes[0])
        build_s = time.perf_counter() - t0
    assert len(tree) == n
    base = summarize(time_calls(baseline_bfs(dict(enumerate(kids))), reps))
    rows = []
    for order in ("dfs", "bfs"):

        def walk(order: str = order) -> int:
            count = 0
            for _ in tree.walk(order):  # type: ignore[arg-type]
                count += 1
            return count

        assert walk() == n
        s = summarize(time_calls(walk, reps))
        rows.append(
            Result(
                f"walk('{order}') 10k nodes, fan-out 32 (p50)",
                forseti=s["p50"],
                baseline=base["p50"],
                baseline_name=_BASE_WALK,
                target_s=10e-3,
                group="tree walk",
                samples=reps,
                extra={"p99": s["p99"], "nodes": n, "build_s": build_s},
            )
        )
    return rows


# -- 2. O(changed) commits ---------------------------------------------------------------------

_BASE_CHANGE = "reg.commit(leaf.evolve(...)) of the leaf alone, same registry"
_WARMUP = 20


def _path_tree(bulk: int) -> list[list[int]]:
    """Root -> 10 children -> 10 grandchildren each -> leaves: 10 per grandchild under the first
    child (where the changed leaves are), ``bulk`` per grandchild under the 9 others."""
    kids: list[list[int]] = [[]]

    def add(parent: int) -> int:
        kids.append([])
        kids[parent].append(len(kids) - 1)
        return len(kids) - 1

    for c in range(10):
        child = add(0)
        for _ in range(10):
            grandchild = add(child)
            for _ in range(10 if c == 0 else bulk):
                add(grandchild)
    return kids


def bench_change(quick: bool) -> list[Result]:
    reps = 40 if quick else 300
    rows: list[Result] = []
    p50s: dict[int, float] = {}
    for bulk in (10, 111):  # 1,111 and 10,201 nodes; the same path above every changed leaf
        kids = _path_tree(bulk)
        n = len(kids)
        with fs.open("memory://") as reg:
            nodes = store_tree(reg, kids)
            tree = EntityTree.build(reg, nodes[0])
            hot = [
                nodes[leaf] for g in kids[kids[0][0]] for leaf in kids[g]
            ]  # 100 leaves under child 0
            # change each hot leaf in turn, round after round: its k-th change targets version k
            targets = [
                fs.EntityRef(hot[i % len(hot)].lineage_id, 1 + i // len(hot))
                for i in range(reps + _WARMUP)
            ]
            samples = time_each(
                lambda ref, t=tree: t.commit_change(reg, ref, value=1), targets, _WARMUP
            )
            versions = len(
                tree.path_to(tree[targets[-1]._replace(version=targets[-1].version + 1)])
            )
            cold = [nodes[leaf] for c in kids[0][1:] for g in kids[c] for leaf in kids[g]]
            cold = cold[: reps + _WARMUP]
            base = time_each(lambda e: reg.commit(e.evolve(value=2)), cold, _WARMUP)
            total = sum(len(reg.history(x.lineage_id)) for x in nodes)
            changes = len(targets) * versions + len(cold)
            assert versions == 4 and total == n + changes, "more versions than the changed paths"
        s, b = summarize(samples), summarize(base)
        p50s[n] = s["p50"]
        rows.append(
            Result(
                f"commit_change(leaf), {n:,} nodes (p50)",
                forseti=s["p50"],
                baseline=b["p50"],
                baseline_name=_BASE_CHANGE,
                group="tree commit_change",
                samples=reps,
                extra={"p99": s["p99"], "nodes": n, "versions_per_change": versions},
            )
        )
    small, large = sorted(p50s)
    rows.append(
        Result(
            f"commit_change {large:,} vs {small:,} nodes (p50 ratio)",
            forseti=p50s[large],
            baseline=p50s[small],
            baseline_name="",
            target_ratio=1.5,
            group="tree commit_change",
            extra={"note": "4 versions per change (leaf + 3 ancestors) whatever the tree size"},
        )
    )
    return rows


def run(quick: bool) -> list[Result]:
    results: list[Result] = []
    for name, fn in (("walk", bench_walk), ("commit_change", bench_change)):
        t0 = time.perf_counter()
        try:
            results += fn(quick)
        except Exception as exc:
            traceback.print_exc()
            results.append(error_result(f"trees {name}", exc, group=f"tree {name}"))
        print(f"    {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return results
