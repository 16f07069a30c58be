"""report.md sections and plots of sparse probing, TPP, SCR and absorption (one plot per family)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from orthosae.common.markdown import cell, table
from orthosae.eval.figures import save_figure
from orthosae.eval.metrics import Metric, register

# The families' headline figures in the one metric registry (eval/metrics.py): the conditions table,
# its intervals and "who wins" read them from there; the per-run tables are probe_markdown's.
PROBE_METRICS = [
    register(Metric(key, section, higher, label, runs_table=False))
    for key, section, higher, label in (
        ("sae_top_1_test_accuracy", "probing", True, "sparse probing, SAE top-1 accuracy"),
        ("sae_top_5_test_accuracy", "probing", True, "sparse probing, SAE top-5 accuracy"),
        ("tpp_score", "tpp", True, "TPP score"),
        ("scr_score", "scr", True, "SCR score"),
        ("mean_absorption_fraction_score", "absorption", False, "absorption fraction"),
        ("mean_full_absorption_score", "absorption", False, "full-absorption rate"),
    )
]


def forget_topics(cfg) -> set[str]:
    """The wiki topics the forget training corpora hold (their labels trained the adaptive grouping):
    subset "forget" is the biology split, "forget:<topic>" another topic."""
    from orthosae.common.corpora import FORGET_TOPIC

    out = set()
    for c in cfg.corpora.values():
        if c.role == "forget" and str(c.source) == "embedded:wiki":
            side, _, topic = str(c.subset or "").partition(":")
            out.add(topic or FORGET_TOPIC)
    return out


def per_class_markdown(results: dict, names: list[str], forget: set[str]) -> str:
    """Sparse probing and TPP per class of the topic dataset, forget-topic classes apart: a gain on
    them may come from the labels that trained the grouping, not from the grouping's features."""
    first = results[names[0]]
    out = []
    t = first.get("tpp", {})
    if t.get("per_class"):
        n = t.get("tpp_headline_n")
        key = f"tpp_threshold_{n}_total_metric"
        classes = sorted(t["per_class"], key=lambda c: (c in forget, c))
        rows = []
        for name in names:
            per = results[name].get("tpp", {}).get("per_class", {})
            rest = [per[c][key] for c in per if c not in forget and key in per[c]]
            rows.append(
                [
                    name,
                    *[per.get(c, {}).get(key, math.nan) for c in classes],
                    float(np.mean(rest)) if rest else math.nan,
                ]
            )
        out.append(f"""
TPP per class (n = {n}; **forget-topic classes**, whose labels trained the grouping, in bold), and the
score without them:
{table(["run", *[f"**{c}**" if c in forget else c for c in classes], "without forget classes"], rows)}
""")
    p = first.get("probing", {}).get("datasets", {})
    d = next((k for k, v in p.items() if set(v.get("per_class", {}).get("llm_test_accuracy", {})) & forget), None)
    if d:
        ks = sorted(int(k.split("_")[2]) for k in p[d]["per_class"] if k.startswith("sae_top_"))
        key = f"sae_top_{ks[0]}_test_accuracy"
        classes = sorted(p[d]["per_class"][key], key=lambda c: (c in forget, c))
        rows = []
        for name in names:
            per = results[name].get("probing", {}).get("datasets", {}).get(d, {}).get("per_class", {}).get(key, {})
            rest = [per[c] for c in per if c not in forget]
            rows.append([name, *[per.get(c, math.nan) for c in classes], float(np.mean(rest)) if rest else math.nan])
        out.append(f"""
Sparse probing per class ({d}, SAE top-{ks[0]}; **forget-topic classes** in bold), and the mean without them:
{table(["run", *[f"**{c}**" if c in forget else c for c in classes], "without forget classes"], rows)}
""")
    return "".join(out)


