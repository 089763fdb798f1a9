#!/usr/bin/env python
"""Run every ``benchmarks/bench_*.py`` and print one table.

    python benchmarks/run.py            # full run (make bench)
    python benchmarks/run.py --quick    # CI smoke run, < 60 s
    python benchmarks/run.py --only registry

Each module exposes ``run(quick: bool) -> list[Result]``. The table has the columns benchmark,
forseti, baseline, ratio (forseti / baseline), target and met; the rows are also written as JSON
to ``.bench/results.json``. A missed target does not fail the run (timings are not assertions);
the exit code is non-zero only when a benchmark crashes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO_ROOT,
    Result,
    error_result,
    machine_info,
    setup_paths,
)

setup_paths()

BENCH_DIR = Path(__file__).resolve().parent


def discover(only: list[str] | None) -> list[Path]:
    paths = sorted(BENCH_DIR.glob("bench_*.py"))
    if only:
        paths = [p for p in paths if any(o in p.stem for o in only)]
    return paths


def load(path: Path) -> ModuleType:
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- table ---------------------------------------------------------------------------------------

COLUMNS = ("benchmark", "forseti", "baseline", "ratio", "target", "met")


def _cells(r: Result) -> tuple[str, ...]:
    if r.error:
        return (r.benchmark, "crashed", "", "", r.target, r.flag)
    if r.skipped:
        return (r.benchmark, "skipped", "", "", r.target, r.flag)
    ratio = r.ratio
    return (
        r.benchmark,
        r.format(r.forseti),
        r.format(r.baseline),
        "" if ratio is None else (f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.0f}x"),
        r.target,
        r.flag,
    )


def _notes(results: list[Result]) -> list[str]:
    notes: list[str] = []
    shown: set[str] = set()
    for r in results:
        if r.baseline_name and r.baseline_name not in shown:
            if not shown:
                notes.append("baselines:")
            shown.add(r.baseline_name)
            notes.append(f"  {r.group or r.benchmark}: {r.baseline_name}")
    reasons: dict[str, list[str]] = {}
    for r in results:
        if r.skipped:
            reasons.setdefault(r.skipped, []).append(r.benchmark)
    for reason, names in reasons.items():
        notes.append(f"skipped ({len(names)} rows, e.g. {names[0]!r}): {reason}")
    for r in results:
        if r.error:
            notes.append(f"ERROR in {r.benchmark!r}: {r.error}")
    return notes


def print_table(results: list[Result], title: str) -> None:
    rows = [_cells(r) for r in results]
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(COLUMNS)]
        right = {1, 2, 3}

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(
                cell.rjust(w) if i in right else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        print(title)
        print(line(COLUMNS))
        print(line(tuple("-" * w for w in widths)))
        group = None
        for r, row in zip(results, rows, strict=True):
            if group is not None and r.group != group:
                print()
            group = r.group
            print(line(row))
    else:
        table = Table(title=title)
        for i, c in enumerate(COLUMNS):
            table.add_column(c, justify="right" if i in (1, 2, 3) else "left")
        styles = {"met": "green", "MISSED": "red", "ERROR": "bold red", "skipped": "yellow"}
        group = None
        for r, row in zip(results, rows, strict=True):
            if group is not None and r.group != group:
                table.add_section()
            group = r.group
            table.add_row(*(Text(c) for c in row), style=styles.get(r.flag))  # no markup
        Console(width=None if sys.stdout.isatty() else 140).print(table)
    for note in _notes(results):
        print(note)


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="few iterations, small data (CI)")
    ap.add_argument("--only", action="append", help="run only modules whose name contains this")
    ap.add_argument(
        "--json",
        type=Path,
        default=REPO_ROOT / ".bench" / "results.json",
        help="where to write the results (default: .bench/results.json)",
    )
    args = ap.parse_args(argv)

    started = time.perf_counter()
    results: list[Result] = []
    modules: dict[str, dict[str, object]] = {}
    crashed = False
    paths = discover(args.only)
    if not paths:
        print("no benchmarks found", file=sys.stderr)
        return 2
    for path in paths:
        t0 = time.perf_counter()
        mode = "quick" if args.quick else "full"
        print(f"running {path.stem} ({mode}) ...", file=sys.stderr, flush=True)
        try:
            module = load(path)
            rows = list(module.run(args.quick))
        except Exception as exc:
            traceback.print_exc()
            rows = [error_result(path.stem, exc, group=path.stem)]
        if any(r.error for r in rows):
            crashed = True
        elapsed = time.perf_counter() - t0
        modules[path.stem] = {"seconds": round(elapsed, 3), "rows": len(rows)}
        print(f"  {path.stem}: {len(rows)} rows in {elapsed:.1f} s", file=sys.stderr, flush=True)
        results.extend(rows)

    total = time.perf_counter() - started
    title = f"forseti benchmarks ({'quick' if args.quick else 'full'}, {total:.1f} s)"
    print_table(results, title)

    payload = {
        "created_at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "seconds": round(total, 3),
        "machine": machine_info(),
        "modules": modules,
        "results": [r.to_json() for r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {args.json}")
    missed = sum(1 for r in results if r.met is False)
    if missed:
        print(f"{missed} target(s) missed (reported, not failed)")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
