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


# ---- every number pinned (issue 35, mutation testing): small inputs, expected values by hand


def _parts(f_dom, f_rest, r_all, tokens=50.0, clean=3.0, fired=None):
    """Sweep matrices by hand: ``f_dom`` / ``f_rest`` ``[S, D]`` per-token CE increases of the forget
    documents' domain and other tokens (``tokens`` of each per document), ``r_all`` the retain
    documents' (all 'rest'); clean CE ``clean`` everywhere. The forget 'all' increase is their mean."""
    f_dom, f_rest, r_all = (np.asarray(a, dtype=np.float64) for a in (f_dom, f_rest, r_all))
    S, Dr = f_dom.shape[0], r_all.shape[1]

    def corpus(dom, rest, n_dom):
        D = dom.shape[1]
        c = clean * tokens
        edit_dom, edit_rest = (clean + dom) * n_dom, (clean + rest) * tokens
        return {
            "docs": D,
            "clean_all": np.full(D, c + clean * n_dom),
            "n_all": np.full(D, tokens + n_dom),
            "edit_all": edit_dom + edit_rest,
            "clean_domain": np.full(D, clean * n_dom),
            "n_domain": np.full(D, n_dom),
            "edit_domain": edit_dom,
            "clean_rest": np.full(D, c),
            "n_rest": np.full(D, tokens),
            "edit_rest": edit_rest,
            "fired": np.full((S, D), tokens / 2) if fired is None else fired,
            "positions": np.full(D, 2 * tokens),
        }

    return {"forget": corpus(f_dom, f_rest, tokens), "retain": corpus(np.zeros((S, Dr)), r_all, 0.0)}


def test_figures_point_estimate_by_hand():
    # 4 identical forget and retain documents, 2 settings; forget domain / rest increases 0.4 / 0.2
    # (all: 0.3) and 1.0 / 0.6 (all: 0.8); retain 0.1 and -0.05 (an edit that helps retain text)
    m = _parts(np.repeat([[0.4], [1.0]], 4, 1), np.repeat([[0.2], [0.6]], 4, 1), np.repeat([[0.1], [-0.05]], 4, 1))
    p = _point(m, budgets=(0.05,))
    # selectivity 0.3 − 0.1 = 0.2 and 0.8 + 0.05 = 0.85: setting 1 is best
    assert p["best_selectivity"] == pytest.approx(0.85)
    # its ratio: 0.8 / (max(−0.05, 0) + 1e-3) = 800
    assert p["selectivity_ratio_at_best"] == pytest.approx(800.0)
    # fired on 25 of 100 spliced positions per document
    assert p["forget_coverage_at_best"] == pytest.approx(0.25) and p["retain_coverage_at_best"] == pytest.approx(0.25)
    # the frontier: origin (0, 0), setting 1 (−0.05, 0.8) dominates it and setting 0; b = 0.05 is past
    # its last point: not binding, F = setting 1's, not on the origin's chord
    assert p["F_0.05"] == pytest.approx(0.8) and p["F_0.05_domain"] == pytest.approx(1.0)
    assert p["F_0.05_rest"] == pytest.approx(0.6) and p["F_0.05_origin"] == 0.0
    # cross-fitted: identical halves choose setting 1 and score it 0.85 on the other half
    assert p["best_selectivity_crossfit"] == pytest.approx(0.85)
    # the loss score: setting 1 qualifies (retain −0.05 <= 1 % of 3), relative forget rise 0.8 / 3
    assert p["loss_unlearning_score_crossfit"] == pytest.approx(0.8 / 3)
    assert "ce_loss_score_docs" not in p  # no quality sums given


