"""report.json, report.md and plots for one evaluation across runs.

Headline explained variance is the corrected definition `1 − E‖x−x̂‖² / Σ_d Var(x_d)` (SAELens
after its fix); SAEBench's legacy per-token form and dictionary_learning's form are reported
beside it under their own names. The metrics compared, their labels and directions come from one
registry (``eval/metrics.py``); runs are compared only as conditions (``eval/aggregate.py``: a run
without seeds is a one-seed condition) under one L0 rule, and the one "who wins" section reads
those verdicts, unlearning figures by the frontier rule (``eval/frontier.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or batch nodes
import matplotlib.pyplot as plt  # noqa: E402

from orthosae import __version__  # noqa: E402
from orthosae.common import variants  # noqa: E402
from orthosae.common.config import Config, budget_key  # noqa: E402
from orthosae.common.markdown import cell, table  # noqa: E402
from orthosae.common.report_json import seal  # noqa: E402
from orthosae.common.store import StoreReader  # noqa: E402
from orthosae.eval.aggregate import (  # noqa: E402
    aggregate,
    condition_cell,
    conditions_markdown,
)
from orthosae.eval.condition_plots import plot_conditions, plot_frontier  # noqa: E402
from orthosae.eval.corpora import corpora_json, corpora_markdown  # noqa: E402
from orthosae.eval.curves import plot_training_curves  # noqa: E402
from orthosae.eval.figures import save_figure  # noqa: E402
from orthosae.eval.frontier import QUALITY_SPAN  # noqa: E402
from orthosae.eval.intervals import MIN_SEEDS  # noqa: E402
from orthosae.eval.metrics import Metric, budgets_of, registry  # noqa: E402
from orthosae.eval.spread import spread_markdown  # noqa: E402
from orthosae.train.digests import write_atomic  # noqa: E402

HEADLINE_EV = "explained_variance"
from orthosae.eval.probe_report import forget_topics, probe_markdown, probe_plots  # noqa: E402


def _get(result: dict, section: str, key: str) -> float:
    value = result.get(section, {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def _alpha(result: dict) -> float:
    """α of a run with L_ortho (nan for the baseline, whose α means nothing)."""
    run = result.get("cfg", {}).get("orthosae", {})
    return float(run["ortho"]["alpha"]) if variants.of(run.get("type")).has_ortho else math.nan


def _markdown(
    cfg: Config,
    reader: StoreReader,
    results: dict,
    references: dict,
    agg: dict,
    metrics: list[Metric],
    timings: dict,
    plots: list[str],
) -> str:
    names = list(results)
    rec = [
        [
            n,
            results[n]["summary"].get("type"),
            cell(_alpha(results[n]), 2),
            *[
                _get(results[n], "reconstruction", k)
                for k in (
                    "l0",
                    HEADLINE_EV,
                    "explained_variance_legacy",
                    "explained_variance_dictionary_learning",
                    "mse",
                    "cossim",
                    "l2_ratio",
                    "relative_reconstruction_bias",
                    "frac_dead",
                    "freq_over_10_percent",
                )
            ],
        ]
        for n in names
    ]
    down = [
        [
            n,
            *[
                _get(results[n], "downstream", k)
                for k in (
                    "ce_loss_without_sae",
                    "ce_loss_with_sae",
                    "ce_loss_with_ablation",
                    "ce_loss_score",
                    "kl_div_with_sae",
                    "kl_div_score",
                )
            ],
        ]
        for n in names
    ]
    # F(b) and the other frontier figures always have their column ("n/a": not reached / not measured)
    unl_metrics = [
        m
        for m in metrics
        if m.section == "unlearning"
        and m.runs_table
        and (m.frontier or any(not math.isnan(m.value(r)) for r in {**results, **references}.values()))
    ]
    unl = [[n, *[_with_ci(m, r) for m in unl_metrics]] for n, r in {**results, **references}.items()]
    ablation = [
        [
            n,
            a.get("n_features"),
            a.get("multiplier"),
            a.get("selectivity_pi_from_unclamped", math.nan),
            a.get("selectivity", math.nan),
        ]
        for n in names
        for a in [results[n].get("unlearning", {}).get("ablation_pi_from_clamped")]
        if a
    ]
    sweep = [
        [
            n,
            cell(row.get("retain_threshold", math.nan)) if "retain_threshold" in row else "",
            row.get("n_features", ""),
            row.get("multiplier", row.get("scale", "")),
            *[
                row.get(k, math.nan)
                for k in (
                    "forget_ce_increase",
                    "retain_ce_increase",
                    "forget_ce_increase_domain",
                    "forget_ce_increase_rest",
                    "selectivity",
                    "selectivity_ratio",
                    "forget_coverage",
                    "retain_coverage",
                )
            ],
        ]
        for n, r in {**results, **references}.items()
        for row in r.get("unlearning", {}).get("rows", [])
    ]
    cond = [_conditioning_row(n, results[n].get("conditioning", {})) for n in names]
    trained = [
        _conditioning_row(n, results[n]["conditioning"]["trained_groups"])
        for n in names
        if "trained_groups" in results[n].get("conditioning", {})
    ]
    labels = {m.key: m.label for m in metrics}
    win = (
        "\n".join(f"- **{labels.get(k, k)}** (`{k}`): {w}" for k, w in agg["who_wins"].items())
        or "- fewer than two conditions"
    )
    un = cfg.eval.unlearning
    first = next((r.get("unlearning", {}) for r in results.values() if r.get("unlearning", {}).get("documents")), {})
    docs = first.get("documents", {})
    meta = reader.meta
    d_model = int(meta.get("d_model") or 0)
    wide = any(min(results[n].get("conditioning", {}).get("group_sizes") or [0]) >= d_model > 0 for n in names)
    angle_note = (
        "\nGroups with at least d_model features each span the whole residual space, so their "
        "principal angles are 0 by dimension count alone; read the RMS cosine column for them.\n"
        if wide
        else ""
    )
    cond_header = [
        "run",
        "grouping",
        "n_g",
        "decoder σ_max/σ_min",
        "eff. rank / min(n_g, d)",
        "max |cos| in group",
        "RMS cross-group cos",
        "activity-weighted RMS cross cos",
        "mean principal angle (°)",
        "avg max dec. cos",
        "avg max enc. cos",
    ]
    random_level = d_model**-0.5 if d_model else math.nan
    trained_table = (
        f"\nFixed runs, on the contiguous blocks they were trained against:\n{table(cond_header, trained)}\n"
        if trained
        else ""
    )
    return f"""# orthosae report: {cfg.eval.name}

