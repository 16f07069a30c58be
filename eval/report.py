"""report.json, report.md and plots for one evaluation across runs.

Headline explained variance is the corrected definition `1 − E‖x−x̂‖² / Σ_d Var(x_d)` (SAELens
after its fix); SAEBench's legacy per-token form and dictionary_learning's form are reported
beside it under their own names. Runs are compared at matched L0 where possible: runs whose L0
lies within ±25 % of each other form a band, and each band names its own winners.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or batch nodes
import matplotlib.pyplot as plt  # noqa: E402

from common import __version__  # noqa: E402
from common.config import Config  # noqa: E402
from common.store import StoreReader  # noqa: E402
from eval.aggregate import aggregate, conditions_markdown, plot_conditions  # noqa: E402
from eval.curves import plot_training_curves  # noqa: E402
from eval.probe_report import PROBE_METRICS, probe_markdown, probe_plots  # noqa: E402

HEADLINE_EV = "explained_variance"
L0_BAND = 0.25
# metric -> (section, higher is better)
COMPARED = {
    "explained_variance": ("reconstruction", True),
    "mse": ("reconstruction", False),
    "cossim": ("reconstruction", True),
    "ce_loss_score": ("downstream", True),
    "kl_div_score": ("downstream", True),
    "unlearning_score": ("unlearning", True),
    "best_mcq_prob_selectivity": ("unlearning", True),
    "loss_unlearning_score": ("unlearning", True),
    "best_selectivity": ("unlearning", True),
    **PROBE_METRICS,  # sparse probing, TPP, absorption (eval/probe_report.py)
}


def _get(result: dict, section: str, key: str) -> float:
    value = result.get(section, {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def l0_bands(results: dict[str, dict]) -> list[list[str]]:
    """Runs sorted by L0, split where the next run's L0 exceeds the band's first by > L0_BAND."""
    order = sorted(results, key=lambda n: _get(results[n], "reconstruction", "l0"))
    bands: list[list[str]] = []
    for name in order:
        l0 = _get(results[name], "reconstruction", "l0")
        if bands and l0 <= _get(results[bands[-1][0]], "reconstruction", "l0") * (1 + L0_BAND):
            bands[-1].append(name)
        else:
            bands.append([name])
    return bands


def winners(results: dict[str, dict], names: list[str]) -> dict[str, str]:
    out = {}
    for metric, (section, higher) in COMPARED.items():
        scored = [(n, _get(results[n], section, metric)) for n in names]
        scored = [(n, v) for n, v in scored if not math.isnan(v)]
        if not scored:
            continue
        best = (max if higher else min)(v for _, v in scored)
        # A tie must not read as a win for whichever run happens to be listed first.
        tied = [n for n, v in scored if math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12)]
        if len(tied) == 1:
            out[metric] = tied[0]
        elif len(tied) == len(scored):
            out[metric] = f"tie (all {len(tied)} runs at {_fmt(best)})"
        else:
            out[metric] = "tie: " + ", ".join(tied)
    return out


def comparison(results: dict[str, dict]) -> dict:
    bands = l0_bands(results)
    return {"overall": winners(results, list(results)),
            "matched_l0": [{"runs": band, "winners": winners(results, band)} for band in bands if len(band) > 1],
            "l0_band": L0_BAND}


def _alpha(result: dict) -> float:
    """α of a run with L_ortho (nan for the baseline, whose α means nothing)."""
    run = result.get("cfg", {}).get("orthosae", {})
    return float(run["ortho"]["alpha"]) if run.get("type") in ("fixed", "adaptive") else math.nan


def _fmt(v, digits=3) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6 and not math.isnan(v):
        return str(int(v))  # counts (questions, group sizes) read as counts
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}g}" if abs(v) >= 1e4 or abs(v) < 1e-3 and v else f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(cfg: Config, reader: StoreReader, results: dict, comp: dict, timings: dict, plots: list[str]) -> str:
    names = list(results)
    rec = [[n, results[n]["summary"].get("type"), _fmt(_alpha(results[n]), 2),
            *[_get(results[n], "reconstruction", k) for k in
              ("l0", HEADLINE_EV, "explained_variance_legacy", "explained_variance_dictionary_learning",
               "mse", "cossim", "l2_ratio", "relative_reconstruction_bias", "frac_dead", "freq_over_10_percent")]]
           for n in names]
    down = [[n, *[_get(results[n], "downstream", k) for k in
                  ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation", "ce_loss_score",
                   "kl_div_with_sae", "kl_div_score")]] for n in names]
    unl = [[n, *[_get(results[n], "unlearning", k) for k in
                 ("unlearning_score", "best_mcq_prob_selectivity", "loss_unlearning_score", "best_selectivity",
                  "forget_base_correct", "retain_base_correct")],
            results[n].get("unlearning", {}).get("ablation_shares_from_clamped", {}).get("best_selectivity", math.nan)]
           for n in names]
    cond = [_conditioning_row(n, results[n].get("conditioning", {})) for n in names]
    trained = [_conditioning_row(n, results[n]["conditioning"]["trained_groups"]) for n in names
               if "trained_groups" in results[n].get("conditioning", {})]
    win = "\n".join(f"- **{m}**: {w}" for m, w in comp["overall"].items())
    bands = "\n".join(f"- L0 band {', '.join(b['runs'])}: " + "; ".join(f"{m} → {w}" for m, w in b["winners"].items())
                      for b in comp["matched_l0"]) or "- no two runs within ±25 % L0 of each other"
    meta = reader.meta
    d_model = int(meta.get("d_model") or 0)
    wide = any(min(results[n].get("conditioning", {}).get("group_sizes") or [0]) >= d_model > 0 for n in names)
    angle_note = ("\nGroups with at least d_model features each span the whole residual space, so their "
                  "principal angles are 0 by dimension count alone; read the RMS cosine column for them.\n"
                  if wide else "")
    cond_header = ["run", "grouping", "n_g", "decoder σ_max/σ_min", "eff. rank / min(n_g, d)", "max |cos| in group",
                   "RMS cross-group cos", "activity-weighted RMS cross cos", "mean principal angle (°)", "avg max dec. cos", "avg max enc. cos"]
    random_level = d_model ** -0.5 if d_model else math.nan
    trained_table = (f"\nFixed runs, on the contiguous blocks they were trained against:\n"
                     f"{_table(cond_header, trained)}\n" if trained else "")
    return f"""# orthosae report: {cfg.eval.name}

