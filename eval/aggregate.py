"""Seeds -> conditions: mean, calibrated 95 % interval and per-seed values of each metric, paired comparisons.

A *condition* is the set of runs whose settings are equal except the SAE init seed
(``cfg.json`` ``orthosae``: type, every ``[train]`` key but ``seed``, every ``[train.ortho]`` key);
its label is the run name without the ``-s<seed>`` suffix of a ``seeds = [...]`` expansion.

Statistics (all in ``aggregate``; the intervals themselves in ``eval/intervals.py``):

- per metric and condition: the mean over **every** seed of the condition with the calibrated 95 %
  interval of ``eval/intervals.py`` (seed spread, the document error every seed shares for the
  unlearning sweep's figures, Hall's skewness correction). A metric some seed lacks (an F(b) whose
  sweep never reached b) is **n/a** for the condition, with "k of n reach" beside it: a mean of the
  seeds that happened to reach it would describe other seeds than its interval. Below
  ``MIN_SEEDS`` seeds: the mean, and "too few seeds" instead of an interval;
- per pair of conditions and metric: the **paired differences** A_s − B_s over the seed ids both
  have (the same init seed and data order), never by position, with the same interval;
- the one L0 rule (``eval/metrics.py`` ``L0_MATCH``): conditions whose mean L0 differ by more are
  not compared;
- frontier metrics (unlearning figures) by the frontier rule against the baseline curve
  (``eval/frontier.py``); every other compared metric by the pairwise verdicts;
- **primary comparisons** (``primary``: [eval] primary_figure against primary_quality for every
  condition, and primary_pairs on the primary figure) are judged with Holm's correction over all of
  them at family-wise 5 %; everything else is exploratory (nominal 95 % intervals, no correction).
"""

from __future__ import annotations

import json
import math
import re
from itertools import combinations

import numpy as np

from orthosae.common import variants
from orthosae.common.errors import UserError
from orthosae.common.markdown import cell, with_interval
from orthosae.eval.frontier import frontier_verdict
from orthosae.eval.intervals import MIN_SEEDS, holm, mean_interval, paired_interval
from orthosae.eval.metrics import L0_MATCH, Metric, budgets_of, l0_matched, registry


class IncompleteConditionError(UserError):
    """A condition with a failed or missing run: its seeds cannot be paired around the gap."""


def _settings(result: dict) -> dict:
    return result.get("cfg", {}).get("orthosae") or {}


def seed_of(result: dict) -> int | None:
    return _settings(result).get("train", {}).get("seed")


def condition_key(result: dict) -> str:
    """Everything that defines a run except its name and SAE init seed, as canonical JSON."""
    s = _settings(result)
    train = {k: v for k, v in s.get("train", {}).items() if k != "seed"}
    return json.dumps([s.get("type"), train, s.get("ortho", {}), s.get("reference")], sort_keys=True, default=str)


def condition_label(name: str, seed: int | None) -> str:
    return re.sub(rf"-s{seed}$", "", name) if seed is not None else name


def group_conditions(results: dict[str, dict]) -> dict[str, list[str]]:
    """label -> run names (in ``results`` order): runs that differ only by seed share a condition."""
    by_key: dict[str, list[str]] = {}
    for name, r in results.items():
        by_key.setdefault(condition_key(r), []).append(name)
    out = {}
    for names in by_key.values():
        labels = {condition_label(n, seed_of(results[n])) for n in names}
        label = labels.pop() if len(labels) == 1 else condition_label(names[0], seed_of(results[names[0]]))
        while label in out:  # two conditions whose names strip to the same label
            label += "'"
        out[label] = names
    return out


def check_complete(results: dict[str, dict]) -> None:
    """A failed run (``status: failed``) of any condition stops the aggregation, naming it: dropping
    it would pair the others around a missing seed."""
    for name, r in results.items():
        if r.get("status") == "failed":
            raise IncompleteConditionError(
                f"{name}: the run failed ({r.get('message', 'no message')}); its condition's seeds are incomplete "
                f"and would be paired around it: retrain it (`pipe train`) or remove that seed from the config"
            )


