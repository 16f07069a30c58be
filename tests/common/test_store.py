"""Store schema: the row codec, round trip, commit flags, corruption named by chunk, one writer at a time."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from orthosae.common.store import (
    StoreError,
    StoreLock,
    StoreReader,
    StoreWriter,
    decode_rows,
    encode_rows,
    numpy_storage_dtype,
    rows_as_numpy,
    rows_as_torch,
    to_storage,
    torch_storage_dtype,
)
from tests._configs import ROOT
from tests._stores import IDENTITY, D, T, fill, plan


def test_bf16_round_trip_is_bf16_rounding():
    x = torch.randn(100, D) * 1e4
    back = decode_rows(rows_as_torch(to_storage(x, "bfloat16")), "bfloat16")
    assert torch.equal(back, x.to(torch.bfloat16).float())


@pytest.mark.parametrize("storage", ["bfloat16", "float16", "float32"])
def test_codec_keeps_the_stored_bits_through_every_view(storage):
    """zarr holds numpy_storage_dtype, torch holds torch_storage_dtype: the same bytes, no rounding but
    encode_rows's one."""
    x = torch.randn(64, D) * 1e3
    bits = encode_rows(x, storage)
    assert bits.dtype == torch_storage_dtype(storage)
    stored = rows_as_numpy(bits)
    assert stored.dtype == numpy_storage_dtype(storage) and stored.tobytes() == bits.numpy().tobytes()
    back = rows_as_torch(stored)
    assert back.dtype == torch_storage_dtype(storage) and torch.equal(back, bits)
    assert torch.equal(decode_rows(back, storage), x.to(getattr(torch, storage)).float())
    assert np.array_equal(to_storage(x, storage), stored)


def test_write_read_and_complete(tmp_path):
    url = str(tmp_path / "s.zarr")
    p = dataclasses.replace(plan(), composition={"order": "shuffled", "documents": 3})
    w = StoreWriter(url, IDENTITY)
    w.ensure_corpus(p)
    assert w.pending_chunks("c") == [0, 1, 2]
    assert (StoreReader(url).corpora()["c"].chunks_done, StoreReader(url).corpora()["c"].complete) == (0, False)
    ctx, acts = fill(w, p)
    assert w.pending_chunks("c") == [] and w.finish_corpus("c") and w.finish()
    r = StoreReader(url)
    back = r.corpora()["c"]  # the plan read back, with its progress
    assert back == p and back.composition == p.composition and (back.chunks_done, back.complete) == (3, True)
    assert r.complete and back.n_rows == 5 * (T - 1) and back.rows_per_chunk == 2 * (T - 1)
    assert torch.equal(r.read_rows("c", 0, p.n_rows), torch.from_numpy(acts).to(torch.bfloat16).float())
    assert torch.equal(r.contexts("c", 1, 3, bos_token_id=2), torch.from_numpy(ctx[1:4]).long())
    assert r.check() == []


def test_identity_mismatch_is_refused(tmp_path):
    url = str(tmp_path / "s.zarr")
    StoreWriter(url, IDENTITY)
    with pytest.raises(StoreError, match=r"s.zarr: holds layer=1, config wants 7"):
        StoreWriter(url, {**IDENTITY, "layer": 7})
    w = StoreWriter(url, IDENTITY)
    w.ensure_corpus(plan())
    with pytest.raises(StoreError, match=r"s.zarr/c: holds n_contexts=5"):
        w.ensure_corpus(plan(n_contexts=6))


def test_verify_names_corrupted_and_missing_chunk(tmp_path):
    url = str(tmp_path / "s.zarr")
    p = plan()
    w = StoreWriter(url, IDENTITY)
    w.ensure_corpus(p)
    fill(w, p)
    w.finish_corpus("c")
    chunk = tmp_path / "s.zarr" / "c" / "acts" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = [p.text for p in StoreReader(url).check()]
    assert len(problems) == 1 and "c chunk 1" in problems[0], problems
    w.root["c"]["committed"][2] = 0
    problems = [p.text for p in StoreReader(url).check()]
    assert any("chunk 2" in p and "not written" in p for p in problems)


def complete_store(tmp_path, name="s.zarr"):
    url = str(tmp_path / name)
    p = plan()
    w = StoreWriter(url, IDENTITY)
    w.ensure_corpus(p)
    fill(w, p)
    w.finish_corpus("c")
    return url, w


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "chunk_file, truncate",
    [
        ("tokens/c/1", False),
        ("context/c/1", False),
        ("position/c/1", False),
        ("committed/c/1", False),
        ("committed/c/1", True),
    ],
)
def test_verify_names_the_array_and_chunk_file(tmp_path, chunk_file, truncate):
    url, _ = complete_store(tmp_path)
    path = tmp_path / "s.zarr/c" / chunk_file
    if truncate:
        path.write_bytes(path.read_bytes()[:3])
    else:
        flip_byte(path)
    problems = StoreReader(url).check()
    assert [(p.kind, p.corpus, p.chunk) for p in problems] == [("damaged", "c", 1)], problems
    assert "c chunk 1 (" in problems[0].text and chunk_file in problems[0].text, problems[0].text


def test_verify_catches_valid_chunk_rewritten_with_other_rows(tmp_path):
    """Chunk 0's encoded bytes copied over chunk 1: every codec checksum passes, only the commit
    digest sees that chunk 1 no longer holds the rows it was committed with."""
    url, _ = complete_store(tmp_path)
    for arr in ("acts/c/{}/0", "tokens/c/{}"):
        src, dst = (tmp_path / "s.zarr/c" / arr.format(k) for k in (0, 1))
        dst.write_bytes(src.read_bytes())
    problems = StoreReader(url).check()
    assert len(problems) == 1 and "checksum mismatch" in problems[0].text, problems
    assert (problems[0].kind, problems[0].chunk) == ("damaged", 1)


def test_uncommit_marks_chunks_pending_and_store_incomplete(tmp_path):
    url, w = complete_store(tmp_path)
    assert w.finish()
    w.uncommit("c", [0, 2])
    assert w.pending_chunks("c") == [0, 2]
    r = StoreReader(url)
    assert not r.complete and not r.corpora()["c"].complete
    assert [p.kind for p in r.check()] == ["unwritten", "unwritten"]


def test_second_writer_is_refused_and_stale_lock_taken_over(tmp_path):
    url = str(tmp_path / "s.zarr")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = StoreLock(url)
        lock.fs.makedirs(str(tmp_path), exist_ok=True)
        lock.fs.pipe_file(lock.path, f'{{"host": "{os.uname().nodename}", "pid": {holder.pid}}}'.encode())
        with pytest.raises(StoreError, match=f"another writer holds the store \\(pid {holder.pid}"):
            StoreLock(url).acquire()
    finally:
        holder.kill()
        holder.wait()
    mine = StoreLock(url)
    mine.acquire()  # the holder is dead: its lock is stale and is taken over
    code = f"from common.store import StoreLock; StoreLock({url!r}).acquire()"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr
    mine.release()
    assert not mine.fs.exists(mine.path)
