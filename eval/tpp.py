"""SAEBench TPP (targeted probe perturbation) on precomputed, mean-pooled activations.

Matched against sae_bench 0.6.0 ``evals/scr_and_tpp/main.py`` with ``perform_scr = False``
(cross-checked in tests/test_eval_tpp.py):

1. Probes: the dataset's full-width LLM probes of sparse probing (``eval.probing``), one per class.
2. Effects (``get_effects_per_class_precomputed_acts``): on class c's probe training rows,
   ``effect_i = max(mean_pos f_i − mean_neg f_i, 0) · (w_c · W_dec[i])`` with f the text's mean-pooled
   latents.
3. Selection (``select_top_n_features``): the n largest effects among the non-zero ones.
4. Ablation (``ablated_precomputed_activations``): ``x ← decode(f with the chosen latents zeroed) +
   (x − decode(f))``, the SAE error kept, then mean-pooled. That is ``x − Σ_{i∈S} f_i W_dec[i]`` at
   every position, so the pooled residual loses ``Σ_{i∈S} pooled(f_i) W_dec[i]`` and one encode per
   SAE serves every n. For the grouped SAE the group-bias mix π is held at the unablated latents
   (as unlearning's clamp does, eval/unlearning.py), which keeps the ablation exactly this
   subtraction. SAEBench decodes the padded positions too: their ``encode(0)`` is not zero when
   ``relu(b_enc − W_encᵀb_dec) > 0``, and its ablation then leaks ``−Σ f_i(0) W_dec[i]`` into every
   pooled text; here only counted positions enter.
5. Score (``create_tpp_plotting_dict``): for class c and n, the intended drop
   ``acc_c(clean) − acc_c(ablate c's latents)`` minus the mean over the other classes j of
   ``acc_j(clean) − acc_j(ablate c's latents)``; averaged over classes. SAEBench redraws each class's
   test negatives at every accuracy call; here each class's test rows are drawn once, so clean and
   ablated accuracies are counted on the same texts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from orthosae.eval.probing import NEGATIVE, POSITIVE, LlmProbes

HEADLINE_N = 20  # SAEBench reports TPP at 20 latents ablated per class


def probe_weight(probe) -> tuple[Tensor, float]:
    """(w [d], b) of a fitted sklearn LogisticRegression."""
    return torch.tensor(probe.coef_[0], dtype=torch.float32), float(probe.intercept_[0])


def class_effects(latents: Tensor, labels: Tensor, w: Tensor, W_dec: Tensor) -> Tensor:
    """``get_effects_per_class_precomputed_acts`` (TPP): [d_sae] effects on one class's probe."""
    diff = latents[labels == POSITIVE].float().mean(0) - latents[labels == NEGATIVE].float().mean(0)
    return diff.clamp(min=0.0) * (W_dec.float() @ w.float())


def top_n(effects: Tensor, n: int) -> Tensor:
    """``select_top_n_features``: indices of the n largest among the non-zero effects."""
    k = min(n, int((effects != 0).sum()))
    return torch.topk(effects, k).indices if k else torch.zeros(0, dtype=torch.long)


def ablate_pooled(pooled_x: Tensor, pooled_f: Tensor, W_dec: Tensor, chosen: Tensor) -> Tensor:
    """Mean-pooled residual after zero-ablating ``chosen`` latents (error term kept)."""
    return pooled_x - pooled_f[:, chosen].float() @ W_dec[chosen].float()


def accuracy(x: Tensor, labels: Tensor, w: Tensor, b: float) -> float:
    return float((((x.float() @ w + b) > 0).int() == labels).float().mean())


def tpp_scores(class_accuracies: dict[str, dict[int, dict[str, float]]], clean: dict[str, float]) -> tuple[dict, dict]:
    """``create_tpp_plotting_dict``: (class-averaged metrics, per-class metrics)."""
    per_class = {}
    for c in clean:
        m = {}
        for n, accs in class_accuracies[c].items():
            intended = clean[c] - accs[c]
            unintended = float(np.mean([clean[j] - accs[j] for j in clean if j != c]))
            m[f"tpp_threshold_{n}_total_metric"] = intended - unintended
            m[f"tpp_threshold_{n}_intended_diff_only"] = intended
            m[f"tpp_threshold_{n}_unintended_diff_only"] = unintended
        per_class[c] = m
    keys = next(iter(per_class.values())).keys()
    return {k: float(np.mean([m[k] for m in per_class.values()])) for k in keys}, per_class


@torch.no_grad()
def run_tpp(
    llm: LlmProbes,
    latents_train: dict[str, Tensor],
    latents_test: dict[str, Tensor],
    W_dec: Tensor,
    n_values: list[int],
) -> dict:
    """TPP of one SAE on one dataset; ``W_dec`` [d_sae, d_model] on the CPU."""
    W_dec = W_dec.float().cpu()
    probes = {c: probe_weight(p) for c, p in llm.probes.items()}
    test_x, test_f, test_y = {}, {}, {}
    for c, r in llm.rows.items():
        test_x[c] = torch.stack([llm.pooled_test[k][i] for k, i in r.test])
        test_f[c] = torch.stack([latents_test[k][i] for k, i in r.test])
        test_y[c] = r.y_test
    clean = {c: accuracy(test_x[c], test_y[c], *probes[c]) for c in llm.rows}
    by_class: dict[str, dict[int, dict[str, float]]] = {}
    chosen_latents: dict[str, list[int]] = {}
    for c, r in llm.rows.items():
        f_train = torch.stack([latents_train[k][i] for k, i in r.train])
        effects = class_effects(f_train, r.y_train, probes[c][0], W_dec)
        by_class[c] = {}
        for n in n_values:
            chosen = top_n(effects, n)
            by_class[c][n] = {
                j: accuracy(ablate_pooled(test_x[j], test_f[j], W_dec, chosen), test_y[j], *probes[j]) for j in llm.rows
            }
        chosen_latents[c] = top_n(effects, HEADLINE_N).tolist()
    overall, per_class = tpp_scores(by_class, clean)
    headline = (
        HEADLINE_N
        if HEADLINE_N in n_values
        else max(n for n in n_values if n <= HEADLINE_N)
        if min(n_values) <= HEADLINE_N
        else min(n_values)
    )
    out = {
        "tpp_score": overall[f"tpp_threshold_{headline}_total_metric"],
        "tpp_headline_n": headline,
        "tpp_intended": overall[f"tpp_threshold_{headline}_intended_diff_only"],
        "tpp_unintended": overall[f"tpp_threshold_{headline}_unintended_diff_only"],
        **overall,
        "dataset": llm.name,
        "clean_accuracy": clean,
        "per_class": per_class,
        "ablated_latents": chosen_latents,
    }
    return out
