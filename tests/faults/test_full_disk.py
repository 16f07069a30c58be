"""A real full disk: a small tmpfs (mounted in a private mount namespace, so only as root) for the
harvest, a training checkpoint, the final export and export-cache. Each command stops with one line
naming the path (exit 2), leaves every earlier file as it was and no temporaries, and once there is
room again the rerun gives what an uninterrupted run gives.

The commands run in-process in one helper process per case (`INNER`), inside the namespace: the
tmpfs and what it holds vanish with it, so the helper reports back as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from tests._preempted import train_preempted_at
from tests._synthetic import make_store
from tests._synthetic import write_config as write_train_config

ROOT = Path(__file__).resolve().parents[2]

INNER = r"""
import hashlib, json, os, shutil, subprocess, sys
from pathlib import Path
spec = json.loads(Path(sys.argv[1]).read_text())
mnt = Path(spec["mount"])
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={spec['size']}", "tmpfs", str(mnt)], check=True)
for src, dst in spec["copy"]:
    shutil.copytree(src, mnt / dst)
from click.testing import CliRunner
from orthosae.cli import main

def files():
    return {str(p.relative_to(mnt)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(mnt.rglob("*")) if p.is_file() and p.name != "filler"}

def pipe(argv):
    res = CliRunner().invoke(main, argv)
    return {"code": res.exit_code, "output": res.output, "exception": repr(res.exception)}

before = files()
st = os.statvfs(mnt)
with open(mnt / "filler", "wb") as f:  # leave `free` bytes: the command runs out of space partway
    f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - spec["free"]))
