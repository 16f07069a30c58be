"""Run a test's helper script in a fresh interpreter (kill -9, signal and multi-process tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# Every helper script dumps all its threads' stacks on SIGUSR1, so a test that finds it hung can
# say where (``wait_exit``).
_PREAMBLE = "import faulthandler as _fh, signal as _sig\n_fh.register(_sig.SIGUSR1, all_threads=True)\n"


def _command(tmp_path: Path, code: str, args, launcher: list[str] | None) -> list[str]:
    script = tmp_path / f"script_{abs(hash(code)) % 10**8}.py"
    script.write_text(_PREAMBLE + code)
    return [*(launcher or [sys.executable]), str(script), *map(str, args)]


def _env(env: dict | None) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}


def run_script(
    tmp_path: Path,
    code: str,
    *args: str,
    launcher: list[str] | None = None,
    env: dict | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Write ``code`` to a file under tmp_path and run it (``launcher`` defaults to this Python)."""
    return subprocess.run(
        _command(tmp_path, code, args, launcher),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(env),
    )


def start_script(
    tmp_path: Path, code: str, *args: str, log: Path, launcher: list[str] | None = None, env: dict | None = None
) -> subprocess.Popen:
    """As ``run_script``, but returns at once, stdout and stderr going to the file ``log`` as in a
    batch job, so the test can signal the process while it works."""
    with open(log, "w") as out:  # the child holds its own handle
        return subprocess.Popen(
            _command(tmp_path, code, args, launcher),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(env),
        )


def wait_exit(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """The exit code of a ``start_script`` process; if it has not ended within ``timeout`` s, fail
    with its log and every thread's stack (then kill it)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        raise AssertionError(
            f"still running after {timeout} s; its log and stacks:\n{log.read_text()[-6000:]}"
        ) from None
