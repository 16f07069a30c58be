"""eval/aggregate.py: seeds -> conditions, t-intervals, paired verdicts, checked by hand."""
import json
import math

import numpy as np
import pytest

from orthosae.eval.aggregate import aggregate, conditions_markdown, group_conditions, mean_interval, paired, plot_conditions


Z = np.random.default_rng(5).standard_normal(500)  # document draw i: the same documents for every run


def result(kind, seed, alpha=0.0, ev=math.nan, l0=10.0, sel=math.nan, sel_se=math.nan, lr=4e-4):
    unl = {"best_selectivity": sel}
    if math.isfinite(sel_se):  # document-bootstrap replicates, as eval/unlearning.py writes them
        unl |= {"replicates": {"best_selectivity": (sel + sel_se * Z).tolist()},
                "intervals": {"se": {"best_selectivity": sel_se}, "ci95": {}}}
    return {"cfg": {"orthosae": {"name": "x", "type": kind, "train": {"seed": seed, "lr": lr, "activation": "relu"},
                                 "ortho": {"alpha": alpha}}},
            "reconstruction": {"l0": l0, "explained_variance": ev, "frac_dead": 0.1 * seed},
            "unlearning": unl,
            "conditioning": {"pairs": [{"decoder_rms_cross_cos": 0.05 + alpha}]}}


def test_mean_and_t_interval_by_hand():
    s = mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975,2} = 4.303: half-width 4.303/√3 = 2.4843
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0) and s["n"] == 3
    assert s["ci95"] == pytest.approx([2 - 2.48434, 2 + 2.48434], abs=1e-4)
    s = mean_interval([5.0, 7.0, math.nan, 6.0, 6.0])  # nan dropped; sd √(2/3), t_{.975,3} = 3.182
    assert s["n"] == 4 and s["ci95"][1] - 6.0 == pytest.approx(3.182 * math.sqrt(2 / 3) / 2, abs=1e-4)
    assert math.isnan(mean_interval([4.0])["ci95"][0])


def test_paired_winner_only_when_the_interval_of_differences_excludes_zero():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    # differences 0.5, 0.6, 0.4: mean 0.5, sd 0.1, CI 0.5 ± 4.303·0.1/√3 = [0.2516, 0.7484] -> A wins,
    # although the two conditions' own intervals overlap (the seeds pair them)
    p = paired(a, {0: 0.5, 1: 1.4, 2: 2.6}, higher=True)
    assert p["verdict"] == "A" and p["mean_diff"] == pytest.approx(0.5)
    assert p["ci95"] == pytest.approx([0.25157, 0.74843], abs=1e-4)
    assert paired(a, {0: 0.5, 1: 1.4, 2: 2.6}, higher=False)["verdict"] == "B"  # lower is better: B
    # differences 0.5, -0.3, 0.1: mean 0.1, sd 0.4, CI 0.1 ± 0.9937 contains 0 -> tie
    p = paired(a, {0: 0.5, 1: 2.3, 2: 2.9}, higher=True)
    assert p["verdict"] == "tie" and p["ci95"] == pytest.approx([0.1 - 0.99374, 0.1 + 0.99374], abs=1e-4)
    # only the seeds both have count; fewer than 3 -> no verdict
    assert paired(a, {0: 0.0, 1: 0.0, 7: 0.0}, higher=True)["verdict"].startswith("no verdict: 2 shared seed")


