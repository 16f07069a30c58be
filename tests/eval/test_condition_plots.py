"""frontier.png keeps the SAEs legible: the SAE-free reference is a line, labels do not overlap."""

import math

from orthosae.eval.condition_plots import frontier_figure, mean_err, place_labels
from orthosae.eval.metrics import Metric

X = Metric("ce_loss_score_docs", "unlearning", True, "CE-loss score", quality=True)
Y = Metric("F_0.1", "unlearning", True, "F(0.1)", frontier=True)


def _cond(kind, x, y, half=0.01):
    return {
        "type": kind,
        "metrics": {
            X.key: {"mean": x, "ci95": [x - half, x + half]},
            Y.key: {"mean": y, "ci95": [y - half, y + half]},
        },
    }


def _crowded(reference_f=0.9):
    # six SAE conditions within 0.004 of each other in quality and unlearning, plus the SAE-free
    # reference at quality 1 by definition
    conds = {f"baseline-lr{i}": _cond("baseline", 0.80 + 0.001 * i, 0.30 + 0.001 * i) for i in range(3)}
    conds |= {f"adaptive-a{i}": _cond("adaptive", 0.801 + 0.001 * i, 0.301 + 0.001 * i) for i in range(3)}
    conds["diff-of-means"] = _cond("reference", 1.0, reference_f, 0.0)
    return {"conditions": conds}


def test_the_sae_free_reference_is_a_dashed_line_and_the_axes_keep_the_saes_range():
    fig = frontier_figure(_crowded(reference_f=0.305), [X, Y])  # within the SAEs' F range
    ax = fig.axes[0]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [0.305, 0.305]  # at its F(0.1)
    lo, hi = ax.get_xlim()
    # the SAEs span 0.79-0.814 with their bars; the reference's quality 1 is off the axis
    assert 0.78 < lo < 0.79 and 0.814 < hi < 0.83, (lo, hi)


def test_an_sae_free_reference_beyond_the_saes_range_is_an_arrow_at_the_edge():
    fig = frontier_figure(_crowded(reference_f=0.9), [X, Y])
    ax = fig.axes[0]
    assert not [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    lo, hi = ax.get_ylim()
    assert hi < 0.33  # the SAEs' F(0.1) span 0.29-0.314 with their bars: not squeezed under 0.9
    edge = [t.get_text() for t in ax.texts if t.get_text().startswith("↑")]
    assert edge == ["↑ diff-of-means (no SAE, quality 1): F(0.1) = 0.900"]


def test_no_two_labels_overlap_in_a_crowded_panel():
    fig = frontier_figure(_crowded(), [X, Y])
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if not t.get_text().startswith("↑")]
    assert sorted(t.get_text() for t in texts) == sorted(
        [f"baseline-lr{i}" for i in range(3)] + [f"adaptive-a{i}" for i in range(3)]
    )
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]


def test_place_labels_moves_a_label_off_an_occupied_spot():
    fig = frontier_figure(_crowded(), [X, Y])
    ax = fig.axes[0]
    for t in list(ax.texts):
        t.remove()
    first, second = place_labels(ax, [(0.80, 0.30, "aaaa"), (0.80, 0.30, "bbbb")])
    assert first.xyann == (4, 4) and second.xyann == (4, -10)  # the second offset: the first is taken


def test_mean_err_gives_bars_below_and_above_and_none_where_open():
    assert mean_err({"mean": 0.5, "ci95": [0.4, 0.7]}) == (0.5, [[0.09999999999999998], [0.19999999999999996]])
    m, err = mean_err({"mean": 0.5, "ci95": [math.nan, math.nan]})
    assert m == 0.5 and err == [[0], [0]]
    m, err = mean_err(None)
    assert math.isnan(m) and err == [[0], [0]]
