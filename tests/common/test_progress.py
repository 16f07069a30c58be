"""Progress without a terminal: plain lines on the [log] cadence; with one, rich's bar; events always."""

import io
import json
import re
from types import SimpleNamespace

import pytest
from rich.console import Console
from rich.progress import Task

import orthosae.common.progress as cp
from orthosae.common import events


class Clock:
    """A fake time source: the cadence is tested without sleeping."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def log_console(monkeypatch):
    """The progress console writing into a string, as into a log file (not a terminal)."""
    out = io.StringIO()
    monkeypatch.setattr(cp, "console", Console(file=out, width=200))
    monkeypatch.setattr(cp, "_cadence", {"seconds": 30.0, "percent": 25})
    return out


def test_plain_lines_at_each_quarter_and_every_interval(log_console):
    clock = Clock()
    with cp.progress("step", extra="{task.fields[stats]}", get_time=clock) as bar:
        assert bar.plain and not bar.live.is_started  # no live bar: it would reach the log only at the end
        task = bar.add_task("train", total=100, stats="a step 0")
        for i in range(1, 101):
            clock.t = i * 2.0  # 2 s a step: 30 s pass every 15 steps
            bar.update(task, advance=1, stats=f"a step {i} L0 3.0 EV 0.900")
    lines = log_console.getvalue().splitlines()
    done = [int(re.search(r"  (\d+)/100 step", line).group(1)) for line in lines]
    # 0 %, every 30 s (15 steps) and the quarter marks 25/50/75/100 %
    assert done == [0, 15, 25, 40, 50, 65, 75, 90, 100], lines
    assert lines[2].split("  ")[1:] == [
        "train",
        "25/100 step",
        "25%",
        "0.5 step/s",
        "elapsed 0:00:50",
        "ETA 0:02:30",
        "a step 25 L0 3.0 EV 0.900",
    ]


def test_a_count_without_a_total_shows_no_percent_and_no_eta(log_console):
    """Corpus planning and the probing texts count items with no end known: the line says how many
    so far, never "825/? item  0%  ETA -:--:--"."""
    clock = Clock()
    with cp.progress("item", get_time=clock) as bar:
        task = bar.add_task("probing texts", total=None)
        for i in range(1, 826):
            clock.t = i * 0.1
            bar.advance(task)
    last = log_console.getvalue().splitlines()[-1].split("  ")[1:]
    assert last == ["probing texts", "825 item so far", "10 item/s", "elapsed 0:01:22"], last


def test_cadence_follows_configure(log_console):
    cp.configure(seconds=0, percent=50)
    clock = Clock()
    with cp.progress("tok", get_time=clock) as bar:
        task = bar.add_task("harvest", total=4)
        for i in range(4):
            clock.t += 1
            bar.update(task, description=f"harvest chunk {i + 1}/4")  # a description alone: no line
            bar.advance(task)
    lines = log_console.getvalue().splitlines()
    assert [re.search(r"  (\d)/4 tok", line).group(1) for line in lines] == ["0", "1", "2", "3", "4"]


def test_last_line_when_a_task_stops_between_marks(log_console):
    clock = Clock()
    with cp.progress("step", get_time=clock) as bar:
        task = bar.add_task("train", total=100)
        bar.advance(task, 10)  # e.g. every run stopped early at step 10
    assert [re.search(r"  (\d+)/100", line).group(1) for line in log_console.getvalue().splitlines()] == ["0", "10"]


def test_disabled_progress_prints_nothing(log_console):
    with cp.progress("tok", disable=True) as bar:
        task = bar.add_task("harvest", total=10)
        bar.advance(task, 10)
    assert log_console.getvalue() == ""


def test_terminal_keeps_the_rich_bar(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(cp, "console", Console(file=out, width=100, force_terminal=True))
    with cp.progress("tok") as bar:
        assert not bar.plain and bar.live.is_started
        task = bar.add_task("harvest", total=10)
        bar.advance(task, 10)
    text = out.getvalue()
    assert "10/10" in text and "━" in text and "ETA" not in text  # the bar, not plain lines


def test_progress_events_carry_numbers_and_run_fields(tmp_path, log_console):
    cfg = SimpleNamespace(path=tmp_path / "p.toml", eval=SimpleNamespace(reports_dir=str(tmp_path), name="r"))
    log = events.start(cfg, "train", ["train"])
    try:
        events.set_stage("train")
        clock = Clock()
        with cp.progress("step", extra="{task.fields[stats]}", get_time=clock) as bar:
            task = bar.add_task("train", total=4, stats="", runs=[])
            for i in range(1, 5):
                clock.t = float(i)
                bar.update(task, advance=1, stats=f"a step {i}", runs=[{"run": "a", "step": i, "l0": 2.0, "ev": 0.5}])
    finally:
        events.finish("done", 0)
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["start", "progress", "progress", "progress", "progress", "progress", "done"]
    p = lines[2]
    assert (p["stage"], p["task"], p["done"], p["total"], p["unit"], p["percent"]) == (
        "train",
        "train",
        1,
        4,
        "step",
        25.0,
    )
    assert p["rate"] == 1.0 and p["eta_s"] == 3.0 and p["runs"] == [{"run": "a", "step": 1, "l0": 2.0, "ev": 0.5}]
    assert lines[-1]["exit_code"] == 0 and log.path.parent == tmp_path / "r" / "events"
    assert log.path.name.startswith("train-") and log.path.suffix == ".jsonl"


def test_tables_keep_whole_run_names_in_a_log_file():
    """Without a terminal rich assumes 80 columns and cut `pipe status`'s run names to "adapti…";
    the console is wide there, so a log shows each name whole."""
    from rich.table import Table

    from orthosae.common.progress import console

    assert not console.is_terminal  # pytest captures: no terminal, as in a batch job's log
    table = Table("run", "type", "status", "step", "L0", "EV (batch)", "elapsed", "checkpoint")
    table.add_row(
        "adaptive-sketch-alpha0.04-s2", "adaptive", "complete", "1000/1000", "64.0", "0.760", "0:16:21", "1000"
    )
    with console.capture() as cap:
        console.print(table)
    assert "adaptive-sketch-alpha0.04-s2" in cap.get() and "1000/1000" in cap.get()


def test_terminal_columns_show_a_count_without_a_total_and_no_eta():
    """On a terminal: "825" and no ETA while no total is known; "825/1,000" and an ETA with one."""
    clock = Clock()
    open_ended = Task(0, "probing texts", None, 825, _get_time=clock)
    bounded = Task(1, "harvest", 1000, 825, _get_time=clock)
    assert cp.CountColumn().render(open_ended).plain == "825"
    assert cp.CountColumn().render(bounded).plain == "825/1,000"
    assert cp.EtaColumn().render(open_ended).plain == ""
    assert cp.EtaColumn().render(bounded).plain == "-:--:--"  # no speed yet: rich's own placeholder