def test_conditions_group_seeds_and_name_winners(tmp_path):
    results = {}
    for s, (ev_b, ev_a, ev_a2) in enumerate([(0.80, 0.85, 0.80), (0.81, 0.86, 0.81), (0.82, 0.87, 0.825)]):
        results[f"baseline-s{s}"] = result("baseline", s, ev=ev_b, l0=10.0 + 0.1 * s, sel=0.2, sel_se=0.01)
        results[f"adaptive-alpha0-s{s}"] = result("adaptive", s, ev=ev_a, l0=10.2, sel=0.3 + 0.01 * s, sel_se=0.02)
        results[f"adaptive-alpha0.04-s{s}"] = result("adaptive", s, alpha=0.04, ev=ev_a2, l0=10.1, sel=0.3)
    results["other-lr"] = result("baseline", 0, lr=1e-3, ev=0.5)  # differs by more than the seed: its own condition
    groups = group_conditions(results)
    assert groups == {"baseline": ["baseline-s0", "baseline-s1", "baseline-s2"],
                      "adaptive-alpha0": ["adaptive-alpha0-s0", "adaptive-alpha0-s1", "adaptive-alpha0-s2"],
                      "adaptive-alpha0.04": ["adaptive-alpha0.04-s0", "adaptive-alpha0.04-s1", "adaptive-alpha0.04-s2"],
                      "other-lr": ["other-lr"]}
    agg = aggregate(results)
    ev = agg["conditions"]["adaptive-alpha0"]["metrics"]["explained_variance"]
    assert ev["mean"] == pytest.approx(0.86) and ev["per_seed"] == {"0": 0.85, "1": 0.86, "2": 0.87}
    assert ev["ci95"] == pytest.approx([0.86 - 4.303 * 0.01 / math.sqrt(3), 0.86 + 4.303 * 0.01 / math.sqrt(3)], abs=1e-5)
    sel = agg["conditions"]["baseline"]["metrics"]["best_selectivity"]
    assert sel["eval_se"] == pytest.approx(0.01) and sel["sd"] == pytest.approx(0.0, abs=1e-12)
    pair = next(p for p in agg["pairs"] if (p["a"], p["b"]) == ("baseline", "adaptive-alpha0"))
    # EV: adaptive-alpha0 − baseline = 0.05 on every seed -> sd 0, the interval is the point: adaptive wins
    assert pair["metrics"]["explained_variance"]["winner"] == "adaptive-alpha0"
    assert pair["metrics"]["explained_variance"]["mean_diff"] == pytest.approx(-0.05)
    pair = next(p for p in agg["pairs"] if (p["a"], p["b"]) == ("baseline", "adaptive-alpha0.04"))
    assert pair["metrics"]["explained_variance"]["winner"] == "tie"  # diffs 0, 0, -0.005: the interval holds 0
    # adaptive-alpha0 beats every condition with >= 3 shared seeds, but other-lr has 1 seed: no verdict -> tie
    # adaptive-alpha0 beats every other condition with >= 3 shared seeds, but other-lr has 1 seed
    assert agg["who_wins"]["explained_variance"] == ("no winner: best mean adaptive-alpha0; "
                                                     "vs other-lr: no verdict: 1 shared seed(s) < 3")
    del results["other-lr"]
    agg = aggregate(results)
    assert agg["who_wins"]["explained_variance"] == "adaptive-alpha0"
    assert agg["who_wins"]["best_selectivity"].startswith("tie: adaptive-alpha0")  # equal to alpha0.04 on seed 0
    assert agg["l0"]["matched"] and agg["l0"]["max_over_min_minus_1"] == pytest.approx(10.2 / 10.1 - 1)
    md = conditions_markdown(agg, ["x.png"])
    assert "| adaptive-alpha0 | adaptive | 0.0 | relu | 0, 1, 2 | 10.200" in md
    assert "(seed sd 0.000, eval se 0.010)" in md and "→ adaptive-alpha0" in md and "within ±10 %" in md
    json.dumps(agg)  # report.json-ready
    plots = plot_conditions(tmp_path, agg)
    assert plots == ["conditions_ev_vs_l0.png", "conditions_overlap_vs_alpha.png", "conditions_dead_fraction.png"]
    assert all((tmp_path / p).stat().st_size > 1000 for p in plots)


