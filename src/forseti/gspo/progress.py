"""A progress bar for training loops: rich when the output is a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]

Advance = Callable[[dict[str, float]], None]


@contextmanager
def progress_bar(total: int, done: int, label: str, enabled: bool | None) -> Iterator[Advance]:
    """Yield ``advance(metrics)``, which moves the bar one step and shows reward and clipping.

    ``enabled=None`` shows the bar when stderr is a terminal.
    """
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield lambda metrics: None
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

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("reward {task.fields[reward]:>6.3f}  exact {task.fields[exact]:>5.2f}"),
        TextColumn("clip {task.fields[clip]:>5.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=total, completed=done, reward=0.0, exact=0.0, clip=0.0)

        def advance(metrics: dict[str, float]) -> None:
            progress.update(
                task,
                advance=1,
                reward=metrics.get("reward_mean", 0.0),
                exact=metrics.get("exact", 0.0),
                clip=metrics.get("clip_frac", 0.0),
            )

        yield advance
