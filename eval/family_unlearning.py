"""The unlearning family: every run's clamp sweep (eval/unlearning.py, F(b) and the cross-fitted
figures from eval/matched_damage.py), the grouped runs' π ablation, the label-using references
(``+forget-share``, ``diff-of-means``) and `[eval.spread]`'s decomposition: report.json
``unlearning`` (and ``references``, ``spread``); report.md "Unlearning at matched damage" and
"Deviations from SAEBench"; unlearning_vs_alpha.png. Its metrics are the registry's own
(eval/metrics.py, F(b) per retain budget)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or batch nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from orthosae.common import variants  # noqa: E402
from orthosae.common.config import Config  # noqa: E402
from orthosae.common.corpora import load_mcq  # noqa: E402
from orthosae.common.markdown import cell, table, with_interval  # noqa: E402
from orthosae.common.store import StoreReader  # noqa: E402
from orthosae.eval.family import (  # noqa: E402
    Activity,
    EvalContext,
    LoadedRun,
    Reference,
    ReportView,
    alpha_of,
    corpora_of,
    measure_activity,
    read_rows,
    special_tokens,
)
from orthosae.eval.figures import save_figure  # noqa: E402
from orthosae.eval.matched_damage import domain_tokens  # noqa: E402
from orthosae.eval.metrics import Metric  # noqa: E402
from orthosae.eval.spread import decompose, figure_keys  # noqa: E402
from orthosae.eval.unlearning import run_sweep, run_unlearning, unlearning_baseline  # noqa: E402
from orthosae.train.sae import is_grouped  # noqa: E402
from orthosae.train.sae.grouping import forget_share  # noqa: E402

# what the SAE-free reference reports as quality: the model itself, reconstruction perfect by definition
WITHOUT_SAE = {
    "reconstruction": {"explained_variance": 1.0},
    "downstream": {"ce_loss_score": 1.0},
    "conditioning": {},
    "curves": {},
}
SWEEP_COLUMNS = (
    ("forget ΔCE", "forget_ce_increase"),
    ("retain ΔCE", "retain_ce_increase"),
    ("forget ΔCE domain", "forget_ce_increase_domain"),
    ("forget ΔCE rest", "forget_ce_increase_rest"),
    ("selectivity", "selectivity"),
    ("ΔCE_f / ΔCE_r", "selectivity_ratio"),
    ("forget coverage", "forget_coverage"),
    ("retain coverage", "retain_coverage"),
)


def contexts_all(reader: StoreReader, names: list[str], per_corpus: int, bos: int) -> torch.Tensor:
    """``per_corpus`` contexts from the front of each corpus (0 = all of them), in store order."""
    info = reader.corpora()
    return torch.cat(
        [
            reader.contexts(n, 0, info[n].n_contexts if per_corpus == 0 else min(per_corpus, info[n].n_contexts), bos)
            for n in names
        ]
    )


def token_counts(reader: StoreReader, names: list[str]) -> np.ndarray:
    """How often each token id occurs in the named corpora (every row)."""
    info = reader.corpora()
    counts = np.zeros(0, dtype=np.int64)
    for n in names:
        c = np.bincount(reader.read_tokens(n, 0, info[n].n_rows).astype(np.int64))
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[: len(c)] += c
    return counts


def forget_share_ranking(a: Activity) -> torch.Tensor:
    """The label-using reference's order: features active on forget rows, by forget share of
    activation mass (the adaptive grouping's statistic, applied post hoc), then forget frequency."""
    share = forget_share(a.forget_mass, a.retain_mass).double().cpu()
    share = torch.nan_to_num(share, nan=-1.0)
    active = a.forget_freq.cpu() > 0
    order = sorted(
        torch.nonzero(active).flatten().tolist(), key=lambda i: (-share[i].item(), -a.forget_freq[i].item(), i)
    )
    return torch.tensor(order, dtype=torch.long)


def mean_direction(reader: StoreReader, cfg: Config, skip: frozenset[int]) -> torch.Tensor:
    """Unit vector along mean(forget training rows) − mean(retain training rows), raw units, from
    every training row of each role (special-token rows left out)."""
    means = []
    info = reader.corpora()
    for role in ("forget", "retain"):
        total, n = None, 0
        names = corpora_of(cfg, "train", role)
        for rows in read_rows(reader, names, sum(info[c].n_rows for c in names), skip):
            s = rows.double().sum(dim=0)
            total, n = (s if total is None else total + s), n + len(rows)
        means.append(total / max(n, 1))
    d = means[0] - means[1]
    return (d / d.norm().clamp_min(1e-12)).float()


def project_out(direction: Tensor, scale: float, fired: list | None = None):
    """resid -> resid − scale·(resid·d̂)d̂ (the SAE-free reference edit; every position is edited)."""

    def fn(r: Tensor) -> Tensor:
        d = direction.to(device=r.device)
        x = r.float()
        if fired is not None:
            fired.append(torch.full(r.shape[:-2] or (1,), float(r.shape[-2]), dtype=torch.float64))
        return (x - scale * (x @ d)[..., None] * d).to(r.dtype)

    return fn


def ref_name(run: str, tag: str) -> str:
    """baseline-s1 -> baseline+forget-share-s1: the seed suffix stays last, so seeds form a condition."""
    m = re.match(r"(.*)(-s\d+)$", run)
    return f"{m[1]}{tag}{m[2]}" if m else run + tag


def first_seeds(runs: list[LoadedRun], n: int) -> list[LoadedRun]:
    """The ``n`` lowest-seed runs of each condition (all when ``n`` is 0), in the order given."""
    if not n:
        return runs
    keep = set()
    for cond in {r.run.condition for r in runs}:
        mine = sorted((r for r in runs if r.run.condition == cond), key=lambda r: r.run.train.seed)
        keep |= {r.name for r in mine[:n]}
    return [r for r in runs if r.name in keep]


@dataclass
class Sweep:
    """One eval's unlearning inputs: what is measured, on what, and the arguments every clamp
    sweep shares (``args``; ``loss_args``: the loss mode alone, for ablations and references)."""

    ctx: EvalContext
    has_freqs: bool
    loss: bool
    fc: Tensor | None
    rc: Tensor | None
    args: dict

    @property
    def loss_args(self) -> dict:
        return dict(self.args, forget_mcqs=None, retain_mcqs=None)

    def clamp(self, sae, a: Activity, args: dict | None = None, **how) -> dict:
        """One SAE's clamp sweep on the features ``a`` selects (every run, the π ablation, the
        forget-share reference and the spread draws call this)."""
        lm = self.ctx.lm
        return run_unlearning(
            lm.model,
            lm.tokenizer,
            self.ctx.cfg.harvest.layer,
            sae,
            a.forget_freq,
            a.retain_freq,
            **(args or self.args),
            **how,
        )


def prepare(ctx: EvalContext) -> Sweep:
    """The questions, held-out contexts and domain tokens, and the unmodified model's figures."""
    cfg, reader, lm = ctx.cfg, ctx.reader, ctx.lm
    un, bos = cfg.eval.unlearning, lm.tokenizer.bos_token_id
    has_freqs = bool(corpora_of(cfg, "train", "forget") and corpora_of(cfg, "train", "retain"))
    mcq = "mcq" in un.modes and has_freqs
    loss = "loss" in un.modes and bool(corpora_of(cfg, "heldout", "forget") and corpora_of(cfg, "heldout", "retain"))
    cap = un.max_questions or None
    data = dict(
        forget_mcqs=load_mcq(un.forget_questions, un.forget_subjects, cap) if mcq else None,
        retain_mcqs=load_mcq(un.retain_questions, un.retain_subjects, cap) if mcq else None,
        forget_contexts=contexts_all(reader, corpora_of(cfg, "heldout", "forget"), un.loss_contexts, bos)
        if loss
        else None,
        retain_contexts=contexts_all(reader, corpora_of(cfg, "heldout", "retain"), un.loss_contexts, bos)
        if loss
        else None,
        batch_size=cfg.eval.batch_size,
        chat=un.chat_template,
        all_permutations=un.all_permutations,
    )
    domain = None
    if loss and has_freqs:
        forget, retain = (token_counts(reader, corpora_of(cfg, "train", role)) for role in ("forget", "retain"))
        domain = domain_tokens(forget, retain, un.domain_ratio, un.domain_min_count)
    advance = ctx.task("unlearning baseline (unmodified model)", 1)
    baseline = unlearning_baseline(lm.model, lm.tokenizer, layer=cfg.harvest.layer, domain=domain, **data)
    advance(1)  # stops its clock; an open task would keep counting through the interventions
    args = dict(
        data,
        retain_thresholds=un.retain_thresholds,
        n_features_list=un.n_features_list,
        multipliers=un.multipliers,
        baseline=baseline,
        retain_budgets=un.retain_budgets,
    )
    return Sweep(ctx, has_freqs, loss, data["forget_contexts"], data["retain_contexts"], args)


@dataclass
class Plan:
    """Which runs get which sweep, and how many settings that is in all (the progress bar's total)."""

    ablated: set[str]  # grouped runs whose π ablation is measured
    ranked: list[LoadedRun]  # runs the forget-share reference edits with
    diff_of_means: bool
    spread: list[LoadedRun]  # `[eval.spread]`'s runs

    @staticmethod
    def of(s: Sweep, runs: list[LoadedRun], activity: dict[str, Activity]) -> Plan:
        un, spread = s.ctx.cfg.eval.unlearning, s.ctx.cfg.eval.spread
        baselines = [r for r in runs if r.run.variant.baseline and un.forget_share_condition in ("", r.run.condition)]
        in_spread = [r for r in runs if r.run.condition == spread.condition and activity[r.name].both_roles]
        return Plan(
            ablated={r.name for r in runs if is_grouped(r.sae)} if s.loss and un.pi_ablation else set(),
            ranked=first_seeds(baselines, un.forget_share_runs) if s.loss and "forget_share" in un.references else [],
            diff_of_means=s.loss and s.has_freqs and "diff_of_means" in un.references,
            spread=first_seeds(in_spread, spread.runs) if s.loss and spread.condition else [],
        )

    def total(self, cfg: Config, runs: list[LoadedRun]) -> int:
        un, spread = cfg.eval.unlearning, cfg.eval.spread
        settings = len(un.retain_thresholds) * len(un.n_features_list) * len(un.multipliers)
        return (
            settings * len(runs)
            + len(self.ablated)
            + len(un.n_features_list) * len(un.multipliers) * len(self.ranked)
            + (len(un.projection_scales) if self.diff_of_means else 0)
            + settings * spread.selection_draws * len(self.spread)
        )


def pi_ablation(s: Sweep, sae, a: Activity, section: dict) -> dict:
    """π follows the clamp, so the clamp also removes group bias; at the largest setting only (the
    one where it can matter most), against the main clamp's same setting."""
    un = s.ctx.cfg.eval.unlearning
    n, mult, thr = max(un.n_features_list), max(un.multipliers), un.retain_thresholds[0]
    big = dict(s.loss_args, n_features_list=[n], multipliers=[mult], retain_thresholds=[thr])
    ablation = s.clamp(sae, a, big, pi_from_clamped=True)
    main = [
        x for x in section["rows"] if x["n_features"] == n and x["multiplier"] == mult and x["retain_threshold"] == thr
    ]
    return {
        "n_features": n,
        "multiplier": mult,
        "selectivity": ablation["rows"][0]["selectivity"],
        "selectivity_pi_from_unclamped": main[0]["selectivity"] if main else math.nan,
    }


def measure_runs(s: Sweep, runs: list[LoadedRun], activity: dict[str, Activity], plan: Plan) -> dict[str, dict]:
    """Each run's ``unlearning`` section (runs without both a forget and a retain corpus: none)."""
    sections = {}
    for r in runs:
        a = activity[r.name]
        if a.both_roles:
            sections[r.name] = s.clamp(r.sae, a)
            if r.name in plan.ablated:
                sections[r.name]["ablation_pi_from_clamped"] = pi_ablation(s, r.sae, a, sections[r.name])
    return sections


def measure_references(s: Sweep, activity: dict[str, Activity], plan: Plan) -> dict[str, Reference]:
    """The label-using references, on the runs' sweep: forget-share ranking, diff of means."""
    out = {}
    for r in plan.ranked:
        res = s.clamp(r.sae, activity[r.name], s.loss_args, ranking=forget_share_ranking(activity[r.name]))
        how = "forget_share: the SAE's features ranked by forget share of activation mass"
        out[ref_name(r.name, "+forget-share")] = Reference(r.name, how, {"unlearning": res})
    if plan.diff_of_means:
        ctx = s.ctx
        d = mean_direction(ctx.reader, ctx.cfg, special_tokens(ctx.lm.tokenizer))
        sweep = [
            ({"scale": float(x)}, ("project", float(x)), lambda fired, x=float(x): project_out(d, x, fired))
            for x in ctx.cfg.eval.unlearning.projection_scales
        ]
        res = run_sweep(
            ctx.lm.model,
            ctx.lm.tokenizer,
            ctx.cfg.harvest.layer,
            sweep,
            baseline=s.args["baseline"],
            do_mcq=False,
            do_loss=True,
            forget_contexts=s.fc,
            retain_contexts=s.rc,
            batch_size=ctx.cfg.eval.batch_size,
            progress=s.args["progress"],
            retain_budgets=s.args["retain_budgets"],
        )
        how = "diff_of_means: forget − retain mean direction projected out (no SAE)"
        out["diff-of-means"] = Reference(None, how, {"unlearning": res}, without_sae=WITHOUT_SAE)
    return out


def measure_spread(s: Sweep, runs: list[LoadedRun], sections: dict[str, dict], plan: Plan) -> dict:
    """`[eval.spread]`: the condition's first runs rescored on bootstrap draws of the selection rows."""
    cfg = s.ctx.cfg
    spread, skip = cfg.eval.spread, special_tokens(s.ctx.lm.tokenizer)
    draws: dict[str, list[dict]] = {r.name: [] for r in plan.spread}
    for d in range(spread.selection_draws):
        drawn, _ = measure_activity(cfg, s.ctx.reader, plan.spread, skip, draw=(spread.seed, d))
        for r in plan.spread:
            draws[r.name].append(s.clamp(r.sae, drawn[r.name], s.loss_args))
    main = {r.name: sections[r.name] for r in runs if r.run.condition == spread.condition and r.name in sections}
    return {
        "condition": spread.condition,
        "runs": len(plan.spread),
        "selection_draws": spread.selection_draws,
        "seed": spread.seed,
        "figures": decompose(main, draws, figure_keys(cfg.eval.unlearning.retain_budgets)),
    }


def measure(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Every run's sweep; the references and the spread go to ``ctx`` (reported beside the runs)."""
    activity = ctx.activity(runs)
    with ctx.timed("unlearning_baseline"):
        s = prepare(ctx)
    plan = Plan.of(s, runs, activity)
    s.args["progress"] = ctx.task("unlearning interventions", plan.total(ctx.cfg, runs))
    with ctx.timed("unlearning_interventions"):
        sections = measure_runs(s, runs, activity, plan)
    if plan.ranked or plan.diff_of_means:
        with ctx.timed("unlearning_references"):
            ctx.references.update(measure_references(s, activity, plan))
    if plan.spread:
        with ctx.timed("unlearning_spread"):
            ctx.spread = measure_spread(s, runs, sections, plan)
    return {name: {"unlearning": section} for name, section in sections.items()}


def with_ci(m: Metric, result: dict) -> str:
    """A run's figure with its own 95 % interval, ⁰ where F(b) rests on the chord from the origin."""
    v = m.value(result)
    lo, hi = m.interval(result)
    if math.isnan(v):
        return "n/a"
    text = with_interval(v, lo, hi)
    origin = result.get(m.section, {}).get(f"{m.field or m.key}_origin") if m.frontier else None
    return text + " ⁰" if isinstance(origin, (int, float)) and origin > 0 else text


def _tables(view: ReportView) -> tuple[str, str, str]:
    """The figures per run, the sweep per setting, and the π ablation."""
    every = view.every
    # F(b) and the other frontier figures always have their column ("n/a": not reached / not measured)
    shown = [
        m
        for m in view.metrics
        if m.section == "unlearning"
        and m.runs_table
        and (m.frontier or any(not math.isnan(m.value(r)) for r in every.values()))
    ]
    figures = table(
        ["run", *[m.label for m in shown]], [[n, *[with_ci(m, r) for m in shown]] for n, r in every.items()]
    )
    sweep = [
        [
            n,
            cell(row.get("retain_threshold", math.nan)) if "retain_threshold" in row else "",
            row.get("n_features", ""),
            row.get("multiplier", row.get("scale", "")),
            *[row.get(k, math.nan) for _, k in SWEEP_COLUMNS],
        ]
        for n, r in every.items()
        for row in r.get("unlearning", {}).get("rows", [])
    ]
    header = ["run", "retain thr.", "n_features", "multiplier / s", *[c for c, _ in SWEEP_COLUMNS]]
    ablation = [
        [
            n,
            a.get("n_features"),
            a.get("multiplier"),
            a.get("selectivity_pi_from_unclamped", math.nan),
            a.get("selectivity", math.nan),
        ]
        for n in view.names
        for a in [view.results[n].get("unlearning", {}).get("ablation_pi_from_clamped")]
        if a
    ]
    pi = ["run", "n_features", "multiplier", "selectivity (π from unclamped)", "selectivity (π follows the clamp)"]
    return figures, table(header, sweep), table(pi, ablation) if ablation else "(no grouped run)"


def markdown(view: ReportView) -> str:
    un = view.cfg.eval.unlearning
    first = next((r["unlearning"] for r in view.results.values() if r.get("unlearning", {}).get("documents")), {})
    docs = first.get("documents", {})
    figures, sweep, ablation = _tables(view)
    return f"""
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

{figures}

The sweep, per setting (ΔCE in nats; domain / rest: forget ΔCE on domain tokens / on the others):

{sweep}

MCQ p(right) selectivity: the drop of the right answer's probability on forget questions minus
that on retain questions (base-correct questions, best setting). The grouped SAE's bias mix π is
computed from the unclamped activations, so its clamp edits the chosen features only, as a plain
SAE's does. Ablation at the largest setting, where π follows the clamp (the clamp then also takes
the clamped group's bias away):

{ablation}

## Deviations from SAEBench
{deviations(view.cfg)}
"""


def deviations(cfg: Config) -> str:
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


def plots(view: ReportView) -> list[str]:
    res, names = view.results, view.names
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(m for m in view.metrics if m.frontier):
        for v in (v for v in variants.VARIANTS.values() if v.has_ortho):
            pts = sorted((alpha_of(res[n]), m.value(res[n])) for n in names if res[n]["summary"].get("type") == v.name)
            if pts:
                style = "o-" if v.grouped else "s--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i}", label=f"{v.name}: {m.label}")
        base = [m.value(res[n]) for n in names if variants.of(res[n]["summary"].get("type")).baseline]
        if base and not math.isnan(base[0]):
            ax.axhline(base[0], linestyle=":", color=f"C{i}")
    title = "Unlearning vs α (dotted: baseline; not at equal quality: see frontier.png)"
    ax.set(xlabel="α", ylabel="nats", title=title)
    ax.legend(fontsize=6)
    return [save_figure(plt, fig, view.out_dir, "unlearning_vs_alpha.png")]
