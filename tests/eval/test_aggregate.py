"""eval/aggregate.py: seeds -> conditions, t-intervals, paired verdicts, checked by hand."""

import json
import math

import numpy as np
import pytest

from orthosae.eval.aggregate import (
    IncompleteConditionError,
    aggregate,
    conditions_markdown,
    group_conditions,
    paired,
    summarise_condition,
)
from orthosae.eval.condition_plots import plot_conditions

Z = np.random.default_rng(5).standard_normal(500)  # document draw i: the same documents for every run


def result(kind, seed, alpha=0.0, ev=math.nan, l0=10.0, sel=math.nan, sel_se=math.nan, lr=4e-4):
    unl = {"best_selectivity": sel}
    if math.isfinite(sel_se):  # document-bootstrap replicates, as eval/unlearning.py writes them
        unl |= {
            "replicates": {"best_selectivity": (sel + sel_se * Z).tolist()},
            "intervals": {"se": {"best_selectivity": sel_se}, "ci95": {}},
        }
    return {
        "cfg": {
            "orthosae": {
                "name": "x",
                "type": kind,
                "train": {"seed": seed, "lr": lr, "activation": "relu"},
                "ortho": {"alpha": alpha},
            }
        },
        "reconstruction": {"l0": l0, "explained_variance": ev, "frac_dead": 0.1 * seed},
        "unlearning": unl,
        "conditioning": {"pairs": [{"decoder_rms_cross_cos": 0.05 + alpha}]},
    }


def test_condition_summary_by_hand_and_too_few_seeds():
    values = {s: v for s, v in enumerate([0.84, 0.85, 0.86, 0.87, 0.88])}
    s = summarise_condition(values, None)
    # symmetric: no skew correction; sd 0.015811, se 0.0070711, t_{0.975,4} = 2.776445
    assert s["mean"] == pytest.approx(0.86) and s["n"] == 5 and s["reached"] == "5 of 5"
    assert s["ci95"] == pytest.approx([0.86 - 2.776445 * 0.0070711, 0.86 + 2.776445 * 0.0070711], abs=1e-6)
    three = summarise_condition({0: 1.0, 1: 2.0, 2: 3.0}, None)
    assert three["mean"] == 2.0 and three["too_few"] and math.isnan(three["ci95"][0])
    assert three["interval"].startswith("too few seeds (3 < 5)")


def test_a_figure_some_seed_lacks_is_na_with_how_many_reach_it():
    s = summarise_condition({0: 0.2, 1: math.nan, 2: 0.4, 3: 0.3, 4: 0.5}, None)
    assert math.isnan(s["mean"]) and s["reached"] == "4 of 5" and s["interval"] == "n/a: 4 of 5 seeds have it"


def test_paired_winner_only_when_the_interval_of_differences_excludes_zero():
    a = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}
    # differences 0.5, 0.6, 0.4, 0.5, 0.5: mean 0.5, sd 0.070711, symmetric: 0.5 ± 2.776445·0.031623
    p = paired(a, {k: v - d for (k, v), d in zip(a.items(), [0.5, 0.6, 0.4, 0.5, 0.5])}, higher=True)
    assert p["verdict"] == "A" and p["mean_diff"] == pytest.approx(0.5)
    assert p["ci95"] == pytest.approx([0.5 - 0.087798, 0.5 + 0.087798], abs=1e-5)
    assert paired(a, {k: v - 0.5 for k, v in a.items()}, higher=False)["verdict"] == "B"  # lower is better
    # differences 0.5, -0.3, 0.1, -0.1, 0.3: mean 0.1, sd 0.316228, symmetric: 0.1 ± 0.392649 holds 0 -> tie
    p = paired(a, {k: v - d for (k, v), d in zip(a.items(), [0.5, -0.3, 0.1, -0.1, 0.3])}, higher=True)
    assert p["verdict"] == "tie" and p["ci95"] == pytest.approx([0.1 - 0.392649, 0.1 + 0.392649], abs=1e-5)
    # only the seed ids both have count; fewer than 5 -> no verdict
    assert (
        paired(a, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 7: 0.0}, higher=True)["verdict"]
        == "no verdict: 4 shared seed(s) < 5"
    )


