"""One look for every long step: a rich progress bar with a rate in the stage's own unit."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line (greppable)


class RateColumn(ProgressColumn):
    """Items per second, e.g. '1,234 tok/s'."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


def progress(unit: str = "tok", *, disable: bool = False, extra: str = "") -> Progress:
    """A bar: description, done/total, rate, elapsed, ETA, and optional live fields ({task.fields})."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    if extra:
        columns.append(TextColumn(extra))
    return Progress(*columns, console=console, disable=disable, transient=False)
