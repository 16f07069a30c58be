"""SCR (eval/scr.py) against sae_bench 0.6.0's scr_and_tpp functions (perform_scr = True) on the same
tensors, a planted language latent, the topic x language texts and the [eval.scr] config errors."""

from __future__ import annotations

import pytest
import torch

from orthosae.common.corpora import is_heldout
from orthosae.eval.probe_data import (
    ProbeDataError,
    Split,
    _embedded_texts,
    _wiki,
    cell,
    class_texts,
    topic_language_dataset,
)
from orthosae.eval.probing import pooled_latents
from orthosae.eval.scr import gather, run_scr, run_scr_pair, scr_effects, scr_llm, scr_sets
from orthosae.eval.tpp import top_n
from tests._identity_sae import _LinearReluSAE
from tests._probe_helpers import RandomSAE, their_probe

main = pytest.importorskip("sae_bench.evals.scr_and_tpp.main", reason="sae_bench not installed")
dc = pytest.importorskip("sae_bench.evals.scr_and_tpp.dataset_creation", reason="sae_bench not installed")
from sae_bench.sae_bench_utils import activation_collection, dataset_info  # noqa: E402

TOPICS, LANGS = ["prof", "nurse"], ["male", "female"]
# our set -> SAEBench's key of its positives and of its negatives (profession = topic, gender = language)
THEIR_KEYS = {
    "topic": ("professor / nurse", "nurse_data_only"),
    "language": ("male / female", "female_data_only"),
    "biased": ("male_professor / female_nurse", "female_nurse_data_only"),
}
THEIR_PROBE = {"topic": "professor / nurse", "language": "male / female", "biased": "male_professor / female_nurse"}


def _cells(n: int, T: int, d: int, seed: int, topic: float, lang: float, noise: float = 1.0, pad: bool = True):
    """Token residuals ``[n, T, d]`` per topic x language cell: topic along e0 (±topic), language along
    e1 (±lang), isotropic noise; trailing padded positions zeroed (as SAEBench zeroes them)."""
    g = torch.Generator().manual_seed(seed)
    acts, masks = {}, {}
    for ti, t in enumerate(TOPICS):
        for li, lang_name in enumerate(LANGS):
            x = noise * torch.randn(n, T, d, generator=g)
            x[..., 0] += topic * (1 - 2 * ti)
            x[..., 1] += lang * (1 - 2 * li)
            keep = torch.randint(2, T + 1, (n,), generator=g) if pad else torch.full((n,), T)
            mask = torch.arange(T)[None, :] < keep[:, None]
            acts[cell(t, lang_name)] = x * mask[..., None]
            masks[cell(t, lang_name)] = mask
    return Split(ids={c: torch.zeros(m.shape, dtype=torch.long) for c, m in masks.items()}, mask=masks, acts=acts)


def _their_sets(split: Split, q: int) -> dict[str, torch.Tensor]:
    """SAEBench's six keys, token-level, from our rows of each set."""
    out = {}
    for s, (rows, y) in scr_sets(TOPICS, LANGS, q).items():
        pos, neg = THEIR_KEYS[s]
        x = gather(split.acts, rows)
        out[pos], out[neg] = x[y == 1], x[y == 0]
    return out


def test_sets_are_get_spurious_corr_data():
    """Which texts land in which set: SAEBench's own construction from a frame of the four cells."""
    import pandas as pd

    q, meta = 3, dataset_info.dataset_metadata["LabHC/bias_in_bios"]
    prof = {"prof": meta["column1_mapping"]["professor"], "nurse": meta["column1_mapping"]["nurse"]}
    gender = {"male": meta["column2_mapping"]["male"], "female": meta["column2_mapping"]["female"]}
    rows = [
        {"hard_text": f"{cell(t, g)}#{i}", "profession": prof[t], "gender": gender[g]}
        for t in TOPICS
        for g in LANGS
        for i in range(2 * q + 1)
    ]  # SAEBench wants > 2q in the biased cells
    theirs = dc.get_spurious_corr_data(
        pd.DataFrame(rows), ("professor", "nurse"), ("male", "female"), "LabHC/bias_in_bios", q, 42
    )
    for s, (rows_s, y) in scr_sets(TOPICS, LANGS, q).items():
        names = [f"{c}#{i}" for c, i in rows_s]
        pos, neg = THEIR_KEYS[s]
        assert sorted(n for n, lab in zip(names, y) if lab == 1) == sorted(theirs[pos])
        assert sorted(n for n, lab in zip(names, y) if lab == 0) == sorted(theirs[neg])


