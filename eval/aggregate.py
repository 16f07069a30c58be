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
- beside the seed spread, the eval's own sampling error where the run reports one (the loss-mode
  best selectivity's bootstrap over contexts, ``eval/unlearning.py``): its RMS over the seeds.
"""
from __future__ import annotations

import json
import math
import re
from itertools import combinations
from pathlib import Path

MIN_SEEDS = 3
# metric -> (section, key, higher is better; None: reported, not compared)
METRICS = {
    "l0": ("reconstruction", "l0", None),
    "explained_variance": ("reconstruction", "explained_variance", True),
    "mse": ("reconstruction", "mse", False),
    "frac_dead": ("reconstruction", "frac_dead", False),
    "ce_loss_score": ("downstream", "ce_loss_score", True),
    "kl_div_score": ("downstream", "kl_div_score", True),
    "best_selectivity": ("unlearning", "best_selectivity", True),
    "loss_unlearning_score": ("unlearning", "loss_unlearning_score", True),
    "unlearning_score": ("unlearning", "unlearning_score", True),
    "best_mcq_prob_selectivity": ("unlearning", "best_mcq_prob_selectivity", True),
    "rms_cross_cos": ("conditioning", "decoder_overlap_fro_normalized", None),
    "rms_cross_cos_activity": ("conditioning", "decoder_rms_cos_activity", None),
    # sparse probing, TPP, absorption (eval/probe_report.py PROBE_METRICS)
    "sae_top_1_test_accuracy": ("probing", "sae_top_1_test_accuracy", True),
    "tpp_score": ("tpp", "tpp_score", True),
    "mean_absorption_fraction_score": ("absorption", "mean_absorption_fraction_score", False),
    "mean_full_absorption_score": ("absorption", "mean_full_absorption_score", False),
}
# metric -> the run's own sampling error of it (eval/unlearning.py), reported beside the seed spread
EVAL_ERRORS = {"best_selectivity": ("unlearning", "best_selectivity_se")}
L0_MATCH = 0.05  # equal sparsity: every condition's mean L0 within 5 % of every other's (max/min − 1)

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


def _value(result: dict, section: str, key: str) -> float:
    if section == "conditioning":  # RMS cross-group cosines of the first group pair (what α bounds)
        pairs = result.get("conditioning", {}).get("pairs") or [{}]
        v = pairs[0].get(key)
    else:
        v = result.get(section, {}).get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def _settings(result: dict) -> dict:
    return result.get("cfg", {}).get("orthosae") or {}


def seed_of(result: dict) -> int | None:
    return _settings(result).get("train", {}).get("seed")


def condition_key(result: dict) -> str:
    """Everything that defines a run except its name and SAE init seed, as canonical JSON."""
    s = _settings(result)
    train = {k: v for k, v in s.get("train", {}).items() if k != "seed"}
    return json.dumps([s.get("type"), train, s.get("ortho", {})], sort_keys=True, default=str)


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


def aggregate(results: dict[str, dict]) -> dict:
    """The report's ``conditions`` section (see the module docstring)."""
    groups = group_conditions(results)
    conds: dict[str, dict] = {}
    per_seed: dict[str, dict[str, dict[int, float]]] = {}
    for label, names in groups.items():
        first = _settings(results[names[0]])
        entry = {"runs": names, "seeds": [seed_of(results[n]) for n in names], "type": first.get("type"),
                 "alpha": first.get("ortho", {}).get("alpha") if first.get("type") in ("fixed", "adaptive") else None,
                 "activation": first.get("train", {}).get("activation", "relu"), "metrics": {}}
        per_seed[label] = {}
        for metric, (section, key, _) in METRICS.items():
            values = {seed_of(results[n]): _value(results[n], section, key) for n in names}
            if all(math.isnan(v) for v in values.values()):
                continue
            per_seed[label][metric] = values
            summary = mean_interval(list(values.values()))
            summary["per_seed"] = {str(s): v for s, v in values.items()}
            if metric in EVAL_ERRORS:
                errs = [_value(results[n], *EVAL_ERRORS[metric]) for n in names]
                errs = [e for e in errs if math.isfinite(e)]
                summary["eval_se"] = math.sqrt(sum(e * e for e in errs) / len(errs)) if errs else math.nan
            entry["metrics"][metric] = summary
        conds[label] = entry

    pairs = []
    for a, b in combinations(conds, 2):
        row = {"a": a, "b": b, "metrics": {}}
        for metric, (_, _, higher) in METRICS.items():
            if metric in per_seed[a] and metric in per_seed[b]:
                p = paired(per_seed[a][metric], per_seed[b][metric], higher)
                p["winner"] = {"A": a, "B": b}.get(p["verdict"], p["verdict"])
                row["metrics"][metric] = p
        pairs.append(row)

    l0s = {c: e["metrics"].get("l0", {}).get("mean", math.nan) for c, e in conds.items()}
    finite = [v for v in l0s.values() if math.isfinite(v)]
    spread = (max(finite) / min(finite) - 1) if finite and min(finite) > 0 else math.nan
    return {"method": f"mean over seeds, 95 % Student-t interval; pairs: paired differences on shared seeds, "
                      f"a winner only when their 95 % t-interval excludes 0 with >= {MIN_SEEDS} seeds",
            "conditions": conds, "pairs": pairs, "who_wins": _who_wins(conds, pairs),
            "l0": {"by_condition": l0s, "max_over_min_minus_1": spread,
                   "matched": bool(math.isfinite(spread) and spread <= L0_MATCH)}}


