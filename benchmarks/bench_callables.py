"""Registered functions: the cost of ``reg.call``, of reading one field by address, of workflows.

1. ``reg.call`` on a trivial function (``x + 1``), memory and SQLite: the p50 of the call minus
   the p50 of calling the function directly is the overhead (binding, ``CallStarted``, the
   call record and ``CallCompleted`` committed in one transaction). Target on memory <= 100 µs;
   the framework Forseti replaces needs about 4.4 ms.
2. ``reg.call`` on a 10 ms function (10 ms of busy computation, as a training step is): the
   same overhead relative to the direct call. Target <= 5 %. (Not ``time.sleep``: on this VM a
   thread that slept runs its next few hundred microseconds of Python several times slower —
   a dict lookup too — which measures the machine, not the call.)
3. One field read by address, ``reg.resolve("@<root>.children.i.children.j.children.k.name")``,
   in a ~10k-node tree (fan-out 22, depth 3), memory and SQLite: p50 against the same reads done
   by hand (``reg.get`` of each ref, then the attribute). Target <= 50 µs (the replaced framework
   deep-copies the tree: 200 ms at 1k nodes).
4. A 20-step chain workflow of trivial steps on memory: seconds per step, against one
   ``reg.call`` of the same function (no target: a step adds the run-state commits).
"""

from __future__ import annotations

import functools
import random
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from common import Result, summarize, time_calls

import forseti as fs
from forseti.entities import EntityRef


class Node(fs.Entity):
    """A tree node whose children are exact versions of other nodes."""

    entity_type: ClassVar[str] = "bench.callables.Node"

    name: str
    children: tuple[EntityRef, ...] = ()


def trivial(x: int) -> int:
    return x + 1


def ten_ms(x: int) -> int:
    end = time.perf_counter() + 0.01
    while time.perf_counter() < end:  # 10 ms of computation
        pass
    return x + 1


def build_tree(reg: fs.EntityRegistry, fanout: int, depth: int) -> Node:
    """A complete tree of ``Node``s, leaves committed first; returns the root."""
    level: list[Node] = [Node(name=f"leaf{i}") for i in range(fanout**depth)]
    reg_batches(reg, level)
    for d in range(depth - 1, -1, -1):
        parents = [
            Node(name=f"n{d}.{i}", children=tuple(c.ref for c in level[i * fanout : (i + 1) * fanout]))
            for i in range(fanout**d)
        ]
        reg_batches(reg, parents)
        level = parents
    return level[0]


def reg_batches(reg: fs.EntityRegistry, entities: list[Node], chunk: int = 500) -> None:
    for i in range(0, len(entities), chunk):
        reg.commit_many(entities[i : i + chunk])


def bench_call(backend: str, url: str, n: int) -> list[Result]:
    reg = fs.open(url)
    try:
        reg.callables.register(trivial)
        call = time_calls(functools.partial(reg.call, "trivial", 1), n, warmup=200)
        direct = time_calls(functools.partial(trivial, 1), n, warmup=200)
        s, b = summarize(call), summarize(direct)
        overhead = s["p50"] - b["p50"]
        records = len(reg.callables.records("trivial"))
        if records != n + 200:
            raise RuntimeError(f"expected {n + 200} call records, found {records}")
        # what one commit costs on this machine right now: a call is about two of them' worth
        add = summarize(time_calls(lambda: reg.add(fs.ConfigEntity(name="bare")), n, warmup=200))
        return [
            Result(
                f"reg.call overhead p50, trivial fn [{backend}]",
                overhead,
                b["p50"],
                baseline_name="the function called directly",
                target_s=100e-6 if backend == "memory" else None,
                group="callables",
                samples=n,
                extra={"call_p50_s": s["p50"], "call_p99_s": s["p99"], "direct_p50_s": b["p50"]},
            ),
            Result(
                f"reg.call overhead vs one bare commit [{backend}]",
                overhead,
                add["p50"],
                baseline_name="reg.add of one small entity (same registry, same moment)",
                group="callables",
                samples=n,
            ),
        ]
    finally:
        reg.close()


