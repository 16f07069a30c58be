"""The frontier rule: an unlearning figure counts only against the baseline's curve at equal quality.

The baseline family (baseline conditions, e.g. at several learning rates) gives points (quality x,
unlearning y), sorted by their mean x. A condition at mean quality x_m is compared with the curve
only where the curve was **measured** around x_m:

- a baseline point at or below x_m and one at or above it, each within ``QUALITY_SPAN`` of x_m
  (one point at x_m itself serves as both): the curve is interpolated linearly between them;
- anywhere else: **no verdict: curve not measured here** — the baseline's F is not monotone in
  quality, so neither an end point nor a long chord says what it would score at x_m.

The gap is computed **per seed id** (seed s of the condition against seed s of both baseline
points: the same init seed and data order), with the interpolation weight from that seed's own
quality, t_s = (x_m,s − x̄_a) / (x̄_b − x̄_a): the condition's quality error enters the gap (and,
where the quality was bootstrapped over the same documents as the figure, ``x_reps``, each
document replicate takes the weight of its own quality). Its
interval is ``eval/intervals.py``'s calibrated one over those seeds, with the document replicates
differenced replicate by replicate (the same documents for every run). "above" when the interval
excludes 0 upwards, "below" downwards, "tie" when it holds 0; fewer than ``MIN_SEEDS`` shared seeds:
no verdict.
"""

from __future__ import annotations

import math

import numpy as np

from orthosae.eval.intervals import MIN_SEEDS, mean_interval

QUALITY_SPAN = 0.03  # the most a bracketing baseline point may lie from x_m (EV and CE-loss score: 0..1)


def _no(verdict: str) -> dict:
    return {"verdict": verdict, "gap": math.nan, "ci95": [math.nan, math.nan], "p": math.nan}


def _has(p: dict, seed) -> bool:
    return seed in p["y_seeds"] and math.isfinite(p["y_seeds"][seed])


def bracket(curve: list[dict], x: float) -> tuple[dict, dict] | str:
    """The two measured baseline points (a, b) with x_a <= x <= x_b, each within QUALITY_SPAN of x,
    or why there are none."""
    pts = sorted((p for p in curve if math.isfinite(p["x"])), key=lambda p: p["x"])
    below = [p for p in pts if p["x"] <= x]
    above = [p for p in pts if p["x"] >= x]
    if not pts:
        return "no verdict: no baseline curve"
    if not below or not above or x - below[-1]["x"] > QUALITY_SPAN or above[0]["x"] - x > QUALITY_SPAN:
        near = ", ".join(f"{p['name']} at {p['x']:.3f}" for p in pts)
        return f"no verdict: curve not measured here (quality {x:.3f}; baseline points {near}; span ±{QUALITY_SPAN})"
    return below[-1], above[0]


def frontier_verdict(curve: list[dict], point: dict) -> dict:
    """``curve``: baseline points, each {"name", "x" (mean quality), "x_seeds", "y_seeds": seed ->
    value, "reps": seed -> document replicates or None}; ``point``: the condition, the same keys.
    Returns {"verdict", "gap", "ci95", "p", "against", "seeds"}."""
    if not math.isfinite(point["x"]):
        return _no("no verdict: no quality")
    found = bracket(curve, point["x"])
    if isinstance(found, str):
        return _no(found)
    a, b = found
    seeds = sorted(
        s for s in point["x_seeds"] if math.isfinite(point["x_seeds"][s]) and all(_has(p, s) for p in (point, a, b))
    )
    if len(seeds) < MIN_SEEDS:
        out = _no(f"no verdict: {len(seeds)} seed(s) shared with {a['name']}/{b['name']} < {MIN_SEEDS}")
        out["seeds"] = seeds
        return out
    span = b["x"] - a["x"]
    t = {s: (point["x_seeds"][s] - a["x"]) / span if span > 0 else 0.0 for s in seeds}
    gaps = [point["y_seeds"][s] - ((1 - t[s]) * a["y_seeds"][s] + t[s] * b["y_seeds"][s]) for s in seeds]
    reps = None
    if all(p.get("reps") for p in (point, a, b)):

        def r(p, s, key="reps"):
            return np.asarray([math.nan if v is None else v for v in p[key][s]], dtype=np.float64)

        def weight(s):  # the quality of replicate i (the same documents) where it was bootstrapped with y
            return (r(point, s, "x_reps") - a["x"]) / span if point.get("x_reps") and span > 0 else t[s]

        reps = np.stack([r(point, s) - ((1 - weight(s)) * r(a, s) + weight(s) * r(b, s)) for s in seeds])
    s = mean_interval(gaps, reps)
    lo, hi = s["ci95"]
    verdict = (
        "no verdict: no interval"
        if not (math.isfinite(lo) and math.isfinite(hi))
        else "above"
        if lo > 0
        else "below"
        if hi < 0
        else "tie"
    )
    against = a["name"] if a is b else f"the curve between {a['name']} and {b['name']}"
    return {"verdict": verdict, "gap": s["mean"], "ci95": [lo, hi], "p": s["p"], "against": against, "seeds": seeds}
