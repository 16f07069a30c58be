"""Issue 36, defect by defect: each test failed on the code before the fix (checked against main).

On the synthetic store (no model) wherever the defect allows it, so they run in seconds."""

from __future__ import annotations

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
from tests._synthetic import SWEEP, make_store
from tests._synthetic import write_config as write_train_config

ROOT = Path(__file__).resolve().parents[2]


def pipe(path: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(path), *args])


def error_line(res) -> str:
    """The one `error:` line of a command refused with exit 2, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and res.output.strip().endswith(lines[0]), res.output
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory) -> Path:
    """The synthetic store and a finished 40-step sweep of three runs (pristine: copy it)."""
    base = tmp_path_factory.mktemp("issue36") / "sweep"
    make_store(str(base / "s.zarr"))
    path = write_train_config(base, runs=SWEEP, tokens=5120)
    res = pipe(path, "train")
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def sweep(trained_sweep, tmp_path) -> Path:
    """A copy of the finished sweep in tmp_path; returns its config."""
    shutil.copytree(trained_sweep, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "p.toml"
    path.write_text(path.read_text().replace(str(trained_sweep), str(tmp_path)))
    return path


# ---------------------------------------------------------------- 1: names that become paths


@pytest.mark.parametrize(
    "where,sets",
    [
        ("[[runs]] #1 name", ["runs.baseline.name=.."]),
        ("[[runs]] #1 name", ["runs.baseline.name=a/b"]),
        ("[[runs]] #1 name", ['runs.baseline.name="~x"']),
        ("[eval] name", ["eval.name=.."]),
        ("[[runs]] adaptive name", ['runs.adaptive.activation=["relu", "to pk"]']),
    ],
)
def test_a_name_that_is_no_safe_folder_is_refused_at_load(tmp_path, where, sets):
    """Before: `..` trained into the parent of runs_dir and `pipe inspect --run ..` deleted reports/."""
    make_store(str(tmp_path / "s.zarr"))
    path = write_train_config(tmp_path, runs=SWEEP)
    before = tree(tmp_path)
    line = error_line(pipe(path, *[a for s in sets for a in ("--set", s)], "train"))
    assert f"{path}: {where}" in line and "not a safe name" in line, line
    assert tree(tmp_path) == before  # nothing written, nothing deleted


def test_a_dotdot_run_name_in_the_file_is_refused(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    path = write_train_config(tmp_path, runs='[[runs]]\nname = ".."\ntype = "baseline"\n')
    line = error_line(pipe(path, "train"))
    assert line == (
        f"error: {path}: [[runs]] #1 name: '..' is not a safe name (it names a folder): letters, "
        "digits and ._+- only, not starting with '.' or '-', at most 128 characters"
    )
    assert not (tmp_path / "digests.json").exists()


def test_a_corpus_name_is_a_safe_name_too(tmp_path):
    path = write_train_config(tmp_path)
    path.write_text(path.read_text().replace("[corpora.forget]", '[corpora."../x"]'))
    assert "[corpora.../x]: '../x' is not a safe name" in error_line(pipe(path, "status"))


def test_harvest_force_deletes_only_a_store(tmp_path, tiny_model_dir):
    """`harvest --force` on a path that holds something else: refused, left as it was."""
    from tests._configs import write_harvest_config

    path = write_harvest_config(tmp_path, tiny_model_dir)
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr/thesis.tex").write_text("mine")
    line = error_line(pipe(path, "harvest", "--force"))
    assert f"{tmp_path / 's.zarr'}: exists and is not a zarr store" in line
    assert (tmp_path / "s.zarr/thesis.tex").read_text() == "mine"


def test_the_browser_replaces_only_its_own_folder(tmp_path):
    """The feature browser's page folder is replaced only when the tool made it (before: any folder
    at reports/<name>/inspect/<run>, and with a run named `..`, reports/<name> itself)."""
    from orthosae.common import owned
    from orthosae.eval.browser_data import RunSite
    from orthosae.eval.browser_pages import write_site

    def site():
        return RunSite(run="baseline", run_type="baseline", meta={}, features=[], details=iter([]), groups={})

    out = tmp_path / "inspect/baseline"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(owned.NotOursError, match="exists and was not made by pipe inspect"):
        write_site(site(), out)
    assert (out / "notes.txt").read_text() == "mine"
    shutil.rmtree(out)
    write_site(site(), out)  # made by the tool: replaced on the next inspect
    write_site(site(), out)
    assert json.loads((out / "index.json").read_text()) == {"meta": {}, "features": []}


# ---------------------------------------------------------------- 2: export-cache's side folders


@pytest.mark.parametrize("side", [".tmp", ".shards"])
def test_export_cache_leaves_a_foreign_side_folder_alone(tmp_path, side):
    """Before: `<out>.tmp/` and `<out>.shards/` were deleted whatever they held."""
    make_store(str(tmp_path / "s.zarr"))
    path = write_train_config(tmp_path)
    folder = tmp_path / f"cache{side}"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"precious")
    line = error_line(pipe(path, "export-cache", "--out", str(tmp_path / "cache")))
    assert f"{folder}: exists and was not made by pipe export-cache" in line
    assert (folder / "data.bin").read_bytes() == b"precious"
    assert not (tmp_path / "cache").exists()


def test_export_cache_clears_what_a_killed_export_left(tmp_path):
    from orthosae.common import owned

    make_store(str(tmp_path / "s.zarr"))
    path = write_train_config(tmp_path)
    owned.make(tmp_path / "cache.shards")  # a killed export's shards: marked, so ours to clear
    (tmp_path / "cache.shards/000000").write_bytes(b"half")
    res = pipe(path, "export-cache", "--out", str(tmp_path / "cache"))
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "cache.shards").exists() and not (tmp_path / "cache.tmp").exists()
    assert json.loads((tmp_path / "cache/orthosae_cache.json").read_text())["corpora"] == ["retain", "forget"]
    assert not (tmp_path / "cache" / owned.MARK).exists()  # the finished cache is the user's


# ---------------------------------------------------------------- 3: one writer per run and store

HOLD = """
import sys, time
from pathlib import Path
from orthosae.common.locks import FolderLock
lock = FolderLock(Path(sys.argv[1]), sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(tmp_path: Path, folder: Path, code: str = HOLD) -> subprocess.Popen:
    script = tmp_path / "hold.py"
    script.write_text(code)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_train_on_a_run_gets_one_line_naming_the_holder(sweep, tmp_path):
    """Before: a second `pipe train` resumed from the first one's checkpoint mid-run and crashed."""
    runs = tmp_path / "runs"
    shutil.rmtree(runs / "fixed")
    before = tree(runs)
    proc = _holder(tmp_path, runs / "fixed")
    try:
        line = error_line(pipe(sweep, "train"))
        assert f"{runs / 'fixed'}: another `pipe` process writes it (pid {proc.pid} on " in line, line
        assert tree(runs) == {**before, "fixed/.orthosae-lock": (runs / "fixed/.orthosae-lock").read_bytes()}
        assert not (runs / "fixed/summary.json").exists()
    finally:
        proc.kill()  # as kill -9: the kernel drops the lock, nothing is left stuck
        proc.wait()
    res = pipe(sweep, "train")
    assert res.exit_code == 0 and "fixed: complete, left alone" not in res.output, res.output
    assert json.loads((runs / "fixed/summary.json").read_text())["status"] == "complete"


def test_a_second_harvest_on_a_store_gets_one_line_naming_the_holder(tmp_path, tiny_model_dir):
    from orthosae.common.store import StoreLock
    from tests._configs import write_harvest_config

    path = write_harvest_config(tmp_path, tiny_model_dir)
    code = (
        "import sys, time\nfrom orthosae.common.store import StoreLock\nStoreLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)\n"
    )
    proc = _holder(tmp_path, tmp_path / "s.zarr", code)
    try:
        line = error_line(pipe(path, "harvest"))
        assert f"another writer holds the store (pid {proc.pid} on " in line, line
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "s.zarr").exists()
    res = pipe(path, "harvest")  # the killed holder's lock is taken over
    assert res.exit_code == 0, res.output
    assert not Path(StoreLock(str(tmp_path / "s.zarr")).path).exists()


