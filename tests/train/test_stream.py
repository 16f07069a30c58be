"""Streaming loader: each row once per epoch, deterministic, seekable, memory set by the buffer."""

import threading
import weakref

import numpy as np
import pytest
import torch

from orthosae.train.stream import ActivationStream, _split_counts, estimate_scale
from tests._stores import ID_D as D
from tests._stores import make_id_store


def take(stream, n):
    out = []
    for i, batch in enumerate(stream):
        out.append(batch)
        if i + 1 == n:
            break
    return out


def test_each_row_once_per_epoch_and_roles_tagged(tmp_path):
    reader, n_rows = make_id_store(tmp_path)
    s = ActivationStream(reader, ["retain", "forget"], batch_size=16, buffer_rows=32, seed=3)
    assert sum(pool.rows for pool in s.pools) == n_rows == 144  # one pool holding every row
    batches = take(s, 2 * n_rows // 16)
    ids = torch.cat([x[:, 0] for x, _ in batches]).long()
    for epoch in (ids[:n_rows], ids[n_rows:]):
        assert sorted(epoch.tolist()) == list(range(n_rows))
    assert not torch.equal(ids[:n_rows], ids[n_rows:])  # epochs are shuffled differently
    assert not torch.equal(ids[:n_rows], torch.arange(n_rows))  # and shuffled at all
    for x, f in batches:
        assert torch.equal(f, x[:, 1] == 1.0)


def test_deterministic_and_resume_seeks_to_same_batches(tmp_path):
    reader, _ = make_id_store(tmp_path)
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
    reader, _ = make_id_store(tmp_path)
    s = ActivationStream(
        reader, ["retain", "forget"], batch_size=20, buffer_rows=32, seed=0, mix={"retain": 1.0, "forget": 3.0}
    )
    for _x, f in take(s, 12):  # forget (48 rows) cycles its epochs more often than retain
        assert int(f.sum()) == 15
    assert _split_counts(10, [1, 1, 1]) == [4, 3, 3]
    assert _split_counts(4, [1, 100]) == [1, 3]  # every pool keeps at least one row


def test_heldout_rows_never_served(tmp_path):
    reader, _ = make_id_store(tmp_path)
    s = ActivationStream(reader, ["retain"], batch_size=8, buffer_rows=32, seed=0, heldout_rows=16)
    ids = torch.cat([x[:, 0] for x, _ in take(s, 30)]).long()
    assert ids.max() < 96 - 16 and len(set(ids.tolist())) == 80


def reference_batches(s: ActivationStream, start: int, n: int, reads: list):
    """Batches start..start+n-1 of `s` as the synchronous reader before read-ahead made them: each
    window read whole, permuted, served in slices; `reads` collects the windows it read."""

    def pool_rows(pool, start_row):
        epoch, skip = divmod(start_row, pool.rows)
        while True:
            for w, pieces in enumerate(s._windows(pool, epoch)):
                rows = sum(p.rows for p in pieces)
                if skip >= rows:
                    skip -= rows
                    continue
                reads.append((pool.index, epoch, w))
                acts = torch.cat([s.reader.read_rows(p.corpus, p.start, p.stop) for p in pieces])
                forget = torch.cat([torch.full((p.rows,), p.is_forget) for p in pieces])
                perm = torch.from_numpy(np.random.default_rng([s.seed, pool.index, epoch, w, 1]).permutation(len(acts)))
                yield acts[perm][skip:], forget[perm][skip:]
                skip = 0
            epoch += 1

    sources = [pool_rows(p, start * p.rows_per_batch) for p in s.pools]
    pending = [(torch.empty(0, s.reader.d_model), torch.empty(0, dtype=torch.bool)) for _ in s.pools]
    out = []
    for _ in range(n):
        xs, fs = [], []
        for i, pool in enumerate(s.pools):
            acts, forget = pending[i]
            while len(acts) < pool.rows_per_batch:
                more_a, more_f = next(sources[i])
                acts, forget = torch.cat([acts, more_a]), torch.cat([forget, more_f])
            xs.append(acts[: pool.rows_per_batch])
            fs.append(forget[: pool.rows_per_batch])
            pending[i] = (acts[pool.rows_per_batch :], forget[pool.rows_per_batch :])
        out.append((torch.cat(xs) * s.scale, torch.cat(fs)))
    return out


@pytest.mark.parametrize(
    "storage, kw, start, total",
    [
        ("bfloat16", dict(batch_size=10, buffer_rows=32, scale=0.37), 0, 40),
        ("float32", dict(batch_size=10, buffer_rows=48), 17, 41),  # a resumed stream
        ("float16", dict(batch_size=20, buffer_rows=32, mix={"retain": 1.0, "forget": 3.0}, heldout_rows=8), 5, 30),
        ("bfloat16", dict(batch_size=7, buffer_rows=8), 3, 50),  # windows smaller than a batch
    ],
)
def test_read_ahead_serves_the_batches_of_the_synchronous_reader(tmp_path, monkeypatch, storage, kw, start, total):
    """Same rows, same order, same values: a resumed run sees what an uninterrupted one saw, before
    and after read-ahead; and no window past the last batch is read."""
    reader, _ = make_id_store(tmp_path, storage=storage)
    s = ActivationStream(reader, ["retain", "forget"], seed=4, total_batches=total, **kw)
    s.load_state_dict({"batches_served": start})
    expect_reads: list = []
    expect = reference_batches(s, start, total - start, expect_reads)
    reads, real_read = [], ActivationStream._read_window

    def counted(self, pool, epoch, w, *args):
        reads.append((pool.index, epoch, w))
        return real_read(self, pool, epoch, w, *args)

    monkeypatch.setattr(ActivationStream, "_read_window", counted)
    got = list(s)
    assert len(got) == total - start and s.batches_served == total
    for (x, f), (ex, ef) in zip(got, expect):
        assert x.dtype == torch.float32 and torch.equal(x, ex) and torch.equal(f, ef)
    assert sorted(reads) == sorted(expect_reads)


def test_next_window_is_read_while_the_current_one_is_served(tmp_path, monkeypatch):
    """The consumer holds the first of a window's 16 batches; the next window is read meanwhile
    (before, it was read only when its first row was needed, with the consumer waiting)."""
    reader, _ = make_id_store(tmp_path, n_contexts=(16, 8))  # chunks of 16 rows
    s = ActivationStream(reader, ["retain"], batch_size=4, buffer_rows=64, seed=0, prefetch=1)
    later_window, real_read = threading.Event(), ActivationStream._read_window

    def watched(self, pool, epoch, w, *args):
        if (epoch, w) != (0, 0):
            later_window.set()
        return real_read(self, pool, epoch, w, *args)

    monkeypatch.setattr(ActivationStream, "_read_window", watched)
    it = iter(s)
    next(it)
    assert later_window.wait(timeout=60)
    it.close()


@pytest.mark.parametrize("mix", [None, {"retain": 1.0, "forget": 1.0}])
def test_host_memory_is_bounded_by_the_buffer_not_the_cache(tmp_path, monkeypatch, mix):
    """Windows are tracked from their read until their rows are freed: per pool at most two are
    alive (the one served, the one read ahead), each at most buffer_rows rows held as stored
    (bf16: 2 bytes a value), whatever the size of the cache."""
    lock = threading.Lock()
    live = {"bytes": 0, "windows": 0}
    peak: dict = {}
    real_read = ActivationStream._read_window

    def count(bytes_, windows, rows=0):
        with lock:
            live["bytes"] += bytes_
            live["windows"] += windows
            old = peak.get(url, (0, 0, 0))
            peak[url] = (max(old[0], live["bytes"]), max(old[1], live["windows"]), max(old[2], rows))

    def tracked(self, pool, epoch, w, pieces, *args):
        rows = sum(p.rows for p in pieces)
        count(rows * D * 2, 1, rows)  # from before its rows are allocated ...
        window = real_read(self, pool, epoch, w, pieces, *args)
        held = window.stored if hasattr(window, "stored") else window[0]  # (before read-ahead: acts, f)
        size = held.nbytes if isinstance(held, np.ndarray) else held.numel() * held.element_size()
        count(size - rows * D * 2, 0)
        weakref.finalize(held, count, -size, -1)  # ... until they are freed
        return window

    monkeypatch.setattr(ActivationStream, "_read_window", tracked)

    for size in (8, 64):  # contexts per corpus: an 8x larger cache
        reader, n = make_id_store(tmp_path, n_contexts=(size, size), storage="bfloat16")
        url = reader.url
        s = ActivationStream(reader, ["retain", "forget"], batch_size=16, buffer_rows=32, seed=0, mix=mix, prefetch=2)
        take(s, 2 * n // 16)  # two epochs
    (bytes8, windows8, biggest8), (bytes64, windows64, biggest64) = peak.values()
    pools = 2 if mix else 1
    assert biggest8 == biggest64 <= 32
    assert windows8 <= 2 * pools and windows64 <= 2 * pools
    assert bytes8 <= 2 * pools * 32 * D * 2 and bytes64 <= 2 * pools * 32 * D * 2
    assert windows64 == 2 * pools  # read-ahead at work, not a trivially met bound


def test_scale_gives_unit_mean_squared_norm_per_dim(tmp_path):
    reader, _ = make_id_store(tmp_path)
    scale = estimate_scale(reader, ["retain", "forget"], n_rows=10_000)
    x = torch.cat([reader.read_rows("retain", 0, 96), reader.read_rows("forget", 0, 48)]) * scale
    assert (x.pow(2).sum(1).mean() / D).item() == pytest.approx(1.0, rel=1e-5)
