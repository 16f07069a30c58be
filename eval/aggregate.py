"""Seeds -> conditions: mean, 95 % interval and per-seed values of each metric, paired comparisons.

A *condition* is the set of runs whose settings are equal except the SAE init seed
(``cfg.json`` ``orthosae``: type, every ``[train]`` key but ``seed``, every ``[train.ortho]`` key);
its label is the run name without the ``-s<seed>`` suffix of a ``seeds = [...]`` expansion.

Statistics (all in ``aggregate``):

- per metric and condition: the mean over seeds with a **95 % Student-t interval**
  ``mean ± t_{0.975, n−1}·sd/√n`` (sd with n − 1), the sd, n and the per-seed values;
- per pair of conditions and metric: the **paired differences** A_s − B_s over the seeds both have
  (seed s of each shares its init seed and, as every run of one config, the data order), with the
  t-interval of their mean;
- "who wins": a winner only when the paired-difference interval excludes 0 with at least
  ``MIN_SEEDS`` shared seeds, in the metric's better direction; a tie otherwise. Over all conditions,
  the condition with the best mean wins a metric when it beats every other one that way; otherwise
  the tie lists it with the conditions it does not separate from;
- metrics with the eval's own error (``eval_error`` in ``eval/metrics.py``: every figure of the
  unlearning sweep, from a bootstrap over held-out *documents*, ``eval/matched_damage.py``) get a
  **seeds × documents bootstrap** instead: replicate i draws the condition's seeds with replacement
  and averages their document-replicate i (the same documents for every run), so the interval holds
  both the seed spread and the eval's error. Pairs take the paired version (shared seeds drawn
  together, the same documents on both sides); a single shared seed leaves the eval's error alone,
  which may separate two runs. Every interval draws its seeds afresh from ``SEED_DRAW``, so it
  depends only on its own condition(s), never on the others in the report. ``eval_se`` is the RMS
  of the runs' own document-bootstrap se;
- the one L0 rule (``eval/metrics.py`` ``L0_MATCH``): conditions whose mean L0 differ by more are
  not compared;
- who wins: frontier metrics (unlearning figures) by the frontier rule against the baseline curve
  (``eval/frontier.py``); every other compared metric by the pairwise verdicts above.
"""
from __future__ import annotations

import json
import math
import re
from itertools import combinations
from pathlib import Path

import numpy as np

from orthosae.eval.frontier import frontier_verdict
from orthosae.eval.matched_damage import interval
from orthosae.eval.metrics import L0_MATCH, Metric, budgets_of, l0_matched, registry

MIN_SEEDS = 3
SEED_DRAW = 7  # seeds the seeds × documents bootstrap's draws of seeds


def _draws() -> np.random.Generator:
    """A fresh generator for each interval: an interval then depends only on its own conditions,
    not on which other conditions the report holds or their order (one shared stream did)."""
    return np.random.default_rng(SEED_DRAW)

# t_{0.975, df} for df = 1..30; beyond, the normal quantile with a 1/df correction (error < 1e-3)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.959964 + 2.4 / df


def mean_interval(values: list[float]) -> dict:
    """Mean, 95 % t-interval, sd (n − 1) and n of finite ``values`` (interval nan below 2 values)."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    n = len(xs)
    if not n:
        return {"mean": math.nan, "ci95": [math.nan, math.nan], "sd": math.nan, "n": 0}
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "ci95": [mean - half, mean + half], "sd": sd, "n": n}


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


def paired(a: dict[int, float], b: dict[int, float], higher: bool | None) -> dict:
    """A − B on the seeds both have, its 95 % t-interval, and the verdict."""
    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    diff = mean_interval([a[s] - b[s] for s in seeds])
    out = {"seeds": seeds, "mean_diff": diff["mean"], "ci95": diff["ci95"], "n": diff["n"]}
    lo, hi = diff["ci95"]
    if higher is None:
        out["verdict"] = "not compared"
    elif len(seeds) < MIN_SEEDS:
        out["verdict"] = f"no verdict: {len(seeds)} shared seed(s) < {MIN_SEEDS}"
    elif lo > 0 or hi < 0:
        out["verdict"] = "A" if (lo > 0) == higher else "B"
    else:
        out["verdict"] = "tie"
    return out


def _reps(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def condition_replicates(per_seed: dict, rng: np.random.Generator) -> np.ndarray:
    """Seeds × documents bootstrap of a condition mean: replicate i averages document-replicate i
    of the condition's seeds drawn with replacement (one seed: its document replicates)."""
    seeds = list(per_seed)
    R = np.stack([_reps(per_seed[s]) for s in seeds])  # [seeds, B]
    if len(seeds) == 1:
        return R[0]
    draw = rng.integers(0, len(seeds), size=(R.shape[1], len(seeds)))
    return np.nanmean(R[draw, np.arange(R.shape[1])[:, None]], axis=1)