def test_a_log_changed_after_training_is_named_by_verify_and_restored(sweep, tmp_path):
    """Before: a log holding step 30 twice verified ok (logs were not covered)."""
    log = tmp_path / "runs/baseline/log.jsonl"
    original = log.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    log.write_text("".join(lines[:3] + lines[2:]))  # a record twice, as two writers left it
    res = pipe(sweep, "verify")
    assert res.exit_code == 1 and f"{log}: " in res.output, res.output
    assert "`pipe verify --repair` will rewrite the export and summary.json from checkpoint/" in res.output
    assert pipe(sweep, "verify", "--repair").exit_code == 0
    assert log.read_bytes() == original


# ---------------------------------------------------------------- 4: what the fingerprint holds


def test_moving_the_runs_folder_or_the_device_leaves_runs_complete(sweep, tmp_path):
    """Before: every run went stale (runs_dir and device were part of the fingerprint)."""
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    sets = [
        "--set",
        f"train.runs_dir={tmp_path / 'moved'}",
        "--set",
        "train.device=cpu",
        "--set",
        "train.checkpoint_every=7",
    ]
    doc = json.loads(pipe(sweep, *sets, "status", "--json").stdout)
    assert [r["status"] for r in doc["runs"]] == ["complete"] * 3
    before = tree(tmp_path / "moved")
    res = pipe(sweep, *sets, "train")
    assert res.exit_code == 0 and res.output.count("complete, left alone") == 3, res.output
    assert tree(tmp_path / "moved") == before


