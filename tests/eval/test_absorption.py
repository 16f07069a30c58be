"""First-letter absorption (eval/absorption.py) against sae_bench 0.6.0's own functions."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from orthosae.eval.absorption import (
    LETTERS,
    aggregate,
    alpha_words,
    f1,
    first_letter,
    icl_prompt,
    split_features,
    word_absorption,
)
from tests._probe_helpers import RandomSAE

calc = pytest.importorskip("sae_bench.evals.absorption.feature_absorption_calculator", reason="sae_bench not installed")
ksp = pytest.importorskip("sae_bench.evals.absorption.k_sparse_probing", reason="sae_bench not installed")
ab_main = pytest.importorskip("sae_bench.evals.absorption.main", reason="sae_bench not installed")
vocab = pytest.importorskip("sae_bench.evals.absorption.vocab", reason="sae_bench not installed")
prompting = pytest.importorskip("sae_bench.evals.absorption.prompting", reason="sae_bench not installed")
pd = pytest.importorskip("pandas")

TEMPLATE = "{word} has the first letter:"
HOOK = "blocks.0.hook_resid_post"


class StubModel:
    """Serves cached residuals to SAEBench's calculator: the prompt's word (its last line, before the
    template's tail) picks the row; every prompt reads as the same length."""

    def __init__(self, acts: dict[str, torch.Tensor], pos: int = -2, length: int = 12):
        self.acts, self.pos, self.length = acts, pos, length

    def _word(self, prompt: str) -> str:
        return prompt.split("\n")[-1][: -len(TEMPLATE.split("{word}")[1])]

    def run_with_cache(self, prompts, names_filter):
        d = next(iter(self.acts.values())).shape[0]
        out = torch.zeros(len(prompts), self.length, d)
        for i, p in enumerate(prompts):
            out[i, self.pos] = self.acts[self._word(p)]
        return None, {HOOK: out}

    def to_tokens(self, prompt):
        return torch.zeros(1, self.length, dtype=torch.long)


def _planted(d: int = 16, d_sae: int = 40, n_words: int = 30, seed: int = 0):
    """Words of one letter; a probe direction u; latent 0 is the letter's main latent (it reads u but
    needs a 'generic word' component g too), latent 1 absorbs the words that carry component a
    (its decoder is mostly u). Other latents random."""
    g = torch.Generator().manual_seed(seed)
    sae = RandomSAE(d, d_sae, seed=seed, b_enc=-0.2)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    u, gen, a = basis[:, 0], basis[:, 1], basis[:, 2]
    with torch.no_grad():
        sae.W_enc[:, 0] = u + 3 * gen
        sae.b_enc[0] = -3.5  # fires only with the generic component
        sae.W_dec[0] = u
        sae.W_enc[:, 1] = 2 * a
        sae.b_enc[1] = -0.5
        dec1 = 0.9 * u + 0.436 * a
        sae.W_dec[1] = dec1 / dec1.norm()
        sae.W_enc[:, 2:] *= 0.05  # the rest barely fires
    words, acts, absorbed = [], {}, []
    for i in range(n_words):
        w = f"b{'x' * i}"
        is_absorbed = i % 3 == 0
        x = 2.0 * u + 0.05 * torch.randn(d, generator=g)
        x += a if is_absorbed else gen
        words.append(w)
        acts[w] = x
        absorbed.append(is_absorbed)
    return sae, u, words, acts, absorbed


def test_planted_absorbing_latent_is_counted_and_matches_saebench_calculator():
    sae, u, words, acts, absorbed = _planted()
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(u[None], sae.W_dec, dim=-1)
        ours = [word_absorption(sae.encode(acts[w]), float(acts[w] @ u), cos, [0]) for w in words]
        random.seed(0)
        c = calc.FeatureAbsorptionCalculator(
            model=StubModel(acts),
            icl_word_list=words,
            max_icl_examples=3,
            base_template=TEMPLATE,
            word_token_pos=-2,
            batch_size=7,
        )
        theirs = c.calculate_absorption(sae, words, u, [0], layer=0, show_progress=False).word_results
    assert [w.word for w in theirs] == words
    for (fr, full), t in zip(ours, theirs):
        assert fr == pytest.approx(t.absorption_fraction, abs=1e-6)
        assert full == t.is_full_absorption
    assert [full for _, full in ours] == absorbed  # every planted word, and only those, fully absorbed
    assert all(fr == 1.0 for (fr, _), a in zip(ours, absorbed) if a)


def test_word_absorption_matches_saebench_on_random_cases():
    """Random SAEs and residuals, with main latents chosen among the ones that fire: every branch
    of the fraction (0, 1, partial) and of full absorption shows up and agrees."""
    g = torch.Generator().manual_seed(1)
    d, d_sae = 12, 30
    seen = set()
    for trial in range(12):
        sae = RandomSAE(d, d_sae, seed=trial, b_enc=-0.3)
        u = torch.randn(d, generator=g)
        u = u / u.norm()
        with torch.no_grad():
            sae.W_dec[:6] = 0.7 * u + 0.3 * sae.W_dec[:6]  # several latents aligned with the probe
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
        words = [f"w{i}" for i in range(20)]
        acts = {w: torch.randn(d, generator=g) + 1.5 * u for w in words}
        main = [0, 1] if trial % 2 else [3]
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(u[None], sae.W_dec, dim=-1)
            ours = [word_absorption(sae.encode(acts[w]), float(acts[w] @ u), cos, main) for w in words]
            c = calc.FeatureAbsorptionCalculator(
                model=StubModel(acts),
                icl_word_list=words,
                max_icl_examples=2,
                base_template=TEMPLATE,
                word_token_pos=-2,
            )
            theirs = c.calculate_absorption(sae, words, u, main, layer=0, show_progress=False).word_results
        for (fr, full), t in zip(ours, theirs):
            assert fr == pytest.approx(float(t.absorption_fraction), abs=1e-5)
            assert full == t.is_full_absorption
            seen.add(("zero" if fr == 0 else "one" if fr == 1 else "partial", full))
    assert {k for k, _ in seen} == {"zero", "one", "partial"} and {f for _, f in seen} == {True, False}


def test_split_features_and_f1_match_saebench():
    rng = np.random.default_rng(0)
    rows = []
    for L in LETTERS:
        row = {"letter": L}
        for k in range(1, 11):
            row[f"f1_sparse_sae_{k}"] = float(rng.uniform(0, 1) if k > 1 else rng.uniform(0, 0.5)) * (1 + 0.1 * k)
            row[f"sparse_sae_k_{k}_feats"] = np.arange(k) + 100 * LETTERS.index(L)
        rows.append(row)
    df = pd.DataFrame(rows)
    ksp.add_feature_splits_to_metrics_df(df, max_k_value=10, f1_jump_threshold=0.03)
    for row in rows:
        ours = split_features(
            {k: row[f"f1_sparse_sae_{k}"] for k in range(1, 11)},
            {k: row[f"sparse_sae_k_{k}_feats"].tolist() for k in range(1, 11)},
            0.03,
        )
        assert ours == df[df["letter"] == row["letter"]]["split_feats"].iloc[0]
    from sklearn.metrics import f1_score

    for _ in range(20):
        y, p = rng.random(50) < 0.3, rng.random(50) < 0.4
        assert f1(y, p) == pytest.approx(f1_score(y, p))
    assert f1(np.zeros(5, bool), np.zeros(5, bool)) == 0.0


def test_aggregate_matches_saebench():
    rng = np.random.default_rng(2)
    raw, letters = [], {}
    for L in "abcde":
        n_tp = int(rng.integers(1, 6))
        fr = rng.uniform(0, 1, n_tp).round(3)
        full = rng.random(n_tp) < 0.4
        split = list(range(int(rng.integers(1, 4))))
        raw += [
            {
                "letter": L,
                "absorption_fraction": f,
                "is_full_absorption": bool(u),
                "num_probe_true_positives": n_tp,
                "split_feats": split,
            }
            for f, u in zip(fr, full)
        ]
        letters[L] = {
            "probe_f1": 0.9 if L != "e" else 0.3,
            "num_probe_true_positives": n_tp,
            "mean_absorption_fraction": float(fr.sum() / n_tp),
            "full_absorption_rate": float(full.sum() / n_tp),
            "num_split_features": len(split),
        }
    agg = ab_main._aggregate_results_df(pd.DataFrame(raw))
    ours = aggregate(letters, min_probe_f1=0.6, min_letters=2)
    kept = agg[agg["letter"] != "e"]
    assert ours["passing_letters"] == "abcd"
    assert ours["mean_absorption_fraction_score"] == pytest.approx(kept["mean_absorption_fraction"].mean())
    assert ours["mean_full_absorption_score"] == pytest.approx(kept["full_absorption_rate"].mean())
    assert ours["mean_num_split_features"] == pytest.approx(kept["num_split_feats"].mean())
    few = aggregate(letters, min_probe_f1=0.6, min_letters=5)
    assert np.isnan(few["mean_absorption_fraction_score"]) and "4 letter(s) pass" in few["not_scored"]


def test_words_and_prompts_follow_saebench(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert alpha_words(tok) == sorted(set(vocab.get_alpha_tokens(tok)))
    for w in ("cat", " Dog", "x"):
        assert first_letter(w) == prompting.first_letter(w)
    p = icl_prompt("cat", ["dog", "cat", "emu"], TEMPLATE, 2, random.Random(0))
    lines = p.split("\n")
    assert lines[0] == "" and lines[-1] == "cat has the first letter:"
    assert sorted(lines[1:3]) == ["dog has the first letter: D", "emu has the first letter: E"]
