"""eval/intervals.py: coverage measured by simulation with a known truth, and numbers by hand."""

import math
import zlib

import numpy as np
import pytest

from orthosae.eval.intervals import (
    MIN_SEEDS,
    holm,
    mean_interval,
    paired_interval,
    shared_document_variance,
    t_quantile,
)

B = 500  # document replicates per run, as the eval draws
SIMS = 2000
# Noise of the measured size (RESULTS.md, "where the spread comes from"): seed sd 0.03 (baseline) to
# 0.12-0.19 (orthogonal SAEs), eval documents' se about 0.025, partly shared by every seed.
NOISE = {
    "seed sd 0.12, documents 0.025 per seed": (0.12, 0.0, 0.025),
    "seed sd 0.03, documents 0.015 shared + 0.02 per seed": (0.03, 0.015, 0.02),
}


def _seed_effects(rng, dist: str, n: int, sd: float) -> np.ndarray:
    if dist == "normal":
        return rng.normal(0.0, sd, n)
    x = rng.gamma(2.0, 1.0, n)  # right-skewed (skewness 1.41), centred on its true mean
    return (x - 2.0) / math.sqrt(2.0) * sd


def _simulate(rng, dist, n, noise, truth=0.0):
    """One condition: per-seed values and their document replicates, with a known true mean."""
    sd_seed, sd_shared, sd_own = noise
    y = truth + _seed_effects(rng, dist, n, sd_seed) + rng.normal(0, sd_shared) + rng.normal(0, sd_own, n)
    reps = y[:, None] + rng.normal(0, sd_shared, B)[None, :] + rng.normal(0, sd_own, (n, B))
    return y, reps


def _percentile_bootstrap(rng, y, reps):
    """The former interval (seeds x documents percentile bootstrap of eval/aggregate.py)."""
    n = len(y)
    draw = rng.integers(0, n, size=(B, n))
    r = reps[draw, np.arange(B)[:, None]].mean(axis=1)
    return np.percentile(r, [2.5, 97.5])


@pytest.mark.parametrize("dist", ["normal", "gamma"])
@pytest.mark.parametrize("n", [6, 12])
@pytest.mark.parametrize("noise", list(NOISE))
def test_condition_interval_covers_the_truth_95_percent(dist, n, noise):
    rng = np.random.default_rng(zlib.crc32(f"{dist}{n}{noise}".encode()))
    hits = 0
    for _ in range(SIMS):
        y, reps = _simulate(rng, dist, n, NOISE[noise], truth=0.3)
        lo, hi = mean_interval(y, reps)["ci95"]
        hits += lo <= 0.3 <= hi
    assert 0.93 <= hits / SIMS <= 0.97, hits / SIMS


@pytest.mark.parametrize("dist", ["normal", "gamma"])
@pytest.mark.parametrize("n", [6, 12])
def test_paired_gap_interval_covers_the_true_gap(dist, n):
    """Two conditions of one seed each per init seed, a known gap of 0.1 between their means: a
    (skewed or normal) method against a normal baseline of small spread, as in Q1 of RESULTS.md.
    4,000 simulations: the skewed pair at 6 seeds covers about 0.930 (16,000 simulations), at the
    lower edge, so the Monte Carlo error must be small."""
    rng = np.random.default_rng(zlib.crc32(f"pair{dist}{n}".encode()))
    hits = 0
    for _ in range(2 * SIMS):
        ya, ra = _simulate(rng, dist, n, NOISE["seed sd 0.12, documents 0.025 per seed"], truth=0.4)
        yb, rb = _simulate(rng, "normal", n, NOISE["seed sd 0.03, documents 0.015 shared + 0.02 per seed"], truth=0.3)
        seeds = list(range(10, 10 + 2 * n, 2))  # ids with gaps: pairing is by id
        p = paired_interval(
            dict(zip(seeds, ya)),
            dict(zip(seeds[::-1], yb[::-1])),
            dict(zip(seeds, ra)),
            dict(zip(seeds[::-1], rb[::-1])),
        )
        hits += p["ci95"][0] <= 0.1 <= p["ci95"][1]
    assert 0.93 <= hits / (2 * SIMS) <= 0.97, hits / (2 * SIMS)


