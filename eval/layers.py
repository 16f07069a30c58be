"""`pipe eval` over several harvested layers: each layer's runs are evaluated against that layer's
store, as a one-layer config would be (`Config.at_layer`: its report in `<reports_dir>/<name>/L<layer>/`,
comparisons, aggregates and "who wins" among runs of the same layer only), then one side-by-side
report, `<reports_dir>/<name>/report.md` + `report.json`, puts every layer's runs next to each other.

A one-layer config is evaluated exactly as before (its report in `<reports_dir>/<name>/`)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from orthosae import __version__
from orthosae.common.config import Config
from orthosae.common.markdown import table
from orthosae.common.report_json import ReportUnreadable, read_report, seal
from orthosae.eval.metrics import budgets_of, registry
from orthosae.eval.report import eval_settings
from orthosae.eval.runner import evaluate as evaluate_layer


def evaluate(cfg: Config, *, run_names: list[str] | None = None, show_progress: bool = True) -> Path:
    """Evaluate the config's runs (or `run_names`); returns the report folder."""
    if len(cfg.layers) == 1:
        return evaluate_layer(cfg, run_names=run_names, show_progress=show_progress)
    for name in run_names or []:
        cfg.run(name)  # an unknown name fails before any layer is evaluated
    for view in cfg.layer_views():
        names = [n for n in run_names if n in {r.name for r in view.runs}] if run_names else None
        if view.runs and not (run_names and not names):
            evaluate_layer(view, run_names=names, show_progress=show_progress)
    return write_side_by_side(cfg)


def layer_reports(cfg: Config) -> dict[int, dict]:
    """Each layer's report.json that exists and reads, by layer."""
    out = {}
    for layer, view in zip(cfg.layers, cfg.layer_views()):
        path = Path(view.eval.reports_dir) / view.eval.name / "report.json"
        if view.runs and path.exists():
            try:
                out[layer] = read_report(path)
            except ReportUnreadable:
                continue
    return out


def _base_name(name: str, layer: int) -> str:
    """A run's name without the `-L<layer>` its `layer = [...]` list added: one row across layers."""
    return re.sub(rf"-L{layer}(?=-s\d+$|$)", "", name)


def write_side_by_side(cfg: Config) -> Path:
    """`<reports_dir>/<name>/report.md` + `report.json`: every layer's runs side by side."""
    out_dir = Path(cfg.eval.reports_dir) / cfg.eval.name
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = layer_reports(cfg)
    every = {name: r for rep in reports.values() for name, r in rep["runs"].items()}
    metrics = [
        m
        for m in registry(budgets_of(every))
        if m.runs_table and any(not math.isnan(m.value(r)) for r in every.values())
    ]
    runs = {}
    for layer, rep in reports.items():
        for name, r in rep["runs"].items():
            runs[name] = {
                "layer": layer,
                "report": f"L{layer}/report.json",
                "summary": {"fingerprint": r.get("summary", {}).get("fingerprint")},
                "type": r.get("cfg", {}).get("orthosae", {}).get("type"),
                "figures": {m.key: m.value(r) for m in metrics},
            }
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "orthosae_version": __version__,
        "config": str(cfg.path),
        "sets": list(cfg.sets),
        "layers": {str(layer): f"L{layer}/report.json" for layer in reports},
        "eval_settings": eval_settings(cfg),
        "runs": runs,
        "metrics": [{"key": m.key, "label": m.label, "higher_is_better": m.higher} for m in metrics],
    }
    text = seal(json.dumps(report, indent=1, allow_nan=True))
    (out_dir / "report.json").write_text(text)
    (out_dir / "report.md").write_text(_markdown(cfg, reports, runs, metrics))
    return out_dir


def _markdown(cfg: Config, reports: dict, runs: dict, metrics: list) -> str:
    layers = list(reports)
    lines = [
        f"# orthosae report: {len(layers)} layers side by side",
        "",
        f"Config `{cfg.path}` · layers {', '.join(map(str, layers))} ({cfg.harvest.hook}), one store each "
        f"(`{cfg.harvest.store}`). Each layer's full report (comparisons among that layer's runs): "
        + ", ".join(f"[L{layer}](L{layer}/report.md)" for layer in layers)
        + ".",
        "",
    ]
    # the same run (its name without -L<layer>) at every layer: one row, a column per layer
    headline = [m for m in metrics if m.key in ("explained_variance", "l0", "ce_loss_score")]
    rows: dict[str, dict] = {}
    for name, r in runs.items():
        rows.setdefault(_base_name(name, r["layer"]), {})[r["layer"]] = r
    for m in headline:
        lines += [
            f"## {m.label} by layer",
            "",
            table(
                ["run"] + [f"L{layer}" for layer in layers],
                [
                    [base] + [cells[layer]["figures"][m.key] if layer in cells else "-" for layer in layers]
                    for base, cells in rows.items()
                ],
            ),
            "",
        ]
    lines += [
        "## Every run",
        "",
        table(
            ["layer", "run", "type"] + [m.label for m in metrics],
            [
                [r["layer"], name, r["type"]] + [r["figures"][m.key] for m in metrics]
                for name, r in sorted(runs.items(), key=lambda kv: (kv[1]["layer"], kv[0]))
            ],
        ),
        "",
    ]
    return "\n".join(lines)
