"""Feature frequencies come from the whole training corpora or a seeded sample spread over them:
the same numbers whatever order the store holds its contexts in, never the front rows alone."""

import numpy as np
import pytest
import torch

from orthosae.common.config import RunConfig
from orthosae.common.store import CorpusPlan, StoreReader, StoreWriter, to_storage
from orthosae.eval.frequencies import (
    describe,
    frequency_batches,
    frequency_plan,
    plan_batches,
    resample_plan,
    sample_contexts,
)
from orthosae.train.sae import make_sae
from tests._activity import feature_activity

D, T = 16, 9
R = T - 1
SPECIAL = 2  # a token id standing for EOS: its rows are left out of the counts


def corpora_data(seed=0):
    """Per corpus: [n, R, D] activations and [n, T] tokens of n distinct contexts. The first tenth of
    each corpus lies along its own direction, as a first topic would."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("retain", 120), ("forget", 60)):
        acts = rng.standard_normal((n, R, D)).astype(np.float32)
        acts[: n // 10, :, 0] += 6.0
        tokens = rng.integers(3, 1000, size=(n, T)).astype(np.int32)
        tokens[:, 0] = 1  # BOS column (not stored)
        tokens[::5, 4] = SPECIAL
        out[name] = (acts, tokens)
    return out


def write_store(url, data, order=None, contexts_per_chunk=4) -> StoreReader:
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
    for name, (acts, tokens) in data.items():
        perm = np.arange(len(acts)) if order is None else order[name]
        acts, tokens = acts[perm], tokens[perm]
        p = CorpusPlan(
            name=name,
            role=name,
            split="train",
            source="x",
            fingerprint="f",
            tokens_fingerprint="t",
            n_contexts=len(acts),
            context_length=T,
            contexts_per_chunk=contexts_per_chunk,
        )
        w.ensure_corpus(p)
        for k in range(p.n_chunks):
            c0, c1 = k * contexts_per_chunk, min((k + 1) * contexts_per_chunk, len(acts))
            rows = torch.from_numpy(acts[c0:c1].reshape(-1, D))
            w.write_chunk(p, k, to_storage(rows, "float32"), tokens[c0:c1])
        w.finish_corpus(name)
    w.finish()
    return StoreReader(url)


@pytest.fixture
def sae():
    return make_sae(RunConfig.of("baseline", "b", d_sae=48, seed=0), D).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same corpora written twice, the second in another order and chunking (read only)."""
    tmp_path = tmp_path_factory.mktemp("stores")
    data = corpora_data()
    rng = np.random.default_rng(7)
    order = {name: rng.permutation(len(acts)) for name, (acts, _) in data.items()}
    return (
        write_store(str(tmp_path / "a.zarr"), data),
        write_store(str(tmp_path / "b.zarr"), data, order=order, contexts_per_chunk=7),
    )


def freqs(sae, reader, names, n_rows, seed=0):
    return feature_activity(sae, frequency_batches(reader, names, n_rows, seed, frozenset({SPECIAL}), batch_rows=50))


@pytest.mark.parametrize("n_rows", [0, 300])
def test_permuted_store_gives_the_same_frequencies(stores, sae, n_rows):
    a, b = stores
    for names in (["retain"], ["forget"], ["retain", "forget"]):
        fa, ma = freqs(sae, a, names, n_rows)
        fb, mb = freqs(sae, b, names, n_rows)
        assert torch.equal(fa, fb), names  # the same rows, counted in another order
        torch.testing.assert_close(ma, mb, rtol=1e-6, atol=1e-9)
        assert fa.sum() > 0


def test_every_row_is_counted_once_without_special_tokens(stores, sae):
    a, _ = stores
    rows = torch.cat(list(frequency_batches(a, ["retain"], 0, 0, frozenset({SPECIAL}), batch_rows=50)))
    data = corpora_data()["retain"]
    tokens = data[1][:, 1:].reshape(-1)
    expect = torch.from_numpy(data[0].reshape(-1, D)[tokens != SPECIAL])
    assert torch.equal(rows, expect)  # store order, every row once, special-token rows left out
    # a chunk holds 4 contexts of 8 rows: batches of 10 cut each chunk's 32 rows into 10, 10, 10, 2
    # (the bound of 50 this checked before could not fail: no chunk reaches 50 rows)
    sizes = [len(b) for b in frequency_batches(a, ["retain"], 0, 0, batch_rows=10)]
    assert sizes == [10, 10, 10, 2] * 30


