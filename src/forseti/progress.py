"""A progress bar for training loops: rich when the output is a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bar", "Advance"]

Advance = Callable[[int, Mapping[str, float]], None]
"""``advance(n, metrics)``: ``n`` more steps done; the shown metrics take their new values."""


@contextmanager
def progress_bar(
    total: int,
    done: int,
    label: str,
    enabled: bool | None,
    show: Mapping[str, str],
) -> Iterator[Advance]:
    """Yield ``advance(n, metrics)`` for a bar of ``total`` steps (``done`` already done).

    ``show`` maps a metric's name to its column's label (e.g. ``{"ep_rew_mean": "return"}``);
    a metric missing from ``metrics`` keeps its last value. ``enabled=None`` shows the bar when
    stderr is a terminal.
    """
    visible = sys.stderr.isatty() if enabled is None else enabled
    if not visible:
        yield lambda n, metrics: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    fields = {name: f"m{i}" for i, name in enumerate(show)}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f"{show[name]} {{task.fields[{key}]:>8}}") for name, key in fields.items()),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        blank: dict[str, Any] = dict.fromkeys(fields.values(), "-")
        task = progress.add_task(label, total=total, completed=done, **blank)

        def advance(n: int, metrics: Mapping[str, float]) -> None:
            values: dict[str, Any] = {
                key: f"{metrics[name]:.4g}" for name, key in fields.items() if name in metrics
            }
            progress.update(task, advance=n, **values)

        yield advance
