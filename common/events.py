"""The event log: one JSON-lines file per `pipe` invocation, for dashboards and scheduler hooks.

``<reports_dir>/<eval name>/events/<command>-<UTC time>-<pid>.jsonl``, beside the report (one folder
per config). Every line is one JSON object with ``time`` (ISO 8601, UTC), ``event``, ``command``,
``pid``, ``rank`` and ``stage`` (harvest / train / eval, once one has begun), then the event's own
fields:

- ``start``: ``config``, ``argv``, ``host``, ``world_size``
- ``progress``: ``task``, ``done``, ``total``, ``unit``, ``percent``, ``rate`` (units/s),
  ``elapsed_s``, ``eta_s``; training adds ``runs`` (each run's ``run``, ``step``, ``l0``, ``ev``)
- ``stage_done``: a stage finished (harvest: ``rows``, ``seconds``; train: ``runs``; eval: ``report``)
- ``run_done``: a training run ended: ``run``, ``status``, ``step``, ``l0``, ``ev``, ``seconds``,
  ``reason`` when it failed
- the last line, exactly one of: ``done`` / ``failed`` (``reason``) / ``preempted`` (``signal``,
  ``saved``, ``resume``), each with ``exit_code`` (docs/operations.md, "Batch jobs").

Stages emit through the module functions; they write nothing when no log is open (library use).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

from orthosae.common.console import console
from orthosae.common.errors import first_line

FINAL = ("done", "failed", "preempted")


def events_dir(cfg) -> Path:
    return Path(cfg.eval.reports_dir) / cfg.eval.name / "events"


def _clean(value):
    """JSON has no nan / inf: null, as the training log writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventLog:
    def __init__(self, path: Path, command: str):
        self.path, self.command = path, command
        self.rank = int(os.environ.get("RANK", 0))
        self.stage: str | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")
        self.closed = False

    def emit(self, event: str, **fields) -> None:
        if self.closed:
            return
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
            "command": self.command,
            "pid": os.getpid(),
            "rank": self.rank,
            "stage": self.stage,
            **fields,
        }
        self._file.write(json.dumps(_clean(record), default=str) + "\n")
        self._file.flush()  # a reader tailing the file sees each event as it happens

    def finish(self, event: str, exit_code: int, **fields) -> None:
        """The last line (done | failed | preempted), then close."""
        self.emit(event, exit_code=exit_code, **fields)
        self.closed = True
        self._file.close()


_current: EventLog | None = None


def start(cfg, command: str, argv: list[str]) -> EventLog:
    """Open this invocation's log and write its `start` line."""
    global _current
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    _current = EventLog(events_dir(cfg) / f"{command}-{stamp}-{os.getpid()}.jsonl", command)
    _current.emit(
        "start",
        config=str(cfg.path),
        argv=argv,
        host=socket.gethostname(),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )
    return _current


_listeners: list = []  # in-process subscribers (common/tracker.py): every event, and `observe`d ones


def listen(fn) -> None:
    """Call ``fn(record)`` with each event from now until the invocation's final event; ``record``
    is ``{"event", "stage", **fields}``. A listener that raises is dropped with one warning line:
    a tracker never stops the pipeline."""
    _listeners.append(fn)


def _tell(event: str, fields: dict) -> None:
    record = {"event": event, "stage": None if _current is None else _current.stage, **fields}
    for fn in list(_listeners):
        try:
            fn(record)
        except Exception as e:  # noqa: BLE001 - reported once, then that listener is gone
            _listeners.remove(fn)
            console.print(
                f"[yellow]warning: {getattr(fn, 'name', 'listener')} stopped at event {event!r}: "
                f"{type(e).__name__}: {first_line(e)}; the pipeline goes on[/]",
                highlight=False,
            )


def observe(event: str, **fields) -> None:
    """An event for listeners only (not the event log): the training log records, a run's config."""
    if _listeners:
        _tell(event, fields)


def set_stage(stage: str) -> None:
    if _current is not None:
        _current.stage = stage


def emit(event: str, **fields) -> None:
    """Write one event to the open log (no-op without one)."""
    if _current is not None:
        _current.emit(event, **fields)
    if _listeners:
        _tell(event, fields)


def finish(event: str, exit_code: int, **fields) -> None:
    """Write the final line and close the log (no-op without one, or when already closed)."""
    global _current
    if _listeners:
        _tell(event, {"exit_code": exit_code, **fields})
        _listeners.clear()
    if _current is not None:
        _current.finish(event, exit_code, **fields)
        _current = None


def read(path: Path) -> list[dict]:
    """The events of one log file (a line cut short by a kill is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def latest(cfg) -> Path | None:
    """The most recently written event log of this config, if any."""
    folder = events_dir(cfg)
    files = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    return files[-1] if files else None


def is_final(event: dict) -> bool:
    return event.get("event") in FINAL


def process_alive(host: str | None, pid) -> bool:
    """Whether process `pid` runs; on another host it cannot be checked and counts as alive."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True


def last_job(cfg) -> dict | None:
    """The newest event log of this config: its command, start, and how it ended (or that it runs)."""
    path = latest(cfg)
    log = read(path) if path is not None else []
    if not log:
        return None
    first, last = log[0], log[-1]
    job = {
        "events": str(path),
        "command": first.get("command"),
        "started": first.get("time"),
        "last_event": last.get("event"),
        "time": last.get("time"),
        "exit_code": last.get("exit_code"),
    }
    if is_final(last):
        job.update(state=last["event"], detail=last.get("reason") or last.get("saved"))
    elif process_alive(first.get("host"), first.get("pid")):
        job.update(state="running", detail=None)
    else:
        job.update(state="ended without a final event (killed)", detail=None)
    return job
