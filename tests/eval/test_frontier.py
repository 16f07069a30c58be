"""eval/frontier.py: above / tie / below the baseline curve at equal quality, on constructed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orthosae.eval.frontier import QUALITY_SPAN, frontier_verdict
from orthosae.eval.intervals import mean_interval

SEEDS = [0, 1, 2, 3, 4, 5]
NOISE = np.random.default_rng(0).standard_normal(400)  # document draw i: the same documents for every run


def pt(name, x, y, *, y_sd=0.0, x_sd=0.0, doc=0.02, seeds=SEEDS, rng_seed=1, reps=True):
    """A condition: per-seed quality x and figure y around the given means, document replicates."""
    rng = np.random.default_rng(rng_seed)
    dev_y, dev_x = rng.standard_normal(len(seeds)), rng.standard_normal(len(seeds))
    dev_y, dev_x = dev_y - dev_y.mean(), dev_x - dev_x.mean()  # means exactly as given
    ys = {s: y + y_sd * d for s, d in zip(seeds, dev_y)}
    xs = {s: x + x_sd * d for s, d in zip(seeds, dev_x)}
    return {
        "name": name,
        "x": x,
        "x_seeds": xs,
        "y_seeds": ys,
        "reps": {s: (ys[s] + doc * NOISE).tolist() for s in seeds} if reps else None,
    }


# a baseline family at three qualities 0.02 apart: unlearning falls as quality rises
CURVE = [
    pt("base-small", 0.80, 1.0, y_sd=0.02),
    pt("base-mid", 0.82, 0.6, y_sd=0.02, rng_seed=2),
    pt("base-big", 0.84, 0.4, y_sd=0.02, rng_seed=3),
]


def test_gap_against_the_interpolated_curve_by_hand():
    # x = 0.81, halfway between base-small (1.0) and base-mid (0.6): the curve is at 0.8
    m = pt("m", 0.81, 1.0, y_sd=0.05, rng_seed=9)
    v = frontier_verdict(CURVE, m)
    gaps = [m["y_seeds"][s] - (0.5 * CURVE[0]["y_seeds"][s] + 0.5 * CURVE[1]["y_seeds"][s]) for s in SEEDS]
    reps = np.stack(
        [
            np.asarray(m["reps"][s]) - 0.5 * np.asarray(CURVE[0]["reps"][s]) - 0.5 * np.asarray(CURVE[1]["reps"][s])
            for s in SEEDS
        ]
    )
    assert v["gap"] == pytest.approx(0.2) and v["gap"] == pytest.approx(np.mean(gaps))
    assert v["ci95"] == pytest.approx(mean_interval(gaps, reps)["ci95"])
    assert v["verdict"] == "above" and "base-small" in v["against"] and "base-mid" in v["against"]
    assert frontier_verdict(CURVE, pt("m", 0.81, 0.81, y_sd=0.05, rng_seed=9))["verdict"] == "tie"
    assert frontier_verdict(CURVE, pt("m", 0.81, 0.6, y_sd=0.05, rng_seed=9))["verdict"] == "below"


def test_the_weight_follows_each_seeds_own_quality():
    """Seed s at quality x_s is compared with the curve at x_s: a method whose seeds lie exactly on
    the (per-seed) curve has gap 0 on every seed, though its quality varies."""
    m = pt("m", 0.81, 0.8, x_sd=0.004, rng_seed=4)
    for s in SEEDS:
        t = (m["x_seeds"][s] - 0.80) / 0.02
        m["y_seeds"][s] = (1 - t) * CURVE[0]["y_seeds"][s] + t * CURVE[1]["y_seeds"][s]
    m["reps"] = None
    v = frontier_verdict(CURVE, m)
    assert v["gap"] == pytest.approx(0.0, abs=1e-12) and v["ci95"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_no_verdict_where_the_curve_was_not_measured():
    # beyond the best-quality end: once "dominance", now no verdict — the curve is not monotone
    assert frontier_verdict(CURVE, pt("m", 0.86, 0.9))["verdict"].startswith("no verdict: curve not measured here")
    # below the worst end
    assert frontier_verdict(CURVE, pt("m", 0.78, 1.5))["verdict"].startswith("no verdict: curve not measured here")
    # inside the range but the bracketing points are farther than QUALITY_SPAN: an empty segment
    sparse = [CURVE[0], pt("far", 0.80 + 2 * QUALITY_SPAN + 0.01, 0.2, rng_seed=5)]
    v = frontier_verdict(sparse, pt("m", 0.80 + QUALITY_SPAN + 0.005, 0.9))
    assert v["verdict"].startswith("no verdict: curve not measured here") and math.isnan(v["gap"])
    # at a measured point's quality exactly: compared with that point alone
    v = frontier_verdict(CURVE, pt("m", 0.82, 0.9, y_sd=0.03))
    assert v["against"] == "base-mid" and v["gap"] == pytest.approx(0.3)


def test_pairs_by_seed_id_and_needs_enough_shared_seeds():
    # the method's seeds 0..5 listed in another order: the same verdict (paired by id)
    m = pt("m", 0.81, 1.0, y_sd=0.05, rng_seed=9)
    shuffled = dict(
        m, y_seeds={s: m["y_seeds"][s] for s in reversed(SEEDS)}, reps={s: m["reps"][s] for s in reversed(SEEDS)}
    )
    assert frontier_verdict(CURVE, shuffled)["ci95"] == pytest.approx(frontier_verdict(CURVE, m)["ci95"])
    # only 4 seed ids shared with the baseline points: no verdict
    few = pt("m", 0.81, 1.0, seeds=[0, 1, 2, 3, 7, 8])
    v = frontier_verdict(CURVE, few)
    assert v["verdict"] == "no verdict: 4 seed(s) shared with base-small/base-mid < 5" and v["seeds"] == [0, 1, 2, 3]


def test_document_replicates_take_the_weight_of_their_own_quality():
    """With quality bootstrapped over the same documents (x_reps), replicate i of the gap interpolates
    the curve at replicate i's quality."""
    a, b = CURVE[0], CURVE[1]
    m = pt("m", 0.81, 1.0, y_sd=0.05, rng_seed=9)
    m["x_reps"] = {s: (0.81 + 0.001 * NOISE).tolist() for s in SEEDS}
    v = frontier_verdict(CURVE, m)
    s = SEEDS[0]
    t = (0.81 + 0.001 * NOISE - 0.80) / 0.02
    want = np.asarray(m["reps"][s]) - ((1 - t) * np.asarray(a["reps"][s]) + t * np.asarray(b["reps"][s]))
    gaps = [m["y_seeds"][k] - (0.5 * a["y_seeds"][k] + 0.5 * b["y_seeds"][k]) for k in SEEDS]
    reps = np.stack(
        [want]
        + [
            np.asarray(m["reps"][k]) - ((1 - t) * np.asarray(a["reps"][k]) + t * np.asarray(b["reps"][k]))
            for k in SEEDS[1:]
        ]
    )
    assert v["ci95"] == pytest.approx(mean_interval(gaps, reps)["ci95"])
    assert v["ci95"] != pytest.approx(frontier_verdict(CURVE, dict(m, x_reps=None))["ci95"])


