#!/usr/bin/env python
"""cProfile the registry's hot paths (not run by run.py; for finding where the time goes).

    python benchmarks/profile_registry.py commit      # memory:// commit of pre-built drafts
    python benchmarks/profile_registry.py evolve      # Entity.evolve
    python benchmarks/profile_registry.py get-sqlite  # cached head lookup on SQLite
    python benchmarks/profile_registry.py history     # history() of a lineage on SQLite (warm)
    python benchmarks/profile_registry.py descendants # descendants() over a DAG (both backends)

Options: ``-n`` size, ``--sort`` (tottime|cumtime), ``--limit`` rows.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import setup_paths  # noqa: E402

setup_paths()

import bench_registry as br  # noqa: E402


def profile(fn, sort: str, limit: int) -> None:  # type: ignore[no-untyped-def]
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    pstats.Stats(prof).strip_dirs().sort_stats(sort).print_stats(limit)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["commit", "evolve", "get-sqlite", "history", "descendants"])
    ap.add_argument("-n", type=int, default=0)
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--backend", default="sqlite")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="forseti-prof-") as tmpdir:
        tmp = Path(tmpdir)
        if a.what == "commit":
            n = a.n or 20_000
            reg = br.open_reg(a.backend if a.backend != "sqlite" else "memory", tmp)
            drafts = br.chain(reg.add(br.new_model()), n)

            def go() -> None:
                for d in drafts:
                    reg.commit(d)

            profile(go, a.sort, a.limit)
        elif a.what == "evolve":
            n = a.n or 20_000
            profile(lambda: br.chain(br.new_model(), n), a.sort, a.limit)
        elif a.what == "get-sqlite":
            n = a.n or 200_000
            reg = br.open_reg("sqlite", tmp)
            lid = reg.add(br.new_model()).lineage_id
            get = functools.partial(reg.get, lid)

            def go() -> None:
                for _ in range(n):
                    get()

            profile(go, a.sort, a.limit)
        elif a.what == "history":
            n = a.n or 10_000
            reg = br.open_reg(a.backend, tmp)
            head = br.new_model()
            br.commit_in_chunks(reg, [head, *br.chain(head, n - 1)])
            profile(lambda: [reg.history(head.lineage_id) for _ in range(5)], a.sort, a.limit)
        else:
            n = a.n or 10_000
            nodes = br.build_dag(n)
            reg = br.open_reg(a.backend, tmp)
            br.commit_in_chunks(reg, nodes)
            profile(lambda: [reg.descendants(nodes[0].ref) for _ in range(10)], a.sort, a.limit)


if __name__ == "__main__":
    main()