def probe_markdown(results: dict, forget: set[str] | None = None) -> str:
    names = [n for n in results if any(f in results[n] for f in ("probing", "tpp", "scr", "absorption"))]
    if not names:
        return ""
    out = []
    first = results[names[0]]
    if "probing" in first:
        p = first["probing"]
        ks = sorted(int(k.split("_")[2]) for k in p if k.startswith("sae_top_") and k.endswith("_test_accuracy"))
        rows = [[n, *[results[n]["probing"].get(f"sae_top_{k}_test_accuracy", math.nan) for k in ks]] for n in names]
        rows.append(["LLM residual (same texts)", *[p.get(f"llm_top_{k}_test_accuracy", math.nan) for k in ks]])
        per = [
            [
                d,
                *[v.get(f"llm_top_{k}_test_accuracy", math.nan) for k in ks],
                v.get("llm_test_accuracy"),
                first["probing"]["trained_on"].get(d, ""),
            ]
            for d, v in p["datasets"].items()
        ]
        sizes = p.get("sizes", {})
        out.append(f"""
## Sparse probing (SAEBench; class-averaged one-vs-rest accuracy, mean over datasets)
{table(["run", *[f"SAE top-{k}" for k in ks]], rows)}

LLM probes per dataset (full width: {cell(p.get("llm_test_accuracy"))} on average), and whether any SAE trained on its texts:
{table(["dataset", *[f"LLM top-{k}" for k in ks], "LLM full width", "SAE training text?"], per)}

{sizes.get("train_per_class")} training and {sizes.get("test_per_class")} test texts per class, {sizes.get("context_length")}
tokens each (SAEBench: 4000 / 1000 / 128); probes: sklearn logistic regression, top-k by mean difference.
""")
    if "tpp" in first:
        t = first["tpp"]
        ns = sorted(int(k.split("_")[2]) for k in t if k.startswith("tpp_threshold_") and k.endswith("_total_metric"))
        rows = [
            [
                n,
                *[results[n]["tpp"].get(f"tpp_threshold_{k}_total_metric", math.nan) for k in ns],
                results[n]["tpp"].get("tpp_intended"),
                results[n]["tpp"].get("tpp_unintended"),
            ]
            for n in names
        ]
        out.append(f"""
## TPP (SAEBench; dataset {t.get("dataset")}): intended probe's accuracy drop minus the others' mean drop
{table(["run", *[f"n={k}" for k in ns], f"intended (n={t.get('tpp_headline_n')})", f"unintended (n={t.get('tpp_headline_n')})"], rows)}

n latents per class zero-ablated (SAE error kept; the grouped SAE's π held at the unablated latents);
headline `tpp_score` at n = {t.get("tpp_headline_n")}. Clean LLM probe accuracy:
{", ".join(f"{c} {cell(a)}" for c, a in t.get("clean_accuracy", {}).items())}.
""")
    if forget:
        out.append(per_class_markdown(results, names, forget))
    if "scr" in first:
        s = first["scr"]
        ns = sorted(int(k.split("_")[3]) for k in s if k.startswith("scr_metric_threshold_"))
        rows = [[n, *[results[n].get("scr", {}).get(f"scr_metric_threshold_{k}", math.nan) for k in ns]] for n in names]
        pairs = [
            [
                p,
                v.get("metric_direction"),
                v.get("biased_accuracy_dir1"),
                v.get("oracle_accuracy_dir1"),
                v.get("biased_accuracy_dir2"),
                v.get("oracle_accuracy_dir2"),
            ]
            for p, v in s.get("pairs", {}).items()
        ]
        sizes = s.get("sizes", {})
        out.append(f"""
## SCR (SAEBench spurious correlation removal; wiki topic x language, mean over topic pairs)
{table(["run", *[f"n={k}" for k in ns]], rows)}

A probe trained on a biased set (topic 1 only in language 1, topic 2 only in language 2) is scored on
a balanced test set before and after zero-ablating the n latents with the largest |effect| on the
other attribute's probe (SAE error kept): `scr = (A_abl − A_base) / (A_oracle − A_base)`, headline
`scr_score` at n = {s.get("scr_headline_n")}. Direction 1 ablates language latents and scores topic,
direction 2 the reverse; the reported direction is the one the biased probe scores worse on.
LLM probes (SAE-independent; {sizes.get("train_per_set")} training and {sizes.get("test_per_set")} test
texts per set, {sizes.get("context_length")} tokens; SAEBench: 4000 / 1000 / 128):
{table(["topic pair x languages", "reported dir", "biased on topic", "topic oracle", "biased on language", "language oracle"], pairs)}
""")
    if "absorption" in first:
        a = first["absorption"]
        rows = [
            [
                n,
                results[n]["absorption"].get("mean_absorption_fraction_score"),
                results[n]["absorption"].get("mean_full_absorption_score"),
                results[n]["absorption"].get("mean_num_split_features"),
            ]
            for n in names
        ]
        f1s = a.get("probe_f1", {})
        note = f"\n**Not scored**: {a['not_scored']}.\n" if a.get("not_scored") else ""
        out.append(f"""
## Absorption (SAEBench first letter; lower is better)
{table(["run", "mean absorption fraction", "full absorption rate", "split latents per letter"], rows)}
{note}
{a.get("train_words")} training and {a.get("test_words")} test words sampled from {a.get("alphabetic_vocab")} alphabetic
vocabulary tokens ({a.get("dropped_words")} dropped: the prompt's tail did not tokenize as the template's). Letters
whose LLM probe F1 exceeds {a.get("min_probe_f1")} (SAEBench: 0.6) count: **{a.get("passing_letters") or "none"}**
(at least {a.get("min_letters")} needed). Probe F1 per letter:
{", ".join(f"{k} {v:.2f}" for k, v in sorted(f1s.items()))}.
""")
    out.append("""
Deviations from SAEBench in these families: texts padded on the right and BOS / EOS / padding
masked explicitly; every draw seeded; each class's probe rows drawn once and shared by the LLM and
SAE probes and by clean and ablated TPP / SCR accuracies; all probes fitted with scikit-learn; absorption
scored on the cached test prompts instead of fresh ICL prompts; the embedded default's sizes are
far below SAEBench's (docs/evaluation.md, "Sparse probing, TPP and absorption").
""")
    return "".join(out)


