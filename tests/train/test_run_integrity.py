"""Run folders as trustworthy as the store: digests, `pipe verify [--json] [--repair]` for runs,
`pipe status` marking damage, checkpoint fallback, the restart command, and every user-facing error
one line with exit 2 (damaged inputs, a full disk, a refused permission, a read-only runs folder)."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common import preempt
from tests._batch import RUNS
from tests._preempted import train_preempted_at
from tests._synthetic import SWEEP, make_store
from tests._synthetic import write_config as write_train_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_leftover_request():
    yield
    preempt.clear()


def config(tmp: Path) -> Path:
    """A 160-step sweep (checkpoints every 40) on the synthetic store ``tmp/s.zarr``."""
    return write_train_config(tmp, runs=SWEEP + f'\n[eval]\nreports_dir = "{tmp / "reports"}"\n', tokens=20_480)


def pipe(path: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(path), *args])


def folder_bytes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip
    }


def error_line(res) -> str:
    """The one `error:` line of a command that failed on bad input: exit 2, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception  # not an escaped exception
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and res.output.strip().endswith(lines[0]), res.output
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The synthetic store and an uninterrupted sweep trained on it, kept pristine (the reference)."""
    base = tmp_path_factory.mktemp("integrity")
    make_store(str(base / "work/s.zarr"))
    res = pipe(config(base / "work"), "train")
    assert res.exit_code == 0, res.output
    shutil.copytree(base / "work", base / "reference")
    return base / "reference"


@pytest.fixture
def trained(reference) -> Path:
    """The reference sweep restored where it was trained (its config and cfg.json name absolute
    paths); returns its config."""
    work = reference.parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(reference, work)
    return work / "p.toml"


@pytest.fixture
def partial(tmp_path, monkeypatch) -> Path:
    """The sweep stopped (as by SIGTERM) at step 45: checkpoint/ at 45, checkpoint.prev/ at 40."""
    make_store(str(tmp_path / "s.zarr"))
    path = config(tmp_path)
    train_preempted_at(monkeypatch, pipe, path)
    for name in RUNS:
        steps = [
            json.loads((tmp_path / "runs" / name / d / "state.json").read_text())["trainer"]["step"]
            for d in ("checkpoint", "checkpoint.prev")
        ]
        assert steps == [45, 40], (name, steps)
    return path


def assert_runs_equal_reference(runs: Path, reference: Path, names=RUNS) -> None:
    """Weights, cfg.json, digests and the training log bit-identical to the uninterrupted sweep's."""
    for name in names:
        for f in ("sae_weights.safetensors", "cfg.json", "digests.json", "log.jsonl"):
            a, b = runs / name / f, reference / "runs" / name / f
            if f == "cfg.json":  # the same but for the paths of its own folder
                assert _without_paths(a) == _without_paths(b), name
            elif f == "digests.json":
                da, db = json.loads(a.read_text())["files"], json.loads(b.read_text())["files"]
                assert da["sae_weights.safetensors"] == db["sae_weights.safetensors"], name
            else:
                assert a.read_bytes() == b.read_bytes(), (name, f)


def _without_paths(cfg_json: Path) -> dict:
    cfg = json.loads(cfg_json.read_text())
    del cfg["store"], cfg["orthosae"]["train"]["runs_dir"]
    return cfg


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ------------------------------------------------------------------ digests, verify, status