def test_conditions_group_seeds_and_name_winners():
    results = {}
    for s in range(5):
        results[f"baseline-s{s}"] = result("baseline", s, ev=0.80 + 0.01 * s, l0=10.0 + 0.1 * s, sel=0.2, sel_se=0.01)
        results[f"adaptive-alpha0-s{s}"] = result(
            "adaptive", s, ev=0.85 + 0.01 * s, l0=10.2, sel=0.3 + 0.01 * s, sel_se=0.02
        )
        results[f"adaptive-alpha0.04-s{s}"] = result(
            "adaptive", s, alpha=0.04, ev=0.80 + 0.01 * s + 0.005 * (s == 2), l0=10.1, sel=0.3
        )
    results["other-lr"] = result("baseline", 0, lr=1e-3, ev=0.5)  # differs by more than the seed: its own condition
    groups = group_conditions(results)
    assert groups["baseline"] == [f"baseline-s{s}" for s in range(5)] and groups["other-lr"] == ["other-lr"]
    assert list(groups) == ["baseline", "adaptive-alpha0", "adaptive-alpha0.04", "other-lr"]
    agg = aggregate(results)
    ev = agg["conditions"]["adaptive-alpha0"]["metrics"]["explained_variance"]
    assert ev["mean"] == pytest.approx(0.87) and ev["per_seed"]["4"] == pytest.approx(0.89)
    assert ev["ci95"] == pytest.approx([0.87 - 2.776445 * 0.0070711, 0.87 + 2.776445 * 0.0070711], abs=1e-6)
    sel = agg["conditions"]["baseline"]["metrics"]["best_selectivity"]
    # every seed's replicates move with the same Z: all document error is shared, sd 0.01·sd(Z)
    assert sel["doc_se"] == pytest.approx(0.01 * np.std(Z, ddof=1)) and sel["sd"] == pytest.approx(0.0, abs=1e-12)
    pair = next(p for p in agg["pairs"] if (p["a"], p["b"]) == ("baseline", "adaptive-alpha0"))
    # EV: adaptive-alpha0 − baseline = 0.05 on every seed -> sd 0, the interval is the point: adaptive wins
    assert pair["metrics"]["explained_variance"]["winner"] == "adaptive-alpha0"
    assert pair["metrics"]["explained_variance"]["mean_diff"] == pytest.approx(-0.05)
    pair = next(p for p in agg["pairs"] if (p["a"], p["b"]) == ("baseline", "adaptive-alpha0.04"))
    assert pair["metrics"]["explained_variance"]["winner"] == "tie"  # diffs 0, 0, -0.005, 0, 0: holds 0
    assert agg["who_wins"]["explained_variance"] == (
        "no winner: best mean adaptive-alpha0; vs other-lr: no verdict: 1 shared seed(s) < 5"
    )
    del results["other-lr"]
    agg = aggregate(results)
    assert agg["who_wins"]["explained_variance"] == "adaptive-alpha0"
    assert agg["l0"]["matched"] and agg["l0"]["max_over_min_minus_1"] == pytest.approx(
        10.2 / 10.1 - 1
    )  # mean L0s 10.2, 10.2, 10.1
    md = conditions_markdown(agg, ["x.png"])
    assert "| adaptive-alpha0 | adaptive | 0.0 | relu | 0, 1, 2, 3, 4 | 10.200" in md
    assert f"(seed sd 0.000, shared doc se {0.01 * np.std(Z, ddof=1):.3g})" in md and "→ adaptive-alpha0" in md
    json.dumps(agg)  # report.json-ready


def test_condition_plots_are_written(tmp_path):
    results = {
        f"{k}-s{s}": result(k, s, ev=0.8 + 0.01 * s, l0=10.0) for k in ("baseline", "adaptive") for s in range(5)
    }
    plots = plot_conditions(tmp_path, aggregate(results))
    assert plots == ["conditions_ev_vs_l0.png", "conditions_overlap_vs_alpha.png", "conditions_dead_fraction.png"]
    assert all((tmp_path / p).stat().st_size > 1000 for p in plots)


def test_document_error_shared_by_the_seeds_widens_the_interval_and_cancels_in_pairs():
    results = {f"baseline-s{s}": result("baseline", s, sel=0.20 + 0.05 * s, sel_se=0.03) for s in range(5)}
    results |= {f"adaptive-s{s}": result("adaptive", s, sel=0.25 + 0.05 * s, sel_se=0.03) for s in range(5)}
    agg = aggregate(results)
    sel = agg["conditions"]["baseline"]["metrics"]["best_selectivity"]
    # seeds 0.20..0.40: sd 0.079057; shared document variance (0.03·sd(Z))²; df by Welch-Satterthwaite
    seed_part, doc = 0.079057**2 / 5, (0.03 * np.std(Z, ddof=1)) ** 2
    se = math.sqrt(seed_part + doc)
    df = (seed_part + doc) ** 2 / (seed_part**2 / 4)
    from scipy import stats

    assert sel["ci95"] == pytest.approx(
        [0.3 - stats.t.ppf(0.975, df) * se, 0.3 + stats.t.ppf(0.975, df) * se], abs=1e-5
    )
    # paired on seed ids and documents: adaptive − baseline = 0.05 on every seed and every document draw
    pair = agg["pairs"][0]["metrics"]["best_selectivity"]
    assert pair["ci95"] == pytest.approx([-0.05, -0.05]) and pair["winner"] == "adaptive"
    # one seed each: no verdict, whatever the eval's error says
    one = {
        "baseline": result("baseline", 0, sel=0.20, sel_se=0.03),
        "adaptive": result("adaptive", 0, sel=0.60, sel_se=0.03),
    }
    assert aggregate(one)["pairs"][0]["metrics"]["best_selectivity"]["winner"].startswith("no verdict: 1 shared")