def test_the_former_percentile_interval_fails_the_same_check():
    """Today's (former) seeds x documents percentile bootstrap under-covers where the new one holds."""
    rng = np.random.default_rng(3)
    hits = {"percentile": 0, "calibrated": 0}
    for _ in range(SIMS):
        y, reps = _simulate(rng, "gamma", 6, NOISE["seed sd 0.12, documents 0.025 per seed"], truth=0.3)
        lo, hi = _percentile_bootstrap(rng, y, reps)
        hits["percentile"] += lo <= 0.3 <= hi
        lo, hi = mean_interval(y, reps)["ci95"]
        hits["calibrated"] += lo <= 0.3 <= hi
    assert hits["percentile"] / SIMS < 0.90
    assert 0.93 <= hits["calibrated"] / SIMS <= 0.97


def test_three_seeds_are_too_few_for_an_interval():
    out = mean_interval([0.1, 0.2, 0.6])
    assert out["too_few"] and MIN_SEEDS > 3
    assert all(math.isnan(x) for x in out["ci95"])
    assert out["mean"] == pytest.approx(0.3)


def test_symmetric_values_give_the_plain_t_interval_by_hand():
    out = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), se = sd / sqrt(5) = 0.70711; t_{0.975, 4} = 2.776445; no skew
    assert out["skew"] == 0.0 and out["df"] == pytest.approx(4.0)
    assert out["ci95"] == pytest.approx([3 - 2.776445 * 0.7071068, 3 + 2.776445 * 0.7071068], rel=1e-6)


def test_right_skewed_values_widen_the_upper_side():
    out = mean_interval([0.12, 0.15, 0.18, 0.2, 0.25, 0.65])
    lo, hi = out["ci95"]
    assert out["skew"] > 0 and hi - out["mean"] > out["mean"] - lo
    # Hall's transform by hand: a = skew/3, b = skew/6, endpoints mean - se * g^-1(+-q)
    a, b, q, se = out["skew"] / 3, out["skew"] / 6, t_quantile(out["df"]), out["se"]
    ginv = lambda y: (np.cbrt(3 * a * (y - b) + 1) - 1) / a  # noqa: E731
    assert lo == pytest.approx(out["mean"] - se * ginv(q))
    assert hi == pytest.approx(out["mean"] - se * ginv(-q))


def test_shared_document_variance_by_hand():
    # identical replicates in both seeds: all document error shared, var([1, 2, 3]) = 1
    assert shared_document_variance(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])) == pytest.approx(1.0)
    # opposite replicates: nothing shared (the estimate -2 is kept at 0)
    assert shared_document_variance(np.array([[1.0, -1.0], [-1.0, 1.0]])) == 0.0
    # a replicate where one seed is nan is left out: columns 0 and 2 remain
    R = np.array([[1.0, np.nan, 3.0], [1.0, 5.0, 3.0]])
    assert shared_document_variance(R) == pytest.approx(2.0)  # var([1, 3]) = 2, each seed's var 2


def test_document_error_adds_to_the_seed_part():
    y = [1.0, 2.0, 3.0, 4.0, 5.0]
    reps = np.stack([np.array([0.0, 0.2, -0.2, 0.1, -0.1]) + v for v in y])  # the same shift in every seed
    out = mean_interval(y, reps)
    assert out["doc_var"] == pytest.approx(np.var([0.0, 0.2, -0.2, 0.1, -0.1], ddof=1))
    assert out["se"] == pytest.approx(math.sqrt(2.5 / 5 + out["doc_var"]))
    seed_part = 2.5 / 5
    assert out["df"] == pytest.approx(out["se"] ** 4 / (seed_part**2 / 4))


