"""Training curves: the runs' JSONL training logs as series, and their plot in the report."""

from __future__ import annotations

import json
from pathlib import Path

CURVE_KEYS = ["recon", "sparse", "ortho", "lambda2", "l0", "ev_batch"]
TITLES = {"lambda2": "λ2(t)", "ev_batch": "explained variance (training batch)"}


def training_curves(log_path: str | Path) -> dict[str, list]:
    """Series from the JSONL training log, one entry per line (None where a line lacks the key).

    List-valued keys (``cond``, ``group_sizes``) are kept as lists and also split into
    ``cond_0``, ``cond_1``, ... A truncated or blank line (a run still writing) is skipped.
    """
    records = []
    for line in Path(log_path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    for rec in records:
        for key in ("cond", "group_sizes"):
            if isinstance(rec.get(key), list):
                rec.update({f"{key}_{i}": v for i, v in enumerate(rec[key])})
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys]
    return {k: [rec.get(k) for rec in records] for k in keys}


def plot_training_curves(results: dict[str, dict]):
    """A figure of each run's curves (``results``: report entries with a ``curves`` field)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, key in zip(axes.flat, CURVE_KEYS):
        for name, result in results.items():
            curves = result.get("curves", {})
            if key in curves and "step" in curves:
                pts = [(s, v) for s, v in zip(curves["step"], curves[key]) if v is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)
        ax.set(title=TITLES.get(key, key), xlabel="step")
    axes.flat[0].legend(fontsize=6)
    return fig