def test_a_failed_run_stops_the_aggregation_naming_it():
    results = {f"adaptive-s{s}": result("adaptive", s, sel=0.3, sel_se=0.01) for s in range(5)}
    results["adaptive-s3"]["status"] = "failed"
    results["adaptive-s3"]["message"] = "non-finite loss at step 40"
    with pytest.raises(IncompleteConditionError, match="adaptive-s3: the run failed .non-finite loss at step 40"):
        aggregate(results)


def test_an_interval_depends_only_on_its_own_conditions():
    """Adding a condition, or reordering them, leaves every other condition's and pair's interval
    unchanged."""

    def runs(kind, lr, sel, n=5):
        return {
            f"{kind}-lr{lr}-s{s}": result(kind, s, lr=lr, sel=sel + 0.07 * s * (-1) ** s, sel_se=0.04) for s in range(n)
        }

    a, b, c = runs("baseline", 1e-3, 0.2), runs("adaptive", 4e-4, 0.3), runs("fixed", 4e-4, 0.25, n=6)
    two, three, shuffled = aggregate(a | b), aggregate(c | a | b), aggregate(b | c | a)

    def pair(agg, x, y):
        (p,) = [p for p in agg["pairs"] if {p["a"], p["b"]} == {x, y}]
        ci = p["metrics"]["best_selectivity"]["ci95"]
        return ci if p["a"] == x else [-ci[1], -ci[0]]

    for agg in (three, shuffled):
        for cond in ("baseline-lr0.001", "adaptive-lr0.0004"):
            assert (
                agg["conditions"][cond]["metrics"]["best_selectivity"]["ci95"]
                == two["conditions"][cond]["metrics"]["best_selectivity"]["ci95"]
            )
        assert pair(agg, "adaptive-lr0.0004", "baseline-lr0.001") == pytest.approx(
            pair(two, "adaptive-lr0.0004", "baseline-lr0.001"), abs=1e-12
        )


def test_conditions_further_apart_in_l0_than_the_rule_are_not_compared():
    results = {
        "baseline": result("baseline", 0, l0=50.0, sel=0.2, sel_se=0.01),
        "adaptive": result("adaptive", 0, l0=60.0, sel=0.9, sel_se=0.01),
    }
    v = aggregate(results)["pairs"][0]["metrics"]["best_selectivity"]
    assert v["verdict"].startswith("not compared: L0") and v["winner"].startswith("not compared")


def test_a_report_from_before_the_rename_aggregates_as_one_after_it():
    """Reports before issue 25 name the RMS cross-group cosine decoder_overlap_fro_normalized."""
    new = {f"adaptive-s{s}": result("adaptive", s, alpha=0.04, ev=0.8) for s in range(3)}
    old = json.loads(json.dumps(new).replace("decoder_rms_cross_cos", "decoder_overlap_fro_normalized"))
    assert "decoder_rms_cross_cos" not in json.dumps(old)
    got = [aggregate(r)["conditions"]["adaptive"]["metrics"]["rms_cross_cos"] for r in (new, old)]
    assert got[0] == got[1] and got[0]["mean"] == pytest.approx(0.05 + 0.04)


def test_overlap_plot_takes_two_families_at_the_same_alpha(tmp_path):
    """Exact and sketched adaptive runs share α values: the overlap-vs-α plot draws one series per
    family (it used to sort (α, metrics) tuples and fail comparing two dicts, losing the report)."""
    results = {}
    for s in range(3):
        for alpha in (0.0, 0.04):
            results[f"adaptive-alpha{alpha:g}-s{s}"] = result("adaptive", s, alpha=alpha, ev=0.8)
            r = result("adaptive", s, alpha=alpha, ev=0.7)
            r["cfg"]["orthosae"]["ortho"]["sketch"] = 32
            results[f"adaptive-sketch-alpha{alpha:g}-s{s}"] = r
    agg = aggregate(results)
    assert len(agg["conditions"]) == 4
    plots = plot_conditions(tmp_path, agg)
    assert (
        "conditions_overlap_vs_alpha.png" in plots
        and (tmp_path / "conditions_overlap_vs_alpha.png").stat().st_size > 1000
    )