def test_f_of_b_domain_split_and_origin_flag_by_hand():
    # one setting: forget domain 0.4, rest 0.2 (all 0.3), retain 0.1; b = 0.05 is half way from the
    # origin: F = 0.15, domain 0.2, rest 0.1, and both halves rest on the origin's chord
    m = _parts(np.full((1, 4), 0.4), np.full((1, 4), 0.2), np.full((1, 4), 0.1))
    p = _point(m, budgets=(0.05,))
    assert (p["F_0.05"], p["F_0.05_domain"], p["F_0.05_rest"]) == pytest.approx((0.15, 0.2, 0.1))
    assert p["F_0.05_origin"] == 1.0
    # an edit that lowers forget CE: the origin alone is the frontier, F = 0 from the origin point
    # itself (t = 0), which is no chord
    m = _parts(np.full((1, 4), -0.1), np.full((1, 4), -0.1), np.full((1, 4), 0.1))
    p = _point(m, budgets=(0.05,))
    assert p["F_0.05"] == 0.0 and p["F_0.05_origin"] == 0.0


def test_loss_score_crossfit_chooses_among_qualifying_settings_per_half():
    D = 8
    h = md.halves(D)
    # setting 0: retain 0.02 (qualifies: <= 0.01 · 3), forget 0.3 (relative 0.1) everywhere;
    # setting 1: retain 0.02 on half 1, 0.05 on half 0 (qualifies on half 1 only), forget 0.9 on half 0
    # and 0.6 on half 1 (relative 0.3 / 0.2)
    f1 = np.where(h == 0, 0.9, 0.6)
    forget = np.stack([np.full(D, 0.3), f1])
    retain = np.stack([np.full(D, 0.02), np.where(h == 0, 0.05, 0.02)])
    p = _point(_parts(forget, forget, retain), budgets=())
    # half 0 chooses setting 0, scored on half 1: 0.1; half 1 chooses setting 1, scored on half 0: 0.3
    assert p["loss_unlearning_score_crossfit"] == pytest.approx((0.1 + 0.3) / 2)
    # selectivity: half 0: 0.28 and 0.85 -> setting 1, scored on half 1: 0.58; half 1: 0.28 and 0.58
    # -> setting 1, scored on half 0: 0.85
    assert p["best_selectivity_crossfit"] == pytest.approx((0.58 + 0.85) / 2)


def test_figures_per_replicate_row():
    # two forget documents: setting 0 removes 1.0 on document 0 and 0.0 on document 1, setting 1 the
    # reverse; retain damage 0.1 on both retain documents. Replicate 0 draws forget document 0 (twice),
    # replicate 1 document 1 (twice): the best setting differs per row
    forget = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = _parts(forget, forget, np.full((2, 2), 0.1))
    m["forget"]["fired"] = np.array([[10.0, 30.0], [50.0, 70.0]])  # of 100 positions per document
    out = md.figures(m, np.array([[2.0, 0.0], [0.0, 2.0]]), np.ones((2, 2)), budgets=(0.05,))
    assert out["best_selectivity"] == pytest.approx([0.9, 0.9])
    assert out["selectivity_ratio_at_best"] == pytest.approx([1.0 / 0.101, 1.0 / 0.101])
    # row 0: setting 0 on document 0 (10 of 100); row 1: setting 1 on document 1 (70 of 100)
    assert out["forget_coverage_at_best"] == pytest.approx([0.1, 0.7])
    # F(0.05): half way to the chosen setting, in both rows; a row whose draw leaves a half without
    # documents has no F there (nan) and the next row is still scored
    w = np.array([[0.0, 0.0], [1.0, 1.0]])
    out = md.figures(m, w, np.ones((2, 2)), budgets=(0.05,))
    assert math.isnan(out["F_0.05"][0]) and not math.isnan(out["F_0.05"][1])


def test_a_setting_without_a_finite_selectivity_is_never_best():
    # setting 0's forget sums are nan on the one forget document (a failed measurement): setting 1 is
    # best whatever its value, the ratio and coverage are setting 1's
    m = _parts(np.array([[np.nan], [0.5]]), np.array([[np.nan], [0.5]]), np.array([[0.1], [0.1]]))
    p = _point(m, budgets=())
    assert p["best_selectivity"] == pytest.approx(0.4)
    assert p["selectivity_ratio_at_best"] == pytest.approx(0.5 / 0.101)


