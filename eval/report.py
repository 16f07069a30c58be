"""report.json, report.md and plots for one evaluation across runs.

Headline explained variance is the corrected definition `1 − E‖x−x̂‖² / Σ_d Var(x_d)` (SAELens
after its fix); SAEBench's legacy per-token form and dictionary_learning's form are reported
beside it under their own names. The metrics compared, their labels and directions come from one
registry (``eval/metrics.py``); runs are compared only as conditions (``eval/aggregate.py``: a run
without seeds is a one-seed condition) under one L0 rule, and the one "who wins" section reads
those verdicts, unlearning figures by the frontier rule (``eval/frontier.py``). Each eval family
(``eval/families.py``) writes its own report.md section and plots; this module writes what spans
them: the header, the summary, "who wins", the conditions, the spread and the corpora.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from orthosae import __version__
from orthosae.common.config import Config, budget_key
from orthosae.common.markdown import cell, table
from orthosae.common.report_json import seal
from orthosae.common.store import StoreReader
from orthosae.eval import families
from orthosae.eval.aggregate import aggregate, condition_cell, conditions_markdown
from orthosae.eval.condition_plots import plot_conditions, plot_frontier
from orthosae.eval.corpora import corpora_json, corpora_markdown
from orthosae.eval.family import ReportView
from orthosae.eval.frontier import QUALITY_SPAN
from orthosae.eval.intervals import MIN_SEEDS
from orthosae.eval.metrics import HEADLINE_EV, Metric, budgets_of, registry
from orthosae.eval.spread import spread_markdown
from orthosae.train.digests import write_atomic


def _header(view: ReportView) -> str:
    cfg, meta = view.cfg, view.reader.meta
    runs = ", ".join(f"`{cfg.train.runs_dir}/{n}`" for n in view.names)
    return f"""# orthosae report: {cfg.eval.name}

Config `{cfg.path}` · store `{view.reader.url}` ({meta.get("model_id")}, layer {meta.get("layer")} {meta.get("hook")},
d_model {meta.get("d_model")}) · runs {runs} ·
orthosae {__version__} · {time.strftime("%Y-%m-%d %H:%M:%S")}{_sets_line(cfg)}
"""


def family_sections(view: ReportView) -> str:
    """Each family's report.md section in the table's order, then the notes they share, once each."""
    out, notes = [], []
    for family in families.FAMILIES.values():
        text = family.markdown(view)
        out.append(text)
        if text and family.note and family.note not in notes:
            notes.append(family.note)
    return "".join(out + notes)


def who_wins_markdown(agg: dict, metrics: list[Metric]) -> str:
    labels = {m.key: m.label for m in metrics}
    win = (
        "\n".join(f"- **{labels.get(k, k)}** (`{k}`): {w}" for k, w in agg["who_wins"].items())
        or "- fewer than two conditions"
    )
    return f"""
## Who wins
{primary_markdown(agg.get("primary"))}
### Exploratory (every other figure; nominal 95 % intervals, no multiplicity correction)
One rule for every metric (`eval/aggregate.py`): conditions are compared only when their mean L0 lie
within {int(round(agg["l0"]["rule"] * 100))} % of each other; a winner is named only when the 95 % interval of the
seed-paired difference excludes 0 (calibrated t over ≥ {MIN_SEEDS} shared seeds, with the shared document
error for unlearning figures; `eval/intervals.py`), otherwise the verdict is a tie. Unlearning figures are
judged on the frontier: against the baseline conditions' curve where it was measured within
±{QUALITY_SPAN} of the condition's quality (CE-loss score and EV; `eval/frontier.py`), else no verdict.

{win}
"""


def _markdown(view: ReportView, agg: dict, timings: dict, plots: list[str]) -> str:
    return f"""{_header(view)}{summary_markdown(agg)}{family_sections(view)}{who_wins_markdown(agg, view.metrics)}
## Plots
{chr(10).join(f"![{p}]({p})" for p in plots)}