def test_primary_comparisons_are_holm_corrected_together():
    """Two conditions against the baseline curve and one pair on the primary figure: Holm's rule over
    the three p-values, by hand."""

    def runs(kind, label, ev, sel, spread, alpha=0.0):
        return {
            f"{label}-s{s}": result(kind, s, alpha=alpha, ev=ev, sel=sel + spread * d, sel_se=0.01)
            for s, d in enumerate([-2, -1, 0, 1, 2])
        }

    results = (
        runs("baseline", "baseline", 0.80, 0.2, 0.01)
        | runs("adaptive", "adaptive", 0.80, 0.5, 0.02)
        | runs("fixed", "fixed", 0.80, 0.25, 0.034)
        | runs("fixed", "fixed-a0.04", 0.80, 0.26, 0.04, alpha=0.04)
    )
    primary = {
        "figure": "best_selectivity_crossfit",
        "quality": "explained_variance_docs",
        "pairs": [["adaptive", "fixed"]],
    }
    for r in results.values():  # quality on every seed equal to the baseline's: the gap is y − baseline y per seed
        r["unlearning"]["explained_variance_docs"] = 0.80
        r["unlearning"]["best_selectivity_crossfit"] = r["unlearning"]["best_selectivity"]
        r["unlearning"]["replicates"]["best_selectivity_crossfit"] = r["unlearning"]["replicates"]["best_selectivity"]
    agg = aggregate(results, primary=primary)
    comp = agg["primary"]["comparisons"]
    assert set(comp) == {
        "adaptive vs the baseline curve",
        "fixed vs the baseline curve",
        "fixed-a0.04 vs the baseline curve",
        "adaptive − fixed",
    }
    p = {k: v["p"] for k, v in comp.items()}
    order = sorted(p, key=p.get)
    # Holm by hand: the i-th smallest p against 0.05 / (4 − i), stopping at the first failure
    expect, going = {}, True
    for i, k in enumerate(order):
        going = going and p[k] <= 0.05 / (4 - i)
        expect[k] = going
    assert {k: v["holm"] in ("above", "below") for k, v in comp.items()} == expect
    assert comp["adaptive vs the baseline curve"]["gap"] == pytest.approx(0.3)
    assert comp["adaptive − fixed"]["gap"] == pytest.approx(0.25)
    assert comp["adaptive vs the baseline curve"]["holm"] == "above"
    # the fixed conditions: each nominally above (its 95 % interval excludes 0), but not after Holm
    for c in ("fixed", "fixed-a0.04"):
        v = comp[f"{c} vs the baseline curve"]
        assert v["ci95"][0] > 0 and 0.025 < v["p"] < 0.05 and v["holm"] == "tie"
        assert agg["frontier"]["best_selectivity_crossfit"]["explained_variance_docs"][c]["verdict"] == "above"


def _l0_apart_verdict() -> dict:
    """adaptive at L0 60 against a baseline at L0 50 (20 % apart), on the cross-fitted frontier."""
    results = {f"baseline-s{s}": result("baseline", s, l0=50.0, sel=0.2, sel_se=0.01) for s in range(5)}
    results |= {f"adaptive-s{s}": result("adaptive", s, l0=60.0, sel=0.4, sel_se=0.01) for s in range(5)}
    for r in results.values():
        r["unlearning"]["best_selectivity_crossfit"] = r["unlearning"]["best_selectivity"]
        r["unlearning"]["explained_variance_docs"] = 0.8
    return aggregate(results)["frontier"]["best_selectivity_crossfit"]["explained_variance_docs"]["adaptive"]


def test_a_condition_no_baseline_matches_in_l0_is_not_compared_on_the_frontier():
    v = _l0_apart_verdict()
    assert v["verdict"] == "not compared: no baseline condition's L0 within 10% of 60.0"


# ---- the report's cells, character for character (issue 35, mutation testing)


def test_condition_cell_by_hand():
    """The cell's number format is common/markdown.cell's (tests/common/test_markdown.py); here: what a
    condition's cell adds to it."""
    from orthosae.eval.aggregate import condition_cell

    s = {"mean": 0.86, "ci95": [0.84, 0.88], "n": 5, "too_few": False, "reached": "5 of 5"}
    assert condition_cell(s) == "0.860 [0.840, 0.880]"
    assert condition_cell({**s, "sd": 0.01, "doc_se": 0.002}, with_eval=True) == (
        "0.860 [0.840, 0.880] (seed sd 0.010, shared doc se 0.002)"
    )
    assert condition_cell({**s, "sd": 0.01, "doc_se": 0.002}) == "0.860 [0.840, 0.880]"  # not an eval figure
    assert condition_cell({**s, "sd": math.nan, "doc_se": 0.002}, with_eval=True) == "0.860 [0.840, 0.880]"
    assert condition_cell({**s, "sd": 0.01}, with_eval=True) == "0.860 [0.840, 0.880]"  # no document error
    few = {"mean": 2.0, "ci95": [math.nan, math.nan], "n": 3, "too_few": True, "reached": "3 of 3"}
    assert condition_cell(few) == "2.000 (too few seeds)"
    assert condition_cell({**few, "n": 1}) == "2.000"  # one seed: nothing to say about an interval
    assert condition_cell({**few, "ci95": [1.0, math.nan], "too_few": False}) == "2.000"
    assert condition_cell({"mean": math.nan, "ci95": [math.nan, math.nan], "reached": "2 of 5"}) == "n/a (2 of 5 seeds)"
    assert condition_cell({"mean": math.nan, "ci95": [math.nan, math.nan], "reached": "5"}) == "n/a"
    assert condition_cell(None) == "n/a" and condition_cell({}) == "n/a"


