"""`pipe train` end to end on a synthetic store: one pass for a sweep, resume, NaN, bad input."""
import json
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from orthosae.common.config import load_config
from orthosae.common.store import CorpusPlan, StoreError, StoreReader, StoreWriter, to_storage
from orthosae.train import load_sae, train

from tests._subprocess import run_script

ROOT = Path(__file__).resolve().parents[1]
D, T = 16, 9


def make_store(url, d_model=D, complete=True, n_contexts=64):
    """Retain and forget rows drawn around different directions, like two topics would be."""
    ident = {"model_id": "tiny", "revision": "main", "file_sha256": None, "layer": 0, "hook": "resid_post",
             "d_model": d_model, "storage_dtype": "float32", "context_length": T, "tokenizer": "t",
             "bos_policy": "bos-first-not-stored"}
    w = StoreWriter(url, ident)
    g = torch.Generator().manual_seed(0)
    for name, role, split, offset in [("retain", "retain", "train", 0), ("forget", "forget", "train", 1),
                                      ("retain_heldout", "retain", "heldout", 0)]:
        p = CorpusPlan(name=name, role=role, split=split, source="x", fingerprint=name, tokens_fingerprint=name,
                      n_contexts=n_contexts, context_length=T, contexts_per_chunk=8)
        w.ensure_corpus(p)
        base = torch.zeros(d_model)
        base[offset] = 3.0
        for k in range(p.n_chunks if complete or name != "forget" else 1):
            rows = 8 * (T - 1)
            sparse = (torch.rand(rows, d_model, generator=g) < 0.2) * torch.rand(rows, d_model, generator=g)
            acts = 10 * (base + sparse)  # raw scale far from 1: normalisation must handle it
            w.write_chunk(p, k, to_storage(acts, "float32"), np.full((8, T), 7, dtype=np.int32))
        w.finish_corpus(name)
    w.finish()


def write_config(tmp_path, runs='[[runs]]\nname = "baseline"\ntype = "baseline"\n', tokens=40_960,
                 extra_train="", store="s.zarr"):
    text = textwrap.dedent(f"""
    [model]
    id = "tiny"
    device = "cpu"
    [harvest]
    layer = 0
    store = "{tmp_path / store}"
    context_length = {T}
    [corpora.retain]
    source = "file:x"
    role = "retain"
    tokens = 100
    [corpora.forget]
    source = "file:x"
    role = "forget"
    tokens = 100
    [corpora.retain_heldout]
    source = "file:x"
    role = "retain"
    split = "heldout"
    tokens = 100
    [train]
    device = "cpu"  # these tests mean CPU, also on a GPU box (bitwise resume holds on CPU)
    runs_dir = "{tmp_path / 'runs'}"
    d_sae = 64
    batch_size = 128
    tokens = {tokens}
    buffer_rows = 256
    lr = 3e-3
    lr_warmup_steps = 10
    l1_coefficient = 0.3
    l1_warmup_steps = 20
    checkpoint_every = 40
    log_every = 10
    {extra_train}
    [train.ortho]
    lambda2_max = 0.5
    t0 = 100
    regroup_every = 50
    """) + runs
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


SWEEP = """
[[runs]]
name = "baseline"
type = "baseline"
[[runs]]
name = "fixed"
type = "fixed"
alpha = 0.1
[[runs]]
name = "adaptive"
type = "adaptive"
alpha = 0.0
every = 3
"""


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
def dying(run_dir, state):
    real(run_dir, state)
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
    reference = {n: load_file(str(tmp_path / "runs" / n / "sae_weights.safetensors")) for n in ("baseline", "fixed", "adaptive")}
    killed_dir = tmp_path / "k"
    killed_dir.mkdir()
    path = write_config(killed_dir, runs=SWEEP, store="../s.zarr")
    # 3 runs checkpoint together: dying after the 5th checkpoint leaves runs at different steps.
    out = run_script(tmp_path, KILLER, path, 5)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    steps = {n: json.loads((killed_dir / "runs" / n / "checkpoint/state.json").read_text())["trainer"]["step"]
             for n in ("baseline", "fixed")}
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
    out = run_script(tmp_path, TRAIN_SCRIPT, path, launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29523"],
                     env={"OMP_NUM_THREADS": "1"})
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
    cfg = load_config(write_config(tmp_path, runs="""
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
"""))
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
    from orthosae.train.runner import run_fingerprint

    class Reader:
        meta = {"model_id": "tiny", "layer": 0}

        def corpora(self):
            return {"retain": SimpleNamespace(tokens_fingerprint="t")}

    def fp(kind, **ortho):
        return run_fingerprint(RunConfig.of(kind, "r", train=TrainConfig(d_sae=64), ortho=OrthoConfig(**ortho)),
                               Reader(), 0)

    assert {k: fp(k) for k in ("baseline", "fixed", "adaptive")} == {
        "baseline": "039156e96787c438", "fixed": "b79c3722aeed7305", "adaptive": "4b12f7f79c9eb9c5"}
    # a run exported before [train.ortho] sketch was removed (issue 25) holds sketch = 0: same run
    old = RunConfig.of("adaptive", "r", train=TrainConfig(d_sae=64)).to_dict()
    old["ortho"]["sketch"] = 0
    assert run_fingerprint(RunConfig.from_dict(old), Reader(), 0) == fp("adaptive")
    assert fp("adaptive", gram_dtype="bfloat16") != fp("adaptive")