def _by_n_plot(
    plt,
    out_dir: Path,
    results: dict,
    names: list[str],
    family: str,
    key: re.Pattern,
    xlabel: str,
    ylabel: str,
    title: str,
) -> list[str]:
    """`<family>.png`: each run's figure against n (the latents ablated), where the family ran."""
    runs = [n for n in names if family in results[n]]
    if not runs:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in runs:
        found = sorted((int(m[1]), v) for k, v in results[n][family].items() if (m := key.fullmatch(k)))
        ax.plot([k for k, _ in found], [v for _, v in found], "o-", label=n)
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=6)
    return [save_figure(plt, fig, out_dir, f"{family}.png")]


def probe_plots(out_dir: Path, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    made = []
    with_p = [n for n in names if "probing" in results[n]]
    if with_p:
        p0 = results[with_p[0]]["probing"]
        ks = sorted(int(k.split("_")[2]) for k in p0 if k.startswith("sae_top_") and k.endswith("_test_accuracy"))
        fig, ax = plt.subplots(figsize=(7, 4))
        w = 0.8 / len(ks)
        for j, k in enumerate(ks):
            ax.bar(
                [i + j * w for i in range(len(with_p))],
                [results[n]["probing"][f"sae_top_{k}_test_accuracy"] for n in with_p],
                w,
                label=f"SAE top-{k}",
                color=f"C{j}",
            )
            ax.axhline(p0.get(f"llm_top_{k}_test_accuracy", math.nan), color=f"C{j}", linestyle=":", linewidth=1)
        ax.axhline(
            p0.get("llm_test_accuracy", math.nan), color="black", linestyle="--", linewidth=1, label="LLM full width"
        )
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(with_p))], with_p, rotation=30, ha="right", fontsize=7)
        ax.set(ylabel="test accuracy", title="Sparse probing (dotted: LLM top-k)", ylim=(0.4, 1.0))
        ax.legend(fontsize=7)
        made.append(save_figure(plt, fig, out_dir, "sparse_probing.png"))
    made += _by_n_plot(
        plt,
        out_dir,
        results,
        names,
        "tpp",
        re.compile(r"tpp_threshold_(\d+)_total_metric"),
        "latents ablated per class (n)",
        "TPP",
        "TPP vs n",
    )
    made += _by_n_plot(
        plt,
        out_dir,
        results,
        names,
        "scr",
        re.compile(r"scr_metric_threshold_(\d+)"),
        "latents ablated (n)",
        "SCR",
        "SCR vs n (wiki topic x language)",
    )
    with_a = [n for n in names if "absorption" in results[n]]
    if with_a:
        fig, ax = plt.subplots(figsize=(7, 4))
        vals = [
            (
                results[n]["absorption"].get("mean_absorption_fraction_score", math.nan),
                results[n]["absorption"].get("mean_full_absorption_score", math.nan),
            )
            for n in with_a
        ]
        ax.bar([i - 0.2 for i in range(len(with_a))], [v[0] for v in vals], 0.4, label="mean absorption fraction")
        ax.bar([i + 0.2 for i in range(len(with_a))], [v[1] for v in vals], 0.4, label="full absorption rate")
        ax.set_xticks(range(len(with_a)), with_a, rotation=30, ha="right", fontsize=7)
        title = "First-letter absorption (lower is better)"
        if all(math.isnan(v[0]) for v in vals):
            title += ": not scored (too few letters pass the probe F1)"
        ax.set(ylabel="fraction", title=title)
        ax.legend(fontsize=7)
        made.append(save_figure(plt, fig, out_dir, "absorption.png"))
    return made