def test_conditions_markdown_in_full():
    """The report's conditions section, line for line. By hand: EV 0.80..0.84 has mean 0.82 and
    half-width 2.776445 · 0.0070711 = 0.0196; dead fraction 0.1 · seed: 0.2 ± 2.776445 · 0.070711;
    the baseline's selectivity has no seed spread, only the shared document error 0.01 · sd(Z),
    so its interval is 0.2 ± 1.96 · 0.0096; the lone fixed seed has no interval and no selectivity;
    the pairwise lines leave out the metrics that are not compared (L0, the overlap)."""
    results = {}
    for s in range(5):
        results[f"baseline-s{s}"] = result("baseline", s, ev=0.80 + 0.01 * s, l0=10.0, sel=0.2, sel_se=0.01)
        results[f"adaptive-s{s}"] = result("adaptive", s, alpha=0.04, ev=0.85 + 0.01 * s, l0=10.0, sel=0.3)
    results["fixed-s0"] = result("fixed", 0, ev=0.9, l0=10.0, sel=math.nan)
    got = conditions_markdown(aggregate(results), ["a.png", "b.png"]).split("\n")
    assert got == [
        "",
        "## Conditions (runs that differ only by seed; mean [95 % interval])",
        "",
        "Intervals: Student-t over seeds with Hall's skewness correction; for the unlearning sweep's figures the document error every seed shares is added (eval/intervals.py; coverage measured in docs/evaluation.md). Fewer than 5 seeds: no interval. A figure some seed lacks is n/a, with how many seeds have it.",
        "",
        "Quality:",
        "",
        "| condition | type | α | activation | seeds | L0 | EV | dead fraction | RMS cross-group cos |",
        "|---|---|---|---|---|---|---|---|---|",
        "| baseline | baseline |  | relu | 0, 1, 2, 3, 4 | 10.000 [10.000, 10.000] | 0.820 [0.800, 0.840] | 0.200 [0.00368, 0.396] | 0.050 [0.050, 0.050] |",
        "| adaptive | adaptive | 0.04 | relu | 0, 1, 2, 3, 4 | 10.000 [10.000, 10.000] | 0.870 [0.850, 0.890] | 0.200 [0.00368, 0.396] | 0.090 [0.090, 0.090] |",
        "| fixed | fixed | 0.0 | relu | 0 | 10.000 | 0.900 | 0.000 | 0.050 |",
        "",
        "Unlearning:",
        "",
        "| condition | type | α | activation | seeds | best selectivity, in sample (nats) |",
        "|---|---|---|---|---|---|",
        "| baseline | baseline |  | relu | 0, 1, 2, 3, 4 | 0.200 [0.181, 0.219] (seed sd 0.000, shared doc se 0.0096) |",
        "| adaptive | adaptive | 0.04 | relu | 0, 1, 2, 3, 4 | 0.300 [0.300, 0.300] |",
        "| fixed | fixed | 0.0 | relu | 0 | n/a |",
        "",
        "Per-seed values:",
        "",
        "- **baseline**: l0 s0=10.000, s1=10.000, s2=10.000, s3=10.000, s4=10.000; explained_variance s0=0.800, s1=0.810, s2=0.820, s3=0.830, s4=0.840; frac_dead s0=0.000, s1=0.100, s2=0.200, s3=0.300, s4=0.400; best_selectivity s0=0.200, s1=0.200, s2=0.200, s3=0.200, s4=0.200; rms_cross_cos s0=0.050, s1=0.050, s2=0.050, s3=0.050, s4=0.050",
        "- **adaptive**: l0 s0=10.000, s1=10.000, s2=10.000, s3=10.000, s4=10.000; explained_variance s0=0.850, s1=0.860, s2=0.870, s3=0.880, s4=0.890; frac_dead s0=0.000, s1=0.100, s2=0.200, s3=0.300, s4=0.400; best_selectivity s0=0.300, s1=0.300, s2=0.300, s3=0.300, s4=0.300; rms_cross_cos s0=0.090, s1=0.090, s2=0.090, s3=0.090, s4=0.090",
        "- **fixed**: l0 s0=10.000; explained_variance s0=0.900; frac_dead s0=0.000; rms_cross_cos s0=0.050",
        "",
        "L0 across conditions: max/min − 1 = 0.000 (within ±10 %, the one L0 rule: conditions further apart are not compared).",
        "",
        "Pairwise (A − B; mean over every seed of a condition (n/a unless every seed has the figure); 95 % intervals: Student-t over seeds at Welch-Satterthwaite df with the document error the seeds share and Hall's skewness correction (eval/intervals.py), none below 5 seeds; a winner only when the interval of the seed-paired difference excludes 0 and the L0 of both lie within 10%):",
        "",
        "- baseline vs adaptive: explained_variance -0.050 [-0.050, -0.050] → adaptive; frac_dead 0.000 [0.000, 0.000] → tie; best_selectivity -0.100 [-0.100, -0.100] → adaptive",
        "- baseline vs fixed: explained_variance -0.100 [n/a, n/a] → no verdict: 1 shared seed(s) < 5; frac_dead 0.000 [n/a, n/a] → no verdict: 1 shared seed(s) < 5",
        "- adaptive vs fixed: explained_variance -0.050 [n/a, n/a] → no verdict: 1 shared seed(s) < 5; frac_dead 0.000 [n/a, n/a] → no verdict: 1 shared seed(s) < 5",
        "",
        "![a.png](a.png)",
        "![b.png](b.png)",
        "",
    ]
    assert conditions_markdown({"conditions": {}}, []) == ""