def test_a_resume_with_another_checkpoint_every_resumes(tmp_path, monkeypatch):
    """Before: it restarted from step 0 and deleted the log."""
    make_store(str(tmp_path / "s.zarr"))
    ref = tmp_path / "ref"
    ref.mkdir()
    assert (
        pipe(write_train_config(ref, tokens=20_480), "--set", f"harvest.store={tmp_path / 's.zarr'}", "train").exit_code
        == 0
    )
    path = write_train_config(tmp_path, tokens=20_480)
    train_preempted_at(monkeypatch, pipe, path)
    res = pipe(path, "--set", "train.checkpoint_every=25", "train")
    assert res.exit_code == 0 and "baseline: resuming from step 45" in res.output, res.output
    for f in ("sae_weights.safetensors", "log.jsonl"):
        assert (tmp_path / "runs/baseline" / f).read_bytes() == (ref / "runs/baseline" / f).read_bytes(), f


# ---------------------------------------------------------------- 5: no pickle


def test_a_crafted_cache_file_runs_no_code(tmp_path):
    """Before: eval/probe_data.py read the cache with torch.load(weights_only=False)."""
    import torch

    from orthosae.eval.probe_data import cache_path, cached

    marker = tmp_path / "owned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = cache_path(tmp_path, "probing", {"model_id": "m"}, {"dataset": "d"})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": Evil()}, path)  # what an attacker would put at the cache's name
    torch.save({"x": Evil()}, path.with_suffix(".pt"))  # and at the name it had before
    value, hit = cached(path, lambda: {"x": torch.arange(3)})
    assert not hit and torch.equal(value["x"], torch.arange(3)) and not marker.exists()
    value, hit = cached(path, lambda: {"x": torch.zeros(3)})
    assert hit and torch.equal(value["x"], torch.arange(3))  # the rebuilt cache, read back


