"""eval.matched_damage: F(b) at matched retain damage, cross-fitting by document, document bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

import orthosae.eval.matched_damage as md
from orthosae.eval.unlearning import bracket_ladder as md_ladder


def _mats(forget_inc: np.ndarray, retain_inc: np.ndarray, tokens: float = 100.0, clean: float = 3.0) -> dict:
    """Sweep matrices with one context per document: ``*_inc`` ``[settings, docs]`` per-token CE
    increases; every document has ``tokens`` tokens at clean CE ``clean``; all tokens count as 'rest'."""
    out = {}
    for name, inc in (("forget", forget_inc), ("retain", retain_inc)):
        S, D = inc.shape
        clean_ctx = {
            "sum_all": np.full(D, clean * tokens),
            "n_all": np.full(D, tokens),
            "sum_domain": np.zeros(D),
            "n_domain": np.zeros(D),
            "sum_rest": np.full(D, clean * tokens),
            "n_rest": np.full(D, tokens),
            "positions": np.full(D, tokens),
        }
        out[name] = (
            clean_ctx,
            [
                {
                    "sum_all": (clean + inc[s]) * tokens,
                    "n_all": np.full(D, tokens),
                    "sum_domain": np.zeros(D),
                    "n_domain": np.zeros(D),
                    "sum_rest": (clean + inc[s]) * tokens,
                    "n_rest": np.full(D, tokens),
                    "fired": np.full(D, tokens / 2),
                    "positions": np.full(D, tokens),
                }
                for s in range(S)
            ],
        )
    clean = {k: v[0] for k, v in out.items()}
    edited = [{k: out[k][1][s] for k in out} for s in range(forget_inc.shape[0])]
    docs = {k: np.arange(v.shape[1]) for k, v in (("forget", forget_inc), ("retain", retain_inc))}
    return md.loss_matrices(clean, edited, docs)


def _point(mats, budgets=(0.03, 0.1)):
    ones = lambda c: np.ones((1, mats[c]["docs"]))  # noqa: E731
    return {k: float(v[0]) for k, v in md.figures(mats, ones("forget"), ones("retain"), budgets).items()}


def test_stronger_clamp_raises_best_selectivity_but_not_f_of_b():
    # every setting removes 5 nats of forget CE per nat of retain CE: a stronger edit is only bigger
    # four identical documents: both halves agree, so the cross-fitted F(b) is the in-sample one
    weak = (np.repeat([[0.1], [0.5]], 4, axis=1), np.repeat([[0.02], [0.1]], 4, axis=1))
    strong = (np.repeat([[0.1], [0.5], [2.0]], 4, axis=1), np.repeat([[0.02], [0.1], [0.4]], 4, axis=1))
    a, b = _point(_mats(*weak)), _point(_mats(*strong))
    assert b["best_selectivity"] > a["best_selectivity"] + 1.0  # 1.6 against 0.4
    assert a["F_0.03"] == pytest.approx(0.15) and b["F_0.03"] == pytest.approx(0.15)
    assert a["F_0.1"] == pytest.approx(0.5) and b["F_0.1"] == pytest.approx(0.5)
    assert (
        a["selectivity_ratio_at_best"] < b["selectivity_ratio_at_best"] * 1.1
    )  # the ratio does not reward size either


def test_f_of_b_is_cross_fitted_between_halves_of_the_documents():
    """The bracketing points and weight come from one half, the forget damage from the other."""
    D = 8
    h = md.halves(D)
    # retain damage: setting 0 costs 0.02 on half 0 and 0.04 on half 1; setting 1 costs 0.06 on both
    retain = np.stack([np.where(h == 0, 0.02, 0.04), np.full(D, 0.06)])
    forget = np.stack([np.where(h == 0, 0.2, 0.4), np.where(h == 0, 0.5, 0.9)])
    p = _point(_mats(forget, retain), budgets=(0.03,))
    # half 0 chooses: b = 0.03 between 0.02 and 0.06, t = 0.25; scored on half 1: 0.75·0.4 + 0.25·0.9 = 0.525
    # half 1 chooses: b = 0.03 between the origin and 0.04, t = 0.75; scored on half 0: 0.75·0.2 = 0.15
    assert p["F_0.03"] == pytest.approx((0.525 + 0.15) / 2)
    assert p["F_0.03_origin"] == 0.5  # half 1 rests on the chord from the unedited model
    assert md.rests_on_origin(_mats(forget, retain), (0.03,)) and not md.rests_on_origin(_mats(forget, retain), (0.05,))


def test_bracket_ladder_and_points_by_hand():
    assert md_ladder(10) == [(5, 1.0), (2, 1.0), (1, 1.0), (1, 0.5), (1, 0.25), (1, 0.125)]
    assert md_ladder(1) == [(1, 0.5), (1, 0.25), (1, 0.125)]
    rows = [
        {"n_features": 10, "n_features_used": 10, "retain_ce_increase": 0.05, "forget_ce_increase": 0.5},
        {"n_features": 1, "n_features_used": 1, "strength": 0.5, "retain_ce_increase": 0.01, "forget_ce_increase": 0.2},
    ]
    got = md.bracket_points(rows, 0.03)
    assert got["t"] == pytest.approx(0.5) and got["upper"]["n_features"] == 10
    assert got["lower"]["forget_per_feature"] == pytest.approx(0.2 / 0.5)  # half a feature's clamp
    assert got["lower"]["forget_over_retain"] == pytest.approx(20.0)
    assert got["upper"]["forget_per_feature"] == pytest.approx(0.05) and got["upper"][
        "forget_over_retain"
    ] == pytest.approx(10)
    assert md.bracket_points(rows[:1], 0.03)["lower"] == "origin"
    assert md.bracket_points(rows, 0.2) == {"reached": False}


def test_f_of_b_is_not_extrapolated_and_uses_the_upper_frontier():
    retain = np.array([0.0, 0.01, 0.02, 0.05])
    forget = np.array([0.0, 0.3, 0.1, 0.6])  # (0.02, 0.1) is beaten by (0.01, 0.3)
    assert md.f_at_budget(retain, forget, 0.03)[0] == pytest.approx(0.3 + (0.6 - 0.3) * (0.03 - 0.01) / 0.04)
    assert math.isnan(md.f_at_budget(retain, forget, 0.1)[0])  # no setting reaches 0.1: not reached
    assert md.f_at_budget(retain, forget, 0.005)[0] == pytest.approx(0.15)  # between (0, 0) and (0.01, 0.3)
    # a budget past the frontier's last point but reached by a dominated setting: not binding
    assert md.f_at_budget(np.array([0.0, 0.01, 0.2]), np.array([0.0, 0.5, 0.4]), 0.1)[0] == pytest.approx(0.5)
    # the domain / rest split interpolates with the same weights
    f, dom = md.f_at_budget(retain, forget, 0.03, np.array([0.0, 1.0, 0.0, 2.0]))
    assert dom == pytest.approx(1.0 + (2.0 - 1.0) * 0.5)


def test_crossfitting_never_scores_a_setting_on_the_documents_that_chose_it():
    D = 8
    hf, hr = md.halves(D), md.halves(D)
    # setting 0 is great on forget half 0 only, setting 1 on forget half 1 only; retain damage is flat
    forget = np.where(np.stack([hf == 0, hf == 1]), 2.0, 0.1)
    retain = np.full((2, D), 0.05)
    p = _point(_mats(forget, retain))
    assert p["best_selectivity"] == pytest.approx(np.mean([2.0, 0.1]) - 0.05)  # in sample: the halves pooled
    # half 0 chooses setting 0, scored on half 1 (0.1 − 0.05); half 1 chooses setting 1, scored on half 0
    assert p["best_selectivity_crossfit"] == pytest.approx(0.1 - 0.05)
    assert hr.sum() == D // 2  # the halves split the documents evenly
    # choice on a half that the scoring half disagrees with cannot leak: swap the pattern, same answer
    p2 = _point(_mats(forget[::-1].copy(), retain))
    assert p2["best_selectivity_crossfit"] == pytest.approx(0.1 - 0.05)


def test_document_bootstrap_is_wider_than_context_bootstrap_on_correlated_windows():
    rng = np.random.default_rng(0)
    n_docs, per_doc = 30, 8
    docs = np.repeat(np.arange(n_docs), per_doc)
    # windows of one document share its level (correlated), plus a little window noise
    values = np.repeat(rng.normal(0, 1, n_docs), per_doc) + rng.normal(0, 0.2, n_docs * per_doc)
    by_doc = md.bootstrap_weights(docs, 2000, seed=1)  # weights per document
    by_ctx = md.bootstrap_weights(np.arange(len(values)), 2000, seed=1)  # weights per window
    doc_means = (by_doc @ md.per_document(values, docs, n_docs)) / (by_doc @ np.full(n_docs, per_doc))
    ctx_means = by_ctx @ values / len(values)
    w_doc = np.diff(md.interval(doc_means))[0]
    w_ctx = np.diff(md.interval(ctx_means))[0]
    assert w_doc > 2 * w_ctx  # ~sqrt(8) here: eight windows are about one independent observation


def test_document_ids_follow_eos_in_the_stream():
    eos, bos = 1, 2
    stream = [5, 5, 5, eos, 6, 6, 6, 6, 6, 6, 6, eos, 7, 7]  # doc 0 (3 tokens), doc 1 (8), doc 2
    ctx = np.array([[bos, *stream[i : i + 4]] for i in range(0, 12, 4)])
    # context 0: 5 5 5 EOS -> doc 0; context 1: 6 6 6 6 -> doc 1; context 2: 6 6 6 EOS -> doc 1
    assert md.document_ids(ctx, eos).tolist() == [0, 1, 1]


def test_domain_tokens_rule():
    forget = np.array([100, 50, 3, 10, 0])
    retain = np.array([600, 1, 0, 1000, 5])
    # token 1: forget share 50/163 against retain (1+1)/1606: domain; token 2: too rare (3 < 5);
    # token 0: 0.61 against 0.37 (ratio < 4); token 3: far more common in retain text; token 4: absent from forget
    assert md.domain_tokens(forget, retain, ratio=4.0, min_count=5).tolist() == [1]


def test_replicates_share_their_draws_across_runs():
    a = md.bootstrap_weights(np.arange(12), 50)
    b = md.bootstrap_weights(np.arange(12), 50)
    assert np.array_equal(a, b) and a.sum(axis=1).tolist() == [12] * 50


def test_quality_figures_on_the_unlearning_documents_by_hand():
    # two documents per corpus; CE sums over 10 tokens each
    f = {
        "clean_all": np.array([20.0, 30.0]),
        "recon_all": np.array([22.0, 33.0]),
        "zero_all": np.array([60.0, 70.0]),
        "sse": np.array([1.0, 2.0]),
        "sx": np.array([[1.0, 0.0], [3.0, 2.0]]),
        "sxx": np.array([5.0, 9.0]),
        "npos": np.array([2.0, 2.0]),
    }
    r = {
        "clean_all": np.array([10.0, 10.0]),
        "recon_all": np.array([11.0, 12.0]),
        "zero_all": np.array([50.0, 40.0]),
        "sse": np.array([0.5, 0.5]),
        "sx": np.array([[0.0, 1.0], [1.0, 1.0]]),
        "sxx": np.array([3.0, 4.0]),
        "npos": np.array([2.0, 2.0]),
    }
    q = md.quality_figures(f, r, np.ones((1, 2)), np.ones((1, 2)))
    # CE: zero 220, recon 78, clean 70: (220 − 78) / (220 − 70)
    assert q["ce_loss_score_docs"][0] == pytest.approx(142 / 150)
    # EV: sse 4, Σx = (5, 4) over 8 positions, Σ‖x‖² = 21: total 21 − 41/8 = 15.875
    assert q["explained_variance_docs"][0] == pytest.approx(1 - 4 / 15.875)
    # a replicate that draws forget document 1 twice and retain document 0 twice
    q2 = md.quality_figures(f, r, np.array([[0.0, 2.0]]), np.array([[2.0, 0.0]]))
    assert q2["ce_loss_score_docs"][0] == pytest.approx((140 + 100 - 66 - 22) / (140 + 100 - 60 - 20))
