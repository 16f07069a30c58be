"""One number format for every table (common/markdown.py), each rule by a hand-written value."""

import math

import numpy as np

from orthosae.common.markdown import cell, table, with_interval


def test_cells_by_kind_and_size():
    assert cell(12) == "12"  # an int is a count
    assert cell(np.int64(7)) == "7"
    assert cell(True) == "True"
    assert cell("adaptive") == "adaptive"
    assert cell(0.81234) == "0.812"  # 3 decimals
    assert cell(1.0) == "1.000"  # a measured 1 keeps its decimals beside 0.950
    assert cell(np.float32(0.5)) == "0.500"
    assert cell(0.0096) == "0.0096"  # under 0.01: 3 significant digits, not 0.010
    assert cell(-0.004567) == "-0.00457"
    assert cell(12345.6) == "1.23e+04"  # 10^4 and up: significant digits
    assert cell(9999.0) == "9999.000"
    assert cell(0.0) == "0.000" and cell(3e-13) == "0.000"  # float noise of a zero spread is zero
    assert cell(0.81234, 2) == "0.81"
    for missing in (None, math.nan, math.inf, -math.inf):
        assert cell(missing) == "n/a"
    assert cell([1, 2]) == "[1, 2]"


def test_table_lays_out_header_rule_and_cells():
    assert table(["run", "EV"], [["a", 0.5], ["b", None]]) == "| run | EV |\n|---|---|\n| a | 0.500 |\n| b | n/a |"


def test_a_value_of_exactly_1e_12_is_kept_and_below_it_is_zero():
    assert cell(1e-12) == "1e-12" and cell(9.9e-13) == "0.000"


def test_with_interval_shows_the_bounds_only_where_both_are_finite():
    assert with_interval(0.86, 0.84, 0.88) == "0.860 [0.840, 0.880]"
    assert with_interval(0.86, math.nan, 0.88) == "0.860" and with_interval(0.86, 0.84, math.inf) == "0.860"
    assert with_interval(math.nan, math.nan, math.nan) == "n/a"
