"""The conditions' plots (report.md, "Conditions"): unlearning on the reconstruction frontier, EV
against L0, cross-group overlap against α, dead fraction. Means with 95 % bars over seeds.

On the frontier an edit that uses no SAE (the diff-of-means reference) sits at quality 1 by
definition: it is drawn as a dashed line at its unlearning figure, not a point, so the axes keep the
SAEs' own range instead of running to 1 with every SAE crowded into a corner; where its figure lies
outside the SAEs' range too, an arrow at the panel's edge names it. Labels are placed where they
overlap no label already placed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from orthosae.common import variants  # noqa: E402
from orthosae.eval.figures import save_figure  # noqa: E402
from orthosae.eval.metrics import Metric  # noqa: E402

# where a point's label may go, in points from the point, tried in order
LABEL_OFFSETS = [(4, 4), (4, -10), (-4, 4), (-4, -10), (4, 16), (4, -22), (-4, 16), (-4, -22), (4, 28), (-4, 28)]


def mean_err(s: dict | None) -> tuple[float, list]:
    """A metric's mean and its 95 % interval as errorbar's [[below], [above]] (0 where open)."""
    if not s:
        return math.nan, [[0], [0]]
    lo, hi = s["ci95"]
    m = s["mean"]
    return m, [[m - lo if math.isfinite(lo) else 0], [hi - m if math.isfinite(hi) else 0]]


def sae_free(e: dict, x: float) -> bool:
    """A reference that edits without an SAE: its quality is perfect by definition."""
    return e["type"] == "reference" and x >= 1.0 - 1e-9


def place_labels(ax, items: list[tuple[float, float, str]]) -> list:
    """Annotate each (x, y, text) at the first of ``LABEL_OFFSETS`` whose box overlaps no text already
    on the panel, no label placed before it and no point's marker (the last offset where each one
    does); the annotations."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    for x, y in ((x, y) for x, y, _ in items):  # each marker: a box of 8 × 8 pixels around the point
        px, py = ax.transData.transform((x, y))
        boxes.append(Bbox([[px - 4, py - 4], [px + 4, py + 4]]))
    placed = []
    for x, y, text in items:
        for dx, dy in LABEL_OFFSETS:
            a = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6, ha="left" if dx > 0 else "right"
            )
            box = a.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in boxes) or (dx, dy) == LABEL_OFFSETS[-1]:
                break
            a.remove()
        placed.append(a)
        boxes.append(box)
    return placed


def _panel(ax, conds: dict, types: list[str], xm: Metric, ym: Metric) -> list[tuple[float, float, str]]:
    """One frontier panel: each type's conditions as points (baseline black, joined as a curve,
    SAE references as stars), SAE-free references as lines (``_sae_free_marks``); the points' labels
    to place."""
    labels, free = [], []
    for k, kind in enumerate(types):
        color = "k" if variants.of(kind).baseline else f"C{k % 10}"
        pts = []
        for label, e in conds.items():
            x, y = e["metrics"].get(xm.key), e["metrics"].get(ym.key)
            if e["type"] != kind or not x or not y or not (math.isfinite(x["mean"]) and math.isfinite(y["mean"])):
                continue
            if sae_free(e, x["mean"]):
                free.append((label, y["mean"], color))
                continue
            pts.append((x["mean"], y["mean"], x, y, label))
        pts.sort(key=lambda p: (p[0], p[1]))
        if len(pts) > 1 and kind != "reference":
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=color, alpha=0.5)
        for n, (x, y, xs, ys, label) in enumerate(pts):
            fmt = "*" if kind == "reference" else "o"
            xerr, yerr = mean_err(xs)[1], mean_err(ys)[1]
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=fmt, capsize=3, color=color, label=kind if n == 0 else None)
            labels.append((x, y, label))
    _sae_free_marks(ax, free, ym)
    return labels


def _sae_free_marks(ax, free: list[tuple[str, float, str]], ym: Metric) -> None:
    """A dashed line at each SAE-free reference's figure where it lies within the SAEs' range; an
    arrow at the top or bottom edge with its value where it does not (a line there would squeeze
    the SAEs into a band)."""
    lo, hi = ax.get_ylim()  # the SAEs' own range: no reference drawn yet
    for n, (label, y, color) in enumerate(free):
        text = f"{label} (no SAE, quality 1)"
        if lo <= y <= hi:
            ax.axhline(y, linestyle="--", color=color, lw=1, label=text)
            continue
        top = y > hi
        edge = f"{'↑' if top else '↓'} {text}: {ym.label} = {y:.3f}"
        ax.text(
            0.99,
            0.97 - 0.06 * n if top else 0.03 + 0.06 * n,
            edge,
            transform=ax.transAxes,
            fontsize=6,
            ha="right",
            va="top" if top else "bottom",
            color=color,
        )


