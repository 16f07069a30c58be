"""The conditioning family: feature groups (learned, or the training rule applied post hoc to the
activity on the training corpora) and how orthogonal and well-conditioned they are: report.json
``conditioning``; report.md "Feature groups"; condition_numbers.png."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or batch nodes
import matplotlib.pyplot as plt  # noqa: E402

from orthosae.common.config import Config  # noqa: E402
from orthosae.common.markdown import cell, table  # noqa: E402
from orthosae.eval.conditioning import conditioning_report, feature_groups  # noqa: E402
from orthosae.eval.family import Activity, EvalContext, LoadedRun, ReportView  # noqa: E402
from orthosae.eval.figures import save_figure  # noqa: E402

HEADER = [
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


def measure_conditioning(cfg: Config, runs: list[LoadedRun], activity: dict[str, Activity], advance) -> dict[str, dict]:
    """Run -> its report.json ``conditioning``: of the groups the activity implies (eval/conditioning.py
    ``feature_groups``), or one group without both a forget and a retain training corpus."""
    out = {}
    for r in runs:
        a = activity[r.name]
        if a.forget_mass is not None and a.retain_mass is not None:
            groups, n_groups, how = feature_groups(r.sae, a.forget_mass, a.retain_mass, cfg.ortho.groups)
            report = conditioning_report(r.sae, groups.cpu(), n_groups, activity=a.forget_mass + a.retain_mass)
            if r.run.has_ortho and not r.run.grouped:
                # the fixed SAE was trained against its contiguous blocks: how orthogonal are those?
                report["trained_groups"] = conditioning_report(
                    r.sae, r.sae.groups.cpu(), r.sae.n_groups, activity=a.forget_mass + a.retain_mass
                )
        else:
            report, how = conditioning_report(r.sae), "single group"
        report["grouping"] = how
        out[r.name] = report
        advance(1)
    return out


def measure(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    with ctx.timed("conditioning"):  # the feature activity first measured here: it counts here
        advance = ctx.task("feature frequencies + conditioning", len(runs))
        found = measure_conditioning(ctx.cfg, runs, ctx.activity(runs), advance)
    return {name: {"conditioning": c} for name, c in found.items()}


def _row(name: str, c: dict) -> list:
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


def markdown(view: ReportView) -> str:
    conditioning = {n: view.results[n].get("conditioning", {}) for n in view.names}
    cond = [_row(n, c) for n, c in conditioning.items()]
    trained = [_row(n, c["trained_groups"]) for n, c in conditioning.items() if "trained_groups" in c]
    d_model = int(view.reader.meta.get("d_model") or 0)
    wide = any(min(c.get("group_sizes") or [0]) >= d_model > 0 for c in conditioning.values())
    angle_note = (
        "\nGroups with at least d_model features each span the whole residual space, so their "
        "principal angles are 0 by dimension count alone; read the RMS cosine column for them.\n"
        if wide
        else ""
    )
    random_level = d_model**-0.5 if d_model else math.nan
    trained_table = (
        f"\nFixed runs, on the contiguous blocks they were trained against:\n{table(HEADER, trained)}\n"
        if trained
        else ""
    )
    return f"""
## Feature groups (per group, g0 / g1 / …: group 1 of 2 is forget-leaning)
Degeneracy is read from the effective-rank fraction and the largest within-group |cos|; σ_max/σ_min
depends on n_g alone for random directions (thousands near n_g = d_model), so it stands beside n_g.
RMS cross-group cosine of the decoder, over all features and weighted by activation mass on the
training corpora (what α bounds with `weighting = "activity"`); random directions sit at
1/√d_model = {cell(random_level)}.
{table(HEADER, cond)}
{trained_table}{angle_note}"""


def plots(view: ReportView) -> list[str]:
    names, res = view.names, view.results
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, max(len(res[n].get("conditioning", {}).get("decoder", {}).get("cond", [])) for n in names))
    for i, n in enumerate(names):
        conds = res[n].get("conditioning", {}).get("decoder", {}).get("cond", [])
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
    return [save_figure(plt, fig, view.out_dir, "condition_numbers.png")]
