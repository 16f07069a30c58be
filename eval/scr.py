"""SAEBench SCR (spurious correlation removal) on precomputed, mean-pooled activations.

Matched against sae_bench 0.6.0 ``evals/scr_and_tpp`` with ``perform_scr = True`` (cross-checked in
tests/eval/test_scr.py), with SAEBench's profession (column 1) played by a wiki **topic** pair and its
gender (column 2) by a **language** pair (``embedded:wiki_topic_language``, ``eval.probe_data``):

1. Sets (``dataset_creation.get_spurious_corr_data``), q = size / 4 texts per topic x language cell:
   ``topic`` (SAEBench "professor / nurse") = (t1, l1)[:q] + (t1, l2)[:q] vs (t2, l1)[:q] + (t2, l2)[:q];
   ``language`` ("male / female") = (t1, l1)[:q] + (t2, l1)[:q] vs (t1, l2)[:q] + (t2, l2)[:q];
   ``biased`` ("male_professor / female_nurse") = (t1, l1)[:2q] vs (t2, l2)[:2q], topic and language
   perfectly correlated. The same for the train and the test split.
2. Probes: one per set on its training rows (the oracles ``topic`` and ``language``, and the biased
   probe), scikit-learn logistic regression as every probe here (SAEBench: a torch probe, AdamW with an
   L1 penalty, batch 16, 20 epochs); the LLM side is computed once, not per SAE.
3. Effects (``get_effects_per_class_precomputed_acts``, ``perform_scr``): on a set's training rows,
   ``effect_i = |(mean_pos f_i − mean_neg f_i) · (w · W_dec[i])|`` with f the text's mean-pooled
   latents and w that set's probe; no clamp (SAEBench clamps only for TPP).
4. Selection and ablation as TPP (``eval.tpp``): the n largest non-zero effects; the pooled residual
   loses ``Σ_{i∈S} pooled(f_i) W_dec[i]`` (SAE error kept, only counted positions; SAEBench also
   ablates its padded positions' ``encode(0)``).
5. Score (``get_scr_plotting_dict``): direction 1 ablates the ``language`` probe's top-n latents and
   measures the biased probe on the ``topic`` test set, direction 2 the reverse:
   ``scr = (A_abl − A_base) / (A_oracle − A_base)``, 0 when ``A_oracle − A_base < 0.001``, with A_base
   the biased probe's clean accuracy on that test set and A_oracle the oracle probe's. ``scr_metric``
   is the direction whose A_base is lower (the attribute the biased probe learned less; a tie takes
   direction 1, where SAEBench leaves the metric out). Several topic pairs are averaged key by key
   (``general_utils.average_results_dictionaries``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from orthosae.eval.probe_data import Split, cell
from orthosae.eval.probing import NEGATIVE, POSITIVE, fit_probe
from orthosae.eval.tpp import ablate_pooled, accuracy, probe_weight, top_n

HEADLINE_N = 20  # as TPP: SAEBench's figures show SCR at 20 latents
SETS = ("topic", "language", "biased")
# the set whose latents each direction ablates, the test set it scores on (= its oracle's set)
DIRECTIONS = {1: ("language", "topic"), 2: ("topic", "language")}


def scr_sets(topics: list[str], languages: list[str], q: int) -> dict[str, tuple[list[tuple[str, int]], Tensor]]:
    """The three sets' rows (cell, index) and labels, positives first: SAEBench's construction with
    its first q / 2q texts of each cell."""
    (t1, t2), (l1, l2) = topics, languages

    def first(t: str, lang: str, k: int) -> list[tuple[str, int]]:
        return [(cell(t, lang), i) for i in range(k)]

    pos_neg = {
        "topic": (first(t1, l1, q) + first(t1, l2, q), first(t2, l1, q) + first(t2, l2, q)),
        "language": (first(t1, l1, q) + first(t2, l1, q), first(t1, l2, q) + first(t2, l2, q)),
        "biased": (first(t1, l1, 2 * q), first(t2, l2, 2 * q)),
    }
    return {
        s: (p + n, torch.tensor([POSITIVE] * len(p) + [NEGATIVE] * len(n), dtype=torch.int))
        for s, (p, n) in pos_neg.items()
    }


def gather(x: dict[str, Tensor], rows: list[tuple[str, int]]) -> Tensor:
    return torch.stack([x[c][i] for c, i in rows])


def scr_effects(latents: Tensor, labels: Tensor, w: Tensor, W_dec: Tensor) -> Tensor:
    """``get_effects_per_class_precomputed_acts`` with ``perform_scr``: [d_sae] |effects|."""
    diff = latents[labels == POSITIVE].float().mean(0) - latents[labels == NEGATIVE].float().mean(0)
    return (diff * (W_dec.float() @ w.float())).abs()


def scr_score(ablated: float, base: float, oracle: float) -> float:
    """One direction at one n (``get_scr_plotting_dict``)."""
    return 0.0 if oracle - base < 0.001 else (ablated - base) / (oracle - base)


@dataclass
class ScrPair:
    """The SAE-independent half of one topic pair: pooled residuals, sets, probes, clean accuracies."""

    topics: list[str]
    languages: list[str]
    pooled_train: dict[str, Tensor]
    pooled_test: dict[str, Tensor]
    train: dict[str, tuple[list[tuple[str, int]], Tensor]]
    test: dict[str, tuple[list[tuple[str, int]], Tensor]]
    probes: dict[str, tuple[Tensor, float]]
    clean: dict[str, float]  # "<probe> on <test set>" -> accuracy

    @property
    def name(self) -> str:
        return f"{' / '.join(self.topics)} x {' / '.join(self.languages)}"


def scr_llm(
    topics: list[str], languages: list[str], train: Split, test: Split, train_size: int, test_size: int, seed: int
) -> ScrPair:
    """Sets, probes and clean accuracies of one topic pair (``train_size`` / ``test_size``: texts per set)."""
    pooled_train, pooled_test = train.pooled(), test.pooled()
    sets_tr, sets_te = scr_sets(topics, languages, train_size // 4), scr_sets(topics, languages, test_size // 4)
    probes = {}
    for s in SETS:
        (rows, y), (rows_te, y_te) = sets_tr[s], sets_te[s]
        probe, _ = fit_probe(gather(pooled_train, rows), y, gather(pooled_test, rows_te), y_te, seed)
        probes[s] = probe_weight(probe)
    clean = {
        f"{p} on {s}": accuracy(gather(pooled_test, sets_te[s][0]), sets_te[s][1], *probes[p])
        for p in SETS
        for s in ("topic", "language")
    }
    return ScrPair(list(topics), list(languages), pooled_train, pooled_test, sets_tr, sets_te, probes, clean)


@torch.no_grad()
def run_scr_pair(
    pair: ScrPair, latents_train: dict[str, Tensor], latents_test: dict[str, Tensor], W_dec: Tensor, n_values: list[int]
) -> dict:
    """SCR of one SAE on one topic pair; ``W_dec`` [d_sae, d_model] on the CPU."""
    W_dec = W_dec.float().cpu()
    base = {d: pair.clean[f"biased on {scored}"] for d, (_, scored) in DIRECTIONS.items()}
    oracle = {d: pair.clean[f"{scored} on {scored}"] for d, (_, scored) in DIRECTIONS.items()}
    metric_dir = 1 if base[1] <= base[2] else 2
    out: dict = {}
    ablated_acc: dict[int, dict[int, float]] = {}
    ablated_latents: dict[int, list[int]] = {}
    for d, (ablated_set, scored) in DIRECTIONS.items():
        rows, y = pair.train[ablated_set]
        effects = scr_effects(gather(latents_train, rows), y, pair.probes[ablated_set][0], W_dec)
        rows_te, y_te = pair.test[scored]
        x_te, f_te = gather(pair.pooled_test, rows_te), gather(latents_test, rows_te)
        ablated_acc[d] = {}
        for n in n_values:
            chosen = top_n(effects, n)
            ablated_acc[d][n] = accuracy(ablate_pooled(x_te, f_te, W_dec, chosen), y_te, *pair.probes["biased"])
            out[f"scr_dir{d}_threshold_{n}"] = scr_score(ablated_acc[d][n], base[d], oracle[d])
        ablated_latents[d] = top_n(effects, HEADLINE_N).tolist()
    for n in n_values:
        out[f"scr_metric_threshold_{n}"] = out[f"scr_dir{metric_dir}_threshold_{n}"]
    out.update({f"biased_accuracy_dir{d}": base[d] for d in DIRECTIONS})
    out.update({f"oracle_accuracy_dir{d}": oracle[d] for d in DIRECTIONS})
    out["pair"] = pair.name
    out["metric_direction"] = metric_dir
    out["ablated_accuracy"] = {f"dir{d}": {str(n): a for n, a in accs.items()} for d, accs in ablated_acc.items()}
    out["ablated_latents"] = {f"dir{d}": ids for d, ids in ablated_latents.items()}
    out["clean_accuracy"] = dict(pair.clean)
    return out


def headline_n(n_values: list[int]) -> int:
    """HEADLINE_N if measured, else the largest n below it, else the smallest n (as TPP)."""
    below = [n for n in n_values if n <= HEADLINE_N]
    return max(below) if below else min(n_values)


def run_scr(
    pairs: list[ScrPair], latents: list[tuple[dict[str, Tensor], dict[str, Tensor]]], W_dec: Tensor, n_values: list[int]
) -> dict:
    """SCR of one SAE: each pair's figures and their key-by-key mean (SAEBench's average over pairs)."""
    per_pair = [run_scr_pair(p, *lat, W_dec, n_values) for p, lat in zip(pairs, latents)]
    keys = [k for k, v in per_pair[0].items() if isinstance(v, float)]
    out = {k: float(np.mean([r[k] for r in per_pair])) for k in keys}
    h = headline_n(n_values)
    out["scr_score"] = out[f"scr_metric_threshold_{h}"]
    out["scr_headline_n"] = h
    out["pairs"] = {r["pair"]: r for r in per_pair}
    return out
