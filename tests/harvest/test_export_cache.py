"""`pipe export-cache --format saelens`: SAELens' own ActivationsStore reads the exported cache
and serves the store's rows, in the interleaved order, bit for bit."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.store import StoreReader
from orthosae.harvest.export_cache import chunk_order
from tests._synthetic import SWEEP, D, T, make_store, write_config


def test_chunk_order_interleaves_corpora_in_proportion():
    order = chunk_order({"a": 4, "b": 2})
    assert sorted(order) == sorted([("a", k) for k in range(4)] + [("b", k) for k in range(2)])
    assert [n for n, _ in order] == ["a", "b", "a", "a", "b", "a"]
    assert [k for n, k in order if n == "a"] == [0, 1, 2, 3]  # each corpus stays in its own order


def test_saelens_activations_store_serves_the_exported_rows(tmp_path):
    from sae_lens.training.activations_store import ActivationsStore

    make_store(str(tmp_path / "s.zarr"), n_contexts=40)  # 5 chunks of 8 contexts per corpus
    path = write_config(tmp_path, runs=SWEEP)
    out = tmp_path / "cache"
    res = CliRunner().invoke(main, ["--config", str(path), "export-cache", "--format", "saelens", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert f"-> {out}" in res.output and "hook_name='blocks.0.hook_resid_post'" in res.output
    meta = json.loads((out / "orthosae_cache.json").read_text())
    # the context size the SAEs saw (cfg.json's), position 0 the unstored BOS row's placeholder
    assert meta["corpora"] == ["retain", "forget"] and meta["context_size"] == T  # training corpora only

    # what the cache must hold: the store's contexts, chunk by chunk in chunk_order
    reader = StoreReader(str(tmp_path / "s.zarr"))
    info = reader.corpora()
    acts, toks, where = [], [], []
    for name, k in chunk_order({n: info[n].n_chunks for n in ("retain", "forget")}):
        lo, hi = k * info[name].rows_per_chunk, (k + 1) * info[name].rows_per_chunk
        acts.append(reader.read_rows(name, lo, hi))
        toks.append(torch.from_numpy(reader.read_tokens(name, lo, hi).astype(np.int64)))
        where += [(name, c) for c in range(lo // (T - 1), hi // (T - 1))]
    acts, toks = torch.cat(acts), torch.cat(toks)
    assert acts.shape == (80 * (T - 1), D)

    batch = 4  # contexts per SAELens batch: 20 batches cover the 80 contexts once
    store = ActivationsStore(
        model=None,
        dataset=None,
        streaming=False,
        hook_name="blocks.0.hook_resid_post",
        hook_head_index=None,
        context_size=T,
        d_in=D,
        n_batches_in_buffer=2,
        total_training_tokens=acts.shape[0],
        store_batch_size_prompts=batch,
        train_batch_size_tokens=16,
        prepend_bos=True,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        cached_activations_path=str(out),
        exclude_special_tokens=torch.tensor([2]),
    )
    got_acts, got_toks = zip(*[store.get_raw_llm_batch() for _ in range(80 // batch)])
    got_acts, got_toks = torch.cat(got_acts).view(80, T, D), torch.cat(got_toks).long().view(80, T)
    assert torch.equal(got_acts[:, 1:].reshape(-1, D), acts) and not got_acts[:, 0].any()
    assert torch.equal(got_toks[:, 1:].reshape(-1), toks) and (got_toks[:, 0] == 2).all()
    # and the training batches it serves (through its mixing buffer) are rows of the store
    store.current_row_idx = 0
    served = torch.cat([store.next_batch() for _ in range(5)])
    assert served.shape == (5 * 16, D)
    assert (served[:, None, :] == acts[None]).all(-1).any(1).all()  # the BOS placeholder never served

    # the snippet the command printed trains a SAELens SAE on the cache: offline, no model
    snippet = res.output[res.output.index("SAELens:") + len("SAELens:") :]
    scope: dict = {}
    exec(compile(snippet, "snippet", "exec"), scope)
    sae = scope["sae"]
    assert type(sae).__name__ == "StandardTrainingSAE" and sae.W_enc.shape == (D, 4 * D)
    assert scope["trainer"].n_training_samples >= 80 * T  # the cache's rows, one pass
    assert torch.isfinite(sae.W_dec).all()

    # provenance columns name each row's corpus and context
    from datasets import Dataset

    ds = Dataset.load_from_disk(str(out))
    assert list(zip(ds["corpus"], ds["context"])) == where


def test_export_cache_refuses_a_folder_it_did_not_write(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    path = write_config(tmp_path, runs=SWEEP)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    res = CliRunner().invoke(main, ["--config", str(path), "export-cache", "--out", str(mine)])
    assert res.exit_code == 2 and "is not a cache this command wrote" in res.output
    assert (mine / "keep.txt").read_text() == "x"
    res = CliRunner().invoke(
        main, ["--config", str(path), "export-cache", "--corpus", "nope", "--out", str(tmp_path / "c")]
    )
    assert res.exit_code == 2 and "has no corpus 'nope'" in res.output, res.output
