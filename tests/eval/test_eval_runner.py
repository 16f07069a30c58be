"""Eval's passes over the store: the rows are read once for all runs; the LM-head slice fits the device."""

from collections import Counter
from types import SimpleNamespace

import numpy as np
import torch

from orthosae.common.config import RunConfig
from orthosae.common.store import CorpusPlan, StoreReader, StoreWriter, to_storage
from orthosae.eval.core import reconstruction_metrics
from orthosae.eval.family import LoadedRun, measure_activity
from orthosae.eval.family import read_rows as _rows
from orthosae.eval.family_conditioning import measure_conditioning
from orthosae.eval.family_core import measure_reconstruction
from orthosae.eval.frequencies import frequency_batches
from tests._activity import feature_activity

D, T = 16, 9


def make_store(tmp_path) -> StoreReader:
    url = str(tmp_path / "s.zarr")
    ident = {
        "model_id": "m",
        "revision": None,
        "file_sha256": None,
        "layer": 0,
        "hook": "resid_post",
        "d_model": D,
        "storage_dtype": "float32",
        "context_length": T,
        "tokenizer": "t",
        "bos_policy": "x",
    }
    w = StoreWriter(url, ident)
    rng = np.random.default_rng(0)
    for name, role, split, n in [
        ("retain", "retain", "train", 40),
        ("forget", "forget", "train", 30),
        ("heldout", "retain", "heldout", 50),
    ]:
        p = CorpusPlan(
            name=name,
            role=role,
            split=split,
            source="x",
            fingerprint="f",
            tokens_fingerprint="t",
            n_contexts=n,
            context_length=T,
            contexts_per_chunk=4,
        )
        w.ensure_corpus(p)
        for k in range(p.n_chunks):
            c0, c1 = k * 4, min((k + 1) * 4, n)
            acts = torch.from_numpy(rng.standard_normal(((c1 - c0) * (T - 1), D)).astype(np.float32))
            w.write_chunk(p, k, to_storage(acts, "float32"), rng.integers(3, 50, size=(c1 - c0, T)).astype(np.int32))
        w.finish_corpus(name)
    w.finish()
    return StoreReader(url)


def config():
    corpora = {
        "retain": SimpleNamespace(split="train", role="retain"),
        "forget": SimpleNamespace(split="train", role="forget"),
        "heldout": SimpleNamespace(split="heldout", role="retain"),
    }
    return SimpleNamespace(
        corpora=corpora,
        eval=SimpleNamespace(rows=300, frequency_rows=0, frequency_seed=0),
        ortho=SimpleNamespace(groups=2),
    )


def loaded(tmp_path, kinds):
    from orthosae.train.sae import make_sae

    out = []
    for i, kind in enumerate(kinds):
        run = RunConfig.of(kind, f"{kind}-{i}", d_sae=48, seed=i)
        out.append(
            LoadedRun(
                run=run,
                dir=tmp_path / run.name,
                sae=make_sae(run, D).eval().requires_grad_(False),
                sae_cfg={},
                summary={},
            )
        )
    return out


def test_rows_are_read_once_for_all_runs(tmp_path, monkeypatch):
    reader = make_store(tmp_path)
    reads, real_read = Counter(), StoreReader.read_rows

    def counted(self, name, start, stop):
        reads[name] += 1
        return real_read(self, name, start, stop)

    monkeypatch.setattr(StoreReader, "read_rows", counted)
    monkeypatch.setattr("orthosae.eval.family.ROW_BATCH", 64)  # several batches per corpus
    cfg = config()

    one = loaded(tmp_path, ["baseline"])
    measure_reconstruction(cfg, reader, one, lambda k: None)
    counted = measure_activity(cfg, reader, one, frozenset())[1]["rows_counted"]
    assert counted == {"forget": 30 * (T - 1), "retain": 40 * (T - 1)}  # every training row
    per_pass = dict(reads)
    assert all(n >= 2 for n in per_pass.values()) and set(per_pass) == {"retain", "forget", "heldout"}

    reads.clear()
    many = loaded(tmp_path, ["baseline", "fixed", "adaptive"])
    reconstruction = measure_reconstruction(cfg, reader, many, lambda k: None)
    activity, _ = measure_activity(cfg, reader, many, frozenset())
    assert dict(reads) == per_pass  # one read of each corpus whatever the number of runs
    conditioning = measure_conditioning(cfg, many, activity, lambda k: None)
    assert dict(reads) == per_pass  # conditioning reads no rows: it groups by the activity measured

    monkeypatch.setattr(StoreReader, "read_rows", real_read)
    for r in many:  # the same numbers as one pass per run
        assert reconstruction[r.name] == reconstruction_metrics(r.sae, _rows(reader, ["heldout"], 300))
        freq, mass = feature_activity(r.sae, frequency_batches(reader, ["forget"], 0, 0))
        a = activity[r.name]
        assert torch.equal(a.forget_freq, freq) and torch.equal(a.forget_mass, mass)
        assert conditioning[r.name]["grouping"]


def test_diff_of_means_direction_uses_every_training_row():
    """The SAE-free reference's direction: mean of every forget training row minus every retain
    row (special-token rows out), not the first [eval] rows."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from orthosae.eval.family_unlearning import mean_direction

    g = torch.Generator().manual_seed(0)
    data = {
        "f": torch.randn(50_000, 4, generator=g) + torch.tensor([1.0, 0, 0, 0]),
        "r": torch.randn(30_000, 4, generator=g),
    }
    data["f"][-10_000:] += torch.tensor([0, 5.0, 0, 0])  # the late rows move the mean: the first 20,000 miss it
    tokens = {k: np.where(np.arange(len(v)) % 97 == 0, 2, 7) for k, v in data.items()}  # token 2: special
    reader = SimpleNamespace(
        corpora=lambda: {k: SimpleNamespace(n_rows=len(v)) for k, v in data.items()},
        read_rows=lambda n, a, b: data[n][a:b],
        read_tokens=lambda n, a, b: tokens[n][a:b],
    )
    cfg = SimpleNamespace(
        corpora={
            "f": SimpleNamespace(split="train", role="forget"),
            "r": SimpleNamespace(split="train", role="retain"),
        },
        eval=SimpleNamespace(rows=20_000),
    )
    d = mean_direction(reader, cfg, frozenset({2}))
    keep = {k: torch.from_numpy(tokens[k] != 2) for k in data}
    want = data["f"][keep["f"]].double().mean(0) - data["r"][keep["r"]].double().mean(0)
    assert torch.allclose(d, (want / want.norm()).float(), atol=1e-6)
