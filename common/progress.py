"""One look for every long step: a rich bar on a terminal, plain progress lines in a log file.

Without a terminal (a batch job, `pipe run > log 2>&1`) rich would print a bar only in its final
state, so a log stays silent for the whole step. There every task prints one plain line instead,
every ``[log] progress_seconds`` and at every ``progress_percent`` mark (0/25/50/75/100 % by
default): time, description, done/total, percent, rate, elapsed, ETA and the task's live fields
(with no total known: the count so far, and neither percent nor ETA).
Every task also sends the same numbers, on the same cadence, to the event log (``common.events``),
terminal or not.
"""

from __future__ import annotations

import math
import os
import sys
import time

from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from orthosae.common import events
from orthosae.common.console import console

# The cadence of plain lines and progress events; `configure` sets it from [log] (common/config.py).
_cadence = {"seconds": 30.0, "percent": 25}

if not console.is_terminal:
    # tqdm reads TQDM_* once, when it is first imported (torch imports it): set before that, this
    # silences every tqdm bar, e.g. transformers' GGUF "Converting and de-quantizing" bar, whose
    # carriage returns would fill a log file. `quiet_library_bars` covers bars made after import.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def configure(seconds: float, percent: int) -> None:
    """Seconds between plain lines (0: every update) and the percent step of the marks."""
    _cadence.update(seconds=float(seconds), percent=int(percent))


def quiet_library_bars() -> None:
    """Without a terminal, turn off the tqdm bars of transformers, huggingface_hub and datasets.

    Called where those libraries are used (model, tokenizer and hub dataset loading); on a
    terminal their bars stay, as ours do."""
    if console.is_terminal:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights"; also turns off huggingface_hub's bars
    if "datasets" in sys.modules:  # imported by its callers only: not worth importing here
        sys.modules["datasets"].disable_progress_bars()


class RateColumn(ProgressColumn):
    """Items per second, e.g. '1,234 tok/s'."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


class CountColumn(ProgressColumn):
    """done/total, or the count alone while no total is known (never "825/?")."""

    def render(self, task) -> Text:
        done = f"{task.completed:,.0f}"
        return Text(done if task.total is None else f"{done}/{task.total:,.0f}", style="progress.download")


class EtaColumn(TimeRemainingColumn):
    """Time remaining; nothing while no total is known (an ETA that never comes is noise)."""

    def render(self, task) -> Text:
        return Text("") if task.total is None else super().render(task)


def hms(seconds: float | None) -> str:
    """3725 -> '1:02:05'."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _json_field(value):
    """Task fields JSON can hold go into progress events (e.g. training's per-run numbers)."""
    return isinstance(value, (int, float, str, bool, list, dict)) or value is None


class StepProgress(Progress):
    """rich's Progress plus a cadence: plain lines without a terminal, progress events always."""

    def __init__(self, *columns, unit: str, extra: str, plain: bool, quiet: bool, get_time=None):
        # plain: no live display (it would print only its last frame into a log); tasks still count
        super().__init__(*columns, console=console, disable=quiet or plain, transient=False, get_time=get_time)
        self.unit, self.extra, self.plain, self.quiet = unit, extra, plain, quiet
        self._shown: dict = {}  # task id -> (time, percent mark, completed) of its last line
        self._base: dict = {}  # task id -> completed when added (a resumed task starts part done)

    def add_task(self, description: str, *args, **kwargs):
        task_id = super().add_task(description, *args, **kwargs)
        self._base[task_id] = self._tasks[task_id].completed
        self._tick(task_id)
        return task_id

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._tick(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._tick(task_id)

    def stop(self) -> None:
        for task_id, task in list(self._tasks.items()):  # a task that ended between two lines
            shown = self._shown.get(task_id)
            if shown is not None and shown[2] != task.completed:
                self._tick(task_id, force=True)
        super().stop()

    def _tick(self, task_id, force: bool = False) -> None:
        if self.quiet:
            return
        task = self._tasks[task_id]
        now = self.get_time()
        done = task.total is not None and task.completed >= task.total
        mark = math.inf if done else int(task.percentage // _cadence["percent"]) if task.total else 0
        last = self._shown.get(task_id)  # (time, mark, completed) of the task's last line
        moved = last is None or task.completed != last[2]
        if not (force or last is None or mark > last[1] or (moved and now - last[0] >= _cadence["seconds"])):
            return  # a field or description update alone does not print
        self._shown[task_id] = (now, mark, task.completed)
        self._report(task)

    def _report(self, task) -> None:
        speed = task.finished_speed or task.speed
        if not speed and task.elapsed:  # rich's estimate spans 30 s: slower steps fall back to the mean
            speed = (task.completed - self._base[task.id]) / task.elapsed or None
        eta = task.time_remaining if speed else None
        if eta is None and speed and task.total is not None:
            eta = max(task.total - task.completed, 0) / speed
        if self.plain:
            if task.total is None:  # a count with no end known: no "/?", no 0 %, no ETA that never comes
                count, percent, until = f"{task.completed:,.0f} {self.unit} so far", "", ""
            else:
                count, percent = f"{task.completed:,.0f}/{task.total:,.0f} {self.unit}", f"{task.percentage:.0f}%"
                until = f"ETA {hms(eta)}"
            parts = [
                time.strftime("%Y-%m-%d %H:%M:%S"),
                task.description,
                count,
                percent,
                f"{_rate(speed)} {self.unit}/s",
                f"elapsed {hms(task.elapsed)}",
                until,
            ]
            if self.extra:
                parts.append(self.extra.format(task=task))
            console.print(Text("  ".join(p for p in parts if p)), highlight=False)
        events.emit(
            "progress",
            task=task.description,
            done=task.completed,
            total=task.total,
            unit=self.unit,
            percent=round(task.percentage, 1),
            rate=_round(speed, 4),
            elapsed_s=_round(task.elapsed, 1),
            eta_s=_round(eta, 1),
            **{k: v for k, v in task.fields.items() if _json_field(v)},
        )


def _rate(speed: float | None) -> str:
    if not speed:
        return "-"
    return f"{speed:,.0f}" if speed >= 100 else f"{speed:.3g}"


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


def progress(unit: str = "tok", *, disable: bool = False, extra: str = "", get_time=None) -> Progress:
    """A bar: description, done/total, rate, elapsed, ETA, and optional live fields ({task.fields});
    without a terminal, plain lines on the `[log]` cadence instead (module docstring)."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        CountColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        EtaColumn(),
    ]
    if extra:
        # one line on a terminal: what the bar leaves of its width, then "…" (a log line has it all)
        width = max(16, console.width - 80)
        columns.append(TextColumn(extra, table_column=Column(no_wrap=True, overflow="ellipsis", max_width=width)))
    return StepProgress(
        *columns, unit=unit, extra=extra, plain=not console.is_terminal, quiet=disable, get_time=get_time
    )
