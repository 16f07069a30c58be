"""SAEBench sparse probing: one-vs-rest probes on mean-pooled residuals and mean-pooled SAE latents.

Matched against sae_bench 0.6.0 ``evals/sparse_probing`` (cross-checked in tests/test_eval_probing.py):

1. Pooling (``activation_collection.create_meaned_model_activations`` / ``get_sae_meaned_activations``):
   the mean over a text's positions that are not BOS, EOS or padding, of the residual and of
   ``encode(residual)``. SAEBench finds those positions by "the activation sums to zero" after
   zeroing them; we carry the mask (``eval.probe_data``).
2. Probe data (``probe_training.prepare_probe_data``): for class c, its texts are the positives and
   as many negatives, drawn evenly from the other classes (``ceil(n_pos / n_other)`` each, then cut
   to n_pos), then shuffled; the same ``torch.randperm`` sequence as SAEBench under the same seed.
   Unlike SAEBench (which redraws the negatives for every probe), each class's rows are drawn once
   and shared by the LLM and every SAE probe, so their accuracies compare on the same texts.
3. Top-k selection (``get_top_k_mean_diff_mask``): the k dimensions with the largest
   |mean(positive) − mean(negative)| on the training rows; the probe sees those columns only.
4. Probes: scikit-learn ``LogisticRegression`` (L2, C = 1, max_iter 1000), SAEBench's
   ``train_sklearn_probe``. SAEBench trains the full-width LLM probe with a torch loop on GPU
   (AdamW, 100 epochs) only because sklearn was slow at d_model 2304; here sklearn trains it too
   (the same objective, deterministic). The optional full-width SAE probe is not run.
5. Accuracy per class on the test rows; each figure is the class average, then the dataset average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from orthosae.eval.probe_data import Split

POSITIVE, NEGATIVE = 1, 0  # SAEBench dataset_info labels


def prepare_probe_rows(
    sizes: dict[str, int], cls: str, generator: torch.Generator | None = None
) -> tuple[list[tuple[str, int]], Tensor]:
    """Which rows SAEBench's ``prepare_probe_data`` (one-vs-rest) takes, as (class, index) pairs,
    and their labels: the same random draws in the same order as SAEBench's, so one seed gives
    SAEBench's selection."""
    n_pos = sizes[cls]
    others = [c for c in sizes if c != cls]
    per = math.ceil(n_pos / len(others))
    negatives: list[tuple[str, int]] = []
    for c in others:
        negatives += [(c, int(i)) for i in torch.randperm(sizes[c], generator=generator)[:per]]
    keep = torch.randperm(len(negatives), generator=generator)[:n_pos]
    negatives = [negatives[int(i)] for i in keep]
    if len(negatives) != n_pos:
        raise ValueError(f"class {cls!r}: {n_pos} positives but only {len(negatives)} negatives")
    combined = [(cls, i) for i in range(n_pos)] + negatives
    labels = torch.tensor([POSITIVE] * n_pos + [NEGATIVE] * n_pos, dtype=torch.int)
    order = torch.randperm(len(combined), generator=generator)
    return [combined[int(i)] for i in order], labels[order]


def top_k_mean_diff(x: Tensor, labels: Tensor, k: int) -> Tensor:
    """SAEBench ``get_top_k_mean_diff_mask``: the k columns with the largest |mean difference|
    between positives and negatives, as sorted indices (the order ``x[:, ~mask]`` keeps)."""
    diff = (x[labels == POSITIVE].mean(0) - x[labels == NEGATIVE].mean(0)).abs()
    return torch.argsort(diff, descending=True)[:k].sort().values