def bench_call_10ms(n: int) -> list[Result]:
    reg = fs.open("memory://")
    try:
        reg.callables.register(ten_ms)
        call = time_calls(functools.partial(reg.call, "ten_ms", 1), n, warmup=2)
        direct = time_calls(functools.partial(ten_ms, 1), n, warmup=2)
        s, b = summarize(call), summarize(direct)
        return [
            Result(
                "reg.call p50, 10 ms fn [memory]",
                s["p50"],
                b["p50"],
                baseline_name="the function called directly",
                target_ratio=1.05,
                group="callables",
                samples=n,
                extra={"overhead_s": s["p50"] - b["p50"]},
            )
        ]
    finally:
        reg.close()


def bench_address(backend: str, url: str, fanout: int, n: int) -> list[Result]:
    reg = fs.open(url)
    try:
        root = build_tree(reg, fanout, 3)
        size = 1 + fanout + fanout**2 + fanout**3
        rng = random.Random(3)
        paths = [(rng.randrange(fanout), rng.randrange(fanout), rng.randrange(fanout)) for _ in range(64)]
        addresses = [f"@{root.lineage_id}.children.{i}.children.{j}.children.{k}.name" for i, j, k in paths]

        def by_hand(i: int, j: int, k: int) -> str:
            top = reg.get(root.lineage_id)
            mid = reg.get(top.children[i])  # type: ignore[attr-defined]
            low = reg.get(mid.children[j])  # type: ignore[attr-defined]
            return reg.get(low.children[k]).name  # type: ignore[attr-defined, no-any-return]

        for a, p in zip(addresses, paths, strict=True):  # same answers, and warm caches
            if reg.resolve(a) != by_hand(*p):
                raise RuntimeError(f"{a} resolved to the wrong value")
        it = iter(range(n + 100))
        got = time_calls(lambda: reg.resolve(addresses[next(it) % 64]), n, warmup=100)
        it2 = iter(range(n + 100))
        base = time_calls(lambda: by_hand(*paths[next(it2) % 64]), n, warmup=100)
        s, b = summarize(got), summarize(base)
        return [
            Result(
                f"address read p50, one field, {size // 1000}k-node tree [{backend}]",
                s["p50"],
                b["p50"],
                baseline_name="the same reg.get hops by hand",
                target_s=50e-6,
                group="callables",
                samples=n,
                extra={"nodes": size, **s},
            )
        ]
    finally:
        reg.close()


def bench_workflow(steps: int, repeats: int) -> list[Result]:
    reg = fs.open("memory://")
    try:
        reg.callables.register(trivial)
        wf = fs.Workflow("chain")
        prev: fs.Step | int = 0
        for i in range(steps):
            prev = wf.step("trivial", name=f"s{i}", x=prev)
        wf.run(reg)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            result = wf.run(reg)
        per_step = (time.perf_counter() - t0) / (repeats * steps)
        if result[f"s{steps - 1}"] != steps:
            raise RuntimeError("the chain computed the wrong value")
        call = summarize(time_calls(functools.partial(reg.call, "trivial", 1), 500, warmup=50))
        return [
            Result(
                f"workflow step, {steps}-step chain [memory]",
                per_step,
                call["p50"],
                baseline_name="one reg.call of the same function",
                group="callables",
                samples=repeats * steps,
            )
        ]
    finally:
        reg.close()


def run(quick: bool) -> list[Result]:
    n = 500 if quick else 5000
    out: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        out += bench_call("memory", "memory://", n)
        out += bench_call("sqlite", f"sqlite:///{Path(tmp) / 'calls.db'}", n // 2)
        out += bench_call_10ms(20 if quick else 100)
        fanout = 10 if quick else 22
        out += bench_address("memory", "memory://", fanout, n)
        out += bench_address("sqlite", f"sqlite:///{Path(tmp) / 'tree.db'}", fanout, n)
        out += bench_workflow(20, 2 if quick else 10)
    return out
