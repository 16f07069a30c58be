"""Streaming loader: each row once per epoch, deterministic, seekable, memory set by the buffer."""
import numpy as np
import pytest
import torch

from common.store import CorpusPlan, StoreReader, StoreWriter, to_storage
from train.stream import ActivationStream, _split_counts, estimate_scale

D, T = 4, 9  # 8 rows per context


def make_store(tmp_path, n_contexts=(12, 6), per_chunk=2, storage="float32"):
    """Rows whose first feature is a unique id, so we can track exactly which rows were served."""
    url = str(tmp_path / f"s{n_contexts}.zarr")
    ident = {"model_id": "m", "revision": None, "file_sha256": None, "layer": 0, "hook": "resid_post",
             "d_model": D, "storage_dtype": storage, "context_length": T, "tokenizer": "t",
             "bos_policy": "x"}
    w = StoreWriter(url, ident)
    next_id = 0
    for name, n, role in [("retain", n_contexts[0], "retain"), ("forget", n_contexts[1], "forget")]:
        p = CorpusPlan(name=name, role=role, split="train", source="x", fingerprint="f",
                      tokens_fingerprint="t", n_contexts=n, context_length=T, contexts_per_chunk=per_chunk)
        w.ensure_corpus(p)
        for k in range(p.n_chunks):
            c0, c1 = k * per_chunk, min((k + 1) * per_chunk, n)
            rows = (c1 - c0) * (T - 1)
            acts = torch.zeros(rows, D)
            acts[:, 0] = torch.arange(next_id, next_id + rows)
            acts[:, 1] = 1.0 if role == "forget" else 0.0
            next_id += rows
            w.write_chunk(p, k, to_storage(acts, storage), np.full((c1 - c0, T), 5, dtype=np.int32))
        w.finish_corpus(name)
    w.finish()
    return StoreReader(url), next_id


def take(stream, n):
    out = []
    for i, batch in enumerate(stream):
        out.append(batch)
        if i + 1 == n:
            break
    return out


def test_each_row_once_per_epoch_and_roles_tagged(tmp_path):
    reader, n_rows = make_store(tmp_path)
    s = ActivationStream(reader, ["retain", "forget"], batch_size=16, buffer_rows=32, seed=3)
    assert s.rows_per_epoch == n_rows == 144
    batches = take(s, 2 * n_rows // 16)
    ids = torch.cat([x[:, 0] for x, _ in batches]).long()
    for epoch in (ids[:n_rows], ids[n_rows:]):
        assert sorted(epoch.tolist()) == list(range(n_rows))
    assert not torch.equal(ids[:n_rows], ids[n_rows:])  # epochs are shuffled differently
    assert not torch.equal(ids[:n_rows], torch.arange(n_rows))  # and shuffled at all
    for x, f in batches:
        assert torch.equal(f, x[:, 1] == 1.0)


def test_deterministic_and_resume_seeks_to_same_batches(tmp_path):
    reader, _ = make_store(tmp_path)
    kw = dict(batch_size=10, buffer_rows=32, seed=1)
    full = take(ActivationStream(reader, ["retain", "forget"], **kw), 30)
    again = take(ActivationStream(reader, ["retain", "forget"], **kw), 30)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))
    resumed = ActivationStream(reader, ["retain", "forget"], **kw)
    resumed.load_state_dict({"batches_served": 17})
    tail = take(resumed, 13)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[17:], tail))
    other_seed = take(ActivationStream(reader, ["retain", "forget"], batch_size=10, buffer_rows=32, seed=2), 3)
    assert not torch.equal(full[0][0], other_seed[0][0])


def test_mix_sets_batch_composition(tmp_path):
    reader, _ = make_store(tmp_path)
    s = ActivationStream(reader, ["retain", "forget"], batch_size=20, buffer_rows=32, seed=0,
                         mix={"retain": 1.0, "forget": 3.0})
    for x, f in take(s, 12):  # forget (48 rows) cycles its epochs more often than retain
        assert int(f.sum()) == 15
    assert _split_counts(10, [1, 1, 1]) == [4, 3, 3]
    assert _split_counts(4, [1, 100]) == [1, 3]  # every pool keeps at least one row


def test_heldout_rows_never_served(tmp_path):
    reader, _ = make_store(tmp_path)
    s = ActivationStream(reader, ["retain"], batch_size=8, buffer_rows=32, seed=0, heldout_rows=16)
    ids = torch.cat([x[:, 0] for x, _ in take(s, 30)]).long()
    assert ids.max() < 96 - 16 and len(set(ids.tolist())) == 80


def test_memory_is_set_by_buffer_not_cache(tmp_path, monkeypatch):
    peak = {}

    def record(size):
        orig = ActivationStream._read_window

        def wrapped(self, pool, epoch, w, pieces):
            acts, f = orig(self, pool, epoch, w, pieces)
            peak[size] = max(peak.get(size, 0), acts.numel())
            return acts, f
        monkeypatch.setattr(ActivationStream, "_read_window", wrapped)

    for size in (8, 64):  # contexts per group: an 8x larger cache
        reader, n = make_store(tmp_path, n_contexts=(size, size))
        record(size)
        take(ActivationStream(reader, ["retain", "forget"], batch_size=16, buffer_rows=32, seed=0),
             n // 16)
    assert peak[8] == peak[64] <= 32 * D


def test_scale_gives_unit_mean_squared_norm_per_dim(tmp_path):
    reader, _ = make_store(tmp_path)
    scale = estimate_scale(reader, ["retain", "forget"], n_rows=10_000)
    x = torch.cat([reader.read_rows("retain", 0, 96), reader.read_rows("forget", 0, 48)]) * scale
    assert (x.pow(2).sum(1).mean() / D).item() == pytest.approx(1.0, rel=1e-5)
