"""TPP (eval/tpp.py) against sae_bench 0.6.0's scr_and_tpp functions on the same precomputed tensors."""

from __future__ import annotations

import pytest
import torch

from orthosae.eval.probe_data import Split
from orthosae.eval.probing import llm_probes, pooled_latents, prepare_probe_rows
from orthosae.eval.tpp import ablate_pooled, class_effects, probe_weight, run_tpp, top_n, tpp_scores
from tests._probe_helpers import RandomSAE, labelled_tokens, their_probe

tpp = pytest.importorskip("sae_bench.evals.scr_and_tpp.main", reason="sae_bench not installed")

CLASSES = ["w", "x", "y"]


def _split(acts, masks) -> Split:
    return Split(ids={c: torch.zeros(m.shape, dtype=torch.long) for c, m in masks.items()}, mask=masks, acts=acts)


def test_effects_selection_and_ablation_match_saebench():
    acts, masks = labelled_tokens(CLASSES, 30, 7, 16, signal=0.8)
    sae = RandomSAE(16, 64, seed=2, b_enc=-0.05)  # encode(0) = 0: padded positions stay out of both
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(16, generator=g), 0.1
    pooled_f = pooled_latents(sae, _split(acts, masks))
    for cls in CLASSES:
        probe = their_probe(w, b)  # before seeding: nn.Linear's init draws from the global generator
        torch.manual_seed(11)
        theirs = tpp.get_effects_per_class_precomputed_acts(sae, probe, cls, acts, False, 8)
        rows, labels = prepare_probe_rows({c: len(v) for c, v in acts.items()}, cls, torch.Generator().manual_seed(11))
        ours = class_effects(torch.stack([pooled_f[c][i] for c, i in rows]), labels, w, sae.W_dec.detach())
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        for n in (2, 5, 20):
            assert set(top_n(ours, n).tolist()) == set(
                torch.nonzero(tpp.select_top_n_features(theirs, n, cls)).flatten().tolist()
            )
    chosen = top_n(ours, 5)
    mask_F = torch.zeros(64, dtype=torch.bool)
    mask_F[chosen] = True
    with torch.no_grad():
        for c in CLASSES:
            theirs = tpp.ablated_precomputed_activations(acts[c], sae, mask_F, 8)
            ours = ablate_pooled(_split(acts, masks).pooled()[c], pooled_f[c], sae.W_dec, chosen)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_saebench_ablation_leaks_encode_of_padding_ours_does_not():
    """With relu(b_enc) > 0 SAEBench's ablation adds −Σ f_i(0)·W_dec[i] of every padded position to
    the pooled text; ours equals the ablation computed on the counted positions alone."""
    acts, masks = labelled_tokens(CLASSES, 10, 7, 16)
    sae = RandomSAE(16, 32, seed=5, b_enc=0.5)
    chosen = torch.tensor([1, 4, 9])
    mask_F = torch.zeros(32, dtype=torch.bool)
    mask_F[chosen] = True
    with torch.no_grad():
        x, m = acts["w"], masks["w"]
        f = sae.encode(x)
        direct = (x - f[..., chosen] @ sae.W_dec[chosen]) * m[..., None]
        direct = direct.sum(1) / m.sum(1, keepdim=True)
        ours = ablate_pooled(
            _split(acts, masks).pooled()["w"], pooled_latents(sae, _split(acts, masks))["w"], sae.W_dec, chosen
        )
        theirs = tpp.ablated_precomputed_activations(x, sae, mask_F, 8)
    torch.testing.assert_close(ours, direct, rtol=1e-4, atol=1e-4)
    padded = (~m).any(1)
    assert padded.any() and not torch.allclose(theirs[padded], direct[padded], atol=1e-2)


def test_tpp_score_matches_create_tpp_plotting_dict():
    g = torch.Generator().manual_seed(0)
    clean = {c: float(torch.rand(1, generator=g)) for c in CLASSES}
    accs = {c: {n: {j: float(torch.rand(1, generator=g)) for j in CLASSES} for n in (2, 10)} for c in CLASSES}
    ours, ours_per = tpp_scores(accs, clean)
    theirs, theirs_per = tpp.create_tpp_plotting_dict(accs, clean)
    assert ours == pytest.approx(theirs)
    assert ours_per.keys() == theirs_per.keys()
    for c in CLASSES:
        assert ours_per[c] == pytest.approx(theirs_per[c])


def test_planted_class_latent_is_ablated_and_only_its_probe_drops():
    """A latent carrying exactly class w's direction: TPP picks it for w, ablating it drops w's probe
    to chance while the other probes keep their accuracy."""
    d, T = 12, 4
    g = torch.Generator().manual_seed(1)
    dirs = torch.eye(d)[:3] * 4.0
    split = {}
    for name, n in (("train", 40), ("test", 40)):
        acts, masks = {}, {}
        for i, c in enumerate(CLASSES):
            acts[c] = 0.3 * torch.randn(n, T, d, generator=g) + dirs[i]
            masks[c] = torch.ones(n, T, dtype=torch.bool)
        split[name] = _split(acts, masks)
    llm = llm_probes("planted", split["train"], split["test"], [1], seed=0)
    sae = RandomSAE(d, 24, seed=6, b_enc=0.0)
    with torch.no_grad():
        sae.W_enc[:3].zero_()  # only the planted latents read the class directions
        for i in range(3):
            sae.W_enc[:, 20 + i] = torch.eye(d)[i]
            sae.W_dec[20 + i] = torch.eye(d)[i]
    out = run_tpp(llm, pooled_latents(sae, split["train"]), pooled_latents(sae, split["test"]), sae.W_dec, [1, 2])
    assert out["ablated_latents"]["w"][0] == 20
    per = out["per_class"]["w"]
    assert per["tpp_threshold_1_intended_diff_only"] >= 0.4
    assert abs(per["tpp_threshold_1_unintended_diff_only"]) <= 0.05
    assert out["tpp_score"] == out["tpp_threshold_2_total_metric"] and out["tpp_headline_n"] == 2
    assert probe_weight(llm.probes["w"])[0].shape == (d,)
