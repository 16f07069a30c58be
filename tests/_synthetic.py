"""A synthetic store (retain and forget rows around different directions) and a small `pipe train`
config over it: the fixtures of the train, preemption, status, event-log and integrity tests."""

import textwrap

import numpy as np
import torch

from orthosae.common.store import CorpusPlan, StoreWriter, to_storage
from tests._configs import BASELINE_AND_FIXED

D, T = 16, 9


def make_store(url, d_model=D, complete=True, n_contexts=64):
    """Retain and forget rows drawn around different directions, like two topics would be."""
    ident = {
        "model_id": "tiny",
        "revision": "main",
        "file_sha256": None,
        "layer": 0,
        "hook": "resid_post",
        "d_model": d_model,
        "storage_dtype": "float32",
        "context_length": T,
        "tokenizer": "t:bos=2",
        "bos_policy": "bos-first-not-stored",
    }
    w = StoreWriter(url, ident)
    g = torch.Generator().manual_seed(0)
    for name, role, split, offset in [
        ("retain", "retain", "train", 0),
        ("forget", "forget", "train", 1),
        ("retain_heldout", "retain", "heldout", 0),
    ]:
        p = CorpusPlan(
            name=name,
            role=role,
            split=split,
            source="x",
            fingerprint=name,
            tokens_fingerprint=name,
            n_contexts=n_contexts,
            context_length=T,
            contexts_per_chunk=8,
        )
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


def write_config(
    tmp_path, runs='[[runs]]\nname = "baseline"\ntype = "baseline"\n', tokens=40_960, extra_train="", store="s.zarr"
):
    text = (
        textwrap.dedent(f"""
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
    runs_dir = "{tmp_path / "runs"}"
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
    """)
        + runs
    )
    if "[eval]" not in runs:  # event logs go to the test's folder, never the checkout's reports/
        text += f'\n[eval]\nreports_dir = "{tmp_path / "reports"}"\n'
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


SWEEP = (
    BASELINE_AND_FIXED
    + """
[[runs]]
name = "adaptive"
type = "adaptive"
alpha = 0.0
every = 3
"""
)