def test_figures_raise_no_warning_on_a_half_without_documents():
    """0/0 of an empty half is nan on purpose: numpy's divide and invalid warnings are silenced."""
    import warnings

    m = _parts(np.full((1, 3), 0.3), np.full((1, 3), 0.3), np.full((1, 3), 0.1))
    for k in ("forget", "retain"):
        m[k].update(recon_all=np.full(3, 160.0), zero_all=np.full(3, 400.0), sse=np.ones(3))
        m[k].update(sx=np.ones((3, 2)), sxx=np.full(3, 4.0), npos=np.full(3, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "All-NaN slice")  # nanmax's own, of an all-nan row
        out = md.figures(m, np.zeros((1, 3)), np.zeros((1, 3)), budgets=(0.05,))
    assert math.isnan(out["best_selectivity"][0]) and math.isnan(out["ce_loss_score_docs"][0])


def test_quality_figures_per_row_and_through_loss_matrices():
    # forget: contexts 0 and 1 belong to document 0, context 2 to document 1; retain: one document
    clean = {
        k: {
            **{f"{s}_{p}": np.full(n, 10.0 if s == "sum" else 5.0) for s in ("sum", "n") for p in md.PARTS},
            "positions": np.full(n, 5.0),
        }
        for k, n in (("forget", 3), ("retain", 1))
    }
    edited = [{k: {**v, "fired": np.ones(len(v["positions"]))} for k, v in clean.items()}]
    docs = {"forget": np.array([0, 0, 1]), "retain": np.array([0])}
    quality = {
        "forget": {
            "recon_all": np.array([11.0, 12.0, 13.0]),
            "zero_all": np.array([20.0, 20.0, 30.0]),
            "sse": np.array([1.0, 1.0, 2.0]),
            "sx": np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]),
            "sxx": np.array([1.0, 1.0, 4.0]),
            "npos": np.array([1.0, 1.0, 2.0]),
        },
        "retain": {
            "recon_all": np.array([12.0]),
            "zero_all": np.array([40.0]),
            "sse": np.array([0.0]),
            "sx": np.array([[0.0, 0.0]]),
            "sxx": np.array([3.0]),
            "npos": np.array([1.0]),
        },
    }
    m = md.loss_matrices(clean, edited, docs, quality)
    # per document: contexts 0 + 1 summed; the [n, d] sums stay [docs, d]
    assert m["forget"]["recon_all"].tolist() == [23.0, 13.0] and m["forget"]["sx"].tolist() == [[2.0, 0.0], [0.0, 2.0]]
    assert m["forget"]["clean_all"].tolist() == [20.0, 10.0] and m["retain"]["zero_all"].tolist() == [40.0]
    # replicate 0: every document once; replicate 1: every document twice (the same ratios)
    w = lambda n: np.array([np.ones(n), np.full(n, 2.0)])  # noqa: E731
    q = md.quality_figures(m["forget"], m["retain"], w(2), w(1))
    # CE: zero 110, recon 48, clean 40: (110 − 48) / (110 − 40) = 62 / 70
    assert q["ce_loss_score_docs"] == pytest.approx([62 / 70, 62 / 70])
    # EV: sse 4, Σx = (2, 2) over 5 positions, Σ‖x‖² = 9: total 9 − 8/5 = 7.4 (row 1: 18 − 32/10 = 14.8)
    assert q["explained_variance_docs"] == pytest.approx([1 - 4 / 7.4, 1 - 8 / 14.8])
    p = _point(m, budgets=())
    assert p["ce_loss_score_docs"] == pytest.approx(62 / 70)