Config `{cfg.path}` · store `{reader.url}` ({meta.get("model_id")}, layer {meta.get("layer")} {meta.get("hook")},
d_model {meta.get("d_model")}) · runs {", ".join(f"`{cfg.train.runs_dir}/{n}`" for n in names)} ·
orthosae {__version__} · {time.strftime("%Y-%m-%d %H:%M:%S")}{_sets_line(cfg)}
{summary_markdown(agg)}
## Reconstruction (held-out rows; headline EV = `{HEADLINE_EV}`, the corrected SAELens definition)
{table(["run", "type", "α", "L0", "EV", "EV legacy (SAEBench)", "EV dictionary_learning", "MSE", "cos sim", "L2 ratio", "rel. bias", "dead", "dense (> 10 %)"], rec)}

## Downstream (SAE spliced in at layer {cfg.harvest.layer}; BOS position left clean)
{table(["run", "CE clean", "CE with SAE", "CE zero-abl.", "CE-loss score", "KL with SAE", "KL score"], down)}

## Unlearning at matched damage (loss mode: CE on held-out forget vs retain text)
Each run's clamp sweep ({len(un.n_features_list)} n_features × {len(un.multipliers)} multipliers × {len(un.retain_thresholds)} retain thresholds)
gives forget ΔCE against retain ΔCE. **F(b)** is the forget ΔCE at retain ΔCE = b on the sweep's upper frontier
(with the unedited model at (0, 0)), interpolated between measured points, "n/a" where no setting reaches b
(never extrapolated); cross-fitted: the bracketing points and weight found on one half of the documents,
the forget ΔCE scored on the other, both ways averaged. Where the smallest clamp already costs more than b,
the sweep measures smaller edits (half the features down to one, then one feature at strength 1/2, 1/4,
1/8) until b is bracketed; ⁰ marks an F(b) that still rests on the chord from the unedited model on a half.
Cross-fitted figures choose the setting on one half of the held-out documents and score it on the other
(then swap and average); "in sample" ones choose and score on the same text. Coverage: fraction of
spliced positions where a clamped feature fired. 95 % intervals in brackets: bootstrap over
{docs.get("forget", "?")} forget and {docs.get("retain", "?")} retain held-out documents. Domain tokens:
{first.get("n_domain_tokens", "?")} token ids ≥ {un.domain_ratio:g}× more frequent in forget than retain
training text (≥ {un.domain_min_count} forget occurrences). References (label-using, rows below the runs):
`+forget-share` = the same SAE's features ranked by forget share of activation mass; `diff-of-means` =
no SAE, the forget − retain mean direction projected out at the layer with strength s.