def paired_replicates(a: dict, b: dict, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Replicates of mean(A) − mean(B): paired on shared seeds (drawn together), else unpaired."""
    shared = sorted((s for s in set(a) & set(b)), key=str)
    if shared:
        D = np.stack([_reps(a[s]) - _reps(b[s]) for s in shared])
        if len(shared) == 1:
            return D[0], shared
        draw = rng.integers(0, len(shared), size=(D.shape[1], len(shared)))
        return np.nanmean(D[draw, np.arange(D.shape[1])[:, None]], axis=1), shared
    return condition_replicates(a, rng) - condition_replicates(b, rng), shared


def boot_verdict(diff: np.ndarray, higher: bool | None) -> dict:
    lo, hi = interval(diff)
    out = {"mean_diff": float(np.nanmean(diff)) if np.isfinite(diff).any() else math.nan, "ci95": [lo, hi]}
    if higher is None:
        out["verdict"] = "not compared"
    elif not (math.isfinite(lo) and math.isfinite(hi)):
        out["verdict"] = "no verdict: no interval"
    elif lo > 0 or hi < 0:
        out["verdict"] = "A" if (lo > 0) == higher else "B"
    else:
        out["verdict"] = "tie"
    return out


def aggregate(results: dict[str, dict], metrics: list[Metric] | None = None) -> dict:
    """The report's ``conditions`` section (see the module docstring)."""
    metrics = metrics if metrics is not None else registry(budgets_of(results))
    groups = group_conditions(results)
    conds: dict[str, dict] = {}
    per_seed: dict[str, dict[str, dict]] = {}  # label -> metric -> seed -> value
    reps: dict[str, dict[str, dict]] = {}  # label -> metric -> seed -> document replicates
    for label, names in groups.items():
        first = _settings(results[names[0]])
        entry = {"runs": names, "seeds": [seed_of(results[n]) for n in names], "type": first.get("type"),
                 "alpha": first.get("ortho", {}).get("alpha") if first.get("type") in ("fixed", "adaptive") else None,
                 "activation": first.get("train", {}).get("activation", "relu"), "metrics": {}}
        per_seed[label], reps[label] = {}, {}
        for m in metrics:
            values = {seed_of(results[n]): m.value(results[n]) for n in names}
            if all(math.isnan(v) for v in values.values()):
                continue
            per_seed[label][m.key] = values
            summary = mean_interval(list(values.values()))
            summary["per_seed"] = {str(s): v for s, v in values.items()}
            run_reps = {seed_of(results[n]): m.replicates(results[n]) for n in names}
            if m.eval_error and all(r is not None for r in run_reps.values()):
                reps[label][m.key] = run_reps
                summary["ci95_seeds"] = summary["ci95"]
                summary["ci95"] = interval(condition_replicates(run_reps, _draws()))
                ses = [results[n].get(m.section, {}).get("intervals", {}).get("se", {}).get(m.field or m.key)
                       for n in names]
                ses = [e for e in ses if isinstance(e, (int, float)) and math.isfinite(e)]
                summary["eval_se"] = math.sqrt(sum(e * e for e in ses) / len(ses)) if ses else math.nan
                summary["interval"] = "seeds x documents bootstrap"
            else:
                summary["interval"] = "Student-t over seeds"
            entry["metrics"][m.key] = summary
        conds[label] = entry

    l0s = {c: e["metrics"].get("l0", {}).get("mean", math.nan) for c, e in conds.items()}
    pairs = []
    for a, b in combinations(conds, 2):
        row = {"a": a, "b": b, "metrics": {}}
        matched = l0_matched(l0s[a], l0s[b])
        for m in metrics:
            if m.key not in per_seed[a] or m.key not in per_seed[b]:
                continue
            if m.key in reps[a] and m.key in reps[b]:
                diff, shared = paired_replicates(reps[a][m.key], reps[b][m.key], _draws())
                p = boot_verdict(diff, m.higher)
                p.update(seeds=shared, n=len(shared), interval="seeds x documents bootstrap")
            else:
                p = paired(per_seed[a][m.key], per_seed[b][m.key], m.higher)
                p["interval"] = "Student-t over shared seeds"
            if not matched and m.higher is not None:
                p["verdict"] = f"not compared: L0 {l0s[a]:.1f} vs {l0s[b]:.1f} (> {L0_MATCH:.0%} apart)"
            p["winner"] = {"A": a, "B": b}.get(p["verdict"], p["verdict"])
            row["metrics"][m.key] = p
        pairs.append(row)

    finite = [v for v in l0s.values() if math.isfinite(v)]
    spread = (max(finite) / min(finite) - 1) if finite and min(finite) > 0 else math.nan
    frontier = _frontier(conds, reps, metrics, l0s)
    return {"method": "mean over seeds; intervals: seeds x documents bootstrap for the unlearning sweep's figures "
                      f"(seed spread + the eval's error), Student-t over seeds otherwise; a winner only when the "
                      f"interval of the difference excludes 0 (Student-t: with >= {MIN_SEEDS} shared seeds) "
                      f"and the L0 of both lie within {L0_MATCH:.0%}",
            "conditions": conds, "pairs": pairs, "frontier": frontier,
            "who_wins": _who_wins(conds, pairs, metrics, frontier),
            "l0": {"by_condition": l0s, "max_over_min_minus_1": spread, "rule": L0_MATCH,
                   "matched": bool(math.isfinite(spread) and spread <= L0_MATCH)}}


def _frontier(conds: dict, reps: dict, metrics: list[Metric], l0s: dict) -> dict:
    """metric -> quality -> condition -> verdict against the baseline conditions' curve."""
    out: dict = {}
    base = [c for c, e in conds.items() if e["type"] == "baseline"]
    for m in (m for m in metrics if m.frontier):
        for q in (q for q in metrics if q.quality):
            table = {}
            for c, e in conds.items():
                if e["type"] == "baseline" or m.key not in e["metrics"] or q.key not in e["metrics"]:
                    continue
                curve = [_point(b, conds[b], reps[b], m, q) for b in base
                         if m.key in conds[b]["metrics"] and q.key in conds[b]["metrics"] and l0_matched(l0s[b], l0s[c])]
                v = frontier_verdict(curve, _point(c, e, reps[c], m, q))
                table[c] = v
            if table:
                out.setdefault(m.key, {})[q.key] = table
    return out


def _point(label: str, e: dict, reps: dict, m: Metric, q: Metric) -> dict:
    s, x = e["metrics"][m.key], e["metrics"][q.key]
    r = condition_replicates(reps[m.key], _draws()) if m.key in reps \
        else np.full(1, np.nan)
    return {"name": label, "x": x["mean"], "x_ci": x["ci95"], "y": s["mean"], "reps": r.tolist()}


def _who_wins(conds: dict, pairs: list[dict], metrics: list[Metric], frontier: dict) -> dict[str, str]:
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
                above = [c for c, vs in verdicts.items() if all(v.startswith("above") for v in vs)]
                out[m.key] = ("above the baseline curve at equal quality: " + ", ".join(above) if above else
                              "no condition lies above the baseline curve at equal quality") + " (" + "; ".join(
                    f"{c}: {', '.join(vs)}" for c, vs in verdicts.items()) + ")"
            continue
        # references are label-using edits, not SAEs competing on quality: judged on the frontier only
        have = [c for c in conds if m.key in conds[c]["metrics"] and math.isfinite(conds[c]["metrics"][m.key]["mean"])
                and conds[c]["type"] != "reference"]
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
                f"vs {o}: {'tie' if v == 'tie' else v}" for o, v in level.items())
    return out