def fit_probe(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int = 0):
    """(sklearn LogisticRegression, test accuracy): SAEBench ``train_sklearn_probe``."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)  # L2, as SAEBench
    probe.fit(x_train.float().numpy(), y_train.numpy())
    return probe, float((probe.predict(x_test.float().numpy()) == y_test.numpy()).mean())


@dataclass
class ClassRows:
    """One class's probe rows, drawn once: train / test (class, index) pairs and labels."""

    train: list[tuple[str, int]]
    y_train: Tensor
    test: list[tuple[str, int]]
    y_test: Tensor

    def gather(self, pooled_train: dict[str, Tensor], pooled_test: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return (
            torch.stack([pooled_train[c][i] for c, i in self.train]),
            torch.stack([pooled_test[c][i] for c, i in self.test]),
        )


def class_rows(train: Split, test: Split, seed: int) -> dict[str, ClassRows]:
    """Each class's one-vs-rest rows; one generator per dataset, classes in order (as SAEBench's
    loop over classes draws from one global generator)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for cls in train.ids:
        tr, ytr = prepare_probe_rows({c: len(v) for c, v in train.ids.items()}, cls, g)
        te, yte = prepare_probe_rows({c: len(v) for c, v in test.ids.items()}, cls, g)
        out[cls] = ClassRows(tr, ytr, te, yte)
    return out


@dataclass
class LlmProbes:
    """The SAE-independent half of one dataset: pooled residuals, rows, full-width and top-k probes."""

    name: str
    pooled_train: dict[str, Tensor]
    pooled_test: dict[str, Tensor]
    rows: dict[str, ClassRows]
    probes: dict[str, object]  # class -> full-width LogisticRegression (TPP reuses them)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> class -> accuracy


def llm_probes(name: str, train: Split, test: Split, k_values: list[int], seed: int) -> LlmProbes:
    pooled_train, pooled_test = train.pooled(), test.pooled()
    rows = class_rows(train, test, seed)
    out = LlmProbes(name, pooled_train, pooled_test, rows, {})
    for cls, r in rows.items():
        xtr, xte = r.gather(pooled_train, pooled_test)
        out.probes[cls], acc = fit_probe(xtr, r.y_train, xte, r.y_test, seed)
        out.accuracy.setdefault("llm_test_accuracy", {})[cls] = acc
        for k in k_values:
            idx = top_k_mean_diff(xtr, r.y_train, k)
            _, acc = fit_probe(xtr[:, idx], r.y_train, xte[:, idx], r.y_test, seed)
            out.accuracy.setdefault(f"llm_top_{k}_test_accuracy", {})[cls] = acc
    return out


@torch.no_grad()
def pooled_latents(sae, split: Split, batch_rows: int = 4096) -> dict[str, Tensor]:
    """Mean of ``encode`` over each text's counted positions, float32 ``[n, d_sae]`` per class.
    Only counted positions are encoded, so ``encode(0)`` of padding never enters (SAEBench zeroes
    latents there after encoding, which matches as long as the masks agree)."""
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    out = {}
    for c, acts in split.acts.items():
        mask = split.mask[c]
        x = acts[mask]  # [tokens, d]
        text = torch.arange(len(acts))[:, None].expand_as(mask)[mask]
        sums = torch.zeros(len(acts), sae.d_sae, dtype=torch.float32)
        for s in range(0, len(x), batch_rows):
            f = sae.encode(x[s : s + batch_rows].to(device, dtype)).float().cpu()
            sums.index_add_(0, text[s : s + batch_rows], f)
        out[c] = sums / mask.sum(1).clamp_min(1)[:, None].float()
    return out


def sae_probing(
    llm: LlmProbes, latents_train: dict[str, Tensor], latents_test: dict[str, Tensor], k_values: list[int], seed: int
) -> dict:
    """One dataset's figures for one SAE (LLM figures beside them), class-averaged, per class, and
    the latents each class's top-k probe picked (the browser shows them)."""
    acc: dict[str, dict[str, float]] = {m: dict(v) for m, v in llm.accuracy.items()}
    picked: dict[str, list[int]] = {}
    for cls, r in llm.rows.items():
        ftr, fte = r.gather(latents_train, latents_test)
        for k in k_values:
            idx = top_k_mean_diff(ftr, r.y_train, k)
            _, a = fit_probe(ftr[:, idx], r.y_train, fte[:, idx], r.y_test, seed)
            acc.setdefault(f"sae_top_{k}_test_accuracy", {})[cls] = a
        picked[cls] = top_k_mean_diff(ftr, r.y_train, max(k_values)).tolist()
    out = {m: float(np.mean(list(v.values()))) for m, v in acc.items()}
    out["per_class"] = acc
    out["top_latents"] = picked
    return out


def summarize(per_dataset: dict[str, dict]) -> dict:
    """The dataset average of every class-averaged figure (SAEBench's headline), and each dataset."""
    keys = sorted({k for d in per_dataset.values() for k, v in d.items() if isinstance(v, float)})
    out = {k: float(np.mean([d[k] for d in per_dataset.values() if k in d])) for k in keys}
    out["datasets"] = per_dataset
    return out
