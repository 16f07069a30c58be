"""The one registry of reported metrics: key, section, direction, label — and the one L0 rule.

Every table of report.md, the ``conditions`` of report.json, the frontier plots and the "who wins"
section read their metrics from here, so a metric registered once appears in all of them. Each eval
family declares its figures in its ``Family.metrics`` and ``eval/families.py`` ``register`` adds
them here; the core, conditioning and unlearning families' are ``BUILT_IN`` below (their columns
interleave, so one list keeps the report's order) and those families name them with ``built_in``.
A metric's section is the run's report.json section that holds it.

- ``higher``: True / False = which direction is better; None = reported, never compared.
- ``eval_error``: the run carries document-bootstrap replicates of it (``unlearning.replicates``),
  so condition intervals combine seed spread and the eval's own error (``eval/aggregate.py``).
- ``frontier``: an unlearning figure judged against reconstruction quality (``eval/frontier.py``):
  a condition wins it only above the baseline's curve at equal quality.
- ``quality``: an axis of that frontier (reconstruction quality).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orthosae.common.config import budget_key

# the reconstruction's headline explained variance: the corrected SAELens definition
HEADLINE_EV = "explained_variance"

# Two conditions are compared only when their mean L0 lie within 10 % of each other (max/min − 1):
# the one L0 rule of the report, its tables and its verdicts.
L0_MATCH = 0.10


@dataclass(frozen=True)
class Metric:
    key: str
    section: str
    higher: bool | None
    label: str
    field: str | None = None  # the key inside the section, when it differs from ``key``
    old_fields: tuple[str, ...] = ()  # its key in reports written before a rename (read, never written)
    eval_error: bool = False
    frontier: bool = False
    quality: bool = False
    runs_table: bool = True  # a column of the per-run table of its section in report.md

    def value(self, result: dict) -> float:
        """This metric of one run's report.json entry (nan when absent or not finite)."""
        name = self.field or self.key
        if self.section == "conditioning":  # the first group pair's cross-group cosines
            found = (result.get("conditioning", {}).get("pairs") or [{}])[0]
        else:
            found = result.get(self.section, {})
        v = next((found[k] for k in (name, *self.old_fields) if k in found), None)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan

    def replicates(self, result: dict) -> list | None:
        """The run's document-bootstrap replicates of this metric, if it has them."""
        if not self.eval_error:
            return None
        reps = result.get(self.section, {}).get("replicates", {}).get(self.field or self.key)
        return reps if reps else None

    def interval(self, result: dict) -> list[float]:
        """The run's own 95 % document-bootstrap interval (nan if none)."""
        ci = result.get(self.section, {}).get("intervals", {}).get("ci95", {}).get(self.field or self.key)
        return ci if ci else [math.nan, math.nan]