def test_sample_is_seeded_sized_and_spread_over_the_whole_corpus(stores, sae):
    a, b = stores
    plan = frequency_plan(a, ["retain", "forget"], 300, seed=0)
    # 300 rows shared 2:1 by size: ceil(200 / 8) = 25 retain and ceil(100 / 8) = 13 forget contexts
    assert {k: len(v) for k, v in plan.items()} == {"retain": 25, "forget": 13}
    assert plan["retain"].max() > 90 and plan["retain"].min() < 30  # over all of it, not the front
    assert (plan["retain"] == frequency_plan(a, ["retain", "forget"], 300, seed=0)["retain"]).all()
    assert set(plan["retain"]) != set(frequency_plan(a, ["retain", "forget"], 300, seed=1)["retain"])
    # the same contexts in the permuted store, found by their tokens
    toks = lambda r, c: {r.read_tokens("retain", i * R, (i + 1) * R).tobytes() for i in c}  # noqa: E731
    assert toks(a, plan["retain"]) == toks(b, frequency_plan(b, ["retain"], 200, seed=0)["retain"])
    # the front rows miss what the sample sees: feature 0's direction lives in the first tenth only
    whole, _ = freqs(sae, a, ["retain"], 0)
    sample, _ = freqs(sae, a, ["retain"], 480)
    front, _ = feature_activity(sae, [a.read_rows("retain", 0, 480)])
    assert (sample - whole).abs().mean() < (front - whole).abs().mean()


def test_describe_states_the_setting_and_the_rows():
    assert describe(0, 0, {"forget": 10, "retain": 20}) == {
        "frequency_rows": 0,
        "frequency_seed": 0,
        "sample": "every row of the training corpora",
        "rows_counted": {"forget": 10, "retain": 20},
        "special_tokens": "BOS, EOS and padding rows left out",
    }
    d = describe(5000, 3, {})
    assert (d["frequency_rows"], d["frequency_seed"], d["rows_counted"]) == (5000, 3, {})
    assert d["sample"] == (
        "a seeded sample of about 5,000 rows (frequency_seed 3): whole contexts chosen by a hash of their "
        "tokens, spread over all documents"
    )


def test_the_sample_is_the_contexts_of_smallest_salted_hash(stores):
    """The rule by hand: blake2b (8 bytes, salted with the seed's 8 little-endian bytes) of each
    context's int32 tokens; the n smallest, in store order."""
    import hashlib

    a, _ = stores
    tokens = a.read_tokens("forget", 0, 60 * R).astype("<i4").reshape(60, R)
    for seed in (0, 5):
        salt = seed.to_bytes(8, "little")
        keys = [
            int.from_bytes(hashlib.blake2b(t.tobytes(), digest_size=8, salt=salt).digest(), "little") for t in tokens
        ]
        want = sorted(sorted(range(60), key=lambda i: keys[i])[:7])
        assert sample_contexts(a, "forget", 7, seed).tolist() == want
    assert sample_contexts(a, "forget", 60, 0).tolist() == list(range(60))  # all of them: every context
    assert sample_contexts(a, "forget", 61, 0).tolist() == list(range(60))


def test_a_bootstrap_draw_counts_a_context_as_often_as_it_was_drawn(stores):
    a, _ = stores
    plan = frequency_plan(a, ["retain", "forget"], 0, 0)
    draw = resample_plan(plan, 0, 1)
    assert {k: len(v) for k, v in draw.items()} == {k: len(v) for k, v in plan.items()}  # same size
    assert (np.diff(draw["retain"]) >= 0).all() and len(set(draw["retain"])) < len(draw["retain"])  # repeats
    assert (draw["retain"] == resample_plan(plan, 0, 1)["retain"]).all()  # seeded
    assert (draw["retain"] != resample_plan(plan, 0, 2)["retain"]).any()
    rows = torch.cat(list(plan_batches(a, {"retain": draw["retain"]}, frozenset({SPECIAL}), batch_rows=50)))
    acts, tokens = corpora_data()["retain"]
    keep = tokens[:, 1:] != SPECIAL
    expect = torch.cat([torch.from_numpy(acts[c][keep[c]]) for c in draw["retain"]])
    assert torch.equal(rows, expect)  # each drawn context's rows, once per draw of it, in plan order
    # with no repeats, plan_batches is frequency_batches
    same = torch.cat(list(plan_batches(a, plan, frozenset({SPECIAL}), batch_rows=50)))
    assert torch.equal(
        same, torch.cat(list(frequency_batches(a, ["retain", "forget"], 0, 0, frozenset({SPECIAL}), batch_rows=50)))
    )