def test_accuracies_effects_ablation_and_scores_match_saebench():
    q, d, n_values = 6, 16, [1, 2, 5, 20]
    train = _cells(2 * q, 7, d, 0, topic=0.5, lang=0.8)
    test = _cells(2 * q, 7, d, 1, topic=0.5, lang=0.8)
    pair = scr_llm(TOPICS, LANGS, train, test, 4 * q, 4 * q, seed=0)
    sae = RandomSAE(d, 48, seed=2, b_enc=-0.05)  # encode(0) = 0: padded positions stay out of both
    ours = run_scr_pair(pair, pooled_latents(sae, train), pooled_latents(sae, test), sae.W_dec.detach(), n_values)

    probes = {THEIR_PROBE[s]: their_probe(*pair.probes[s]) for s in THEIR_PROBE}
    classes = list(dataset_info.PAIRED_CLASS_KEYS)
    train6, test6 = _their_sets(train, q), _their_sets(test, q)
    with torch.no_grad():
        clean = main.get_probe_test_accuracy(
            probes, classes, activation_collection.create_meaned_model_activations(test6), 500, perform_scr=True
        )
        for s, their in THEIR_PROBE.items():
            for on in ("topic", "language"):
                key = their if s == on else f"{their} probe on {THEIR_PROBE[on]} data"
                assert pair.clean[f"{s} on {on}"] == pytest.approx(clean[key], abs=1e-9), key
        effects = main.get_all_node_effects_for_one_sae(sae, probes, classes, True, train6, 8)
        for s in ("topic", "language"):
            rows, y = pair.train[s]
            mine = scr_effects(gather(pooled_latents(sae, train), rows), y, pair.probes[s][0], sae.W_dec)
            torch.testing.assert_close(mine, effects[THEIR_PROBE[s]], rtol=1e-4, atol=1e-6)
            for n in n_values:
                assert set(top_n(mine, n).tolist()) == set(
                    torch.nonzero(main.select_top_n_features(effects[THEIR_PROBE[s]], n, s)).flatten().tolist()
                )
        ablated = main.perform_feature_ablations(probes, sae, 8, test6, effects, n_values, classes, 500, True)
    theirs = main.get_scr_plotting_dict(ablated, clean)
    assert pair.clean["biased on topic"] < pair.clean["biased on language"]  # so SAEBench sets scr_metric
    for d_ in (1, 2):  # neither direction is the 0 of a degenerate case (oracle − base < 0.001)
        assert ours[f"biased_accuracy_dir{d_}"] < ours[f"oracle_accuracy_dir{d_}"]
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    assert {k for k in ours if k.startswith("scr_")} == set(theirs)
    for d_ in (1, 2):  # the ablation moves the biased probe
        assert len({round(ours[f"scr_dir{d_}_threshold_{n}"], 6) for n in n_values}) > 1


class BasisSAE(_LinearReluSAE):
    """Latents = coordinates of x on some orthonormal axes (no ReLU: a latent can carry a two-sided
    attribute alone)."""

    def __init__(self, axes: torch.Tensor):
        super().__init__(axes.T.clone(), axes.clone())

    def encode(self, x):
        return (x - self.b_dec) @ self.W_enc + self.b_enc


def test_planted_language_latent_recovers_the_oracle_and_an_unrelated_one_does_not():
    """Language is the strong signal, so the biased probe reads it and scores chance on topic. Ablating
    the one latent that is exactly the language axis (n = 1) brings the biased probe to the oracle's
    topic accuracy: SCR ≈ 1. Without such a latent, the n = 1 ablation removes an unrelated noise axis: ≈ 0."""
    d, q = 8, 20
    train = _cells(2 * q, 4, d, 3, topic=2.0, lang=6.0, pad=False)
    test = _cells(2 * q, 4, d, 4, topic=2.0, lang=6.0, pad=False)
    pair = scr_llm(TOPICS, LANGS, train, test, 4 * q, 4 * q, seed=0)
    assert pair.clean["biased on topic"] <= 0.6 and pair.clean["topic on topic"] >= 0.95

    eye = torch.eye(d)
    with_language = BasisSAE(eye[[3, 1, 0, 2, 4, 5, 6, 7]])  # latent 1 is the language axis e1
    without = BasisSAE(eye[[2, 3, 4, 5, 6, 7]])  # noise axes only: neither language nor topic
    out = {}
    for name, sae in (("with", with_language), ("without", without)):
        out[name] = run_scr(
            [pair], [(pooled_latents(sae, train), pooled_latents(sae, test))], sae.W_dec.detach(), [1, 2]
        )
    planted = out["with"]["pairs"][pair.name]
    assert planted["ablated_latents"]["dir1"][0] == 1 and planted["metric_direction"] == 1
    assert planted["ablated_accuracy"]["dir1"]["1"] == pytest.approx(planted["oracle_accuracy_dir1"], abs=0.02)
    assert out["with"]["scr_metric_threshold_1"] == pytest.approx(1.0, abs=0.05)
    assert out["without"]["scr_metric_threshold_1"] == pytest.approx(0.0, abs=0.05)
    assert out["with"]["scr_score"] == out["with"]["scr_metric_threshold_2"] and out["with"]["scr_headline_n"] == 2


def test_topic_language_texts_are_held_out_english_and_topic_matched_french():
    name = topic_language_dataset(["People", "Geography"], ["en", "fr"])
    texts = _embedded_texts(name, 0.1)
    assert list(texts) == ["People|en", "People|fr", "Geography|en", "Geography|fr"]
    assert all(is_heldout(t, 0.1) for t in texts["People|en"] + texts["Geography|en"])
    fr = {a["extract"]: a["topic"] for a in _wiki("fr")}
    assert {fr[t] for t in texts["Geography|fr"]} == {"Géographie"}
    assert {fr[t] for t in texts["People|fr"]} == {"Personnalités"}
    assert min(len(v) for v in texts.values()) >= 100  # room for the pipeline's 48 per cell
    too_few = r"^\[eval\.scr\] train_size / test_size: .* class 'People\|en' has \d+ texts, fewer than 100 \+ 100"
    with pytest.raises(ProbeDataError, match=too_few):
        class_texts(name, 100, 100, seed=0, heldout_fraction=0.1, where="[eval.scr]")