# the core, conditioning and unlearning families' figures, in the report's column order (the families
# interleave here: downstream's KL score sits between unlearning's quality axes and its figures)
BUILT_IN: tuple[Metric, ...] = (
    Metric("l0", "reconstruction", None, "L0"),
    Metric("explained_variance", "reconstruction", True, "EV"),
    Metric("mse", "reconstruction", False, "MSE"),
    Metric("frac_dead", "reconstruction", False, "dead fraction"),
    Metric("ce_loss_score", "downstream", True, "CE-loss score"),
    # the frontier's quality axes: measured on the unlearning's held-out documents, bootstrapped with F(b)
    Metric(
        "ce_loss_score_docs", "unlearning", True, "CE-loss score (unlearning documents)", eval_error=True, quality=True
    ),
    Metric("explained_variance_docs", "unlearning", True, "EV (unlearning documents)", eval_error=True, quality=True),
    Metric("kl_div_score", "downstream", True, "KL score"),
    Metric(
        "best_selectivity_crossfit",
        "unlearning",
        True,
        "best selectivity, cross-fitted (nats)",
        eval_error=True,
        frontier=True,
    ),
    Metric("best_selectivity", "unlearning", True, "best selectivity, in sample (nats)", eval_error=True),
    Metric("selectivity_ratio_at_best", "unlearning", None, "ΔCE_f / ΔCE_r at the best setting", eval_error=True),
    Metric("forget_coverage_at_best", "unlearning", None, "forget coverage at the best setting", eval_error=True),
    Metric("retain_coverage_at_best", "unlearning", None, "retain coverage at the best setting", eval_error=True),
    Metric(
        "loss_unlearning_score_crossfit", "unlearning", True, "loss unlearning score, cross-fitted", eval_error=True
    ),
    Metric("unlearning_score_crossfit", "unlearning", True, "MCQ unlearning score (SAEBench rule), cross-fitted"),
    Metric("unlearning_score", "unlearning", True, "MCQ unlearning score (SAEBench), in sample"),
    Metric("best_mcq_prob_selectivity_crossfit", "unlearning", True, "MCQ p(right) selectivity, cross-fitted"),
    Metric("best_mcq_prob_selectivity", "unlearning", True, "MCQ p(right) selectivity, in sample"),
    # eval/conditioning.py: ‖W_gᵀW_h‖_F / (‖W_g‖_F‖W_h‖_F) of the decoder, named rms_cross_cos everywhere
    Metric(
        "rms_cross_cos",
        "conditioning",
        None,
        "RMS cross-group cos",
        field="decoder_rms_cross_cos",
        old_fields=("decoder_overlap_fro_normalized",),
        runs_table=False,
    ),
    Metric(
        "rms_cross_cos_activity",
        "conditioning",
        None,
        "activity-weighted RMS cross-group cos",
        field="decoder_rms_cross_cos_activity",
        old_fields=("decoder_rms_cos_activity",),
        runs_table=False,
    ),
)
_REGISTRY: list[Metric] = list(BUILT_IN)


def built_in(*sections: str) -> tuple[Metric, ...]:
    """The built-in metrics of these report.json sections (a family's ``metrics``)."""
    return tuple(m for m in BUILT_IN if m.section in sections)


def register(metric: Metric) -> Metric:
    """Add a metric, or replace the one of its key where it stands (so the same metric registered
    again keeps its column); returns it."""
    global _REGISTRY
    keys = [m.key for m in _REGISTRY]
    if metric.key in keys:
        _REGISTRY[keys.index(metric.key)] = metric
    else:
        _REGISTRY = [*_REGISTRY, metric]
    return metric


def budget_metrics(budgets: Sequence[float]) -> list[Metric]:
    """F(b) for each retain budget, and its split into the forget text's domain tokens and the rest."""
    out = []
    for b in budgets:
        tag = f"{b:g}"
        out.append(
            Metric(
                budget_key(b),
                "unlearning",
                True,
                f"F({tag}): forget ΔCE at retain ΔCE {tag}",
                eval_error=True,
                frontier=True,
            )
        )
        for part, what in (("domain", "domain tokens"), ("rest", "other tokens")):
            out.append(Metric(budget_key(b, part), "unlearning", None, f"F({tag}) on forget {what}", eval_error=True))
    return out


def registry(budgets: Sequence[float] = ()) -> list[Metric]:
    """Every metric, F(b) for the given budgets first among the unlearning ones."""
    fb = budget_metrics(budgets)
    first_unlearning = next((i for i, m in enumerate(_REGISTRY) if m.section == "unlearning"), len(_REGISTRY))
    return _REGISTRY[:first_unlearning] + fb + _REGISTRY[first_unlearning:]


def budgets_of(results: dict[str, dict]) -> list[float]:
    """The retain budgets the runs were evaluated at (report.json ``unlearning.retain_budgets``)."""
    for r in results.values():
        b = r.get("unlearning", {}).get("retain_budgets")
        if b:
            return [float(x) for x in b]
    return []


def l0_matched(a: float, b: float) -> bool:
    """The one L0 rule: max/min − 1 within L0_MATCH (nan L0, e.g. an SAE-free reference: matched)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return True
    lo, hi = sorted((a, b))
    return lo > 0 and hi / lo - 1 <= L0_MATCH
