"""The harvest's background chunk writer: same bytes as serial writes, errors surface, bounded queue."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from orthosae.common.store import StoreWriter, encode_rows, to_storage
from orthosae.harvest.writer import ChunkWriter, HostRows
from tests._stores import IDENTITY, T, plan


def chunks(p, seed=0):
    """(k, acts, tokens) of every chunk of plan p, as the harvest hands them over."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(3, 100, size=(p.n_contexts, T)).astype(np.int32)
    acts = torch.from_numpy(rng.standard_normal((p.n_rows, IDENTITY["d_model"])).astype(np.float32))
    for k in range(p.n_chunks):
        c0, c1 = k * p.contexts_per_chunk, min((k + 1) * p.contexts_per_chunk, p.n_contexts)
        yield k, acts[c0 * (T - 1) : c1 * (T - 1)], ctx[c0:c1]


def files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_background_store_is_byte_identical_to_serial(tmp_path):
    p = plan(n_contexts=9, per_chunk=2)
    serial = StoreWriter(str(tmp_path / "serial.zarr"), IDENTITY)
    serial.ensure_corpus(p)
    for k, acts, tokens in chunks(p):
        serial.write_chunk(p, k, to_storage(acts, "bfloat16"), tokens)
    background = StoreWriter(str(tmp_path / "background.zarr"), IDENTITY)
    background.ensure_corpus(p)
    with ChunkWriter(background, workers=3) as w:  # chunks finish out of order: same bytes
        for k, acts, tokens in chunks(p):  # both forms the harvest hands over
            rows = HostRows(encode_rows(acts, "bfloat16")) if k % 2 else to_storage(acts, "bfloat16")
            w.submit(p, k, rows, tokens)
    assert background.pending_chunks("c") == []
    assert files(tmp_path / "serial.zarr") == files(tmp_path / "background.zarr")


class Gated(StoreWriter):
    """Writes only while `gate` is set; fails on chunk `fail_at`; records the writing thread."""

    def __init__(self, *args, fail_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.fail_at, self.threads, self.entered = threading.Event(), fail_at, set(), threading.Event()

    def write_chunk(self, plan, k, acts, tokens):
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        self.gate.wait()
        if k == self.fail_at:
            raise OSError(f"disk full at chunk {k}")
        super().write_chunk(plan, k, acts, tokens)


def test_writer_error_is_raised_in_the_loop_and_later_chunks_stay_uncommitted(tmp_path):
    p = plan(n_contexts=9, per_chunk=2)
    store = Gated(str(tmp_path / "s.zarr"), IDENTITY, fail_at=1)
    store.ensure_corpus(p)
    store.gate.set()
    w = ChunkWriter(store, workers=1)
    with pytest.raises(OSError, match="disk full at chunk 1"):
        for k, acts, tokens in chunks(p):
            w.submit(p, k, to_storage(acts, "bfloat16"), tokens)
        w.close()
    w.close()  # raised once; closing again is quiet
    assert store.threads == {"chunk-writer-0"}
    assert store.pending_chunks("c") == [1, 2, 3, 4]  # chunk 0 committed, nothing after the failure


def test_queue_is_bounded_and_close_commits_everything_queued(tmp_path):
    p = plan(n_contexts=9, per_chunk=2)  # 5 chunks
    store = Gated(str(tmp_path / "s.zarr"), IDENTITY)
    store.ensure_corpus(p)
    w = ChunkWriter(store, depth=2, workers=1)
    todo = list(chunks(p))
    for k, acts, tokens in todo[:1]:
        w.submit(p, k, to_storage(acts, "bfloat16"), tokens)
    assert store.entered.wait(10)  # chunk 0 is in the writer's hands, held at the gate
    for k, acts, tokens in todo[1:3]:  # fill the queue: returns at once
        w.submit(p, k, to_storage(acts, "bfloat16"), tokens)
    k, acts, tokens = todo[3]
    blocked = threading.Thread(target=w.submit, args=(p, k, to_storage(acts, "bfloat16"), tokens))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive()  # back-pressure: a third queued chunk waits for the writer
    assert store.pending_chunks("c") == [0, 1, 2, 3, 4]
    store.gate.set()
    blocked.join(10)
    assert not blocked.is_alive()
    w.close()  # drains: every submitted chunk is committed before close returns
    assert store.pending_chunks("c") == [4]
    with pytest.raises(RuntimeError, match="chunk writer is closed"):
        w.submit(p, 4, to_storage(todo[4][1], "bfloat16"), todo[4][2])
