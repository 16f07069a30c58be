"""report.md sections and plots of sparse probing, TPP, SCR and absorption (one plot per family),
and the metrics each registers (eval/families.py registers them with the family)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or batch nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from orthosae.common.corpora import FORGET_TOPIC  # noqa: E402
from orthosae.common.markdown import cell, table  # noqa: E402
from orthosae.eval.family import ReportView  # noqa: E402
from orthosae.eval.figures import save_figure  # noqa: E402
from orthosae.eval.metrics import Metric  # noqa: E402

# The families' headline figures for the one metric registry (eval/metrics.py): the conditions table,
# its intervals and "who wins" read them from there; the per-run tables are these sections' own.
PROBING_METRICS = (
    Metric("sae_top_1_test_accuracy", "probing", True, "sparse probing, SAE top-1 accuracy", runs_table=False),
    Metric("sae_top_5_test_accuracy", "probing", True, "sparse probing, SAE top-5 accuracy", runs_table=False),
)
TPP_METRICS = (Metric("tpp_score", "tpp", True, "TPP score", runs_table=False),)
SCR_METRICS = (Metric("scr_score", "scr", True, "SCR score", runs_table=False),)
ABSORPTION_METRICS = (
    Metric("mean_absorption_fraction_score", "absorption", False, "absorption fraction", runs_table=False),
    Metric("mean_full_absorption_score", "absorption", False, "full-absorption rate", runs_table=False),
)
# what all four families' sections share, printed once after them
NOTE = """
Deviations from SAEBench in these families: texts padded on the right and BOS / EOS / padding
masked explicitly; every draw seeded; each class's probe rows drawn once and shared by the LLM and
SAE probes and by clean and ablated TPP / SCR accuracies; all probes fitted with scikit-learn; absorption
scored on the cached test prompts instead of fresh ICL prompts; the embedded default's sizes are
far below SAEBench's (docs/evaluation.md, "Sparse probing, TPP and absorption").
"""


def _with(results: dict, family: str) -> list[str]:
    """The runs that have ``family``'s section."""
    return [n for n in results if family in results[n]]


def forget_topics(cfg) -> set[str]:
    """The wiki topics the forget training corpora hold (their labels trained the adaptive grouping):
    subset "forget" is the biology split, "forget:<topic>" another topic."""
    out = set()
    for c in cfg.corpora.values():
        if c.role == "forget" and str(c.source) == "embedded:wiki":
            side, _, topic = str(c.subset or "").partition(":")
            out.add(topic or FORGET_TOPIC)
    return out


def tpp_per_class(results: dict, names: list[str], forget: set[str]) -> str:
    """TPP per class of the topic dataset, forget-topic classes apart: a gain on them may come from
    the labels that trained the grouping, not from the grouping's features."""
    t = results[names[0]].get("tpp", {})
    if not (forget and t.get("per_class")):
        return ""
    n = t.get("tpp_headline_n")
    key = f"tpp_threshold_{n}_total_metric"
    classes = sorted(t["per_class"], key=lambda c: (c in forget, c))
    rows = []
    for name in names:
        per = results[name].get("tpp", {}).get("per_class", {})
        rest = [per[c][key] for c in per if c not in forget and key in per[c]]
        rows.append(
            [name, *[per.get(c, {}).get(key, math.nan) for c in classes], float(np.mean(rest)) if rest else math.nan]
        )
    return f"""
TPP per class (n = {n}; **forget-topic classes**, whose labels trained the grouping, in bold), and the
score without them:
{table(["run", *[f"**{c}**" if c in forget else c for c in classes], "without forget classes"], rows)}
"""