def frontier_figure(agg: dict, metrics: list[Metric]):
    """Each frontier metric (rows) against each quality metric (columns); None when there is none."""
    conds = agg["conditions"]
    ys = [m for m in metrics if m.frontier]  # every one, so the report always shows where F(b) stands
    xs = [m for m in metrics if m.quality and any(m.key in e["metrics"] for e in conds.values())]
    if not ys or not xs:
        return None
    fig, axes = plt.subplots(len(ys), len(xs), figsize=(5.5 * len(xs), 3.8 * len(ys)), squeeze=False)
    types = sorted({e["type"] for e in conds.values()})
    labels = {}
    for i, ym in enumerate(ys):
        for j, xm in enumerate(xs):
            ax = axes[i][j]
            labels[i, j] = _panel(ax, conds, types, xm, ym)
            if not any(ym.key in e["metrics"] for e in conds.values()):
                ax.text(0.5, 0.5, "not reached / not measured by any run", ha="center", transform=ax.transAxes)
            lo, hi = ax.get_ylim()
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_ylim(lo, hi)  # zero is a mark where the SAEs reach it, not a reason to squeeze them
            ax.set(xlabel=f"{xm.label} (better →)", ylabel=ym.label)
            ax.legend(fontsize=6)
    fig.suptitle(
        "Unlearning on the reconstruction frontier\n(95 % bars on both axes; black: baseline curve)", fontsize=9
    )
    fig.tight_layout()  # the final layout first: labels are placed in its coordinates
    for (i, j), items in labels.items():
        place_labels(axes[i][j], items)
    return fig


def plot_frontier(out_dir: Path, agg: dict, metrics: list[Metric]) -> list[str]:
    """frontier.png (``frontier_figure``); [] when there is nothing to plot."""
    fig = frontier_figure(agg, metrics)
    return [] if fig is None else [save_figure(plt, fig, out_dir, "frontier.png")]


def plot_conditions(out_dir: Path, agg: dict) -> list[str]:
    """EV vs L0, RMS cross-group cosine vs α, dead fraction. (Unlearning figures are plotted against
    quality instead: ``plot_frontier``.)"""
    conds = agg["conditions"]
    if not conds:
        return []
    return [_ev_vs_l0(out_dir, conds), _overlap_vs_alpha(out_dir, conds), _dead_fraction(out_dir, conds)]


def _ev_vs_l0(out_dir: Path, conds: dict) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, e) in enumerate(conds.items()):
        x, xerr = mean_err(e["metrics"].get("l0"))
        y, yerr = mean_err(e["metrics"].get("explained_variance"))
        if math.isfinite(x) and math.isfinite(y):
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, color=f"C{i % 10}", label=label)
    ylabel = "explained variance"
    ax.set(xlabel="L0 (mean, 95 % interval over seeds)", ylabel=ylabel, title=f"{ylabel} vs L0 per condition")
    ax.legend(fontsize=6)
    return save_figure(plt, fig, out_dir, "conditions_ev_vs_l0.png")


def _overlap_vs_alpha(out_dir: Path, conds: dict) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    # the activity-weighted one is what α bounds under the default weighting
    activity = any("rms_cross_cos_activity" in e["metrics"] for e in conds.values())
    ov = "rms_cross_cos_activity" if activity else "rms_cross_cos"
    # one series per family of conditions that differ only by α (e.g. exact and sketched adaptive)
    series: dict[str, list] = {}
    for label, e in conds.items():
        if variants.of(e["type"]).has_ortho and e["alpha"] is not None and ov in e["metrics"]:
            series.setdefault(re.sub(r"-alpha[^-]*", "", label), []).append((e["alpha"], e["metrics"][ov], e["type"]))
    for i, (family, pts) in enumerate(series.items()):
        for j, (alpha, s, kind) in enumerate(sorted(pts, key=lambda p: p[0])):
            y, yerr = mean_err(s)
            fmt = "o" if variants.of(kind).grouped else "s"
            ax.errorbar(alpha, y, yerr=yerr, fmt=fmt, capsize=3, color=f"C{i % 10}", label=family if j == 0 else None)
    base = [e["metrics"][ov]["mean"] for e in conds.values() if variants.of(e["type"]).baseline and ov in e["metrics"]]
    if base:
        ax.axhline(base[0], linestyle=":", color="grey", label="baseline (post-hoc groups)")
    ax.set(xlabel="α", ylabel=ov.replace("_", " ").replace("rms", "RMS"), title="Cross-group overlap vs α")
    ax.legend(fontsize=6)
    return save_figure(plt, fig, out_dir, "conditions_overlap_vs_alpha.png")


def _dead_fraction(out_dir: Path, conds: dict) -> str:
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(conds) + 2), 4))
    for i, e in enumerate(conds.values()):
        y, yerr = mean_err(e["metrics"].get("frac_dead"))
        ax.bar(i, y if math.isfinite(y) else 0, yerr=yerr, capsize=3, color=f"C{i % 10}")
    ax.set_xticks(range(len(conds)), list(conds), rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="dead fraction", title="Dead features per condition (95 % interval)")
    return save_figure(plt, fig, out_dir, "conditions_dead_fraction.png")