def test_document_ids_take_the_majority_document_and_skip_bos():
    # eos 0, BOS 9 never counted. Tokens after BOS: [1 2 3] [0 4 0] [5 6 0]; a running EOS count
    # gives documents [0 0 0] [1 1 2] [2 2 3]: majorities 0, 1, 2 (BOS counted would shift them)
    ids = md.document_ids(np.array([[9, 1, 2, 3], [9, 0, 4, 0], [9, 5, 6, 0]]), eos=0)
    assert ids.tolist() == [0, 1, 2] and ids.dtype == np.int64
    # [1 2 0] -> 0 0 1; [3 0 4] -> 1 2 2 (the later document holds most); [5 6 7] -> 2 2 2
    assert md.document_ids(np.array([[9, 1, 2, 0], [9, 3, 0, 4], [9, 5, 6, 7]]), eos=0).tolist() == [0, 1, 1]


def test_domain_tokens_boundaries_by_hand():
    # forget [4, 4]: shares 0.5, 0.5; retain [1, 3] smoothed: (1+1)/4 = 0.5, (3+1)/4 = 1.0; ratio 1:
    # token 0 exactly at the ratio (kept: >=), token 1 below it; min_count 4 exactly met (kept)
    assert md.domain_tokens(np.array([4, 4]), np.array([1, 3]), ratio=1.0, min_count=4).tolist() == [0]
    # one forget token counted once: share 1/1; retain [0, 3]: (0+1)/3; ratio 2: 1 >= 2/3
    assert md.domain_tokens(np.array([1]), np.array([0, 3]), ratio=2.0, min_count=1).tolist() == [0]
    # retain text of one token: the smoothed share divides by 1, not by more: forget [3, 1] shares
    # 0.75, 0.25 against 0.2 · [1, 2] = [0.2, 0.4]: token 0 only
    assert md.domain_tokens(np.array([3, 1]), np.array([0, 1]), ratio=0.2, min_count=1).tolist() == [0]


def test_bootstrap_weights_and_halves_shapes_by_hand():
    assert md.bootstrap_weights(np.array([], dtype=np.int64), 3).shape == (3, 0)
    w = md.bootstrap_weights(np.array([0, 0, 1]), 4)  # two groups: each row draws 2
    assert w.shape == (4, 2) and w.dtype == np.float64 and w.sum(axis=1).tolist() == [2.0] * 4
    h = md.halves(5)
    assert h.dtype == np.int64 and sorted(h.tolist()) == [0, 0, 1, 1, 1]


def test_interval_percentiles_and_the_finite_share_rule_by_hand():
    # [1, 3]: numpy's linear percentiles 1 + 0.025·2 = 1.05 and 1 + 0.975·2 = 2.95
    assert md.interval([1.0, 3.0]) == pytest.approx([1.05, 2.95])
    # None (a nan stored in JSON) counts as not finite; 2 finite of 5: at least max(2, 5 // 2) = 2
    assert md.interval([1.0, None, 3.0, None, None]) == pytest.approx([1.05, 2.95])
    # 2 finite of 6: fewer than 6 // 2 = 3
    assert all(math.isnan(v) for v in md.interval([1.0, 3.0, math.nan, math.nan, math.nan, math.nan]))
    assert all(math.isnan(v) for v in md.interval([1.0]))  # one finite replicate: no interval