def test_digests_are_recorded_and_an_intact_sweep_verifies(trained, tmp_path, monkeypatch):
    runs = trained.parent / "runs"
    for name in RUNS:
        recorded = json.loads((runs / name / "digests.json").read_text())["files"]
        assert set(recorded) == {"sae_weights.safetensors", "cfg.json", "sparsity.safetensors", "log.jsonl"}
        assert json.loads((runs / name / "summary.json").read_text())["digests"] == recorded
        for d in ("checkpoint", "checkpoint.prev"):
            assert set(json.loads((runs / name / d / "digests.json").read_text())["files"]) == {
                "state.safetensors",
                "state.json",
                "log.jsonl",
            }
        # the final checkpoint's copy of the log is the log: a repair restores it from there
        assert (runs / name / "checkpoint/log.jsonl").read_bytes() == (runs / name / "log.jsonl").read_bytes()
    res = pipe(trained, "verify", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["stores"][0]["ok"]
    assert [(r["run"], r["state"], r["problems"]) for r in doc["runs"]] == [(n, "complete", []) for n in RUNS]
    res = pipe(trained, "verify")
    assert res.exit_code == 0 and "baseline: ok (complete" in res.output


def test_a_file_the_export_gains_is_covered_without_naming_it(tmp_path, monkeypatch):
    import orthosae.train.runner

    real = orthosae.train.runner.save_sae

    def with_extra(sae, run_dir, **kw):
        out = real(sae, run_dir, **kw)
        (Path(run_dir) / "extra.safetensors").write_bytes(b"x" * 100)
        return out

    monkeypatch.setattr(orthosae.train.runner, "save_sae", with_extra)
    make_store(str(tmp_path / "s.zarr"))
    path = write_train_config(tmp_path, tokens=2560)
    assert pipe(path, "train").exit_code == 0
    recorded = json.loads((tmp_path / "runs/baseline/digests.json").read_text())["files"]
    assert set(recorded) == {
        "sae_weights.safetensors",
        "cfg.json",
        "sparsity.safetensors",
        "log.jsonl",
        "extra.safetensors",
    }
    (tmp_path / "runs/baseline/extra.safetensors").write_bytes(b"y" * 100)  # same size, other bytes
    res = pipe(path, "verify")
    assert res.exit_code == 1 and "extra.safetensors: sha256 differs" in res.output, res.output


DAMAGE = {
    "truncated weights": (
        "baseline/sae_weights.safetensors",
        lambda runs: truncate(runs / "baseline/sae_weights.safetensors", 0.5),
    ),
    "broken cfg.json": (
        "baseline/cfg.json",
        lambda runs: (runs / "baseline/cfg.json").write_text((runs / "baseline/cfg.json").read_text()[:-40]),
    ),
    "weights of another run": (
        "baseline/sae_weights.safetensors",
        lambda runs: shutil.copy(runs / "fixed/sae_weights.safetensors", runs / "baseline/sae_weights.safetensors"),
    ),
    "broken summary.json": ("baseline/summary.json", lambda runs: (runs / "baseline/summary.json").write_text("{")),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_export_is_named_refused_and_repaired_bit_identical(kind, trained, tmp_path, reference):
    runs = trained.parent / "runs"
    damaged, damage = DAMAGE[kind]
    damage(runs)
    res = pipe(trained, "verify")
    assert res.exit_code == 1 and f"{runs / damaged}: " in res.output, res.output
    assert "`pipe verify --repair` will rewrite the export and summary.json from checkpoint/ (step 160)" in res.output
    doc = json.loads(pipe(trained, "verify", "--json").stdout)
    bad = {r["run"]: r for r in doc["runs"] if r["problems"]}
    assert list(bad) == ["baseline"] and not doc["ok"]
    assert bad["baseline"]["problems"][0]["file"] == str(runs / damaged) and bad["baseline"]["repair"]

    status = json.loads(pipe(trained, "status", "--json").stdout)
    baseline = status["runs"][0]
    if kind != "weights of another run":  # same size: only verify's sha256 sees it
        assert baseline["status"] == "damaged" and str(runs / damaged) in baseline["message"], baseline
    for command in ("eval", "inspect"):  # refused before anything loads the weights
        line = error_line(pipe(trained, command))
        assert str(runs / damaged) in line, (command, line)

    res = pipe(trained, "verify", "--repair")
    assert res.exit_code == 0, res.output
    assert "baseline: repaired: rewrite the export" in res.output
    assert_runs_equal_reference(runs, reference)
    assert json.loads(pipe(trained, "verify", "--json").stdout)["ok"]
    assert json.loads(pipe(trained, "status", "--json").stdout)["runs"][0]["status"] == "complete"


def test_train_rewrites_a_damaged_export_from_its_final_checkpoint(trained, reference):
    truncate(trained.parent / "runs/baseline/sae_weights.safetensors", 0.5)
    res = pipe(trained, "train")
    assert res.exit_code == 0, res.output
    assert "baseline: " in res.output and "rewriting the export from checkpoint/ (step 160)" in res.output
    assert_runs_equal_reference(trained.parent / "runs", reference)


def test_a_damaged_export_without_a_final_checkpoint_names_the_restart(trained, reference):
    runs = trained.parent / "runs"
    truncate(runs / "baseline/sae_weights.safetensors", 0.5)
    truncate(runs / "baseline/checkpoint/state.safetensors", 0.3)
    truncate(runs / "baseline/checkpoint.prev/state.safetensors", 0.3)
    before = folder_bytes(runs)
    line = error_line(pipe(trained, "train"))
    restart = f"pipe --config {trained} train --run baseline --force"
    assert str(runs / "baseline/sae_weights.safetensors") in line and restart in line, line
    assert folder_bytes(runs) == before
    res = pipe(trained, "verify")
    assert res.exit_code == 1 and restart in res.output and "state.safetensors" in res.output
    assert pipe(trained, *restart.split()[3:]).exit_code == 0
    assert_runs_equal_reference(runs, reference)


# ------------------------------------------------------------------ checkpoints


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(partial, tmp_path, reference):
    runs = tmp_path / "runs"
    truncate(runs / "baseline/checkpoint/state.safetensors", 1 / 3)
    baseline = json.loads(pipe(partial, "status", "--json").stdout)["runs"][0]
    assert (baseline["status"], baseline["checkpoint_step"]) == ("partial", 40)
    assert baseline["message"].startswith(str(runs / "baseline/checkpoint/state.safetensors"))
    assert baseline["message"].endswith("`pipe train` resumes from step 40")
    res = pipe(partial, "verify")
    assert res.exit_code == 1 and str(runs / "baseline/checkpoint/state.safetensors") in res.output
    assert "`pipe train` resumes from the intact checkpoint.prev/ (step 40)" in res.output, res.output
    res = pipe(partial, "train")
    assert res.exit_code == 0, res.output
    assert "baseline: " in res.output and "falling back to checkpoint.prev/, resuming from step 40" in res.output
    assert_runs_equal_reference(runs, reference)


def test_both_checkpoints_damaged_give_one_line_with_the_restart_command(partial, tmp_path, reference):
    runs = tmp_path / "runs"
    for d in ("checkpoint", "checkpoint.prev"):
        truncate(runs / "baseline" / d / "state.safetensors", 1 / 3)
    before = folder_bytes(runs)
    baseline = json.loads(pipe(partial, "status", "--json").stdout)["runs"][0]
    assert baseline["status"] == "damaged" and "checkpoint/state.safetensors" in baseline["message"]
    line = error_line(pipe(partial, "train"))
    restart = f"pipe --config {partial} train --run baseline --force"
    for d in ("checkpoint", "checkpoint.prev"):
        assert str(runs / "baseline" / d / "state.safetensors") in line, line
    assert restart in line, line
    assert folder_bytes(runs) == before
    assert pipe(partial, *restart.split()[3:]).exit_code == 0
    assert pipe(partial, "train").exit_code == 0  # the other two resume from step 45
    assert_runs_equal_reference(runs, reference)


# ------------------------------------------------------------------ writes that cannot complete


def test_enospc_during_a_checkpoint_leaves_the_run_as_it_was(partial, tmp_path, reference, monkeypatch):
    import orthosae.train.checkpoint

    runs = tmp_path / "runs"
    real = orthosae.train.checkpoint.save_file

    def disk_full(tensors, path):
        Path(path).write_bytes(b"\0" * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(orthosae.train.checkpoint, "save_file", disk_full)
    before = folder_bytes(runs, skip=("log.jsonl",))
    line = error_line(pipe(partial, "train"))
    assert (
        f"cannot write {runs / 'baseline/checkpoint.tmp/state.safetensors'}: No space left on device [ENOSPC]" in line
    )
    assert folder_bytes(runs, skip=("log.jsonl",)) == before  # no checkpoint.tmp/ left, both checkpoints kept
    monkeypatch.setattr(orthosae.train.checkpoint, "save_file", real)
    assert pipe(partial, "train").exit_code == 0
    assert_runs_equal_reference(runs, reference)  # the log too: records past the checkpoint dropped


def test_eacces_on_the_export_keeps_the_final_checkpoint(trained, tmp_path, reference, monkeypatch):
    import orthosae.train.export

    runs = trained.parent / "runs"
    shutil.rmtree(runs / "baseline")  # trained again below, to the export
    real = orthosae.train.export.save_file

    def denied(tensors, path):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(orthosae.train.export, "save_file", denied)
    line = error_line(pipe(trained, "train", "--run", "baseline"))
    assert f"cannot write {runs / 'baseline/sae_weights.safetensors'}: Permission denied [EACCES]" in line
    assert not (runs / "baseline/sae_weights.safetensors").exists()
    assert not [
        p
        for p in (runs / "baseline").iterdir()  # no temporaries (the lock file is no temporary)
        if p.name.startswith(".") and p.name != ".orthosae-lock"
    ]
    monkeypatch.setattr(orthosae.train.export, "save_file", real)
    res = pipe(trained, "train", "--run", "baseline")
    assert res.exit_code == 0 and "resuming from step 160" in res.output, res.output
    assert_runs_equal_reference(runs, reference, names=("baseline",))


READ_ONLY = """
import os, subprocess, sys
runs, argv = sys.argv[1], sys.argv[2:]
os.execvp("unshare", ["unshare", "-m", "sh", "-c",
          'mount --bind -o ro "$0" "$0" && exec "$@"', runs, sys.executable, "-m", "orthosae.cli", *argv])
"""


def _read_only_pipe(tmp_path: Path, runs: Path, *argv: str) -> subprocess.CompletedProcess:
    """``pipe`` with the folder ``runs`` on a read-only mount (root: a private bind mount) or, as a
    plain user, with its write permissions taken away."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if os.geteuid() != 0:
        for p in [runs, *runs.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            return subprocess.run(
                [sys.executable, "-m", "orthosae.cli", *argv],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            for p in [runs, *runs.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{runs}" "{runs}"'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("root without mount namespaces: no way to make a folder read-only here")
    script = tmp_path / "read_only.py"
    script.write_text(READ_ONLY)
    return subprocess.run(
        [sys.executable, str(script), str(runs), *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_read_only_refused(tmp_path: Path, folder: Path, *argv: str) -> str:
    """``pipe *argv`` with ``folder`` read-only: exit 2, one line naming a path in it, nothing changed."""
    before = folder_bytes(folder)
    out = _read_only_pipe(tmp_path, folder, *argv)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and str(folder) in lines[0], text
    assert "[EROFS]" in lines[0] or "[EACCES]" in lines[0], lines[0]
    assert folder_bytes(folder) == before
    return lines[0]


def test_a_read_only_runs_folder_gives_one_line(partial, tmp_path):
    assert_read_only_refused(tmp_path, tmp_path / "runs", "--config", str(partial), "train")


def test_enospc_during_a_chunk_write_leaves_the_store_as_it_was(tmp_path, tiny_model_dir, monkeypatch):
    import zarr.storage._local as local

    from orthosae.common.store import StoreReader
    from tests._configs import write_harvest_config
    from tests._stores import assert_same_store, store_files

    clean = write_harvest_config(tmp_path, tiny_model_dir, store="clean.zarr", name="clean.toml")
    assert pipe(clean, "harvest").exit_code == 0
    path = write_harvest_config(tmp_path, tiny_model_dir)
    store = tmp_path / "s.zarr"
    real = local._put
    calls = {"n": 0}

    def full_after_some(path_, value, *args, **kwargs):
        if "/acts/c/" in str(path_):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path_))
        return real(path_, value, *args, **kwargs)

    monkeypatch.setattr(local, "_put", full_after_some)
    line = error_line(pipe(path, "harvest"))
    assert str(store) in line and "chunk" in line and "No space left on device [ENOSPC]" in line, line
    reader = StoreReader(str(store))
    assert not reader.complete
    assert not [p for p in reader.check() if p.kind == "damaged"]  # committed chunks read back as written
    monkeypatch.setattr(local, "_put", real)
    assert_read_only_refused(tmp_path, store, "--config", str(path), "harvest")  # a read-only store
    assert pipe(path, "harvest").exit_code == 0
    assert_same_store(str(tmp_path / "clean.zarr"), str(store))
    assert store_files(str(tmp_path / "clean.zarr")).keys() == store_files(str(store)).keys()


# ------------------------------------------------------------------ no traceback anywhere

WALK = {
    **{k: v[1] for k, v in DAMAGE.items()},
    "truncated checkpoints": lambda runs: (
        [truncate(runs / "baseline" / d / "state.safetensors", 1 / 3) for d in ("checkpoint", "checkpoint.prev")]
        + [truncate(runs / "baseline/sae_weights.safetensors", 0.5)]
    ),
    "unreadable digests.json": lambda runs: (runs / "baseline/digests.json").write_text("[1,"),
}


@pytest.mark.parametrize("kind", list(WALK))
def test_every_command_answers_damage_with_one_line_or_a_mark(kind, trained):
    """eval and inspect refuse a damaged run with one line naming it, status marks it, verify names
    it (exit 1), and train mends it (a line saying so) or refuses with one line; never a traceback."""
    runs = trained.parent / "runs"
    WALK[kind](runs)
    for command in ("eval", "inspect"):
        line = error_line(pipe(trained, command))
        assert str(runs / "baseline") in line, (kind, command, line)
    report = trained.parent / "reports/default/report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text('{"runs": ')  # a report cut short too
    res = pipe(trained, "status")
    assert res.exit_code == 0 and res.exception is None, res.output
    doc = json.loads(pipe(trained, "status", "--json").stdout)
    assert doc["runs"][0]["status"] == ("damaged" if kind != "weights of another run" else "complete")
    assert doc["report"]["state"] == "unreadable"  # cut short: not "stale (the runs changed since)"
    assert doc["report"]["problem"].startswith(f"{report}: unreadable (JSONDecodeError")
    res = pipe(trained, "verify", "--json")
    assert res.exit_code == 1 and res.exception.__class__ is SystemExit, res.output
    assert not json.loads(res.stdout)["ok"]
    res = pipe(trained, "train")
    if kind in ("truncated checkpoints",):
        assert str(runs / "baseline") in error_line(res)
    else:
        assert res.exit_code == 0 and res.exception is None, res.output
        assert "rewriting the export from checkpoint/ (step 160)" in res.output