def test_seeds_by_documents_interval_holds_both_errors_and_one_seed_may_win_on_eval_error_alone():
    results = {f"baseline-s{s}": result("baseline", s, sel=0.20 + 0.05 * s, sel_se=0.03) for s in range(3)}
    results |= {f"adaptive-s{s}": result("adaptive", s, sel=0.25 + 0.05 * s, sel_se=0.03) for s in range(3)}
    agg = aggregate(results)
    sel = agg["conditions"]["baseline"]["metrics"]["best_selectivity"]
    lo, hi = sel["ci95"]
    assert sel["interval"] == "seeds x documents bootstrap"
    # wider than the eval error alone (±1.96·0.03) because the seeds spread too
    assert hi - lo > 2 * 1.96 * 0.03
    # paired on seeds and documents: adaptive − baseline = 0.05 on every seed and every document draw
    pair = agg["pairs"][0]["metrics"]["best_selectivity"]
    assert pair["ci95"] == pytest.approx([-0.05, -0.05]) and pair["winner"] == "adaptive"
    # one seed each: a winner only when the eval's error alone separates them
    one = {"baseline": result("baseline", 0, sel=0.20, sel_se=0.03),
           "adaptive": result("adaptive", 0, sel=0.21, sel_se=0.03)}
    one["adaptive"]["unlearning"]["replicates"]["best_selectivity"] = (0.21 + 0.03 * Z[::-1]).tolist()  # other noise
    assert aggregate(one)["pairs"][0]["metrics"]["best_selectivity"]["winner"] == "tie"
    one["adaptive"] = result("adaptive", 0, sel=0.60, sel_se=0.03)
    assert aggregate(one)["pairs"][0]["metrics"]["best_selectivity"]["winner"] == "adaptive"
    # EV has no eval error here: one seed never names a winner
    one["adaptive"]["reconstruction"]["explained_variance"] = 0.9
    one["baseline"]["reconstruction"]["explained_variance"] = 0.5
    assert aggregate(one)["pairs"][0]["metrics"]["explained_variance"]["winner"].startswith("no verdict")


def test_an_interval_depends_only_on_its_own_conditions():
    """Adding a condition, or reordering them, leaves every other condition's and pair's bootstrap
    interval unchanged (one shared random stream used to shift them)."""
    def runs(kind, lr, sel, n=4):
        return {f"{kind}-lr{lr}-s{s}": result(kind, s, lr=lr, sel=sel + 0.07 * s * (-1) ** s, sel_se=0.04)
                for s in range(n)}
    a, b, c = runs("baseline", 1e-3, 0.2), runs("adaptive", 4e-4, 0.3), runs("fixed", 4e-4, 0.25, n=3)
    two, three, shuffled = aggregate(a | b), aggregate(c | a | b), aggregate(b | c | a)

    def pair(agg, x, y):
        (p,) = [p for p in agg["pairs"] if {p["a"], p["b"]} == {x, y}]
        ci = p["metrics"]["best_selectivity"]["ci95"]
        return ci if p["a"] == x else [-ci[1], -ci[0]]

    for agg in (three, shuffled):
        for cond in ("baseline-lr0.001", "adaptive-lr0.0004"):
            assert (agg["conditions"][cond]["metrics"]["best_selectivity"]["ci95"]
                    == two["conditions"][cond]["metrics"]["best_selectivity"]["ci95"])
        assert pair(agg, "adaptive-lr0.0004", "baseline-lr0.001") == pytest.approx(
            pair(two, "adaptive-lr0.0004", "baseline-lr0.001"), abs=1e-12)


def test_conditions_further_apart_in_l0_than_the_rule_are_not_compared():
    results = {"baseline": result("baseline", 0, l0=50.0, sel=0.2, sel_se=0.01),
               "adaptive": result("adaptive", 0, l0=60.0, sel=0.9, sel_se=0.01)}
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
    assert "conditions_overlap_vs_alpha.png" in plots and (tmp_path / "conditions_overlap_vs_alpha.png").stat().st_size > 1000
