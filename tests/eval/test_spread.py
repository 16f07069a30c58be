"""`[eval.spread]`: the seed spread of an unlearning figure split into selection rows, eval
documents and the SAE."""

import math

import pytest

from orthosae.eval.spread import decompose, figure_keys, spread_markdown


def section(value, se):
    return {"F_0.03": value, "best_selectivity_crossfit": value, "intervals": {"se": {"F_0.03": se}}}


def test_figure_keys_follow_the_budgets():
    assert figure_keys([0.03, 0.1]) == ["F_0.03", "F_0.1", "best_selectivity_crossfit"]


def test_parts_are_the_sds_they_name():
    main = {"a-s0": section(1.0, 0.3), "a-s1": section(2.0, 0.4), "a-s2": section(3.0, float("nan"))}
    draws = {"a-s0": [section(0.9, 0), section(1.1, 0)], "a-s1": [section(1.7, 0), section(2.1, 0)]}
    d = decompose(main, draws, ["F_0.03"])["F_0.03"]
    assert d["seed_sd"] == pytest.approx(1.0)  # sd of 1, 2, 3
    # pooled within-run variance: (0.02 + 0.08) / 2
    assert d["selection_sd"] == pytest.approx(math.sqrt(0.05))
    assert d["documents_sd"] == pytest.approx(math.sqrt((0.09 + 0.16) / 2))  # rms of the finite se
    assert d["sae_sd"] == pytest.approx(math.sqrt(1.0 - 0.05))
    assert d["n_seeds"] == 3 and d["draws"]["a-s1"] == [1.7, 2.1]


def test_selection_noise_larger_than_the_seed_spread_leaves_no_sae_part():
    main = {"a-s0": section(1.0, 0.1), "a-s1": section(1.1, 0.1)}
    draws = {"a-s0": [section(0.0, 0), section(2.0, 0)]}
    d = decompose(main, draws, ["F_0.03"])["F_0.03"]
    assert d["sae_sd"] == 0.0 and d["selection_sd"] > d["seed_sd"]


def test_unreached_figures_are_left_out_and_the_table_says_n_a():
    main = {"a-s0": section(float("nan"), 0.1), "a-s1": section(1.0, 0.1)}
    d = decompose(main, {"a-s0": [section(float("nan"), 0)]}, ["F_0.03"])
    assert math.isnan(d["F_0.03"]["seed_sd"]) and math.isnan(d["F_0.03"]["selection_sd"])
    md = spread_markdown({"condition": "a", "runs": 1, "selection_draws": 1, "figures": d})
    assert "| F_0.03 | n/a | n/a | 0.100 | n/a | 1 |" in md
    assert spread_markdown(None) == ""