def test_no_pickle_in_the_package():
    out = subprocess.run(
        ["grep", "-rn", r"weights_only=False\|pickle", "orthosae", "common", "harvest", "train", "eval"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and out.stdout == "", out.stdout


# ---------------------------------------------------------------- 6 and 10: damaged chunks in every stage


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_chunk_stops_train_with_one_line(tmp_path, damage):
    """Before: a deleted chunk read as zeros (exit 0, other weights); a truncated one, a Zstd traceback."""
    make_store(str(tmp_path / "s.zarr"))
    path = write_train_config(tmp_path, tokens=5120)
    chunk = tmp_path / "s.zarr/forget/acts/c/3/0"
    chunk.unlink() if damage == "deleted" else chunk.write_bytes(chunk.read_bytes()[:50])
    line = error_line(pipe(path, "train"))
    assert line.startswith(f"error: {chunk}: chunk 3 of forget is ") and "`pipe harvest --repair`" in line, line
    assert not (tmp_path / "runs/baseline/sae_weights.safetensors").exists()


def test_a_chunk_swapped_for_another_is_refused_on_read(tmp_path):
    from orthosae.common.store import StoreError, StoreReader

    make_store(str(tmp_path / "s.zarr"))
    shutil.copyfile(tmp_path / "s.zarr/retain/acts/c/5/0", tmp_path / "s.zarr/retain/acts/c/4/0")
    reader = StoreReader(str(tmp_path / "s.zarr"))
    assert reader.read_rows("retain", 0, 4 * 64).shape == (256, 16)  # other chunks read as before
    with pytest.raises(
        StoreError,
        match=r"retain/acts/c/4/0, .*: chunk 4 of retain does not match its commit "
        r"checksum .*`pipe harvest --repair`",
    ):
        reader.read_rows("retain", 4 * 64 + 3, 4 * 64 + 9)


# ---------------------------------------------------------------- 7: push verifies first


def test_push_refuses_a_truncated_weights_file(sweep, tmp_path):
    """Before: a 1000-byte weights file was staged with exit 0."""
    weights = tmp_path / "runs/baseline/sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = error_line(pipe(sweep, "push", "baseline", "--repo", "me/x", "--dry-run"))
    assert line.startswith(f"error: {weights}: 1000 bytes, ") and "`pipe verify --repair`" in line, line
    assert not (tmp_path / "reports/default/hub").exists()


def test_push_refuses_a_truncated_report(sweep, tmp_path):
    """Before: a JSONDecodeError traceback."""
    report = tmp_path / "reports/default/report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text('{"runs": {"baseline": ')
    line = error_line(pipe(sweep, "push", "baseline", "--repo", "me/x", "--dry-run"))
    assert line.startswith(f"error: {report}: unreadable (JSONDecodeError") and "`pipe eval`" in line, line


# ---------------------------------------------------------------- 8: repair byte for byte


def test_repair_keeps_the_sae_lens_stamp_the_export_had(sweep, tmp_path, monkeypatch):
    """Before: cfg.json's sae_lens_version was restamped with the sae-lens installed at repair time."""
    import orthosae.train.export

    cfg_json = tmp_path / "runs/fixed/cfg.json"
    original = cfg_json.read_bytes()
    cfg_json.unlink()
    monkeypatch.setattr(orthosae.train.export, "sae_lens_version", lambda: "99.0.0")
    res = pipe(sweep, "verify", "--repair")
    assert res.exit_code == 0 and "fixed: repaired: rewrite the export" in res.output, res.output
    assert cfg_json.read_bytes() == original


# ---------------------------------------------------------------- 10: numbers no allocation can hold


@pytest.mark.parametrize(
    "value,why",
    [
        ("99999999999999999999", "is beyond a 64-bit integer"),
        ("100000000", "must be at most 16,777,216 (2^24 features)"),
    ],
)
def test_an_absurd_d_sae_is_refused_at_load(tmp_path, value, why):
    """Before: accepted, then a traceback from randn."""
    path = write_train_config(tmp_path)
    line = error_line(pipe(path, "--set", f"train.d_sae={value}", "train"))
    assert line.startswith(f"error: {path}: [train] d_sae: ") and why in line, line


# ---------------------------------------------------------------- 11: messages that say what is wrong


def test_status_tells_a_truncated_report_from_a_stale_one(sweep, tmp_path):
    report = tmp_path / "reports/default/report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text('{"runs": ')
    res = pipe(sweep, "status")
    assert res.exit_code == 0 and "stale" not in res.output.split("report ")[-1], res.output
    assert "unreadable" in res.output and "`pipe eval` writes it again" in res.output
    assert json.loads(pipe(sweep, "status", "--json").stdout)["report"]["state"] == "unreadable"


def test_verify_offers_a_repair_for_a_damaged_checkpoint_of_a_finished_run(sweep, tmp_path):
    """Before: exit 1 at every verify, with no way out but --force (retraining)."""
    state = tmp_path / "runs/adaptive/checkpoint/state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    res = pipe(sweep, "verify")
    assert res.exit_code == 1 and f"{state}: 100 bytes" in res.output, res.output
    assert (
        "adaptive: `pipe verify --repair` will delete the damaged checkpoint/ (the export is intact)"
        in res.output.replace("\n", " ")
    ), res.output
    weights = (tmp_path / "runs/adaptive/sae_weights.safetensors").read_bytes()
    assert pipe(sweep, "verify", "--repair").exit_code == 0
    assert not state.parent.exists() and pipe(sweep, "verify").exit_code == 0
    assert (tmp_path / "runs/adaptive/sae_weights.safetensors").read_bytes() == weights


def test_verify_without_a_store_still_checks_the_runs(sweep, tmp_path):
    """Before: `no zarr store here` and nothing checked."""
    shutil.rmtree(tmp_path / "s.zarr")
    weights = tmp_path / "runs/fixed/sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    doc = json.loads(pipe(sweep, "verify", "--json").stdout)
    assert doc["stores"][0]["problems"][0]["kind"] == "missing" and not doc["ok"]
    assert [(r["run"], [p["file"] for p in r["problems"]]) for r in doc["runs"]] == [
        ("baseline", []),
        ("fixed", [str(weights)]),
        ("adaptive", []),
    ]


def test_a_chunk_write_that_names_no_file_names_the_store(tmp_path, monkeypatch):
    """A refused write() has no file name: the one line names the store's corpus, never `?`."""
    import errno

    import numpy as np

    from orthosae.common.store import CorpusPlan, StoreError, StoreWriter
    from tests._stores import IDENTITY

    w = StoreWriter(str(tmp_path / "s.zarr"), IDENTITY)
    plan = CorpusPlan(
        name="c",
        role="retain",
        split="train",
        source="x",
        fingerprint="f",
        tokens_fingerprint="t",
        n_contexts=2,
        context_length=3,
        contexts_per_chunk=2,
    )
    w.ensure_corpus(plan)
    import zarr.storage._local as local

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "_put", full)
    with pytest.raises(StoreError, match=rf"cannot write {tmp_path / 's.zarr'}/c: No space left on device \[ENOSPC\]"):
        w.write_chunk(plan, 0, np.zeros((4, IDENTITY["d_model"]), np.float32), np.zeros((2, 3), np.int32))
