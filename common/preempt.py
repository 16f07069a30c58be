"""Graceful preemption: SIGTERM / SIGINT stop a harvest or a training at the next safe point.

The CLI installs the handler (``handle_signals``) for the commands that do work. Harvest (from
the model load on) and training's step loop run inside ``deferred()``: there a signal only sets a
flag, the loop finishes the chunk or step in hand, commits it or writes every run's checkpoint (the
same functions a normal run uses), and raises ``Preempted``, which the CLI turns into exit code 75
(EX_TEMPFAIL: requeue) after printing what was saved and how to resume. Elsewhere (corpus
planning, the scale estimate, eval) nothing in hand can be saved, so a signal raises it at once. A
raise from a handler lands at whatever bytecode runs; where that is a finaliser or a library's broad
``except`` it is swallowed, so until the CLI has caught it the raise is repeated every ``RETRY_S``
seconds, and a deferred region never starts once a signal is in. A second signal aborts at once
with the signal's default action; both resume points are safe to be killed at (atomic checkpoint
swap, chunk committed last).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from rich.text import Text

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): "try again later", what schedulers requeue on
SIGNALS = (signal.SIGTERM, signal.SIGINT)
NOTHING_SAVED = "nothing new to save here; the rerun starts this step over"
RETRY_S = 2.0  # a swallowed raise is raised again after this long (see the module docstring)


class Preempted(BaseException):
    """Work stopped on a signal after saving what was in hand; ``saved`` says what that is.

    A BaseException, as KeyboardInterrupt is: raised from the handler it may surface inside library
    code (zarr, torch), whose ``except Exception`` must not swallow it."""

    def __init__(self, saved: str, signal_name: str | None = None):
        super().__init__(saved)
        self.saved = saved
        self.signal_name = signal_name or _state["requested"] or "signal"


_state: dict = {"requested": None, "deferred": 0, "retry": False, "timer": None}


def requested() -> str | None:
    """The name of the signal received (e.g. "SIGTERM"), or None: loops check this after each unit."""
    return _state["requested"]


def request(name: str = "SIGTERM") -> None:
    """Ask the running loop to stop at its next safe point (what the handler does; tests use it)."""
    _state["requested"] = name


def acknowledge() -> None:
    """The raise reached its catcher (the CLI): stop repeating it."""
    timer, _state["timer"] = _state["timer"], None
    if timer is not None:
        timer.cancel()
    _state["retry"] = False


def clear() -> None:
    acknowledge()
    _state["requested"] = None


def _raise_now(name: str) -> None:
    acknowledge()
    timer = threading.Timer(RETRY_S, _repeat, args=(signal.Signals[name],))
    timer.daemon = True
    _state["timer"] = timer
    timer.start()
    raise Preempted(NOTHING_SAVED, name)


def _repeat(signum: int) -> None:
    """Timer thread: the raise has not reached the CLI, so something swallowed it; raise it again in
    the main thread (the handler runs there, as for a real signal)."""
    if _state["requested"] is not None and not _state["deferred"]:
        _state["retry"] = True
        # to the main thread itself, so a blocking call there (a sleep, a lock) wakes for the handler
        signal.pthread_kill(threading.main_thread().ident, signum)


def _handler(signum, _frame) -> None:
    from orthosae.common.progress import console

    name = signal.Signals(signum).name
    if _state["retry"]:  # our own repeat (_repeat), not the user's second signal
        _raise_now(_state["requested"])
    if _state["requested"] is not None:  # the second signal: stop now, the default way
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _state["requested"] = name
    if _state["deferred"]:
        console.print(
            Text(
                f"{name}: finishing the chunk or step in hand, then saving (send it again to stop at once)",
                style="yellow",
            )
        )
    else:
        _raise_now(name)


@contextmanager
def deferred():
    """A region whose loop checks ``requested()`` and saves before stopping: signals only set the flag.
    A signal already in (its raise swallowed on the way) stops before the region starts."""
    if _state["requested"] is not None and not _state["deferred"]:
        raise Preempted(NOTHING_SAVED)
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
