"""Reconstruction metrics on held-out activation rows, with SAEBench "core" definitions.

Matched against ``sae_bench/evals/core/main.py::get_sparsity_and_variance_metrics`` (0.6.0) and
``sae_lens/evals.py::ExplainedVarianceCalculator`` (6.x). Every per-token metric is averaged over
all rows (SAEBench concatenates per-token values over batches, then takes one mean); metrics that
SAEBench computes per batch (legacy EV, relative reconstruction bias, ``mse_saebench``) use the
batches exactly as the caller yields them, so pass the same batch split to compare.

Three explained variances, each under its own name:

- ``explained_variance_legacy``: SAEBench legacy per-token form (the SAEBench paper's number):
  mean over tokens of ``1 − ‖x−x̂‖² / ‖x − mean_batch(x)‖²``, centring on the batch mean.
- ``explained_variance``: ``1 − E‖x−x̂‖² / Σ_d Var(x_d)`` over all rows (SAELens after its fix;
  float64 sums). Not SAEBench 0.6.0's own ``explained_variance``, which subtracts
  ``(mean_d E[x_d²])²`` instead of ``Σ_d E[x_d]²``.
- ``explained_variance_dictionary_learning``: ``1 − Σ_d Var(x_d−x̂_d) / Σ_d Var(x_d)`` over all rows
  (dictionary_learning computes it per batch and averages; here it is over all rows at once).

MSE: ``mse`` = E‖x−x̂‖² (sum over d_model, mean over rows: SAELens 6.x and our training loss).
``mse_saebench`` = SAEBench 0.6.0's value, which divides each row's ‖x−x̂‖² by the number of rows
in its batch before averaging (batch-size dependent; kept only for side-by-side comparison).

Cosine similarity of a row whose x or x̂ is exactly 0 counts as 0 (SAEBench would give nan).
Feature activity is ``f > 0`` (SAEBench's feature density); ``freq_over_1_percent`` and
``freq_over_10_percent`` are SAEBench's ``calculate_misc_metrics`` density cut-offs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from orthosae.common.metrics import explained_variance


def _rows(batch: Tensor | np.ndarray, sae: nn.Module) -> Tensor:
    x = torch.as_tensor(batch)
    w = sae.W_dec
    return x.reshape(-1, x.shape[-1]).to(device=w.device, dtype=w.dtype)


class FeatureActivity:
    """(frequency, mass) per feature, float64 ``[d_sae]``, one batch at a time (one read of the rows
    serves every run's SAE): the fraction of rows on which it is active (f > 0; SAEBench's
    unlearning selection ranks by this) and its mean activation per row (the statistic feature
    groups are formed from, in training and in eval alike)."""

    def __init__(self, sae: nn.Module):
        self.sae, self.counts, self.mass, self.n = sae, None, None, 0

    @torch.no_grad()
    def add(self, batch: Tensor | np.ndarray) -> None:
        x = _rows(batch, self.sae)
        f = self.sae.encode(x)
        c, m = (f > 0).sum(dim=0).to(torch.float64), f.clamp_min(0).sum(dim=0).to(torch.float64)
        self.counts, self.mass = (c, m) if self.counts is None else (self.counts + c, self.mass + m)
        self.n += x.shape[0]

    def result(self) -> tuple[Tensor, Tensor]:
        if self.counts is None or self.n == 0:
            raise ValueError("FeatureActivity: no rows")
        return (self.counts / self.n).cpu(), (self.mass / self.n).cpu()


class Reconstruction:
    """`reconstruction_metrics` one batch at a time: one read of the rows serves every run's SAE."""

    def __init__(self, sae: nn.Module):
        self.sae = sae
        self.per_token: dict[str, list[Tensor]] = {
            k: []
            for k in (
                "l0",
                "l1",
                "l2_norm_in",
                "l2_norm_out",
                "l2_ratio",
                "cossim",
                "mse_saebench",
                "explained_variance_legacy",
            )
        }
        self.rel_bias: list[Tensor] = []
        self.n = 0
        self.sums = None  # float64 sums over rows: x, x², resid, resid² per dim; active per feature
        self.sse_total = 0.0

    @torch.no_grad()
    def add(self, batch: Tensor | np.ndarray) -> None:
        f64, per_token = torch.float64, self.per_token
        x = _rows(batch, self.sae)
        if x.shape[0] == 0:
            return
        f = self.sae.encode(x)
        x_hat = self.sae.decode(f).to(x.dtype)
        resid = x - x_hat
        sse = resid.pow(2).sum(dim=-1)
        norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)

        per_token["l0"].append((f != 0).sum(dim=-1).to(f64))
        per_token["l1"].append(f.abs().sum(dim=-1).to(f64))
        per_token["l2_norm_in"].append(norm_in.to(f64))
        per_token["l2_norm_out"].append(norm_out.to(f64))
        # SAEBench: rows with ‖x‖ < 1e-4 divide by 1 instead
        per_token["l2_ratio"].append((norm_out / torch.where(norm_in.abs() < 1e-4, 1.0, norm_in)).to(f64))
        cos = (x * x_hat).sum(dim=-1) / (norm_in * norm_out)
        per_token["cossim"].append(torch.where((norm_in > 0) & (norm_out > 0), cos, 0.0).to(f64))
        per_token["mse_saebench"].append((sse / x.shape[0]).to(f64))
        centred = (x - x.mean(dim=0)).pow(2).sum(dim=-1)
        per_token["explained_variance_legacy"].append((1 - sse / centred).to(f64))
        # Equation 10 of arXiv:2404.16014, one value per batch as in SAEBench
        self.rel_bias.append((norm_out.pow(2).mean() / (x * x_hat).sum(dim=-1).mean()).to(f64).reshape(1))

        xd, rd = x.to(f64), resid.to(f64)
        parts = (xd.sum(0), xd.pow(2).sum(0), rd.sum(0), rd.pow(2).sum(0), (f > 0).sum(0).to(f64))
        self.sums = parts if self.sums is None else tuple(a + b for a, b in zip(self.sums, parts))
        self.sse_total += sse.to(f64).sum().item()
        self.n += x.shape[0]

    def result(self) -> dict[str, float]:
        n = self.n
        if n == 0:
            raise ValueError("reconstruction_metrics: no rows")
        sum_x, sum_x2, sum_r, sum_r2, active = self.sums
        out = {k: torch.cat(v).mean().item() for k, v in self.per_token.items()}
        out["relative_reconstruction_bias"] = torch.cat(self.rel_bias).mean().item()
        mse = self.sse_total / n
        var_x = sum_x2 / n - (sum_x / n).pow(2)  # per-dim population variance
        var_r = sum_r2 / n - (sum_r / n).pow(2)
        total_var = var_x.sum().item()
        out["mse"] = mse
        out["explained_variance"] = explained_variance(mse, total_var)
        out["explained_variance_dictionary_learning"] = explained_variance(var_r.sum().item(), total_var)
        density = active / n
        out["frac_dead"] = (density == 0).to(torch.float64).mean().item()
        out["frac_alive"] = 1.0 - out["frac_dead"]
        out["freq_over_1_percent"] = (density > 0.01).to(torch.float64).mean().item()
        out["freq_over_10_percent"] = (density > 0.1).to(torch.float64).mean().item()
        out["n_rows"] = n
        return out


def reconstruction_metrics(
    sae: nn.Module,
    batches: Iterable[Tensor | np.ndarray],
) -> dict[str, float]:
    """Stream raw activation rows ``[B, d_model]`` through the SAE and return scalar metrics."""
    acc = Reconstruction(sae)
    for batch in batches:
        acc.add(batch)
    return acc.result()
