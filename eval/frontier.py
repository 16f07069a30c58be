"""The frontier rule: an unlearning figure counts only against the baseline's curve at equal quality.

The baseline family (baseline conditions, e.g. at several ``d_sae``) gives points (quality x,
unlearning y), sorted by x. A condition at quality x_m is compared with the curve at x_m:

- x_m inside the curve's x range: the gap is y_m − (the curve linearly interpolated at x_m);
- x_m outside it, but within the 95 % quality interval of the curve's nearest end point (equal
  quality within the error bars): the gap is taken against that end point;
- x_m beyond the best-quality end and y_m above that point, or below the worst-quality end and y_m
  below that point: compared with that end point (it dominates, or is dominated by, the curve);
- otherwise: **no verdict** — nothing says what the baseline would score at that quality.

The gap's 95 % interval comes from its replicates (replicate i of every condition saw the same
documents, ``eval/aggregate.py``): "above" when it excludes 0 upwards, "below" when downwards,
"tie" when it holds 0. The x positions are the quality means (their intervals decide only the
equal-quality case above).
"""
from __future__ import annotations

import math

import numpy as np

from orthosae.eval.matched_damage import interval


def _finite(reps) -> np.ndarray:
    return np.asarray([math.nan if v is None else v for v in reps], dtype=np.float64)


def frontier_verdict(curve: list[dict], point: dict) -> dict:
    """``curve``: baseline points, each {"x", "x_ci": [lo, hi], "y", "reps": [B]}; ``point``: the
    condition's {"x", "x_ci", "y", "reps"}. Returns {"verdict", "gap", "ci95", "against"}."""
    pts = sorted((p for p in curve if math.isfinite(p["x"]) and math.isfinite(p["y"])), key=lambda p: p["x"])
    if not pts or not (math.isfinite(point["x"]) and math.isfinite(point["y"])):
        return {"verdict": "no verdict: no baseline curve or no value", "gap": math.nan, "ci95": [math.nan] * 2}
    xs = np.array([p["x"] for p in pts])
    x = point["x"]
    lo_end, hi_end = pts[0], pts[-1]

    def within(end):
        lo, hi = end.get("x_ci") or [math.nan, math.nan]
        plo, phi = point.get("x_ci") or [math.nan, math.nan]
        if math.isfinite(lo) and math.isfinite(plo):  # the two quality intervals overlap
            return plo <= hi and lo <= phi
        return math.isclose(x, end["x"], rel_tol=1e-9, abs_tol=1e-12)

    if xs[0] <= x <= xs[-1] and len(pts) > 1:
        k = min(int(np.searchsorted(xs, x, side="right")) - 1, len(pts) - 2)
        a, b = pts[k], pts[k + 1]
        t = (x - a["x"]) / (b["x"] - a["x"]) if b["x"] > a["x"] else 0.0
        base_y = (1 - t) * a["y"] + t * b["y"]
        base_reps = (1 - t) * _finite(a["reps"]) + t * _finite(b["reps"])
        against = f"the curve between {a['name']} and {b['name']}"
    else:
        end = hi_end if x > xs[-1] else lo_end if x < xs[0] else hi_end
        dominance = (x >= xs[-1] and point["y"] > hi_end["y"]) or (x <= xs[0] and point["y"] < lo_end["y"])
        if not (within(end) or dominance):
            side = "better" if x > xs[-1] else "worse"
            return {"verdict": f"no verdict: quality {side} than the baseline curve reaches", "gap": math.nan,
                    "ci95": [math.nan] * 2}
        base_y, base_reps, against = end["y"], _finite(end["reps"]), end["name"]
    gap = point["y"] - base_y
    reps = _finite(point["reps"]) - base_reps
    lo, hi = interval(reps)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        verdict = "no verdict: no interval"
    elif lo > 0:
        verdict = "above"
    elif hi < 0:
        verdict = "below"
    else:
        verdict = "tie"
    return {"verdict": verdict, "gap": float(gap), "ci95": [lo, hi], "against": against}