Config `{cfg.path}` · store `{reader.url}` ({meta.get('model_id')}, layer {meta.get('layer')} {meta.get('hook')},
d_model {meta.get('d_model')}) · runs {', '.join(f'`{cfg.train.runs_dir}/{n}`' for n in names)} ·
orthosae {__version__} · {time.strftime('%Y-%m-%d %H:%M:%S')}

## Reconstruction (held-out rows; headline EV = `{HEADLINE_EV}`, the corrected SAELens definition)
{_table(["run", "type", "α", "L0", "EV", "EV legacy (SAEBench)", "EV dictionary_learning", "MSE", "cos sim", "L2 ratio", "rel. bias", "dead", "dense (> 10 %)"], rec)}

## Downstream (SAE spliced in at layer {cfg.harvest.layer}; BOS position left clean)
{_table(["run", "CE clean", "CE with SAE", "CE zero-abl.", "CE-loss score", "KL with SAE", "KL score"], down)}

## Unlearning (SAEBench protocol; loss mode: CE on held-out forget vs retain text)
{_table(["run", "MCQ unlearning score", "MCQ p(right) selectivity", "loss unlearning score", "best selectivity", "forget Qs base-correct", "retain Qs base-correct", "best selectivity, π follows the clamp (ablation)"], unl)}

MCQ p(right) selectivity: the drop of the right answer's probability on forget questions minus
that on retain questions (base-correct questions, best setting): a continuous figure that moves
where the accuracy score cannot. The grouped SAE's bias mix π is computed from the unclamped activations, so its clamp edits the
chosen features only, as a plain SAE's does; the last column is the ablation where π follows the
clamp and the clamp also takes the clamped group's bias away.

## Feature groups (per group, g0 / g1 / …: group 1 of 2 is forget-leaning)
Degeneracy is read from the effective-rank fraction and the largest within-group |cos|; σ_max/σ_min
depends on n_g alone for random directions (thousands near n_g = d_model), so it stands beside n_g.
RMS cross-group cosine of the decoder, over all features and weighted by activation mass on the
training corpora (what α bounds with `weighting = "activity"`); random directions sit at
1/√d_model = {_fmt(random_level)}.
{_table(cond_header, cond)}
{trained_table}{angle_note}
## Deviations from SAEBench
{_deviations(cfg)}

## Who wins
Overall:
{win}

At matched L0:
{bands}

## Plots
{chr(10).join(f'![{p}]({p})' for p in plots)}