def _verdict(s: dict, higher: bool | None) -> str:
    lo, hi = s["ci95"]
    if higher is None:
        return "not compared"
    if s["n"] < MIN_SEEDS:
        return f"no verdict: {s['n']} shared seed(s) < {MIN_SEEDS}"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no verdict: no interval"
    if lo > 0 or hi < 0:
        return "A" if (lo > 0) == higher else "B"
    return "tie"


def paired(a: dict, b: dict, higher: bool | None, reps_a: dict | None = None, reps_b: dict | None = None) -> dict:
    """A − B on the seed ids both have (finite on both sides), its calibrated interval, the verdict."""
    seeds = [s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s])]
    s = paired_interval({k: a[k] for k in seeds}, {k: b[k] for k in seeds}, reps_a, reps_b)
    out = {"seeds": s["seeds"], "mean_diff": s["mean"], "ci95": s["ci95"], "n": s["n"], "p": s["p"]}
    out["verdict"] = _verdict(s, higher)
    return out


def _reps(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def summarise_condition(values: dict, reps: dict | None) -> dict:
    """One metric of one condition: n/a unless every seed has it; else mean and calibrated interval."""
    finite = {s: v for s, v in values.items() if math.isfinite(v)}
    n = len(values)
    out = {"per_seed": {str(s): v for s, v in values.items()}, "reached": f"{len(finite)} of {n}"}
    if len(finite) < n:
        out.update(
            mean=math.nan,
            ci95=[math.nan, math.nan],
            sd=math.nan,
            n=len(finite),
            too_few=False,
            interval=f"n/a: {len(finite)} of {n} seeds have it",
        )
        return out
    R = np.stack([_reps(reps[s]) for s in values]) if reps else None
    s = mean_interval(list(values.values()), R)
    out.update({k: s[k] for k in ("mean", "ci95", "sd", "n", "too_few", "se", "df", "skew")})
    out["interval"] = (
        f"too few seeds ({n} < {MIN_SEEDS})"
        if s["too_few"]
        else "calibrated t over seeds + shared document error"
        if reps
        else "calibrated t over seeds"
    )
    if reps:
        out["doc_se"] = math.sqrt(s["doc_var"])
    return out


def aggregate(results: dict[str, dict], metrics: list[Metric] | None = None, primary: dict | None = None) -> dict:
    """The report's ``conditions`` section (see the module docstring). ``primary``: {"figure",
    "quality", "pairs"} (``[eval]`` primary_figure, primary_quality, primary_pairs) or None."""
    check_complete(results)
    metrics = metrics if metrics is not None else registry(budgets_of(results))
    conds: dict[str, dict] = {}
    per_seed: dict[str, dict[str, dict]] = {}  # label -> metric -> seed -> value
    reps: dict[str, dict[str, dict]] = {}  # label -> metric -> seed -> document replicates
    for label, names in group_conditions(results).items():
        conds[label], per_seed[label], reps[label] = _condition(results, names, metrics)
    l0s = {c: e["metrics"].get("l0", {}).get("mean", math.nan) for c, e in conds.items()}
    pairs = [_pair(a, b, per_seed, reps, metrics, l0s) for a, b in combinations(conds, 2)]
    finite = [v for v in l0s.values() if math.isfinite(v)]
    spread = (max(finite) / min(finite) - 1) if finite and min(finite) > 0 else math.nan
    frontier = _frontier(conds, per_seed, reps, metrics, l0s)
    prim = _primary(primary, conds, pairs, frontier) if primary else None
    return {
        "method": "mean over every seed of a condition (n/a unless every seed has the figure); 95 % intervals: "
        "Student-t over seeds at Welch-Satterthwaite df with the document error the seeds share "
        f"and Hall's skewness correction (eval/intervals.py), none below {MIN_SEEDS} seeds; a winner "
        f"only when the interval of the seed-paired difference excludes 0 and the L0 of both lie "
        f"within {L0_MATCH:.0%}",
        "conditions": conds,
        "pairs": pairs,
        "frontier": frontier,
        "primary": prim,
        "who_wins": _who_wins(conds, pairs, metrics, frontier),
        "l0": {
            "by_condition": l0s,
            "max_over_min_minus_1": spread,
            "rule": L0_MATCH,
            "matched": bool(math.isfinite(spread) and spread <= L0_MATCH),
        },
    }


def _condition(results: dict, names: list[str], metrics: list[Metric]) -> tuple[dict, dict, dict]:
    """One condition's entry, and its per-seed values and document replicates by metric."""
    first = _settings(results[names[0]])
    entry = {
        "runs": names,
        "seeds": [seed_of(results[n]) for n in names],
        "type": first.get("type"),
        "alpha": first.get("ortho", {}).get("alpha") if variants.of(first.get("type")).has_ortho else None,
        "activation": first.get("train", {}).get("activation", "relu"),
        "metrics": {},
    }
    per_seed, reps = {}, {}
    for m in metrics:
        values = {seed_of(results[n]): m.value(results[n]) for n in names}
        if all(math.isnan(v) for v in values.values()):
            continue
        per_seed[m.key] = values
        run_reps = {seed_of(results[n]): m.replicates(results[n]) for n in names}
        has_reps = m.eval_error and all(r is not None for r in run_reps.values())
        if has_reps:
            reps[m.key] = run_reps
        entry["metrics"][m.key] = summarise_condition(values, run_reps if has_reps else None)
    return entry, per_seed, reps


def _pair(a: str, b: str, per_seed: dict, reps: dict, metrics: list[Metric], l0s: dict) -> dict:
    """Conditions a and b compared seed-paired on every metric both have (A − B)."""
    row = {"a": a, "b": b, "metrics": {}}
    matched = l0_matched(l0s[a], l0s[b])
    for m in metrics:
        if m.key not in per_seed[a] or m.key not in per_seed[b]:
            continue
        both = m.key in reps[a] and m.key in reps[b]
        ra, rb = (reps[a][m.key], reps[b][m.key]) if both else (None, None)
        p = paired(per_seed[a][m.key], per_seed[b][m.key], m.higher, ra, rb)
        p["interval"] = "calibrated t over shared seeds" + (" + shared document error" if both else "")
        if not matched and m.higher is not None:
            p["verdict"] = f"not compared: L0 {l0s[a]:.1f} vs {l0s[b]:.1f} (> {L0_MATCH:.0%} apart)"
        p["winner"] = {"A": a, "B": b}.get(p["verdict"], p["verdict"])
        row["metrics"][m.key] = p
    return row


def _frontier(conds: dict, per_seed: dict, reps: dict, metrics: list[Metric], l0s: dict) -> dict:
    """metric -> quality -> condition -> verdict against the baseline conditions' curve."""
    out: dict = {}
    base = [c for c, e in conds.items() if variants.of(e["type"]).baseline]
    for m in (m for m in metrics if m.frontier):
        for q in (q for q in metrics if q.quality):
            table = {}
            for c, e in conds.items():
                if variants.of(e["type"]).baseline or m.key not in per_seed[c] or q.key not in per_seed[c]:
                    continue
                measured = [b for b in base if m.key in per_seed[b] and q.key in per_seed[b]]
                curve = [
                    _point(b, conds[b], per_seed[b], reps[b], m, q) for b in measured if l0_matched(l0s[b], l0s[c])
                ]
                table[c] = (
                    frontier_verdict(curve, _point(c, e, per_seed[c], reps[c], m, q))
                    if curve or not measured
                    else {
                        "verdict": f"not compared: no baseline condition's L0 within {L0_MATCH:.0%} of {l0s[c]:.1f}",
                        "gap": math.nan,
                        "ci95": [math.nan, math.nan],
                        "p": math.nan,
                    }
                )
            if table:
                out.setdefault(m.key, {})[q.key] = table
    return out


def _point(label: str, e: dict, per_seed: dict, reps: dict, m: Metric, q: Metric) -> dict:
    return {
        "name": label,
        "x": e["metrics"][q.key]["mean"],
        "x_seeds": per_seed[q.key],
        "y_seeds": per_seed[m.key],
        "reps": reps.get(m.key),
        "x_reps": reps.get(q.key),
    }


def _primary(primary: dict, conds: dict, pairs: list[dict], frontier: dict) -> dict:
    """The primary comparisons, Holm-corrected together: every condition on the primary figure against
    the baseline curve at the primary quality, and each primary pair on the primary figure."""
    fig, quality = primary["figure"], primary["quality"]
    family: dict[str, dict] = {}
    for c, v in frontier.get(fig, {}).get(quality, {}).items():
        family[f"{c} vs the baseline curve"] = {"kind": "frontier", "condition": c, **v}
    for a, b in primary.get("pairs", []):
        row = next((p for p in pairs if {p["a"], p["b"]} == {a, b}), None)
        v = row["metrics"].get(fig) if row else None
        if v is None:
            family[f"{a} − {b}"] = {
                "kind": "pair",
                "verdict": "no verdict: pair not measured",
                "p": math.nan,
                "gap": math.nan,
                "ci95": [math.nan, math.nan],
            }
            continue
        sign = 1 if row["a"] == a else -1
        lo, hi = v["ci95"]
        family[f"{a} − {b}"] = {
            "kind": "pair",
            "verdict": v["verdict"],
            "p": v["p"],
            "gap": sign * v["mean_diff"],
            "ci95": [lo, hi] if sign > 0 else [-hi, -lo],
            "seeds": v["seeds"],
        }
    rejected = holm(
        {
            k: (v["p"] if not v["verdict"].startswith(("no verdict", "not compared")) else math.nan)
            for k, v in family.items()
        }
    )
    for k, v in family.items():
        if v["verdict"].startswith(("no verdict", "not compared")):
            v["holm"] = v["verdict"]
        elif rejected[k]:
            v["holm"] = "above" if v["gap"] > 0 else "below"
        else:
            v["holm"] = "tie"
    return {
        "figure": fig,
        "quality": quality,
        "comparisons": family,
        "rule": "Holm over these comparisons, family-wise 5 %; gaps > 0 favour the first named",
    }


def _who_wins(conds: dict, pairs: list[dict], metrics: list[Metric], frontier: dict) -> dict[str, str]:
    """Exploratory verdicts per metric (nominal 95 %, no multiplicity correction)."""
    out = {}
    for m in metrics:
        if m.higher is None:
            continue
        if m.frontier:
            if m.key in frontier:
                verdicts = {}
                for q, table in frontier[m.key].items():
                    for c, v in table.items():
                        verdicts.setdefault(c, []).append(f"{v['verdict']} on {q}")
                out[m.key] = "; ".join(f"{c}: {', '.join(vs)}" for c, vs in verdicts.items())
            continue
        # references are label-using edits, not SAEs competing on quality: judged on the frontier only
        have = [
            c
            for c in conds
            if m.key in conds[c]["metrics"]
            and math.isfinite(conds[c]["metrics"][m.key]["mean"])
            and conds[c]["type"] != "reference"
        ]
        if len(have) < 2:
            continue
        best = (max if m.higher else min)(have, key=lambda c: conds[c]["metrics"][m.key]["mean"])
        beaten, level = [], {}
        for p in pairs:
            v = p["metrics"].get(m.key)
            other = p["b"] if p["a"] == best else p["a"]
            if v is None or best not in (p["a"], p["b"]) or other not in have:
                continue
            if v["winner"] == best:
                beaten.append(other)
            else:
                level[other] = v["verdict"] if v["winner"] != other else f"{other} is better"
        if len(beaten) == len(have) - 1:
            out[m.key] = best
        elif all(v == "tie" for v in level.values()):
            out[m.key] = "tie: " + ", ".join([best, *level])
        else:
            out[m.key] = f"no winner: best mean {best}; " + "; ".join(
                f"vs {o}: {'tie' if v == 'tie' else v}" for o, v in level.items()
            )
    return out


# ---------------------------------------------------------------- report.md and plots


def condition_cell(s: dict | None, with_eval: bool = False) -> str:
    """One condition's metric as report.md shows it: mean [95 % interval], "n/a (k of n seeds)", or
    the mean alone where there are too few seeds for an interval."""
    if not s:
        return "n/a"
    if not math.isfinite(s["mean"]) and "of" in s.get("reached", ""):
        return f"n/a ({s['reached']} seeds)"
    text = with_interval(s["mean"], *s["ci95"])
    if not all(math.isfinite(x) for x in s["ci95"]) and s.get("too_few") and s.get("n", 0) > 1:
        text += " (too few seeds)"
    if with_eval and math.isfinite(s.get("doc_se", math.nan)) and math.isfinite(s.get("sd", math.nan)):
        text += f" (seed sd {cell(s['sd'])}, shared doc se {cell(s['doc_se'])})"
    return text


def conditions_markdown(agg: dict, plots: list[str], metrics: list[Metric] | None = None) -> str:
    """The report.md section: one row per condition (two tables: quality, unlearning), per-seed
    values, pairwise verdicts. Columns come from the metric registry."""
    conds = agg["conditions"]
    if not conds:
        return ""
    metrics = metrics if metrics is not None else registry()
    present = [m for m in metrics if any(m.key in e["metrics"] for e in conds.values())]
    lines = [
        "",
        "## Conditions (runs that differ only by seed; mean [95 % interval])",
        "",
        f"Intervals: Student-t over seeds with Hall's skewness correction; for the unlearning sweep's figures "
        f"the document error every seed shares is added (eval/intervals.py; coverage measured in "
        f"docs/evaluation.md). Fewer than {MIN_SEEDS} seeds: no interval. A figure some seed lacks is n/a, "
        f"with how many seeds have it.",
        "",
    ]
    for title, part in (
        ("Quality", [m for m in present if m.section != "unlearning"]),
        ("Unlearning", [m for m in present if m.section == "unlearning"]),
    ):
        lines += _condition_table(title, part, conds) if part else []
    lines += ["Per-seed values:", ""]
    for label, e in conds.items():
        lines.append(
            f"- **{label}**: "
            + "; ".join(
                f"{m.key} " + ", ".join(f"s{s}={cell(v)}" for s, v in e["metrics"][m.key]["per_seed"].items())
                for m in present
                if m.key in e["metrics"]
            )
        )
    lines += _pairwise_lines(agg)
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def _condition_table(title: str, part: list[Metric], conds: dict) -> list[str]:
    lines = [
        f"{title}:",
        "",
        "| condition | type | α | activation | seeds | " + " | ".join(m.label for m in part) + " |",
        "|" + "---|" * (5 + len(part)),
    ]
    for label, e in conds.items():
        lines.append(
            f"| {label} | {e['type']} | {'' if e['alpha'] is None else e['alpha']} | {e['activation']} | "
            f"{', '.join(str(s) for s in e['seeds'])} | "
            + " | ".join(condition_cell(e["metrics"].get(m.key), m.eval_error) for m in part)
            + " |"
        )
    return [*lines, ""]


def _pairwise_lines(agg: dict) -> list[str]:
    """The L0 rule's line, then each pair's verdicts on the metrics it compared."""
    l0 = agg["l0"]
    lines = [
        "",
        f"L0 across conditions: max/min − 1 = {cell(l0['max_over_min_minus_1'])} "
        f"({'within' if l0['matched'] else 'NOT within'} ±{int(round(L0_MATCH * 100))} %, the one L0 rule: "
        "conditions further apart are not compared).",
        "",
        f"Pairwise (A − B; {agg['method']}):",
        "",
    ]
    for p in agg["pairs"]:
        verdicts = [
            f"{m} {cell(v['mean_diff'])} [{cell(v['ci95'][0])}, {cell(v['ci95'][1])}] → {v['winner']}"
            for m, v in p["metrics"].items()
            if v["verdict"] != "not compared"
        ]
        lines.append(f"- {p['a']} vs {p['b']}: " + "; ".join(verdicts))
    return lines
