"""Stores the tests write without a model, and comparisons of two stores (shared by several stages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

from orthosae.common.store import CorpusPlan, StoreReader, StoreWriter, to_storage

# ---- a small bf16 store: one corpus, contexts of T tokens, rows of D features ----

D, T = 8, 5
IDENTITY = {
    "model_id": "m",
    "revision": "r",
    "file_sha256": None,
    "layer": 1,
    "hook": "resid_post",
    "d_model": D,
    "storage_dtype": "bfloat16",
    "context_length": T,
    "tokenizer": "tok",
    "bos_policy": "bos-first-not-stored",
}


def plan(n_contexts=5, per_chunk=2, name="c") -> CorpusPlan:
    return CorpusPlan(
        name=name,
        role="retain",
        split="train",
        source="file:x",
        fingerprint="f",
        tokens_fingerprint="t",
        n_contexts=n_contexts,
        context_length=T,
        contexts_per_chunk=per_chunk,
    )


def fill(writer: StoreWriter, p: CorpusPlan, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Write every chunk of `p` with random contexts and rows; returns (contexts, float32 rows)."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(3, 100, size=(p.n_contexts, T)).astype(np.int32)
    ctx[:, 0] = 2
    acts = rng.standard_normal((p.n_rows, D)).astype(np.float32)
    for k in range(p.n_chunks):
        c0, c1 = k * p.contexts_per_chunk, min((k + 1) * p.contexts_per_chunk, p.n_contexts)
        rows = acts[c0 * (T - 1) : c1 * (T - 1)]
        writer.write_chunk(p, k, to_storage(torch.from_numpy(rows), "bfloat16"), ctx[c0:c1])
    return ctx, acts


# ---- a store whose rows carry their own id: which rows a stream served, and how often ----

ID_D, ID_T = 4, 9  # 8 rows per context


def make_id_store(tmp_path, n_contexts=(12, 6), per_chunk=2, storage="float32") -> tuple[StoreReader, int]:
    """Corpora "retain" and "forget" whose rows have a unique id in feature 0 and 1.0 in feature 1
    for a forget row; returns (reader, number of rows)."""
    url = str(tmp_path / f"s{n_contexts}.zarr")
    ident = {
        "model_id": "m",
        "revision": None,
        "file_sha256": None,
        "layer": 0,
        "hook": "resid_post",
        "d_model": ID_D,
        "storage_dtype": storage,
        "context_length": ID_T,
        "tokenizer": "t",
        "bos_policy": "x",
    }
    w = StoreWriter(url, ident)
    next_id = 0
    for name, n, role in [("retain", n_contexts[0], "retain"), ("forget", n_contexts[1], "forget")]:
        p = CorpusPlan(
            name=name,
            role=role,
            split="train",
            source="x",
            fingerprint="f",
            tokens_fingerprint="t",
            n_contexts=n,
            context_length=ID_T,
            contexts_per_chunk=per_chunk,
        )
        w.ensure_corpus(p)
        for k in range(p.n_chunks):
            c0, c1 = k * per_chunk, min((k + 1) * per_chunk, n)
            rows = (c1 - c0) * (ID_T - 1)
            acts = torch.zeros(rows, ID_D)
            acts[:, 0] = torch.arange(next_id, next_id + rows)
            acts[:, 1] = 1.0 if role == "forget" else 0.0
            next_id += rows
            w.write_chunk(p, k, to_storage(acts, storage), np.full((c1 - c0, ID_T), 5, dtype=np.int32))
        w.finish_corpus(name)
    w.finish()
    return StoreReader(url), next_id


# ---- comparing stores ----


def arrays(url) -> dict[str, np.ndarray]:
    root = zarr.open_group(url, mode="r")
    return {
        f"{g}/{a}": root[g][a][:]
        for g, _ in root.groups()
        for a in ("acts", "tokens", "context", "position", "committed")
    }


def assert_same_store(a, b) -> None:
    """Every array of every corpus equal (the attrs' timestamps may differ)."""
    xa, xb = arrays(a), arrays(b)
    assert xa.keys() == xb.keys()
    for key in xa:
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)


def store_files(url) -> dict[str, bytes]:
    """Every file of a local store but the root metadata, which holds harvest times."""
    root = Path(url)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / "zarr.json"
    }
