"""eval/frontier.py: above / tie / below the baseline curve at equal quality, on constructed numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from orthosae.eval.frontier import frontier_verdict

NOISE = np.random.default_rng(0).standard_normal(400)


def pt(name, x, y, sd=0.02, x_ci=None, noise=NOISE):
    return {"name": name, "x": x, "x_ci": x_ci or [math.nan, math.nan], "y": y, "reps": (y + sd * noise).tolist()}


# a baseline family at three qualities: unlearning falls as quality rises (as measured in the issue)
CURVE = [pt("base-small", 0.80, 1.0), pt("base-mid", 0.90, 0.6), pt("base-big", 0.95, 0.4)]


def test_above_tie_and_below_the_curve_at_equal_quality():
    # at x = 0.85 the curve is at 0.8
    other = np.random.default_rng(1).standard_normal(400)  # the method's own eval noise
    above = frontier_verdict(CURVE, pt("m", 0.85, 1.0, noise=other))
    assert above["verdict"] == "above" and above["gap"] == pytest.approx(0.2)
    tie = frontier_verdict(CURVE, pt("m", 0.85, 0.81, noise=other))
    assert tie["verdict"] == "tie" and tie["ci95"][0] < 0 < tie["ci95"][1]
    below = frontier_verdict(CURVE, pt("m", 0.85, 0.6, noise=other))
    assert below["verdict"] == "below" and below["ci95"][1] < 0
    assert "base-small" in above["against"] and "base-mid" in above["against"]


def test_higher_unlearning_at_worse_quality_is_not_a_win():
    # the method "wins" on raw unlearning (1.2 > every baseline point) but at a quality the curve
    # never reaches: nothing says what a baseline that bad would score
    v = frontier_verdict(CURVE, pt("m", 0.70, 1.2))
    assert v["verdict"].startswith("no verdict")
    # one baseline point, method worse in quality and higher in unlearning: no verdict either
    assert frontier_verdict([CURVE[2]], pt("m", 0.88, 0.9))["verdict"].startswith("no verdict")


def test_outside_the_curve_dominance_and_equal_quality_within_error_bars():
    # better quality than every baseline point and more unlearning than the best-quality one: above
    assert frontier_verdict(CURVE, pt("m", 0.97, 0.6))["verdict"] == "above"
    # worse quality than every baseline point and less unlearning than the worst-quality one: below
    assert frontier_verdict(CURVE, pt("m", 0.75, 0.8))["verdict"] == "below"
    # one baseline point; quality intervals overlap -> equal quality: compared directly
    base = [pt("b", 0.90, 0.6, x_ci=[0.88, 0.92])]
    assert frontier_verdict(base, pt("m", 0.89, 0.6, x_ci=[0.87, 0.91]))["verdict"] == "tie"
    assert frontier_verdict(base, pt("m", 0.89, 0.3, x_ci=[0.87, 0.91]))["verdict"] == "below"