def test_who_wins_ties_and_leaves_references_out():
    """Equal mean EV (0.82: the same five values in another seed order) ties; the reference's far
    better EV wins its pairs but a label-using edit does not compete on quality."""
    results = {}
    for s in range(5):
        results[f"baseline-s{s}"] = result("baseline", s, ev=0.80 + 0.01 * s, l0=10.0)
        results[f"adaptive-s{s}"] = result("adaptive", s, ev=0.80 + 0.01 * ((3 * s) % 5), l0=10.0)
        results[f"ref-s{s}"] = result("reference", s, ev=0.99, l0=10.0)
    agg = aggregate(results)
    assert agg["who_wins"] == {"explained_variance": "tie: baseline, adaptive", "frac_dead": "tie: baseline, adaptive"}
    winners = {(p["a"], p["b"]): p["metrics"]["explained_variance"]["winner"] for p in agg["pairs"]}
    assert winners == {("baseline", "adaptive"): "tie", ("baseline", "ref"): "ref", ("adaptive", "ref"): "ref"}


def test_primary_pairs_named_either_way_and_a_pair_not_measured():
    """A primary pair named (B, A) reports B − A: the gap and interval of the stored A − B negated
    and swapped; a pair of conditions never compared is "not measured", excluded from Holm."""
    results = {}
    for s, d in enumerate([-2, -1, 0, 1, 2]):
        results[f"adaptive-s{s}"] = result("adaptive", s, sel=0.5 + 0.02 * d, sel_se=0.01)
        results[f"fixed-s{s}"] = result("fixed", s, sel=0.25 + 0.01 * d * d, sel_se=0.01)
    primary = {
        "figure": "best_selectivity",
        "quality": "explained_variance",
        "pairs": [["fixed", "nope"], ["fixed", "adaptive"]],
    }
    agg = aggregate(results, primary=primary)
    prim = agg["primary"]
    assert (prim["figure"], prim["quality"]) == ("best_selectivity", "explained_variance")
    assert prim["rule"] == "Holm over these comparisons, family-wise 5 %; gaps > 0 favour the first named"
    (row,) = agg["pairs"]
    assert (row["a"], row["b"]) == ("adaptive", "fixed")
    stored = row["metrics"]["best_selectivity"]
    got = prim["comparisons"]["fixed − adaptive"]
    # fixed − adaptive: 0.25 + 0.01·(4, 1, 0, 1, 4) − (0.5 + 0.02·(−2..2)): mean 0.27 − 0.5 = −0.23
    assert got["gap"] == pytest.approx(-0.23) and got["gap"] == -stored["mean_diff"]
    assert got["ci95"] == [-stored["ci95"][1], -stored["ci95"][0]] and got["ci95"][1] < 0
    assert got["kind"] == "pair" and got["verdict"] == stored["verdict"] == "A" and got["p"] == stored["p"]
    assert got["seeds"] == [0, 1, 2, 3, 4] and got["holm"] == "below"  # the only test in the family
    missing = prim["comparisons"]["fixed − nope"]
    assert missing["kind"] == "pair" and missing["verdict"] == missing["holm"] == "no verdict: pair not measured"
    assert math.isnan(missing["p"]) and math.isnan(missing["gap"]) and all(math.isnan(c) for c in missing["ci95"])
    assert list(prim["comparisons"]) == ["fixed − nope", "fixed − adaptive"]  # past the one not measured
    no_pairs = aggregate(results, primary={"figure": "best_selectivity", "quality": "explained_variance"})
    assert no_pairs["primary"]["comparisons"] == {}  # "pairs" may be left out


def test_primary_frontier_entries_carry_the_condition():
    results = {}
    for s, d in enumerate([-2, -1, 0, 1, 2]):
        for kind, sel, spread, se in (("baseline", 0.2, 0.01, 0.01), ("adaptive", 0.5, 0.02, 0.03)):
            r = result(kind, s, ev=0.8, sel=sel + spread * d, sel_se=se)
            u = r["unlearning"]
            u["explained_variance_docs"] = 0.8
            u["best_selectivity_crossfit"] = u["best_selectivity"]
            u["replicates"]["best_selectivity_crossfit"] = u["replicates"]["best_selectivity"]
            results[f"{kind}-s{s}"] = r
    primary = {"figure": "best_selectivity_crossfit", "quality": "explained_variance_docs", "pairs": []}
    agg = aggregate(results, primary=primary)
    (entry,) = agg["primary"]["comparisons"].values()
    front = agg["frontier"]["best_selectivity_crossfit"]["explained_variance_docs"]["adaptive"]
    assert entry == {"kind": "frontier", "condition": "adaptive", **front, "holm": "above"}
    # the frontier's gap per seed, 0.3 + 0.01·d, with each seed's document replicates differenced:
    # (0.5 + 0.02·d + 0.03·Z) − (0.2 + 0.01·d + 0.01·Z) = gap + 0.02·Z, a shared document error
    from orthosae.eval.intervals import mean_interval

    gaps = [0.3 + 0.01 * d for d in (-2, -1, 0, 1, 2)]
    want = mean_interval(gaps, np.stack([g + 0.02 * Z for g in gaps]))
    assert front["gap"] == pytest.approx(0.3) and front["ci95"] == pytest.approx(want["ci95"])
    assert want["ci95"] != pytest.approx(mean_interval(gaps)["ci95"])  # the replicates widen it