{table(["run", *[m.label for m in unl_metrics]], unl)}

The sweep, per setting (ΔCE in nats; domain / rest: forget ΔCE on domain tokens / on the others):

{table(["run", "retain thr.", "n_features", "multiplier / s", "forget ΔCE", "retain ΔCE", "forget ΔCE domain", "forget ΔCE rest", "selectivity", "ΔCE_f / ΔCE_r", "forget coverage", "retain coverage"], sweep)}

MCQ p(right) selectivity: the drop of the right answer's probability on forget questions minus
that on retain questions (base-correct questions, best setting). The grouped SAE's bias mix π is
computed from the unclamped activations, so its clamp edits the chosen features only, as a plain
SAE's does. Ablation at the largest setting, where π follows the clamp (the clamp then also takes
the clamped group's bias away):

{table(["run", "n_features", "multiplier", "selectivity (π from unclamped)", "selectivity (π follows the clamp)"], ablation) if ablation else "(no grouped run)"}

## Feature groups (per group, g0 / g1 / …: group 1 of 2 is forget-leaning)
Degeneracy is read from the effective-rank fraction and the largest within-group |cos|; σ_max/σ_min
depends on n_g alone for random directions (thousands near n_g = d_model), so it stands beside n_g.
RMS cross-group cosine of the decoder, over all features and weighted by activation mass on the
training corpora (what α bounds with `weighting = "activity"`); random directions sit at
1/√d_model = {cell(random_level)}.
{table(cond_header, cond)}
{trained_table}{angle_note}
## Deviations from SAEBench
{_deviations(cfg)}

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

## Plots
{chr(10).join(f"![{p}]({p})" for p in plots)}