## Eval wall time (s)
{table(["family", "seconds"], [[k, v] for k, v in timings.items()])}
"""


def family_plots(view: ReportView) -> list[str]:
    """Each family's plots, in the table's order."""
    return [name for family in families.FAMILIES.values() for name in family.plots(view)]


def _sets_line(cfg: Config) -> str:
    """The `pipe --set` overrides of this evaluation, under the config line (nothing without)."""
    sets = getattr(cfg, "sets", ())  # a Config has them; notebooks may pass a partial stand-in
    return ("\n\nCommand-line overrides: " + " ".join(f"`--set {s}`" for s in sets)) if sets else ""


def primary_of(cfg: Config) -> dict | None:
    """[eval] primary_figure / primary_quality / primary_pairs as aggregate() takes them (None without
    a retain budget: no F(b) to be primary)."""
    budgets = cfg.eval.unlearning.retain_budgets
    if not budgets or "loss" not in cfg.eval.unlearning.modes:
        return None
    return {
        "figure": cfg.eval.primary_figure or budget_key(max(budgets)),
        "quality": cfg.eval.primary_quality,
        "pairs": [list(p) for p in cfg.eval.primary_pairs],
    }


def summary_markdown(agg: dict) -> str:
    """The report's first table: one row per condition on the primary question, 7 columns —
    condition, type, seeds, quality, the primary figure (mean [95 % interval]), its Holm verdict
    against the baseline curve, and how many seeds reach the budget."""
    primary = agg.get("primary")
    if not primary:
        return ""
    fig, quality = primary["figure"], primary["quality"]
    rows = []
    for label, e in agg["conditions"].items():
        if e["type"] == "reference":
            continue
        v = primary["comparisons"].get(f"{label} vs the baseline curve")
        rows.append(
            [
                label,
                e["type"],
                len(e["seeds"]),
                condition_cell(e["metrics"].get(quality)),
                condition_cell(e["metrics"].get(fig)),
                "baseline curve" if v is None else v["holm"],
                e["metrics"].get(fig, {}).get("reached", "n/a"),
            ]
        )
    header = ["condition", "type", "seeds", quality, f"{fig} [95 %]", "vs the baseline (Holm)", "seeds reaching b"]
    return f"""
## Summary: `{fig}` at equal `{quality}`
{table(header, rows)}

Full tables, pairs and the exploratory verdicts follow; "Who wins" holds the primary family with its gaps.
"""


def primary_markdown(primary: dict | None) -> str:
    """The primary comparisons with their Holm verdicts (gap, 95 % interval, p, seeds)."""
    if not primary:
        return "No primary figure (no loss-mode unlearning).\n"
    lines = [
        f"### Primary: `{primary['figure']}` at equal `{primary['quality']}` ({primary['rule']})",
        "",
        "| comparison | gap | 95 % interval | p | seeds | Holm verdict |",
        "|---|---:|---|---:|---:|---|",
    ]
    for name, v in primary["comparisons"].items():
        lo, hi = v["ci95"]
        ci = f"[{cell(lo)}, {cell(hi)}]" if math.isfinite(lo) else "n/a"
        lines.append(f"| {name} | {cell(v['gap'])} | {ci} | {cell(v['p'])} | {len(v.get('seeds', []))} | {v['holm']} |")
    if not primary["comparisons"]:
        lines.append("| (no condition to compare) | | | | | |")
    return "\n".join(lines) + "\n"


def eval_settings(cfg: Config) -> dict:
    """The [eval] tables as report.json keeps them: a report made under other settings is not current."""
    return json.loads(json.dumps(dataclasses.asdict(cfg.eval), default=str))


def write_report(
    out_dir: Path,
    cfg: Config,
    reader: StoreReader,
    results: dict,
    timings: dict,
    frequencies: dict | None = None,
    references: dict | None = None,
    spread: dict | None = None,
) -> Path:
    """frequencies: what feature frequencies were counted on (eval/frequencies.describe); references:
    the label-using unlearning references measured beside the runs; spread: `[eval.spread]`'s
    decomposition (eval/spread.py)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    references = references or {}
    every = {**results, **references}
    metrics = registry(budgets_of(every))
    conditions = aggregate(
        every, metrics, primary_of(cfg)
    )  # seeds -> conditions (eval/aggregate.py), references beside the runs
    corpora = corpora_json(reader, frequencies)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "orthosae_version": __version__,
        "config": str(cfg.path),
        "sets": list(getattr(cfg, "sets", ())),
        "store": reader.url,
        "store_meta": reader.meta,
        "corpora": corpora,
        "runs_dir": cfg.train.runs_dir,
        "eval_settings": eval_settings(cfg),
        "headline_explained_variance": HEADLINE_EV,
        "metrics": [_metric_json(m) for m in metrics],
        "runs": results,
        "references": references,
        "conditions": conditions,
        "who_wins": conditions["who_wins"],
        "spread": spread,
        "timings_s": timings,
        "plots": [],
    }
    _write_json(out_dir / "report.json", report)  # the measurements first: a failing plot must not lose them
    view = ReportView(cfg, reader, results, references, metrics, out_dir)
    plots = family_plots(view)
    condition_plots = plot_frontier(out_dir, conditions, metrics) + plot_conditions(out_dir, conditions)
    report["plots"] = plots + condition_plots
    _write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(
        _markdown(view, conditions, timings, plots)
        + conditions_markdown(conditions, condition_plots, metrics)
        + spread_markdown(spread)
        + "\n"
        + corpora_markdown(corpora)
    )
    return out_dir


def _metric_json(m: Metric) -> dict:
    return {
        "key": m.key,
        "section": m.section,
        "higher_is_better": m.higher,
        "label": m.label,
        "eval_error": m.eval_error,
        "frontier": m.frontier,
        "quality": m.quality,
    }


def _write_json(path: Path, obj: dict) -> None:
    text = seal(json.dumps(obj, indent=1, default=_json_default, allow_nan=True))  # its digest in it
    write_atomic(path, lambda p: p.write_text(text))


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