full = pipe(spec["argv"])
during = files()
(mnt / "filler").unlink()
again = pipe(spec["argv"])
print(json.dumps({"before": before, "full": full, "during": during, "again": again, "after": files()}))
"""


def pipe(path: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(path), *args])


def on_full_disk(
    tmp_path: Path, mount: Path, copy: list[tuple[Path, str]], argv: list[str], *, free: int, size: str = "4m"
) -> dict:
    """Mount a ``size`` tmpfs at ``mount``, copy ``copy`` in, fill it to ``free`` bytes, run ``argv``,
    then free the space and run it again; what the helper saw, as JSON."""
    if os.geteuid() != 0:
        pytest.skip("not root: no tmpfs can be mounted here (run the suite as root, or in a container)")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"root, but no private mount namespace with a tmpfs here: {probe.stderr.strip()}")
    mount.mkdir(parents=True, exist_ok=True)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {"mount": str(mount), "size": size, "free": free, "argv": argv, "copy": [[str(s), d] for s, d in copy]}
        )
    )
    script = tmp_path / "inner.py"
    script.write_text(INNER)
    out = subprocess.run(
        ["unshare", "-m", sys.executable, str(script), str(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_line(result: dict, mount: Path) -> str:
    """The full-disk run: exit 2, one `error:` line naming a path on the tmpfs and ENOSPC."""
    full = result["full"]
    assert full["code"] == 2 and "Traceback" not in full["output"], full
    lines = [line for line in full["output"].splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, full["output"]
    assert f"{mount}/" in lines[0] and "No space left on device [ENOSPC]" in lines[0] and " ?:" not in lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_full_disk_during_a_checkpoint(tmp_path, monkeypatch):
    """A partial run (checkpoints at steps 40 and 45) resumed on a disk with 8 KiB left."""
    make_store(str(tmp_path / "s.zarr"))
    stage = tmp_path / "stage"
    stage.mkdir()
    ref = write_train_config(stage, tokens=20_480, store="../s.zarr")
    assert pipe(ref, "train").exit_code == 0  # the uninterrupted run
    reference = digest(stage / "runs/baseline/sae_weights.safetensors")
    shutil.rmtree(stage / "runs")
    train_preempted_at(monkeypatch, pipe, ref)
    mount = tmp_path / "disk"
    path = write_train_config(tmp_path, tokens=20_480)
    result = on_full_disk(
        tmp_path,
        mount,
        [(stage / "runs", "runs")],
        ["--config", str(path), "--set", f"train.runs_dir={mount / 'runs'}", "train"],
        free=8192,
    )
    line = one_line(result, mount)
    assert "runs/baseline" in line, line
    kept = {k: v for k, v in result["before"].items() if "checkpoint" in k}
    assert len(kept) == 8 and {k: result["during"].get(k) for k in kept} == kept  # both checkpoints as they were
    assert not [k for k in result["during"] if "checkpoint.tmp" in k or "/." in k.replace(".orthosae-lock", "")]
    assert result["again"]["code"] == 0, result["again"]
    assert result["after"]["runs/baseline/sae_weights.safetensors"] == reference


def test_a_full_disk_during_the_final_export(tmp_path):
    """A finished run whose weights file is gone: `pipe train` rewrites the export on a full disk."""
    make_store(str(tmp_path / "s.zarr"))
    stage = tmp_path / "stage"
    stage.mkdir()
    assert pipe(write_train_config(stage, tokens=5120, store="../s.zarr"), "train").exit_code == 0
    weights = stage / "runs/baseline/sae_weights.safetensors"
    original = digest(weights)
    weights.unlink()
    mount = tmp_path / "disk"
    path = write_train_config(tmp_path, tokens=5120)
    result = on_full_disk(
        tmp_path,
        mount,
        [(stage / "runs", "runs")],
        ["--config", str(path), "--set", f"train.runs_dir={mount / 'runs'}", "train"],
        free=8192,
    )  # two pages: the lock's note fits, the weights (12 KiB) do not
    line = one_line(result, mount)
    assert f"{mount}/runs/baseline/sae_weights.safetensors" in line, line
    assert {k: result["during"][k] for k in result["before"]} == result["before"]  # nothing earlier changed
    assert not [k for k in result["during"] if Path(k).name.startswith(".") and "lock" not in k]
    assert result["again"]["code"] == 0, result["again"]
    assert result["after"]["runs/baseline/sae_weights.safetensors"] == original


def test_a_full_disk_during_export_cache(tmp_path):
    """An earlier cache at --out stays as it was; no `.tmp` / `.shards` are left; the line names a path."""
    make_store(str(tmp_path / "s.zarr"), n_contexts=256)
    path = write_train_config(tmp_path)
    stage = tmp_path / "stage"
    assert pipe(path, "export-cache", "--out", str(stage / "cache")).exit_code == 0  # the earlier export
    mount = tmp_path / "disk"
    result = on_full_disk(
        tmp_path,
        mount,
        [(stage, "out")],
        ["--config", str(path), "export-cache", "--out", str(mount / "out/cache")],
        free=64 * 1024,
    )
    one_line(result, mount)
    assert result["during"] == result["before"]  # the earlier cache, byte for byte; nothing beside it
    assert result["again"]["code"] == 0, result["again"]
    assert not [k for k in result["after"] if ".tmp" in k or ".shards" in k]


def test_a_full_disk_during_the_harvest(tmp_path, tiny_model_dir):
    """Chunks committed before the disk filled read back as written; the rerun completes the store
    to what a harvest with room makes."""
    from tests._configs import write_harvest_config

    clean = write_harvest_config(tmp_path, tiny_model_dir, store="clean.zarr", name="clean.toml")
    assert pipe(clean, "harvest").exit_code == 0
    mount = tmp_path / "disk"
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier/notes.txt").write_text("earlier file")
    path = write_harvest_config(tmp_path, tiny_model_dir, store="disk/s.zarr")
    result = on_full_disk(
        tmp_path, mount, [(tmp_path / "earlier", "earlier")], ["--config", str(path), "harvest"], free=200 * 1024
    )  # the metadata fits, then some chunks
    line = one_line(result, mount)
    assert f"{mount}/s.zarr" in line and "chunk" in line, line
    assert result["during"]["earlier/notes.txt"] == result["before"]["earlier/notes.txt"]
    assert result["again"]["code"] == 0, result["again"]
    clean_files = {
        str(p.relative_to(tmp_path / "clean.zarr")): digest(p)
        for p in (tmp_path / "clean.zarr").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    }
    after = {
        k.removeprefix("s.zarr/"): v
        for k, v in result["after"].items()
        if k.startswith("s.zarr/") and not k.endswith("zarr.json")
    }
    assert after == clean_files  # every chunk and commit flag as the clean harvest wrote it
