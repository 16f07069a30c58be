"""Graceful preemption: SIGTERM / SIGINT stop a harvest or a training at the next safe point.

The CLI installs the handler (``handle_signals``) for the commands that do work. Harvest (from
the model load on) and training's step loop run inside ``deferred()``: there a signal only sets a
flag, the loop finishes the chunk or step in hand, commits it or writes every run's checkpoint (the
same functions a normal run uses), and raises ``Preempted``, which the CLI turns into exit code 75
(EX_TEMPFAIL: requeue) after printing what was saved and how to resume. Elsewhere (corpus
planning, the scale estimate, eval) nothing in hand can be saved, so a signal raises it at once. A
second signal aborts at once with the signal's default action; both resume points are safe to
be killed at (atomic checkpoint swap, chunk committed last).
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager

from rich.text import Text

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): "try again later", what schedulers requeue on
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(BaseException):
    """Work stopped on a signal after saving what was in hand; ``saved`` says what that is.

    A BaseException, as KeyboardInterrupt is: raised from the handler it may surface inside library
    code (zarr, torch), whose ``except Exception`` must not swallow it."""

    def __init__(self, saved: str, signal_name: str | None = None):
        super().__init__(saved)
        self.saved = saved
        self.signal_name = signal_name or _state["requested"] or "signal"


_state: dict = {"requested": None, "deferred": 0}


def requested() -> str | None:
    """The name of the signal received (e.g. "SIGTERM"), or None: loops check this after each unit."""
    return _state["requested"]


def request(name: str = "SIGTERM") -> None:
    """Ask the running loop to stop at its next safe point (what the handler does; tests use it)."""
    _state["requested"] = name


def clear() -> None:
    _state["requested"] = None


def _handler(signum, _frame) -> None:
    from common.progress import console
    name = signal.Signals(signum).name
    if _state["requested"] is not None:  # the second signal: stop now, the default way
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _state["requested"] = name
    if _state["deferred"]:
        console.print(Text(f"{name}: finishing the chunk or step in hand, then saving "
                           f"(send it again to stop at once)", style="yellow"))
    else:
        raise Preempted("nothing new to save here; the rerun starts this step over", name)


@contextmanager
def deferred():
    """A region whose loop checks ``requested()`` and saves before stopping: signals only set the flag."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1


@contextmanager
def handle_signals():
    """Install the handler for SIGTERM and SIGINT (main thread only), restore the old ones after."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear()
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        clear()