def probing_per_class(results: dict, names: list[str], forget: set[str]) -> str:
    """Sparse probing per class of the dataset that holds a forget topic, those classes apart."""
    p = results[names[0]].get("probing", {}).get("datasets", {})
    d = next((k for k, v in p.items() if set(v.get("per_class", {}).get("llm_test_accuracy", {})) & forget), None)
    if not d:
        return ""
    ks = sorted(int(k.split("_")[2]) for k in p[d]["per_class"] if k.startswith("sae_top_"))
    key = f"sae_top_{ks[0]}_test_accuracy"
    classes = sorted(p[d]["per_class"][key], key=lambda c: (c in forget, c))
    rows = []
    for name in names:
        per = results[name].get("probing", {}).get("datasets", {}).get(d, {}).get("per_class", {}).get(key, {})
        rest = [per[c] for c in per if c not in forget]
        rows.append([name, *[per.get(c, math.nan) for c in classes], float(np.mean(rest)) if rest else math.nan])
    return f"""
Sparse probing per class ({d}, SAE top-{ks[0]}; **forget-topic classes** in bold), and the mean without them:
{table(["run", *[f"**{c}**" if c in forget else c for c in classes], "without forget classes"], rows)}
"""


def _ks(probing: dict) -> list[int]:
    return sorted(int(k.split("_")[2]) for k in probing if k.startswith("sae_top_") and k.endswith("_test_accuracy"))


def probing_markdown(results: dict, forget: set[str] = frozenset()) -> str:
    names = _with(results, "probing")
    if not names:
        return ""
    p = results[names[0]]["probing"]
    ks = _ks(p)
    rows = [[n, *[results[n]["probing"].get(f"sae_top_{k}_test_accuracy", math.nan) for k in ks]] for n in names]
    rows.append(["LLM residual (same texts)", *[p.get(f"llm_top_{k}_test_accuracy", math.nan) for k in ks]])
    per = [
        [
            d,
            *[v.get(f"llm_top_{k}_test_accuracy", math.nan) for k in ks],
            v.get("llm_test_accuracy"),
            p["trained_on"].get(d, ""),
        ]
        for d, v in p["datasets"].items()
    ]
    sizes = p.get("sizes", {})
    return f"""
## Sparse probing (SAEBench; class-averaged one-vs-rest accuracy, mean over datasets)
{table(["run", *[f"SAE top-{k}" for k in ks]], rows)}

LLM probes per dataset (full width: {cell(p.get("llm_test_accuracy"))} on average), and whether any SAE trained on its texts:
{table(["dataset", *[f"LLM top-{k}" for k in ks], "LLM full width", "SAE training text?"], per)}

{sizes.get("train_per_class")} training and {sizes.get("test_per_class")} test texts per class, {sizes.get("context_length")}
tokens each (SAEBench: 4000 / 1000 / 128); probes: sklearn logistic regression, top-k by mean difference.
""" + probing_per_class(results, names, forget)


def tpp_markdown(results: dict, forget: set[str] = frozenset()) -> str:
    names = _with(results, "tpp")
    if not names:
        return ""
    t = results[names[0]]["tpp"]
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
    headline = t.get("tpp_headline_n")
    return f"""
## TPP (SAEBench; dataset {t.get("dataset")}): intended probe's accuracy drop minus the others' mean drop
{table(["run", *[f"n={k}" for k in ns], f"intended (n={headline})", f"unintended (n={headline})"], rows)}

n latents per class zero-ablated (SAE error kept; the grouped SAE's π held at the unablated latents);
headline `tpp_score` at n = {headline}. Clean LLM probe accuracy:
{", ".join(f"{c} {cell(a)}" for c, a in t.get("clean_accuracy", {}).items())}.
""" + tpp_per_class(results, names, forget)


def scr_markdown(results: dict) -> str:
    names = _with(results, "scr")
    if not names:
        return ""
    s = results[names[0]]["scr"]
    ns = sorted(int(k.split("_")[3]) for k in s if k.startswith("scr_metric_threshold_"))
    rows = [[n, *[results[n]["scr"].get(f"scr_metric_threshold_{k}", math.nan) for k in ns]] for n in names]
    pairs = [
        [
            p,
            *[
                v.get(k)
                for k in (
                    "metric_direction",
                    "biased_accuracy_dir1",
                    "oracle_accuracy_dir1",
                    "biased_accuracy_dir2",
                    "oracle_accuracy_dir2",
                )
            ],
        ]
        for p, v in s.get("pairs", {}).items()
    ]
    sizes = s.get("sizes", {})
    return f"""
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
"""


