"""Run a test's helper script in a fresh interpreter (kill -9 and multi-process tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path: Path, code: str, *args: str, launcher: list[str] | None = None,
               env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Write ``code`` to a file under tmp_path and run it (``launcher`` defaults to this Python)."""
    script = tmp_path / f"script_{abs(hash(code)) % 10**8}.py"
    script.write_text(code)
    return subprocess.run([*(launcher or [sys.executable]), str(script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