# ---------------------------------------------------------------- report.md and plots

def _fmt(v: float) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    v = 0.0 if abs(v) < 1e-12 else v  # float noise of a zero spread
    return f"{v:.3g}" if abs(v) >= 1e3 or (abs(v) < 1e-2 and v) else f"{v:.3f}"


def _cell(s: dict | None, with_eval: bool = False) -> str:
    if not s:
        return "n/a"
    lo, hi = s["ci95"]
    text = f"{_fmt(s['mean'])} [{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else _fmt(s["mean"])
    if with_eval and math.isfinite(s.get("eval_se", math.nan)):
        text += f" (seed sd {_fmt(s['sd'])}, eval se {_fmt(s['eval_se'])})"
    return text


def conditions_markdown(agg: dict, plots: list[str], metrics: list[Metric] | None = None) -> str:
    """The report.md section: one row per condition (two tables: quality, unlearning), per-seed
    values, pairwise verdicts. Columns come from the metric registry."""
    conds = agg["conditions"]
    if not conds:
        return ""
    metrics = metrics if metrics is not None else registry()
    present = [m for m in metrics if any(m.key in e["metrics"] for e in conds.values())]
    lines = ["", "## Conditions (runs that differ only by seed; mean [95 % interval])", "",
             "Intervals: Student-t over seeds; for the unlearning sweep's figures a seeds × documents bootstrap "
             "(seed spread and the eval's own error by held-out document together; with one seed, the eval's "
             "error alone).", ""]
    for title, part in (("Quality", [m for m in present if m.section != "unlearning"]),
                        ("Unlearning", [m for m in present if m.section == "unlearning"])):
        if not part:
            continue
        lines += [f"{title}:", "", "| condition | type | α | activation | seeds | " + " | ".join(m.label for m in part) + " |",
                  "|" + "---|" * (5 + len(part))]
        for label, e in conds.items():
            lines.append(f"| {label} | {e['type']} | {'' if e['alpha'] is None else e['alpha']} | {e['activation']} | "
                         f"{', '.join(str(s) for s in e['seeds'])} | "
                         + " | ".join(_cell(e["metrics"].get(m.key), m.eval_error) for m in part) + " |")
        lines.append("")
    lines += ["Per-seed values:", ""]
    for label, e in conds.items():
        lines.append(f"- **{label}**: " + "; ".join(
            f"{m.key} " + ", ".join(f"s{s}={_fmt(v)}" for s, v in e["metrics"][m.key]["per_seed"].items())
            for m in present if m.key in e["metrics"]))
    l0 = agg["l0"]
    lines += ["", f"L0 across conditions: max/min − 1 = {_fmt(l0['max_over_min_minus_1'])} "
                  f"({'within' if l0['matched'] else 'NOT within'} ±{int(round(L0_MATCH * 100))} %, the one L0 rule: "
                  "conditions further apart are not compared).", "",
              f"Pairwise (A − B; {agg['method']}):", ""]
    for p in agg["pairs"]:
        verdicts = [f"{m} {_fmt(v['mean_diff'])} [{_fmt(v['ci95'][0])}, {_fmt(v['ci95'][1])}] → {v['winner']}"
                    for m, v in p["metrics"].items() if v["verdict"] != "not compared"]
        lines.append(f"- {p['a']} vs {p['b']}: " + "; ".join(verdicts))
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def plot_frontier(out_dir: Path, agg: dict, metrics: list[Metric]) -> list[str]:
    """frontier.png: each frontier metric (rows) against each quality metric (columns), means with
    95 % bars on both axes; conditions of one type joined as a curve, references as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = agg["conditions"]
    ys = [m for m in metrics if m.frontier]  # every one, so the report always shows where F(b) stands
    xs = [m for m in metrics if m.quality and any(m.key in e["metrics"] for e in conds.values())]
    if not ys or not xs:
        return []
    fig, axes = plt.subplots(len(ys), len(xs), figsize=(5.5 * len(xs), 3.8 * len(ys)), squeeze=False)
    types = sorted({e["type"] for e in conds.values()})
    for i, ym in enumerate(ys):
        for j, xm in enumerate(xs):
            ax = axes[i][j]
            for k, kind in enumerate(types):
                pts = []
                for label, e in conds.items():
                    x, y = e["metrics"].get(xm.key), e["metrics"].get(ym.key)
                    if e["type"] != kind or not x or not y or not (math.isfinite(x["mean"]) and math.isfinite(y["mean"])):
                        continue
                    pts.append((x["mean"], y["mean"], _err(x), _err(y), label))
                pts.sort()
                color = "k" if kind == "baseline" else f"C{k % 10}"
                if len(pts) > 1 and kind != "reference":
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=color, alpha=0.5)
                for n, (x, y, xe, ye, label) in enumerate(pts):
                    ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="*" if kind == "reference" else "o", capsize=3,
                                color=color, label=kind if n == 0 else None)
                    ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            if not any(ym.key in e["metrics"] for e in conds.values()):
                ax.text(0.5, 0.5, "not reached / not measured by any run", ha="center", transform=ax.transAxes)
            ax.axhline(0, color="grey", lw=0.5)
            ax.set(xlabel=f"{xm.label} (better →)", ylabel=ym.label)
            ax.legend(fontsize=6)
    fig.suptitle("Unlearning on the reconstruction frontier (95 % bars on both axes; black: baseline curve)", fontsize=9)
    return [save_figure(plt, fig, out_dir, "frontier.png")]


def _err(s: dict) -> list:
    lo, hi = s["ci95"]
    m = s["mean"]
    return [[m - lo if math.isfinite(lo) else 0], [hi - m if math.isfinite(hi) else 0]]


def plot_conditions(out_dir: Path, agg: dict) -> list[str]:
    """EV vs L0, RMS cross-group cosine vs α, dead fraction: means with 95 % bars. (Unlearning
    figures are plotted against quality instead: ``plot_frontier``.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = agg["conditions"]
    if not conds:
        return []

    def mid_err(s):
        if not s:
            return math.nan, [[0], [0]]
        lo, hi = s["ci95"]
        m = s["mean"]
        return m, [[m - lo if math.isfinite(lo) else 0], [hi - m if math.isfinite(hi) else 0]]

    made = []
    for metric, name, ylabel in (("explained_variance", "conditions_ev_vs_l0.png", "explained variance"),):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (label, e) in enumerate(conds.items()):
            x, xerr = mid_err(e["metrics"].get("l0"))
            y, yerr = mid_err(e["metrics"].get(metric))
            if math.isfinite(x) and math.isfinite(y):
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, color=f"C{i % 10}", label=label)
        ax.set(xlabel="L0 (mean, 95 % interval over seeds)", ylabel=ylabel, title=f"{ylabel} vs L0 per condition")
        ax.legend(fontsize=6)
        made.append(save_figure(plt, fig, out_dir, name))

    fig, ax = plt.subplots(figsize=(6, 4))
    # the activity-weighted one is what α bounds under the default weighting
    ov = "rms_cross_cos_activity" if any("rms_cross_cos_activity" in e["metrics"] for e in conds.values()) \
        else "rms_cross_cos"
    # one series per family of conditions that differ only by α (e.g. exact and sketched adaptive)
    series: dict[str, list] = {}
    for label, e in conds.items():
        if e["type"] in ("adaptive", "fixed") and e["alpha"] is not None and ov in e["metrics"]:
            series.setdefault(re.sub(r"-alpha[^-]*", "", label), []).append((e["alpha"], e["metrics"][ov], e["type"]))
    for i, (family, pts) in enumerate(series.items()):
        for j, (alpha, s, kind) in enumerate(sorted(pts, key=lambda p: p[0])):
            y, yerr = mid_err(s)
            ax.errorbar(alpha, y, yerr=yerr, fmt="o" if kind == "adaptive" else "s", capsize=3,
                        color=f"C{i % 10}", label=family if j == 0 else None)
    base = [e["metrics"][ov]["mean"] for e in conds.values() if e["type"] == "baseline" and ov in e["metrics"]]
    if base:
        ax.axhline(base[0], linestyle=":", color="grey", label="baseline (post-hoc groups)")
    ax.set(xlabel="α", ylabel=ov.replace("_", " ").replace("rms", "RMS"), title="Cross-group overlap vs α")
    ax.legend(fontsize=6)
    made.append(save_figure(plt, fig, out_dir, "conditions_overlap_vs_alpha.png"))

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(conds) + 2), 4))
    for i, (label, e) in enumerate(conds.items()):
        y, yerr = mid_err(e["metrics"].get("frac_dead"))
        ax.bar(i, y if math.isfinite(y) else 0, yerr=yerr, capsize=3, color=f"C{i % 10}")
    ax.set_xticks(range(len(conds)), list(conds), rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="dead fraction", title="Dead features per condition (95 % interval)")
    made.append(save_figure(plt, fig, out_dir, "conditions_dead_fraction.png"))
    return made


def save_figure(plt, fig, out_dir: Path, name: str) -> str:
    """Lay out, write at the report's dpi, close; the file's name (report and probe plots)."""
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name