## Eval wall time (s)
{table(["family", "seconds"], [[k, v] for k, v in timings.items()])}
"""


def _conditioning_row(name: str, c: dict) -> list:
    pair = (c.get("pairs") or [{}])[0]
    per_group = lambda xs: " / ".join(cell(x) for x in xs)  # noqa: E731
    dec = c.get("decoder", {})
    return [
        name,
        c.get("grouping", "given"),
        per_group(c.get("group_sizes", [])),
        per_group(dec.get("cond", [])),
        per_group(dec.get("eff_rank_frac", [])),
        per_group(dec.get("max_cos", [])),
        pair.get("decoder_rms_cross_cos", math.nan),
        pair.get("decoder_rms_cross_cos_activity", math.nan),
        pair.get("decoder_mean_angle_deg", math.nan),
        c.get("average_max_decoder_cosine_sim", math.nan),
        c.get("average_max_encoder_cosine_sim", math.nan),
    ]


def _deviations(cfg: Config) -> str:
    """What differs from SAEBench 0.6.0, so no figure here is read as a SAEBench figure unawares."""
    un = cfg.eval.unlearning
    settings = len(un.retain_thresholds) * len(un.n_features_list) * len(un.multipliers)
    items = [
        f"- Settings grid: {settings} (retain thresholds {un.retain_thresholds} × n_features "
        f"{un.n_features_list} × multipliers {un.multipliers}) against SAEBench's 16 (2 × 2 × 4). The MCQ "
        "score is 1 − min over settings, so fewer settings bias it low."
        if settings < 16
        else f"- Settings grid: {settings} settings (SAEBench: 16).",
        "- Multipliers are in activation units of this model's layer (SAEBench's 25–200 are for Gemma-2-2B)."
        if max(un.multipliers, default=0) > 200
        else "",
        "- MCQ filter: a question counts only if the base model answers all 24 orderings right."
        if un.all_permutations
        else "- MCQ filter: the given order only (SAEBench needs all 24 orderings right).",
        "- Zero-ablation in the CE-loss score zeroes positions 1.. (the positions the SAE replaces); SAEBench "
        "zeroes BOS too (`ablate_bos=True` reproduces it).",
        "- Feature frequencies for selection mask BOS, EOS and padding rows, as SAEBench does; they are "
        "counted on "
        + (
            "every row of the training corpora."
            if cfg.eval.frequency_rows == 0
            else f"a seeded sample of about {cfg.eval.frequency_rows:,} training rows spread over all "
            "documents (see Corpora)."
        ),
        "- The SAE runs in float32 during interventions; SAEBench casts it to the model's dtype.",
        "- Loss mode (CE on held-out forget vs retain text) and its scores are ours, not SAEBench's.",
        "- Grouped SAEs: π from the unclamped activations during the clamp (see Unlearning).",
    ]
    return "\n".join(i for i in items if i)


def _plots(out_dir: Path, results: dict, metrics: list[Metric] | None = None) -> list[str]:
    names = list(results)
    made = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        ax.scatter(_get(results[n], "reconstruction", "l0"), _get(results[n], "reconstruction", HEADLINE_EV))
        ax.annotate(
            n, (_get(results[n], "reconstruction", "l0"), _get(results[n], "reconstruction", HEADLINE_EV)), fontsize=7
        )
    ax.set(xlabel="L0 (active features per token)", ylabel="explained variance", title="Reconstruction vs L0")
    made.append(save_figure(plt, fig, out_dir, "recon_vs_l0.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(m for m in (metrics or registry(budgets_of(results))) if m.frontier):
        for v in (v for v in variants.VARIANTS.values() if v.has_ortho):
            pts = sorted(
                (_alpha(results[n]), m.value(results[n])) for n in names if results[n]["summary"].get("type") == v.name
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "o-" if v.grouped else "s--",
                    color=f"C{i}",
                    label=f"{v.name}: {m.label}",
                )
        base = [m.value(results[n]) for n in names if variants.of(results[n]["summary"].get("type")).baseline]
        if base and not math.isnan(base[0]):
            ax.axhline(base[0], linestyle=":", color=f"C{i}")
    ax.set(
        xlabel="α", ylabel="nats", title="Unlearning vs α (dotted: baseline; not at equal quality: see frontier.png)"
    )
    ax.legend(fontsize=6)
    made.append(save_figure(plt, fig, out_dir, "unlearning_vs_alpha.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, max(len(results[n].get("conditioning", {}).get("decoder", {}).get("cond", [])) for n in names))
    for i, n in enumerate(names):
        conds = results[n].get("conditioning", {}).get("decoder", {}).get("cond", [])
        for g, c in enumerate(conds):
            ax.bar(
                i + g * width,
                c if c and math.isfinite(c) else 0,
                width,
                color=f"C{g}",
                label=f"group {g}" if i == 0 else None,
            )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="σ_max / σ_min (decoder)", title="Condition number per feature group")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    made.append(save_figure(plt, fig, out_dir, "condition_numbers.png"))

    made.append(save_figure(plt, plot_training_curves(results), out_dir, "training_curves.png"))
    return made


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
        "metrics": [
            {
                "key": m.key,
                "section": m.section,
                "higher_is_better": m.higher,
                "label": m.label,
                "eval_error": m.eval_error,
                "frontier": m.frontier,
                "quality": m.quality,
            }
            for m in metrics
        ],
        "runs": results,
        "references": references,
        "conditions": conditions,
        "who_wins": conditions["who_wins"],
        "spread": spread,
        "timings_s": timings,
        "plots": [],
    }
    _write_json(out_dir / "report.json", report)  # the measurements first: a failing plot must not lose them
    plots = _plots(out_dir, results, metrics) + probe_plots(out_dir, results)
    condition_plots = plot_frontier(out_dir, conditions, metrics) + plot_conditions(out_dir, conditions)
    report["plots"] = plots + condition_plots
    _write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(
        _markdown(cfg, reader, results, references, conditions, metrics, timings, plots)
        + probe_markdown(results, forget_topics(cfg))
        + conditions_markdown(conditions, condition_plots, metrics)
        + spread_markdown(spread)
        + "\n"
        + corpora_markdown(corpora)
    )
    return out_dir


def _with_ci(m: Metric, result: dict) -> str:
    v = m.value(result)
    lo, hi = m.interval(result)
    if math.isnan(v):
        return "n/a"
    text = f"{cell(v)} [{cell(lo)}, {cell(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else cell(v)
    origin = result.get(m.section, {}).get(f"{m.field or m.key}_origin") if m.frontier else None
    return text + " ⁰" if isinstance(origin, (int, float)) and origin > 0 else text


def _write_json(path: Path, obj: dict) -> None:
    text = seal(json.dumps(obj, indent=1, default=_json_default, allow_nan=True))  # its digest in it
    write_atomic(path, lambda p: p.write_text(text))


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