# ---- every message and boundary pinned (issue 35, mutation testing)


def flat(name, x, y, seeds=SEEDS, **kw):
    """A point whose seeds all sit at (x, y) exactly, with no document replicates."""
    return {
        "name": name,
        "x": x,
        "x_seeds": {s: x for s in seeds},
        "y_seeds": {s: y for s in seeds},
        "reps": None,
        **kw,
    }


def test_no_verdict_results_carry_every_field_as_nan():
    v = frontier_verdict(CURVE, {**flat("m", 0.8, 1.0), "x": math.nan})
    assert v["verdict"] == "no verdict: no quality" and set(v) == {"verdict", "gap", "ci95", "p"}
    assert math.isnan(v["gap"]) and math.isnan(v["p"]) and all(math.isnan(c) for c in v["ci95"])
    assert frontier_verdict([], flat("m", 0.8, 1.0))["verdict"] == "no verdict: no baseline curve"
    assert frontier_verdict([flat("b", math.nan, 1.0)], flat("m", 0.8, 1.0))["verdict"] == (
        "no verdict: no baseline curve"
    )


def test_bracket_needs_a_near_point_on_each_side():
    # below 0.1 away, above 0.01 away: either side too far is no verdict, with the points named
    v = frontier_verdict([flat("a", 0.5, 1.0), flat("b", 0.61, 1.0)], flat("m", 0.6, 1.0))
    assert v["verdict"] == (
        "no verdict: curve not measured here (quality 0.600; baseline points a at 0.500, b at 0.610; span ±0.03)"
    )
    # both exactly QUALITY_SPAN away (0.03 − 0 and 0.06 − 0.03 are exact in binary): still measured
    assert 0.06 - 0.03 == QUALITY_SPAN
    v = frontier_verdict([flat("a", 0.0, 1.0), flat("b", 0.06, 0.0)], flat("m", 0.03, 1.0))
    assert v["against"] == "the curve between a and b" and v["gap"] == pytest.approx(0.5)
    # the nearest point above is the bracket, not the one after it
    curve = [flat("a", 0.5, 1.0), flat("b", 0.51, 0.0), flat("c", 0.7, 0.0)]
    v = frontier_verdict(curve, flat("m", 0.505, 1.0))
    assert v["against"] == "the curve between a and b" and v["gap"] == pytest.approx(0.5)