def test_pairs_by_seed_id_not_by_position():
    a = {0: 1.0, 2: 2.0, 5: 4.0, 9: 8.0, 11: 16.0}
    b = {11: 15.0, 9: 7.0, 5: 3.0, 2: 1.0, 0: 0.0, 99: 100.0}
    out = paired_interval(a, b)
    assert out["seeds"] == [0, 2, 5, 9, 11]
    assert out["mean"] == 1.0 and out["ci95"] == [1.0, 1.0]  # every difference is exactly 1


def test_holm_step_down_by_hand():
    assert holm({"x": 0.01, "y": 0.02, "z": 0.04}) == {"x": True, "y": True, "z": True}
    # 0.03 > 0.05 / 2 stops the descent: z is not rejected although 0.04 < 0.05
    assert holm({"x": 0.01, "y": 0.03, "z": 0.04}) == {"x": True, "y": False, "z": False}
    assert holm({"x": 0.2, "w": math.nan}) == {"x": False, "w": False}


def test_p_value_agrees_with_the_interval():
    """p < 0.05 exactly when the 95 % interval excludes 0 (one inversion of one statistic)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        y = rng.gamma(2.0, 0.05, 6) + rng.normal(0.0, 0.05)
        out = mean_interval(y)
        lo, hi = out["ci95"]
        assert (out["p"] < 0.05) == (lo > 0 or hi < 0)


def coverage_table(sims: int = SIMS) -> str:
    """The table docs/evaluation.md prints: `python -m tests.eval.test_intervals` (about a minute)."""
    lines = [
        "| seeds | seed distribution | noise | former percentile bootstrap | calibrated (Hall-t) |",
        "|---:|---|---|---:|---:|",
    ]
    for dist in ("normal", "gamma", "lognormal"):
        for n in (3, 4, 5, 6, 12):
            for noise in NOISE:
                rng = np.random.default_rng(zlib.crc32(f"table{dist}{n}{noise}".encode()))
                hits = np.zeros(2)
                for _ in range(sims):
                    if dist == "lognormal":  # heavier skew (1.6 on the log scale 0.5): beyond what the test asserts
                        sd_seed, sd_shared, sd_own = NOISE[noise]
                        x = rng.lognormal(0.0, 0.5, n)
                        m, v = math.exp(0.125), (math.exp(0.25) - 1) * math.exp(0.25)
                        y = 0.3 + (x - m) / math.sqrt(v) * sd_seed + rng.normal(0, sd_shared) + rng.normal(0, sd_own, n)
                        reps = y[:, None] + rng.normal(0, sd_shared, B)[None, :] + rng.normal(0, sd_own, (n, B))
                    else:
                        y, reps = _simulate(rng, dist, n, NOISE[noise], truth=0.3)
                    lo, hi = _percentile_bootstrap(rng, y, reps)
                    hits[0] += lo <= 0.3 <= hi
                    lo, hi = mean_interval(y, reps, min_seeds=2)["ci95"]
                    hits[1] += lo <= 0.3 <= hi
                cov = hits / sims
                lines.append(f"| {n} | {dist} | {noise} | {cov[0]:.3f} | {cov[1]:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(coverage_table())


def test_seeds_a_few_ulps_apart_do_not_divide_by_zero():
    """Values 1e-160 apart underflowed sd² to 0 (hypothesis found it): computed in units of the
    largest deviation, the interval is the same as for 1, 2, 3, 4, 5, scaled."""
    tiny = mean_interval([1e-160, 2e-160, 3e-160, 4e-160, 5e-160])
    plain = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert tiny["df"] == pytest.approx(4.0) and tiny["ci95"] == pytest.approx([x * 1e-160 for x in plain["ci95"]])
    assert mean_interval([0.8, 0.8, 0.8, 0.8, 0.8])["ci95"] == pytest.approx([0.8, 0.8])  # float-noise deviations