## Eval wall time (s)
{_table(["family", "seconds"], [[k, v] for k, v in timings.items()])}
"""


def _conditioning_row(name: str, c: dict) -> list:
    pair = (c.get("pairs") or [{}])[0]
    per_group = lambda xs: " / ".join(_fmt(x) for x in xs)  # noqa: E731
    dec = c.get("decoder", {})
    return [name, c.get("grouping", "given"), per_group(c.get("group_sizes", [])), per_group(dec.get("cond", [])),
            per_group(dec.get("eff_rank_frac", [])), per_group(dec.get("max_cos", [])),
            pair.get("decoder_overlap_fro_normalized", math.nan), pair.get("decoder_rms_cos_activity", math.nan),
            pair.get("decoder_mean_angle_deg", math.nan),
            c.get("average_max_decoder_cosine_sim", math.nan), c.get("average_max_encoder_cosine_sim", math.nan)]


def _deviations(cfg: Config) -> str:
    """What differs from SAEBench 0.6.0, so no figure here is read as a SAEBench figure unawares."""
    un = cfg.eval.unlearning
    settings = len(un.retain_thresholds) * len(un.n_features_list) * len(un.multipliers)
    items = [
        f"- Settings grid: {settings} (retain thresholds {un.retain_thresholds} × n_features "
        f"{un.n_features_list} × multipliers {un.multipliers}) against SAEBench's 16 (2 × 2 × 4). The MCQ "
        "score is 1 − min over settings, so fewer settings bias it low." if settings < 16 else
        f"- Settings grid: {settings} settings (SAEBench: 16).",
        "- Multipliers are in activation units of this model's layer (SAEBench's 25–200 are for Gemma-2-2B)."
        if max(un.multipliers, default=0) > 200 else "",
        "- MCQ filter: a question counts only if the base model answers all 24 orderings right." if un.all_permutations
        else "- MCQ filter: the given order only (SAEBench needs all 24 orderings right).",
        "- Zero-ablation in the CE-loss score zeroes positions 1.. (the positions the SAE replaces); SAEBench "
        "zeroes BOS too (`ablate_bos=True` reproduces it).",
        "- Feature frequencies for selection mask BOS, EOS and padding rows, as SAEBench does; they are "
        f"counted on up to {cfg.eval.rows:,} rows of the training corpora.",
        "- The SAE runs in float32 during interventions; SAEBench casts it to the model's dtype.",
        "- Loss mode (CE on held-out forget vs retain text) and its scores are ours, not SAEBench's.",
        "- Grouped SAEs: π from the unclamped activations during the clamp (see Unlearning).",
    ]
    return "\n".join(i for i in items if i)


def _plots(out_dir: Path, results: dict) -> list[str]:
    names = list(results)
    made = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        ax.scatter(_get(results[n], "reconstruction", "l0"), _get(results[n], "reconstruction", HEADLINE_EV))
        ax.annotate(n, (_get(results[n], "reconstruction", "l0"), _get(results[n], "reconstruction", HEADLINE_EV)),
                    fontsize=7)
    ax.set(xlabel="L0 (active features per token)", ylabel="explained variance", title="Reconstruction vs L0")
    made.append(_save(fig, out_dir, "recon_vs_l0.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for metric in ("unlearning_score", "loss_unlearning_score", "best_selectivity"):
        for kind, marker in (("adaptive", "o-"), ("fixed", "s--")):
            pts = sorted((_alpha(results[n]), _get(results[n], "unlearning", metric)) for n in names
                         if results[n]["summary"].get("type") == kind)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=f"{kind}: {metric}")
        base = [_get(results[n], "unlearning", metric) for n in names if results[n]["summary"].get("type") == "baseline"]
        if base and not math.isnan(base[0]):
            ax.axhline(base[0], linestyle=":", color="grey")
    ax.set(xlabel="α", ylabel="score", title="Unlearning vs α (dotted: baseline)")
    ax.legend(fontsize=6)
    made.append(_save(fig, out_dir, "unlearning_vs_alpha.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, max(len(results[n].get("conditioning", {}).get("decoder", {}).get("cond", [])) for n in names))
    for i, n in enumerate(names):
        conds = results[n].get("conditioning", {}).get("decoder", {}).get("cond", [])
        for g, c in enumerate(conds):
            ax.bar(i + g * width, c if c and math.isfinite(c) else 0, width, color=f"C{g}",
                   label=f"group {g}" if i == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="σ_max / σ_min (decoder)", title="Condition number per feature group")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    made.append(_save(fig, out_dir, "condition_numbers.png"))

    made.append(_save(plot_training_curves(results), out_dir, "training_curves.png"))
    return made


def _save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def write_report(out_dir: Path, cfg: Config, reader: StoreReader, results: dict, timings: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    comp = comparison(results)
    conditions = aggregate(results)  # seeds -> conditions (eval/aggregate.py)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "orthosae_version": __version__,
        "config": str(cfg.path), "store": reader.url, "store_meta": reader.meta,
        "runs_dir": cfg.train.runs_dir, "headline_explained_variance": HEADLINE_EV,
        "runs": results, "comparison": comp, "conditions": conditions, "timings_s": timings, "plots": [],
    }
    _write_json(out_dir / "report.json", report)  # the measurements first: a failing plot must not lose them
    plots = _plots(out_dir, results) + probe_plots(out_dir, results)
    condition_plots = plot_conditions(out_dir, conditions)
    report["plots"] = plots + condition_plots
    _write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(_markdown(cfg, reader, results, comp, timings, plots)
                                       + probe_markdown(cfg, results) + conditions_markdown(conditions, condition_plots))
    return out_dir


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default, allow_nan=True))
    tmp.rename(path)


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