def test_frontier_and_budget_weights_edge_cases_by_hand():
    # equal points: the first kept, once
    assert md.frontier(np.array([0.1, 0.1]), np.array([0.5, 0.5])).tolist() == [0]
    assert md.frontier(np.array([]), np.array([])).dtype == np.int64
    r, f = np.array([0.02, 0.05]), np.array([0.1, 0.3])
    assert md.budget_weights(r, f, 0.01) == (0, 0, 0.0)  # below the first point: that point
    assert md.budget_weights(r, f, 0.02) == (0, 0, 0.0)  # exactly at it
    # past the last of three frontier points (the last setting is dominated): that point, t = 0
    r3, f3 = np.array([0.0, 0.01, 0.02, 0.2]), np.array([0.0, 0.3, 0.5, 0.4])
    assert md.budget_weights(r3, f3, 0.1) == (2, 2, 0.0)
    # exactly at an interior point: it is the lower end (t = 0), not the upper end of the chord below
    assert md.budget_weights(r3, f3, 0.01) == (1, 2, 0.0)
    # any non-finite value: not reached, even if the forget values are finite
    assert md.budget_weights(np.array([0.0, np.nan, 0.1]), np.array([0.0, 0.2, 0.3]), 0.05) is None
    assert md.budget_weights(np.array([0.0, 0.1]), np.array([0.0, np.inf]), 0.05) is None
    assert md.f_at_budget([0.0, None, 0.1], [0.0, 0.2, 0.3], 0.05)[0] != md.f_at_budget([0.0, 0.1], [0.0, 0.3], 0.05)[0]


def test_crossfit_by_hand():
    score_a = np.array([[1.0, 2.0], [3.0, 4.0]])
    score_b = np.array([[10.0, 20.0], [30.0, 40.0]])
    # row 0: half a chooses setting 1 (nan never wins), scored on b: 20; half b chooses setting 0: 1
    # row 1: half a has no finite choice: 0; half b chooses setting 1: 4
    choose_a = np.array([[np.nan, 0.5], [np.nan, np.nan]])
    choose_b = np.array([[0.9, 0.1], [0.1, 0.9]])
    assert md.crossfit(score_a, score_b, choose_a, choose_b).tolist() == [(20 + 1) / 2, (0 + 4) / 2]


def test_bracket_points_describe_each_point_in_full():
    rows = [
        {"n_features": 10, "n_features_used": 3, "retain_ce_increase": 0.05, "forget_ce_increase": 0.6},
        {"n_features": 4, "strength": 0.5, "retain_ce_increase": 0.01, "forget_ce_increase": 0.2},
    ]
    # b = 0.03 lies between row 1 (0.01) and row 0 (0.05): t = 0.5
    got = md.bracket_points(rows, 0.03)
    assert got == {
        "reached": True,
        # 3 features used (of 10 asked): 0.6 / 3
        "upper": {
            "n_features": 10,
            "strength": 1.0,
            "retain_ce_increase": 0.05,
            "forget_ce_increase": 0.6,
            "forget_over_retain": pytest.approx(12.0),
            "forget_per_feature": pytest.approx(0.2),
        },
        # no n_features_used: n_features counts; the last at half strength: 3.5 features
        "lower": {
            "n_features": 4,
            "strength": 0.5,
            "retain_ce_increase": 0.01,
            "forget_ce_increase": 0.2,
            "forget_over_retain": pytest.approx(20.0),
            "forget_per_feature": pytest.approx(0.2 / 3.5),
        },
        "t": pytest.approx(0.5),
    }
    # a lower point without retain damage: ratio inf; neither count given: the 1e-12 floor
    rows = [
        {"retain_ce_increase": 0.0, "forget_ce_increase": 0.1},
        {"retain_ce_increase": 0.05, "forget_ce_increase": 0.5},
    ]
    got = md.bracket_points(rows, 0.03)
    assert got["lower"]["forget_over_retain"] == math.inf and got["lower"]["n_features"] is None
    assert got["lower"]["forget_per_feature"] == pytest.approx(0.1 / 1e-12)