def test_exactly_min_seeds_shared_give_a_verdict_with_every_field():
    from orthosae.eval.intervals import MIN_SEEDS

    seeds = list(range(MIN_SEEDS))
    base = flat("a", 0.8, 1.0, seeds)
    m = flat("m", 0.8, 1.0, seeds)
    m["y_seeds"] = {s: 1.0 + 0.1 * (s + 1) for s in seeds}  # gaps 0.1 .. 0.5 against the one point
    v = frontier_verdict([base], m)
    gaps = [0.1 * (s + 1) for s in seeds]
    want = mean_interval(gaps)
    assert set(v) == {"verdict", "gap", "ci95", "p", "against", "seeds"}
    assert v["seeds"] == seeds and v["against"] == "a" and v["verdict"] == "above"
    assert v["gap"] == pytest.approx(0.3) and v["p"] == pytest.approx(want["p"])
    assert v["ci95"] == pytest.approx(want["ci95"])
    # one seed fewer: no verdict, naming the count
    m4 = {**m, "x_seeds": {s: 0.8 for s in seeds[:-1]}}
    v = frontier_verdict([base], m4)
    assert v["verdict"] == f"no verdict: {MIN_SEEDS - 1} seed(s) shared with a/a < {MIN_SEEDS}"
    assert v["seeds"] == seeds[:-1]


def test_quality_replicates_at_a_single_point_curve_keep_weight_zero():
    """One baseline point at x itself (span 0): every replicate compares with that point, whatever
    the condition's quality replicates say (no division by the zero span)."""
    base = pt("a", 0.8, 0.5)
    m = pt("m", 0.8, 1.0, y_sd=0.05, rng_seed=9, doc=0.05)  # a document error the gap keeps (0.03)
    m["x_reps"] = {s: (0.8 + 0.01 * NOISE).tolist() for s in SEEDS}
    v = frontier_verdict([base], m)
    reps = np.stack([np.asarray(m["reps"][s]) - np.asarray(base["reps"][s]) for s in SEEDS])
    gaps = [m["y_seeds"][s] - base["y_seeds"][s] for s in SEEDS]
    assert v["ci95"] == pytest.approx(mean_interval(gaps, reps)["ci95"]) and v["verdict"] == "above"


def test_quality_replicates_weigh_each_document_replicate_by_hand():
    """Between a (0.80) and b (0.82): replicate i of seed s takes the weight of its own quality,
    w_i = (x_rep_i − 0.80) / 0.02, so the replicate gap is y_i − ((1 − w_i)·a_i + w_i·b_i)."""
    a, b = CURVE[0], CURVE[1]
    m = pt("m", 0.81, 1.0, y_sd=0.05, rng_seed=9, doc=0.05)
    m["x_reps"] = {s: (0.81 + 0.005 * NOISE[::-1]).tolist() for s in SEEDS}
    v = frontier_verdict(CURVE, m)
    w = (np.asarray(m["x_reps"][0]) - 0.80) / 0.02
    reps = np.stack(
        [np.asarray(m["reps"][s]) - ((1 - w) * np.asarray(a["reps"][s]) + w * np.asarray(b["reps"][s])) for s in SEEDS]
    )
    gaps = [m["y_seeds"][s] - 0.5 * (a["y_seeds"][s] + b["y_seeds"][s]) for s in SEEDS]
    assert v["ci95"] == pytest.approx(mean_interval(gaps, reps)["ci95"])
    assert v["ci95"] != pytest.approx(mean_interval(gaps, None)["ci95"])  # the replicates count


def test_a_point_exactly_on_the_curve_ties():
    """Every seed on the curve and no document error: gap 0, interval [0, 0], a tie (not above,
    not below: the interval must exclude 0)."""
    v = frontier_verdict([flat("a", 0.8, 0.5)], flat("m", 0.8, 0.5))
    assert v["ci95"] == [0.0, 0.0] and v["verdict"] == "tie"


def test_a_gap_that_overflows_has_no_interval():
    """Figures of ±1e308 are finite but their difference is not: the interval is nan, no verdict."""
    v = frontier_verdict([flat("a", 0.8, -1e308)], flat("m", 0.8, 1e308))
    assert v["verdict"] == "no verdict: no interval" and v["gap"] == math.inf
