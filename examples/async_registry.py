"""The async face, and the sync API inside a running event loop.

``await fs.aopen(url)`` gives an ``AsyncEntityRegistry``: the same calls as ``EntityRegistry``, as
coroutines (blocking store I/O runs on a worker thread, so the loop keeps serving other tasks).
The sync ``fs.open(url)`` never starts or needs an event loop, so it also works inside one
(a Jupyter cell, an ``async def``).

Run it with ``python examples/async_registry.py``; it writes only to a temporary directory.
"""

import asyncio
import tempfile
from pathlib import Path

import forseti as fs


async def main(url: str) -> None:
    areg = await fs.aopen(url)
    async with areg:  # closes it at the end (or: await areg.close())
        model = await areg.add(fs.ModelEntity(name="tiny", hidden_size=64))

        # Two tasks race to commit the next version from the same head: exactly one wins.
        async def widen(size: int) -> str:
            try:
                committed = await areg.commit(model.evolve(hidden_size=size))
            except fs.ConflictError as exc:
                return f"conflict (expected v{exc.expected}, found v{exc.actual})"
            return f"committed v{committed.version} with hidden_size={size}"

        results = await asyncio.gather(widen(128), widen(256))
        print("racing commits:", results)

        head = await areg.get(model.lineage_id)
        versions = await areg.history(model.lineage_id)
        found = await areg.find(fs.ModelEntity, name="tiny")
        print(f"head v{head.version} hidden_size={head.hidden_size}; {len(versions)} versions")

        # The sync API inside this running loop: no asyncio.run() anywhere, so it just works.
        # (Each call blocks the loop while it runs; in async code prefer the awaitable face.)
        reg = fs.open(url)
        same_head = reg.get(model.lineage_id)
        run = reg.add(fs.TrainingRunEntity(name="sync-inside-loop", model=same_head.ref))
        reg.close()
        print(f"sync registry inside the loop read v{same_head.version} and added run {run.name!r}")

        # The async registry sees what the sync one wrote (same SQLite file).
        descendants = await areg.descendants(head)
        print(f"descendants of the head: {descendants}")

    # What this script showed, checked.
    assert sorted(r.split()[0] for r in results) == ["committed", "conflict"]
    assert head.version == 2 and head.hidden_size in (128, 256)
    assert [v.version for v in versions] == [1, 2]
    assert [m.lineage_id for m in found] == [model.lineage_id]
    assert same_head == head
    assert descendants == [run.ref]


with tempfile.TemporaryDirectory() as tmp:
    asyncio.run(main(f"sqlite:///{Path(tmp) / 'async.db'}"))