def _who_wins(conds: dict, pairs: list[dict]) -> dict[str, str]:
    out = {}
    for metric, (_, _, higher) in METRICS.items():
        have = [c for c in conds if metric in conds[c]["metrics"] and math.isfinite(conds[c]["metrics"][metric]["mean"])]
        if higher is None or len(have) < 2:
            continue
        best = (max if higher else min)(have, key=lambda c: conds[c]["metrics"][metric]["mean"])
        beaten, level = [], []
        for p in pairs:
            m = p["metrics"].get(metric)
            if m is None or best not in (p["a"], p["b"]):
                continue
            other = p["b"] if p["a"] == best else p["a"]
            (beaten if m["winner"] == best else level).append(other)
        if len(beaten) == len(have) - 1:
            out[metric] = best
        else:
            out[metric] = "tie: " + ", ".join([best] + level)
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
    text = f"{_fmt(s['mean'])} [{_fmt(lo)}, {_fmt(hi)}]" if s["n"] > 1 else _fmt(s["mean"])
    if with_eval and math.isfinite(s.get("eval_se", math.nan)):
        text += f" (seed sd {_fmt(s['sd'])}, eval se {_fmt(s['eval_se'])})"
    return text


def conditions_markdown(agg: dict, plots: list[str]) -> str:
    """The report.md section: one row per condition, per-seed values, pairwise verdicts, who wins."""
    conds = agg["conditions"]
    if not conds:
        return ""
    cols = ["l0", "explained_variance", "ce_loss_score", "best_selectivity", "loss_unlearning_score",
            "rms_cross_cos", "rms_cross_cos_activity", "frac_dead"]
    cols += [m for m in ("sae_top_1_test_accuracy", "tpp_score", "mean_absorption_fraction_score")
             if any(m in e["metrics"] and e["metrics"][m]["n"] for e in conds.values())]
    lines = ["", "## Conditions (runs that differ only by seed; mean [95 % t-interval] over seeds)", "",
             "| condition | type | α | activation | seeds | " + " | ".join(cols) + " |",
             "|" + "---|" * (5 + len(cols))]
    for label, e in conds.items():
        lines.append(f"| {label} | {e['type']} | {'' if e['alpha'] is None else e['alpha']} | {e['activation']} | "
                     f"{', '.join(str(s) for s in e['seeds'])} | "
                     + " | ".join(_cell(e["metrics"].get(m), m in EVAL_ERRORS) for m in cols) + " |")
    lines += ["", "Per-seed values:", ""]
    for label, e in conds.items():
        lines.append(f"- **{label}**: " + "; ".join(
            f"{m} " + ", ".join(f"s{s}={_fmt(v)}" for s, v in e["metrics"][m]["per_seed"].items())
            for m in cols if m in e["metrics"]))
    l0 = agg["l0"]
    lines += ["", f"L0 across conditions: max/min − 1 = {_fmt(l0['max_over_min_minus_1'])} "
                  f"({'within' if l0['matched'] else 'NOT within'} ±{int(L0_MATCH * 100)} %).", "",
              f"Pairwise (A − B on shared seeds; {agg['method']}):", ""]
    for p in agg["pairs"]:
        verdicts = [f"{m} {_fmt(v['mean_diff'])} [{_fmt(v['ci95'][0])}, {_fmt(v['ci95'][1])}] → {v['winner']}"
                    for m, v in p["metrics"].items() if v["verdict"] != "not compared"]
        lines.append(f"- {p['a']} vs {p['b']}: " + "; ".join(verdicts))
    lines += ["", "Who wins (across conditions):", ""]
    lines += [f"- **{m}**: {w}" for m, w in agg["who_wins"].items()] or ["- fewer than two conditions"]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def plot_conditions(out_dir: Path, agg: dict) -> list[str]:
    """selectivity vs L0, EV vs L0, RMS cross-group cosine vs α, dead fraction: means with 95 % bars."""
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
    for metric, name, ylabel in (("best_selectivity", "conditions_selectivity_vs_l0.png", "best selectivity (nats)"),
                                 ("explained_variance", "conditions_ev_vs_l0.png", "explained variance")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (label, e) in enumerate(conds.items()):
            x, xerr = mid_err(e["metrics"].get("l0"))
            y, yerr = mid_err(e["metrics"].get(metric))
            if math.isfinite(x) and math.isfinite(y):
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, color=f"C{i % 10}", label=label)
        ax.set(xlabel="L0 (mean, 95 % interval over seeds)", ylabel=ylabel, title=f"{ylabel} vs L0 per condition")
        ax.legend(fontsize=6)
        made.append(_save(plt, fig, out_dir, name))

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
    made.append(_save(plt, fig, out_dir, "conditions_overlap_vs_alpha.png"))

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(conds) + 2), 4))
    for i, (label, e) in enumerate(conds.items()):
        y, yerr = mid_err(e["metrics"].get("frac_dead"))
        ax.bar(i, y if math.isfinite(y) else 0, yerr=yerr, capsize=3, color=f"C{i % 10}")
    ax.set_xticks(range(len(conds)), list(conds), rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="dead fraction", title="Dead features per condition (95 % interval)")
    made.append(_save(plt, fig, out_dir, "conditions_dead_fraction.png"))
    return made


def _save(plt, fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name
