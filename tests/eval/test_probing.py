"""Sparse probing (eval/probing.py) against sae_bench 0.6.0's own functions."""

from __future__ import annotations

import pytest
import torch

from orthosae.eval.probe_data import Split
from orthosae.eval.probing import llm_probes, pooled_latents, sae_probing, top_k_mean_diff
from tests._probe_helpers import RandomSAE, labelled_tokens, prepare_probe_data

CLASSES = ["a", "b", "c", "d"]


def _split(acts, masks) -> Split:
    return Split(ids={c: torch.zeros(m.shape, dtype=torch.long) for c, m in masks.items()}, mask=masks, acts=acts)


def test_probe_data_and_top_k_match_saebench():
    pt = pytest.importorskip("sae_bench.evals.sparse_probing.probe_training", reason="sae_bench not installed")
    acts = {c: torch.randn(n, 8) for c, n in zip(CLASSES, (30, 17, 25, 40))}
    for cls in CLASSES:
        torch.manual_seed(5)
        theirs_x, theirs_y = pt.prepare_probe_data(acts, cls)
        ours_x, ours_y = prepare_probe_data(acts, cls, torch.Generator().manual_seed(5))
        assert torch.equal(ours_x, theirs_x) and torch.equal(ours_y, theirs_y)
        for k in (1, 3, 5):
            mask = pt.get_top_k_mean_diff_mask(theirs_x, theirs_y, k)
            assert top_k_mean_diff(ours_x, ours_y, k).tolist() == torch.nonzero(~mask).flatten().tolist()


def test_pooling_matches_saebench():
    ac = pytest.importorskip("sae_bench.sae_bench_utils.activation_collection", reason="sae_bench not installed")
    acts, masks = labelled_tokens(CLASSES, 6, 9, 16)
    ours = _split(acts, masks).pooled()
    theirs = ac.create_meaned_model_activations(acts)
    sae = RandomSAE(16, 40, b_enc=0.3)  # encode(0) > 0: SAEBench zeroes those latents after encoding
    ours_f = pooled_latents(sae, _split(acts, masks))
    theirs_f = ac.get_sae_meaned_activations(acts, sae, 4)
    for c in CLASSES:
        torch.testing.assert_close(ours[c], theirs[c], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_f[c], theirs_f[c], rtol=1e-5, atol=1e-6)


def _saebench_top_k(pt, train: dict, test: dict, k: int | None, seed: int) -> dict[str, float]:
    """sae_bench's ``train_probe_on_activations`` loop (sklearn path) step by step: its jaxtyping
    annotations reject its own nested call on CPU tensors of these shapes, so the loop is spelled out."""
    torch.manual_seed(seed)
    out = {}
    for cls in train:
        xtr, ytr = pt.prepare_probe_data(train, cls)
        xte, yte = pt.prepare_probe_data(test, cls)
        if k is not None:
            mask = pt.get_top_k_mean_diff_mask(xtr, ytr, k)
            xtr, xte = pt.apply_topk_mask_reduce_dim(xtr, mask), pt.apply_topk_mask_reduce_dim(xte, mask)
        _, out[cls] = pt.train_sklearn_probe(xtr, ytr, xte, yte)
    return out


def test_sparse_probing_accuracies_match_saebench():
    """The whole LLM / SAE top-k probe path on the same pooled tensors and seed: equal accuracies."""
    pt = pytest.importorskip("sae_bench.evals.sparse_probing.probe_training", reason="sae_bench not installed")
    acts, masks = labelled_tokens(CLASSES, 40, 6, 16, signal=0.3)
    test_acts, test_masks = labelled_tokens(CLASSES, 20, 6, 16, seed=1, signal=0.3)
    train, test = _split(acts, masks), _split(test_acts, test_masks)
    llm = llm_probes("toy", train, test, [1, 2, 5], seed=7)
    for k in (1, 2, 5):
        theirs = _saebench_top_k(pt, train.pooled(), test.pooled(), k, 7)
        assert llm.accuracy[f"llm_top_{k}_test_accuracy"] == pytest.approx(theirs, abs=1e-12)
    assert llm.accuracy["llm_test_accuracy"] == pytest.approx(
        _saebench_top_k(pt, train.pooled(), test.pooled(), None, 7), abs=1e-12
    )
    sae = RandomSAE(16, 48, seed=3)
    ftr, fte = pooled_latents(sae, train), pooled_latents(sae, test)
    ours = sae_probing(llm, ftr, fte, [1, 2, 5], seed=7)
    for k in (1, 2, 5):
        theirs = _saebench_top_k(pt, ftr, fte, k, 7)
        assert ours["per_class"][f"sae_top_{k}_test_accuracy"] == pytest.approx(theirs, abs=1e-12)
        assert ours[f"sae_top_{k}_test_accuracy"] == pytest.approx(sum(theirs.values()) / len(theirs))
    assert len(set(ours["per_class"]["sae_top_1_test_accuracy"].values())) > 1  # not a degenerate case


def test_planted_probe_latent_gives_the_probes_accuracy():
    """A latent that is exactly a probe direction: top-1 picks it and scores the LLM probe's
    accuracy; without it the top-1 SAE probe falls to near chance."""
    g = torch.Generator().manual_seed(0)
    d, T = 12, 5
    u = torch.zeros(d)
    u[0] = 1.0
    acts, masks = {}, {}
    for split, n in (("train", 60), ("test", 30)):
        for c, sign in (("pos", 1.0), ("neg", -1.0)):
            x = torch.randn(n, T, d, generator=g)
            x[..., 0] = 10.0 + sign * 1.0 + 0.2 * torch.randn(n, T, generator=g)  # positive: relu is linear
            acts[(split, c)] = x
            masks[(split, c)] = torch.ones(n, T, dtype=torch.bool)
    train = _split({c: acts[("train", c)] for c in ("pos", "neg")}, {c: masks[("train", c)] for c in ("pos", "neg")})
    test = _split({c: acts[("test", c)] for c in ("pos", "neg")}, {c: masks[("test", c)] for c in ("pos", "neg")})
    llm = llm_probes("planted", train, test, [1], seed=0)
    noise = RandomSAE(d, 30, seed=4, b_enc=0.0)
    with torch.no_grad():
        noise.W_enc[0].zero_()  # no latent reads the class direction
    planted = RandomSAE(d, 30, seed=4, b_enc=0.0)
    with torch.no_grad():
        planted.W_enc[0].zero_()
        planted.W_enc[:, 17] = u
        planted.W_dec[17] = u
    with_latent = sae_probing(llm, pooled_latents(planted, train), pooled_latents(planted, test), [1], seed=0)
    without = sae_probing(llm, pooled_latents(noise, train), pooled_latents(noise, test), [1], seed=0)
    assert with_latent["top_latents"] == {"pos": [17], "neg": [17]}
    assert with_latent["sae_top_1_test_accuracy"] == pytest.approx(with_latent["llm_test_accuracy"]) == 1.0
    assert without["sae_top_1_test_accuracy"] < 0.75
