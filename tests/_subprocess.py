"""Run a test's helper script in a fresh interpreter (kill -9, signal and multi-process tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(tmp_path: Path, code: str, args, launcher: list[str] | None) -> list[str]:
    script = tmp_path / f"script_{abs(hash(code)) % 10**8}.py"
    script.write_text(code)
    return [*(launcher or [sys.executable]), str(script), *map(str, args)]


def _env(env: dict | None) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}


def run_script(tmp_path: Path, code: str, *args: str, launcher: list[str] | None = None,
               env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Write ``code`` to a file under tmp_path and run it (``launcher`` defaults to this Python)."""
    return subprocess.run(_command(tmp_path, code, args, launcher), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=_env(env))


def start_script(tmp_path: Path, code: str, *args: str, log: Path, launcher: list[str] | None = None,
                 env: dict | None = None) -> subprocess.Popen:
    """As ``run_script``, but returns at once, stdout and stderr going to the file ``log`` as in a
    batch job, so the test can signal the process while it works."""
    with open(log, "w") as out:  # the child holds its own handle
        return subprocess.Popen(_command(tmp_path, code, args, launcher), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=_env(env))