def absorption_markdown(results: dict) -> str:
    names = _with(results, "absorption")
    if not names:
        return ""
    a = results[names[0]]["absorption"]
    keys = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features")
    rows = [[n, *[results[n]["absorption"].get(k) for k in keys]] for n in names]
    f1s = a.get("probe_f1", {})
    note = f"\n**Not scored**: {a['not_scored']}.\n" if a.get("not_scored") else ""
    return f"""
## Absorption (SAEBench first letter; lower is better)
{table(["run", "mean absorption fraction", "full absorption rate", "split latents per letter"], rows)}
{note}
{a.get("train_words")} training and {a.get("test_words")} test words sampled from {a.get("alphabetic_vocab")} alphabetic
vocabulary tokens ({a.get("dropped_words")} dropped: the prompt's tail did not tokenize as the template's). Letters
whose LLM probe F1 exceeds {a.get("min_probe_f1")} (SAEBench: 0.6) count: **{a.get("passing_letters") or "none"}**
(at least {a.get("min_letters")} needed). Probe F1 per letter:
{", ".join(f"{k} {v:.2f}" for k, v in sorted(f1s.items()))}.
"""


def _by_n_plot(
    out_dir: Path, results: dict, family: str, key: re.Pattern, xlabel: str, ylabel: str, title: str
) -> list[str]:
    """`<family>.png`: each run's figure against n (the latents ablated), where the family ran."""
    runs = _with(results, family)
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


def probing_plot(out_dir: Path, results: dict) -> list[str]:
    """sparse_probing.png: each run's SAE top-k accuracies beside the LLM's."""
    with_p = _with(results, "probing")
    if not with_p:
        return []
    p0 = results[with_p[0]]["probing"]
    ks = _ks(p0)
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
    return [save_figure(plt, fig, out_dir, "sparse_probing.png")]


def tpp_plot(out_dir: Path, results: dict) -> list[str]:
    pattern = re.compile(r"tpp_threshold_(\d+)_total_metric")
    return _by_n_plot(out_dir, results, "tpp", pattern, "latents ablated per class (n)", "TPP", "TPP vs n")


def scr_plot(out_dir: Path, results: dict) -> list[str]:
    pattern = re.compile(r"scr_metric_threshold_(\d+)")
    return _by_n_plot(
        out_dir, results, "scr", pattern, "latents ablated (n)", "SCR", "SCR vs n (wiki topic x language)"
    )


def absorption_plot(out_dir: Path, results: dict) -> list[str]:
    with_a = _with(results, "absorption")
    if not with_a:
        return []
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
    return [save_figure(plt, fig, out_dir, "absorption.png")]


# each family's section and plot as eval/families.py registers them: what they read of the report
def probing_section(view: ReportView) -> str:
    return probing_markdown(view.results, forget_topics(view.cfg))


def tpp_section(view: ReportView) -> str:
    return tpp_markdown(view.results, forget_topics(view.cfg))


def scr_section(view: ReportView) -> str:
    return scr_markdown(view.results)


def absorption_section(view: ReportView) -> str:
    return absorption_markdown(view.results)


def probing_plots(view: ReportView) -> list[str]:
    return probing_plot(view.out_dir, view.results)


def tpp_plots(view: ReportView) -> list[str]:
    return tpp_plot(view.out_dir, view.results)


def scr_plots(view: ReportView) -> list[str]:
    return scr_plot(view.out_dir, view.results)


def absorption_plots(view: ReportView) -> list[str]:
    return absorption_plot(view.out_dir, view.results)