def test_settings_and_condition_key_of_a_result_without_them():
    from orthosae.eval.aggregate import condition_key, seed_of

    assert seed_of({}) is None and seed_of({"cfg": {}}) is None
    assert condition_key({}) == condition_key({"cfg": {"orthosae": {}}}) == "[null, {}, {}, null]"
    r = {"cfg": {"orthosae": {"type": "fixed", "train": {"seed": 3, "lr": 1.0}, "ortho": {"alpha": 0.1}}}}
    assert condition_key(r) == '["fixed", {"lr": 1.0}, {"alpha": 0.1}, null]'


def test_conditions_markdown_l0_apart_and_only_unlearning_columns():
    from orthosae.eval.aggregate import condition_cell
    from orthosae.eval.metrics import registry

    assert condition_cell({"mean": math.nan, "ci95": [math.nan, math.nan]}) == "n/a"  # no "reached"
    few = {"mean": 2.0, "ci95": [math.nan, math.nan], "too_few": True}
    assert condition_cell(few) == "2.000" and condition_cell({**few, "n": 2}) == "2.000 (too few seeds)"
    assert condition_cell({"mean": 2.0, "ci95": [1.0, 3.0], "doc_se": 0.1}, with_eval=True) == "2.000 [1.000, 3.000]"
    results = {}
    for s, d in enumerate([-2, -1, 0, 1, 2]):
        results[f"baseline-s{s}"] = result("baseline", s, l0=10.0, sel=0.2 + 0.01 * d)
        results[f"adaptive-s{s}"] = result("adaptive", s, l0=12.0, sel=0.3 + 0.02 * d)
    sel = [m for m in registry() if m.key == "best_selectivity"]
    agg = aggregate(results, metrics=[m for m in registry() if m.key in ("l0", "best_selectivity")])
    text = conditions_markdown(agg, [], metrics=sel).split("\n")
    # L0 12 / 10 − 1 = 0.2: further apart than the rule's 10 %
    assert (
        "L0 across conditions: max/min − 1 = 0.200 (NOT within ±10 %, the one L0 rule: "
        "conditions further apart are not compared)."
    ) in text
    assert "Quality:" not in text and "Unlearning:" in text  # only the metrics asked for
    # baseline − adaptive per seed: −0.1 − 0.01·d (mean −0.1, sd 0.0158), not compared across L0
    v = agg["pairs"][0]["metrics"]["best_selectivity"]
    lo, hi = v["ci95"]
    assert (
        lo < hi
        and f"- baseline vs adaptive: best_selectivity -0.100 [{lo:.3f}, {hi:.3f}] → not compared: L0 10.0 vs 12.0 (> 10% apart)"
        in text
    )


def test_group_conditions_labels_by_hand():
    # one condition whose runs strip to different labels: the first run's label names it
    results = {"a-s0": result("baseline", 0), "b-s1": result("baseline", 1)}
    assert group_conditions(results) == {"a": ["a-s0", "b-s1"]}
    # two conditions stripping to the same label: the second is primed
    results = {"x-s0": result("baseline", 0, lr=1e-3), "x": result("baseline", 5, lr=2e-3)}
    assert group_conditions(results) == {"x": ["x-s0"], "x'": ["x"]}
    from orthosae.eval.aggregate import condition_label

    assert condition_label("a-sNone", None) == "a-sNone" and condition_label("a-s3-s3", 3) == "a-s3"


def test_paired_by_hand_finite_seeds_replicates_and_exact_ends():
    from orthosae.eval.intervals import paired_interval

    a = {s: 1.0 + 0.1 * s for s in range(6)}
    b = {s: 0.5 + 0.05 * s for s in range(6)}
    a_nan = {**a, 0: math.nan}
    assert paired(a_nan, b, higher=True)["seeds"] == [1, 2, 3, 4, 5]  # a seed nan on one side is left out
    reps_a = {s: (a[s] + 0.03 * Z).tolist() for s in range(6)}
    reps_b = {s: (b[s] + 0.01 * Z).tolist() for s in range(6)}
    want = paired_interval(a, b, reps_a, reps_b)
    got = paired(a, b, True, reps_a, reps_b)
    assert got["ci95"] == pytest.approx(want["ci95"]) and got["ci95"] != pytest.approx(paired(a, b, True)["ci95"])
    # equal on every seed: the interval is [0, 0], which holds 0: a tie either way round
    assert paired(a, a, higher=True)["ci95"] == [0.0, 0.0] and paired(a, a, higher=True)["verdict"] == "tie"
    # differences that overflow: no interval
    huge = paired({s: 1e308 for s in range(5)}, {s: -1e308 for s in range(5)}, higher=True)
    assert huge["verdict"] == "no verdict: no interval"