def test_summarise_replicates_match_an_independent_bootstrap():
    # one setting; forget documents with increases [0.1, 0.2, 0.6], retain [0.0, 0.1]; each document
    # has the same token count, so a replicate's figure is the count-weighted mean of its draw
    f_inc, r_inc = np.array([0.1, 0.2, 0.6]), np.array([0.0, 0.1])
    m = _parts(f_inc[None], f_inc[None], r_inc[None])
    n_boot = 20
    wf = np.random.default_rng(md.BOOTSTRAP_SEED).multinomial(3, [1 / 3] * 3, size=n_boot)
    wr = np.random.default_rng(md.BOOTSTRAP_SEED + 1).multinomial(2, [1 / 2] * 2, size=n_boot)
    want = wf @ f_inc / 3 - wr @ r_inc / 2
    s = md.summarise(m, budgets=(5.0,), n_boot=n_boot)
    assert s["values"]["best_selectivity"] == pytest.approx(0.3 - 0.05)
    assert s["replicates"]["best_selectivity"] == [round(float(x), 6) for x in want]
    assert s["ci95"]["best_selectivity"] == pytest.approx(np.percentile(want, [2.5, 97.5]).tolist())
    assert s["se"]["best_selectivity"] == pytest.approx(float(np.std(want, ddof=1)))
    # a budget no draw reaches: every replicate None, no interval, no se
    assert s["replicates"]["F_5"] == [None] * n_boot
    assert all(math.isnan(v) for v in s["ci95"]["F_5"]) and math.isnan(s["se"]["F_5"])
    assert set(s) == {"values", "ci95", "se", "replicates"}


def test_draws_fingerprint_identifies_the_documents():
    a = {"forget": np.array([0, 0, 1]), "retain": np.array([0, 1])}
    fp = md.draws_fingerprint(a)
    assert len(fp) == 16 and set(fp) <= set("0123456789abcdef")
    # the same documents in another dict order or integer width: the same draws
    same = {"retain": np.array([0, 1], dtype=np.int32), "forget": [0, 0, 1]}
    assert md.draws_fingerprint(same) == fp
    assert md.draws_fingerprint({"forget": np.array([0, 1, 1]), "retain": np.array([0, 1])}) != fp
    assert md.draws_fingerprint({"forget2": np.array([0, 0, 1]), "retain": np.array([0, 1])}) != fp


def test_loss_score_retain_rule_holds_at_exactly_one_percent():
    # clean CE 1.0; retain rises 0.01 per token: (50.5 − 50) / 50 = 0.01 = 1 % of 1.0 exactly
    # (checked: both sides are the same float), so it qualifies: relative forget rise 0.2 / 1.0
    assert (1.01 * 50 - 50) / 50 == 0.01 * 1.0
    m = _parts(np.full((1, 4), 0.2), np.full((1, 4), 0.2), np.full((1, 4), 0.01), clean=1.0)
    assert _point(m, budgets=())["loss_unlearning_score_crossfit"] == pytest.approx(0.2)


def test_ce_loss_score_of_a_zero_ablation_as_good_as_clean_is_inf_without_warning():
    import warnings

    f = {k: np.array([v]) for k, v in (("clean_all", 10.0), ("recon_all", 12.0), ("zero_all", 10.0))}
    f.update(sse=np.array([1.0]), sx=np.array([[1.0]]), sxx=np.array([2.0]), npos=np.array([2.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = md.quality_figures(f, f, np.ones((1, 1)), np.ones((1, 1)))
    assert q["ce_loss_score_docs"][0] == -math.inf  # (20 − 24) / 0
    # EV: sse 2, Σx = 2 over 4 positions, Σx² = 4: total 4 − 4/4 = 3
    assert q["explained_variance_docs"][0] == pytest.approx(1 - 2 / 3)


def test_se_needs_two_finite_replicates():
    f_inc, r_inc = np.array([0.1, 0.2, 0.6]), np.array([0.0, 0.1])
    m = _parts(f_inc[None], f_inc[None], r_inc[None])
    wf = np.random.default_rng(md.BOOTSTRAP_SEED).multinomial(3, [1 / 3] * 3, size=2)
    wr = np.random.default_rng(md.BOOTSTRAP_SEED + 1).multinomial(2, [1 / 2] * 2, size=2)
    want = wf @ f_inc / 3 - wr @ r_inc / 2
    s = md.summarise(m, budgets=(), n_boot=2)
    assert s["se"]["best_selectivity"] == pytest.approx(float(np.std(want, ddof=1)))
