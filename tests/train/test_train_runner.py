"""`pipe train` end to end on a synthetic store: one pass for a sweep, resume, NaN, bad input."""

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orthosae.common.config import load_config
from orthosae.common.store import StoreError, StoreReader
from orthosae.train import load_sae, train
from tests._subprocess import run_script
from tests._synthetic import SWEEP, D, make_store, write_config

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_trains_all_variants_in_one_pass(tmp_path, monkeypatch):
    make_store(str(tmp_path / "s.zarr"))
    reads = {"n": 0}
    real = StoreReader.read_rows

    def counting(self, name, start, stop):
        reads["n"] += 1
        return real(self, name, start, stop)

    monkeypatch.setattr(StoreReader, "read_rows", counting)
    one = load_config(write_config(tmp_path / "one" if (tmp_path / "one").mkdir() is None else None))
    make_store(str(tmp_path / "one" / "s.zarr"))
    reads["n"] = 0
    train(one, show_progress=False)
    reads_one = reads["n"]
    cfg = load_config(write_config(tmp_path, runs=SWEEP))
    reads["n"] = 0
    summaries = train(cfg, show_progress=False)
    assert reads["n"] == reads_one  # three runs read the data exactly as often as one
    assert [s["status"] for s in summaries] == ["complete"] * 3
    for s in summaries:
        run_dir = tmp_path / "runs" / s["run"]
        for f in ("sae_weights.safetensors", "cfg.json", "log.jsonl", "summary.json"):
            assert (run_dir / f).exists()
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == 320 and 0 < log[-1]["l0"] < 0.5 * 64  # sparse
        assert log[-1]["ev_batch"] > 0.5
        assert {"recon", "sparse", "total", "lambda1", "lambda2", "l0", "dead", "lr"} <= log[-1].keys()
        assert ("ortho" in log[-1]) == (s["type"] != "baseline")
    adaptive = [json.loads(line) for line in (tmp_path / "runs/adaptive/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in adaptive if r.get("regrouped")] == [50, 100, 150, 200, 250, 300]
    assert adaptive[-1]["lambda2"] == pytest.approx(0.5) and adaptive[0]["lambda2"] < 0.1
    sae, sae_cfg = load_sae(tmp_path / "runs/adaptive")
    assert sae_cfg["architecture"] == "orthosae_grouped" and sae.group_bias.shape == (2, D)
    assert sae_cfg["activation_scale"] == pytest.approx(summaries[0]["activation_scale"])


def test_run_selection_and_complete_runs_left_alone(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    cfg = load_config(write_config(tmp_path, runs=SWEEP, tokens=5120))
    assert [s["run"] for s in train(cfg, run_names=["fixed"], show_progress=False)] == ["fixed"]
    assert not (tmp_path / "runs/baseline").exists()
    before = (tmp_path / "runs/fixed/sae_weights.safetensors").stat().st_mtime_ns
    train(cfg, run_names=["fixed"], show_progress=False)
    assert (tmp_path / "runs/fixed/sae_weights.safetensors").stat().st_mtime_ns == before


KILLER = """
import os, signal, sys
import orthosae.train.runner as r
from orthosae.common.config import load_config
real = r.save_checkpoint
count = {"n": 0}
def dying(run_dir, state, **kw):
    real(run_dir, state, **kw)
    count["n"] += 1
    if count["n"] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
r.save_checkpoint = dying
r.train(load_config(sys.argv[1]), show_progress=False)
"""


def test_killed_run_resumes_to_identical_weights(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    ref_cfg = load_config(write_config(tmp_path, runs=SWEEP))
    train(ref_cfg, show_progress=False)
    reference = {
        n: load_file(str(tmp_path / "runs" / n / "sae_weights.safetensors")) for n in ("baseline", "fixed", "adaptive")
    }
    killed_dir = tmp_path / "k"
    killed_dir.mkdir()
    path = write_config(killed_dir, runs=SWEEP, store="../s.zarr")
    # 3 runs checkpoint together: dying after the 5th checkpoint leaves runs at different steps.
    out = run_script(tmp_path, KILLER, path, 5)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    steps = {
        n: json.loads((killed_dir / "runs" / n / "checkpoint/state.json").read_text())["trainer"]["step"]
        for n in ("baseline", "fixed")
    }
    assert steps == {"baseline": 80, "fixed": 80}
    train(load_config(path), show_progress=False)
    for name, ref in reference.items():
        got = load_file(str(killed_dir / "runs" / name / "sae_weights.safetensors"))
        assert ref.keys() == got.keys()
        for key in ref:
            assert torch.equal(ref[key], got[key]), (name, key)


def test_nan_stops_run_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    make_store(str(tmp_path / "s.zarr"))
    cfg = load_config(write_config(tmp_path, runs=SWEEP))
    from orthosae.train.sae.fixed import FixedOrthoSAE

    real = FixedOrthoSAE.training_forward
    calls = {"n": 0}

    def poisoned(self, x, c):  # the fixed run's loss turns nan at its 101st step (step 100)
        out = real(self, x, c)
        if type(self) is FixedOrthoSAE:
            calls["n"] += 1
            if calls["n"] > 100:
                out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(FixedOrthoSAE, "training_forward", poisoned)
    summaries = {s["run"]: s for s in train(cfg, show_progress=False)}
    assert summaries["fixed"]["status"] == "failed" and "nan at step 100" in summaries["fixed"]["message"]
    assert not (tmp_path / "runs/fixed/sae_weights.safetensors").exists()
    ckpt = json.loads((tmp_path / "runs/fixed/checkpoint/state.json").read_text())
    assert ckpt["trainer"]["step"] == 80  # the last good checkpoint
    assert summaries["baseline"]["status"] == summaries["adaptive"]["status"] == "complete"


def test_a_nan_between_log_steps_is_caught_before_a_preemption_checkpoint(tmp_path, monkeypatch):
    """The NaN guard is read back only at log / checkpoint steps; a preemption checkpoint between
    them (step 102 here) reads it first, so a run whose loss went nan at step 100 fails instead of
    saving nan weights to resume from."""
    from orthosae.common import preempt

    make_store(str(tmp_path / "s.zarr"))
    cfg = load_config(write_config(tmp_path, runs=SWEEP))
    from orthosae.train.sae.fixed import FixedOrthoSAE

    real = FixedOrthoSAE.training_forward
    calls = {"n": 0}

    def poisoned(self, x, c):
        out = real(self, x, c)
        if type(self) is FixedOrthoSAE:
            calls["n"] += 1
            if calls["n"] == 101:  # step 100 only: later losses are finite again
                out.total = out.total * float("nan")
            if calls["n"] == 102:
                preempt.request()  # SIGTERM during step 101: stop after it
        return out

    monkeypatch.setattr(FixedOrthoSAE, "training_forward", poisoned)
    try:
        with pytest.raises(preempt.Preempted):
            train(cfg, show_progress=False)
    finally:
        preempt.clear()
    summary = json.loads((tmp_path / "runs/fixed/summary.json").read_text())
    assert summary["status"] == "failed" and "nan at step 100" in summary["message"]
    ckpt = json.loads((tmp_path / "runs/fixed/checkpoint/state.json").read_text())
    assert ckpt["trainer"]["step"] == 80  # the last good checkpoint, not step 102's
    base = json.loads((tmp_path / "runs/baseline/checkpoint/state.json").read_text())
    assert base["trainer"]["step"] == 102  # the healthy runs were checkpointed at the stop


def test_bad_store_refused_before_training(tmp_path):
    make_store(str(tmp_path / "s.zarr"), d_model=8)
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('id = "tiny"', 'id = "tiny"\nd_model = 16'))
    with pytest.raises(StoreError, match=r"s.zarr: holds d_model=8, .* wants 16"):
        train(load_config(path), show_progress=False)
    make_store(str(tmp_path / "inc.zarr"), complete=False)
    with pytest.raises(StoreError, match=r"inc.zarr/forget: incomplete \(1/8 chunks\)"):
        train(load_config(write_config(tmp_path, store="inc.zarr")), show_progress=False)
    assert not (tmp_path / "runs").exists()  # nothing written


TRAIN_SCRIPT = """
import sys
from orthosae.common.config import load_config
from orthosae.train import train
train(load_config(sys.argv[1]), show_progress=False)
"""


def test_two_processes_share_the_sweep_and_equal_one(tmp_path):
    """Under torchrun, rank r trains runs r, r+N, …; every run's weights equal a one-process sweep,
    resampling included (each run has its own random stream)."""
    import sys

    make_store(str(tmp_path / "s.zarr"))
    sweep = SWEEP + '[[runs]]\nname = "resampled"\ntype = "baseline"\nresample_dead = true\ndead_window = 20\n'
    one = load_config(write_config(tmp_path, runs=sweep, tokens=10_240))
    train(one, show_progress=False)
    two_dir = tmp_path / "two"
    two_dir.mkdir()
    path = write_config(two_dir, runs=sweep, tokens=10_240, store="../s.zarr")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = run_script(
        tmp_path,
        TRAIN_SCRIPT,
        path,
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29523"],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "process 0 of 2" in log and "process 1 of 2" in log
    for name in ("baseline", "fixed", "adaptive", "resampled"):
        ref = load_file(str(tmp_path / "runs" / name / "sae_weights.safetensors"))
        got = load_file(str(two_dir / "runs" / name / "sae_weights.safetensors"))
        assert all(torch.equal(ref[k], got[k]) for k in ref), name


def test_target_l0_controller_lands_within_5_percent(tmp_path):
    """ReLU runs with `target_l0` end within ±5 % of it (L0 of the exported SAE on the training rows,
    the distribution the controller sees); λ1 is what moved. A TopK run in the same sweep sits at k."""
    make_store(str(tmp_path / "s.zarr"))
    cfg = load_config(
        write_config(
            tmp_path,
            runs="""
[[runs]]
name = "b"
type = "baseline"
target_l0 = [6.0, 8.0]
seeds = [0]
[[runs]]
name = "topk"
type = "fixed"
activation = "topk"
k = 7
l1_coefficient = 0.0
""",
        )
    )
    summaries = train(cfg, show_progress=False)
    assert [s["run"] for s in summaries] == ["b-target_l06-s0", "b-target_l08-s0", "topk"]
    reader = StoreReader(str(tmp_path / "s.zarr"))
    x = torch.cat([reader.read_rows(c, 0, reader.corpora()[c].n_rows) for c in ("retain", "forget")])
    l0 = {}
    for s in summaries:
        sae, _ = load_sae(tmp_path / "runs" / s["run"])
        with torch.no_grad():
            l0[s["run"]] = float((sae.encode(x) > 0).sum(-1).float().mean())
    assert l0["b-target_l06-s0"] == pytest.approx(6.0, rel=0.05), l0
    assert l0["b-target_l08-s0"] == pytest.approx(8.0, rel=0.05), l0
    assert l0["topk"] <= 7 and l0["topk"] == pytest.approx(7.0, rel=0.01), l0
    lam = [s["final"]["lambda1"] for s in summaries[:2]]
    assert lam[0] > lam[1] and lam[0] != pytest.approx(0.3)  # λ1 was steered, more for the sparser target


def test_run_fingerprints_survive_keys_added_later():
    """A finished run stays complete when a release adds a setting at its default: these are the
    fingerprints the code before ``[train.ortho] sketch`` (since removed) and ``gram_dtype`` gave (computed with
    that commit); with a key set, the fingerprint changes and the run trains again."""
    from types import SimpleNamespace

    from orthosae.common.config import OrthoConfig, RunConfig, TrainConfig
    from orthosae.train.runner import run_fingerprint, run_fingerprints

    class Reader:
        meta = {"model_id": "tiny", "layer": 0}

        def corpora(self):
            return {"retain": SimpleNamespace(tokens_fingerprint="t")}

    def fp(kind, **ortho):
        return run_fingerprint(
            RunConfig.of(kind, "r", train=TrainConfig(d_sae=64), ortho=OrthoConfig(**ortho)), Reader(), 0
        )

    def known(kind):  # what a finished run's summary may hold and still count as complete
        return run_fingerprints(RunConfig.of(kind, "r", train=TrainConfig(d_sae=64)), Reader(), 0)

    # since issue 36 the fingerprint leaves out runs_dir / device / checkpoint_every; the earlier
    # values stay known (run_fingerprints), so runs finished before are still complete
    old = {"baseline": "039156e96787c438", "fixed": "b79c3722aeed7305", "adaptive": "4b12f7f79c9eb9c5"}
    assert all(old[k] in known(k) and fp(k) != old[k] and known(k)[0] == fp(k) for k in old)
    # a run exported before [train.ortho] sketch was removed (issue 25) holds sketch = 0: same run
    old = RunConfig.of("adaptive", "r", train=TrainConfig(d_sae=64)).to_dict()
    old["ortho"]["sketch"] = 0
    assert run_fingerprint(RunConfig.from_dict(old), Reader(), 0) == fp("adaptive")
    assert fp("adaptive", gram_dtype="bfloat16") != fp("adaptive")