def test_who_wins_text_by_hand():
    results = {}
    for s in range(5):
        # EV: baseline mean 0.82, adaptive 0.83 but noisy (a tie), one other run
        results[f"baseline-s{s}"] = result("baseline", s, ev=0.80 + 0.01 * s, l0=10.0)
        results[f"adaptive-s{s}"] = result("adaptive", s, ev=0.83 + 0.05 * (-1) ** s - 0.01 * (s == 4), l0=10.0)
    tie = aggregate(results)["who_wins"]["explained_variance"]
    assert tie == "tie: adaptive, baseline"  # the best mean first, the pair found whichever side it is on
    results["other"] = result("fixed", 0, ev=0.5, l0=10.0)
    assert aggregate(results)["who_wins"]["explained_variance"] == (
        "no winner: best mean adaptive; vs baseline: tie; vs other: no verdict: 1 shared seed(s) < 5"
    )
    # dead fraction, lower is better: the baseline's is 0.2 lower on every seed
    del results["other"]
    for s in range(5):
        results[f"adaptive-s{s}"]["reconstruction"]["frac_dead"] += 0.2
    assert aggregate(results)["who_wins"]["frac_dead"] == "baseline"


def test_frontier_who_wins_and_a_baseline_without_the_quality():
    results = {}
    for s, d in enumerate([-2, -1, 0, 1, 2]):
        for kind, sel in (("baseline", 0.2), ("adaptive", 0.5)):
            r = result(kind, s, ev=0.8, sel=sel + 0.01 * d, sel_se=0.01)
            r["unlearning"]["best_selectivity_crossfit"] = r["unlearning"]["best_selectivity"]
            if kind == "adaptive":
                r["unlearning"]["explained_variance_docs"] = 0.8
            results[f"{kind}-s{s}"] = r
    agg = aggregate(results)
    # the baseline has the figure but not the quality: no curve, no verdict
    v = agg["frontier"]["best_selectivity_crossfit"]["explained_variance_docs"]["adaptive"]
    assert v["verdict"] == "no verdict: no baseline curve"
    assert (
        agg["who_wins"]["best_selectivity_crossfit"]
        == "adaptive: no verdict: no baseline curve on explained_variance_docs"
    )
    for r in results.values():
        r["unlearning"]["explained_variance_docs"] = 0.8
    agg = aggregate(results)
    v = agg["frontier"]["best_selectivity_crossfit"]["explained_variance_docs"]["adaptive"]
    assert v["against"] == "baseline" and v["verdict"] == "above"
    wins = agg["who_wins"]
    assert wins["best_selectivity_crossfit"] == "adaptive: above on explained_variance_docs"
    assert wins["best_selectivity"] == "adaptive"  # metrics after a frontier one are still judged


def test_a_condition_no_baseline_matches_in_l0_carries_nan_fields():
    v = _l0_apart_verdict()
    assert set(v) == {"verdict", "gap", "ci95", "p"}
    assert math.isnan(v["gap"]) and math.isnan(v["p"]) and all(math.isnan(c) for c in v["ci95"])


def test_condition_entries_and_keys_by_hand():
    from pathlib import Path

    from orthosae.eval.aggregate import check_complete, condition_key
    from orthosae.eval.metrics import registry

    results = {f"fixed-s{s}": result("fixed", s, alpha=0.1, l0=10.0) for s in range(2)}
    for r in results.values():
        del r["cfg"]["orthosae"]["train"]["activation"]  # written before activations were a setting
    results["adaptive"] = result("adaptive", 0, l0=12.0)
    del results["adaptive"]["cfg"]["orthosae"]["ortho"]
    l0 = [m for m in registry() if m.key == "l0"]
    agg = aggregate(results, metrics=l0)
    e = agg["conditions"]["fixed"]
    assert (e["runs"], e["seeds"], e["type"], e["alpha"], e["activation"]) == (
        ["fixed-s0", "fixed-s1"],
        [0, 1],
        "fixed",
        0.1,
        "relu",
    )
    assert set(e["metrics"]) == {"l0"} and agg["conditions"]["adaptive"]["alpha"] is None
    assert agg["l0"]["by_condition"] == {"fixed": 10.0, "adaptive": 12.0}
    assert math.isnan(aggregate(results, metrics=[])["l0"]["by_condition"]["fixed"])  # no L0 measured
    # the key sorts the settings and writes what JSON cannot hold as text
    a = {"cfg": {"orthosae": {"type": "fixed", "train": {"lr": 1, "b": Path("x")}}}}
    b = {"cfg": {"orthosae": {"type": "fixed", "train": {"b": Path("x"), "lr": 1}}}}
    assert condition_key(a) == condition_key(b) == '["fixed", {"b": "x", "lr": 1}, {}, null]'
    with pytest.raises(IncompleteConditionError, match=r"^r: the run failed \(no message\); its condition's seeds"):
        check_complete({"r": {"status": "failed"}})
