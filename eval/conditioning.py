"""Group health of a trained SAE.

Per group g (features with ``groups == g``; a non-grouped SAE is one group) and for the decoder
(rows of ``W_dec``) and the encoder (columns of ``W_enc``), each seen as a ``d_model × n_g`` matrix
whose columns are the features' directions:

- from ``train.sae.grouping.group_health``: the condition number σ_max/σ_min (a frame bound that
  depends on n_g alone for random directions, so it is reported beside n_g), the effective rank
  exp(H(σ/Σσ)) and its fraction of min(n_g, d_model), and the largest |cos| within the group;
- per pair g < h: overlap ``‖W_gᵀW_h‖_F = sqrt(tr(W_gW_gᵀ · W_hW_hᵀ))`` from the d_model × d_model
  Grams (never the n_g × n_h product), ``overlap_fro``, and divided by ``‖W_g‖_F‖W_h‖_F``,
  ``rms_cross_cos``: the RMS cosine between a feature of g and one of h (each pair weighted by
  its squared norms, so for rows of equal norm, as unit decoder rows, the plain RMS cosine), the
  quantity α bounds in the "rms" L_ortho (random directions: 1/√d_model, reported as
  ``random_rms_cross_cos``). One name in code, report.json (``decoder_rms_cross_cos``,
  ``encoder_rms_cross_cos``, ``decoder_rms_cross_cos_activity``), the metric registry and the
  browser; reports before issue 25 call it ``decoder_overlap_fro_normalized`` (eval/metrics.py
  reads both);
- for the whole dictionary, SAEBench's ``average_max_encoder_cosine_sim`` and
  ``average_max_decoder_cosine_sim`` (mean over features of the largest signed cosine with another
  feature, ``calculate_max_cosine_sim``);
- principal angles between the column spaces: cosines = svdvals(Q_gᵀQ_h) with Q an orthonormal
  basis of each column space; reported as min and mean angle in degrees.

The bases come from the eigenvectors of the Gram ``W_gW_gᵀ`` with eigenvalue above a relative
tolerance, not from a plain QR: unpivoted QR is not rank-revealing, and a group with n_g > d_model
columns (or near-collinear ones) spans at most d_model directions. So rank ≤ d_model always, and
when rank_g + rank_h > d_model the spaces must intersect: the min angle is then 0 by dimension
count alone, which is why the mean angle and the overlap are reported too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from orthosae.train.sae import group_health, is_grouped, max_cosine
from orthosae.train.sae.grouping import assign_groups, forget_share
from orthosae.train.sae.ortho import gram, group_indices, ortho_loss

RANK_RTOL = 1e-10  # on eigenvalues (σ²) of the Gram, i.e. σ relative 1e-5, in float64


def feature_groups(
    sae: nn.Module, forget_mass: Tensor | None, retain_mass: Tensor | None, n_groups: int, *, rows: str = ""
) -> tuple[Tensor, int, str]:
    """(groups [d_sae] on the CPU, G, how): the run's own groups (grouped SAE), else training's rule
    applied post hoc to the same statistic (forget share of activation mass per row, from the
    given forget / retain masses), so every run type is grouped alike; one group without masses.
    ``rows`` says in ``how`` which rows the masses come from (``pipe eval``: the training rows;
    ``pipe inspect``: the held-out rows). Both commands group through this function."""
    if is_grouped(sae):
        return sae.groups.detach().cpu().long(), sae.n_groups, "learned"
    current = torch.zeros(sae.W_dec.shape[0], dtype=torch.long)
    if forget_mass is None or retain_mass is None:
        return current, 1, "single group"
    # features silent on both corpora (nan share) keep group 0
    return (
        assign_groups(forget_share(forget_mass.cpu(), retain_mass.cpu()), current, n_groups),
        n_groups,
        f"post hoc (forget share of activation mass{rows})",
    )


def _groups_of(sae: nn.Module, groups: Tensor | None, n_groups: int | None) -> tuple[Tensor, int]:
    if groups is None and is_grouped(sae):
        groups = sae.groups
    if groups is None:
        groups = torch.zeros(sae.W_dec.shape[0], dtype=torch.long)
    groups = groups.detach().to("cpu", torch.long)
    G = int(n_groups) if n_groups is not None else int(groups.max().item()) + 1
    return groups, G


def _gram(W: Tensor, idx: Tensor) -> Tensor:
    """W_gW_gᵀ [d_model, d_model] for rows ``W[idx]`` (float64)."""
    return gram(W[idx].to(torch.float64))


def _basis(gram: Tensor) -> Tensor:
    """Orthonormal basis [d_model, rank] of the column space whose Gram is given."""
    evals, evecs = torch.linalg.eigh(gram)
    keep = evals > RANK_RTOL * evals.max().clamp_min(0)
    return evecs[:, keep] if evals.max() > 0 else evecs[:, :0]


def principal_angles_deg(Qa: Tensor, Qb: Tensor) -> Tensor:
    """Principal angles (degrees, ascending) between spaces with orthonormal bases Qa, Qb."""
    if Qa.shape[1] == 0 or Qb.shape[1] == 0:
        return torch.empty(0, dtype=torch.float64)
    cos = torch.linalg.svdvals(Qa.T @ Qb).clamp(0.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).sort().values


def _pair_stats(Gg: Tensor, Gh: Tensor, Qg: Tensor, Qh: Tensor) -> dict[str, float]:
    """Overlap, RMS cross-group cosine and principal angles of two groups of rows, from their Grams
    and bases (computed once per group, not per pair)."""
    overlap = math.sqrt(max((Gg * Gh).sum().item(), 0.0))  # tr(GgGh), both symmetric
    norms = math.sqrt(Gg.trace().item() * Gh.trace().item())
    ang = principal_angles_deg(Qg, Qh)
    nan = math.nan
    return {
        "overlap_fro": overlap,
        "rms_cross_cos": overlap / norms if norms > 0 else nan,
        "min_angle_deg": ang.min().item() if ang.numel() else nan,
        "mean_angle_deg": ang.mean().item() if ang.numel() else nan,
    }


@torch.no_grad()
def conditioning_report(
    sae: nn.Module, groups: Tensor | None = None, n_groups: int | None = None, activity: Tensor | None = None
) -> dict:
    """Condition numbers, effective ranks, cross-group overlaps and angles (JSON-able dict).

    ``activity`` ([d_sae] activation mass per row): adds each pair's activity-weighted RMS cosine
    of the decoder, ``decoder_rms_cross_cos_activity``, the quantity the default L_ortho bounds by α."""
    groups, G = _groups_of(sae, groups, n_groups)
    mats = {"decoder": sae.W_dec.detach().cpu(), "encoder": sae.W_enc.detach().cpu().T}  # rows = features
    idx = group_indices(groups, G)
    d_model = mats["decoder"].shape[1]
    report: dict = {"n_groups": G, "group_sizes": [len(i) for i in idx], "random_rms_cross_cos": d_model**-0.5}
    grams, bases = {}, {}
    for name, W in mats.items():
        h = group_health(W, groups, G)
        report[name] = {"cond": h.cond, "eff_rank": h.eff_rank, "eff_rank_frac": h.eff_rank_frac, "max_cos": h.max_cos}
        report[f"average_max_{name}_cosine_sim"] = max_cosine(W.float()).mean().item()
        grams[name] = [_gram(W, i) if len(i) else None for i in idx]
        bases[name] = [_basis(gram) if gram is not None else None for gram in grams[name]]
    pairs = []
    for g in range(G):
        for h in range(g + 1, G):
            row: dict = {"g": g, "h": h}
            if len(idx[g]) and len(idx[h]):
                for name in mats:
                    stats = _pair_stats(grams[name][g], grams[name][h], bases[name][g], bases[name][h])
                    row.update({f"{name}_{k}": v for k, v in stats.items()})
                if activity is not None:
                    # the pair alone, as L_ortho measures it: d_model · Σ w_i w_j cos² / (Σw_g Σw_h)
                    pair_groups = torch.where(groups == g, 0, torch.where(groups == h, 1, -1))
                    keep = pair_groups >= 0
                    loss = ortho_loss(
                        mats["decoder"][keep].double(),
                        pair_groups[keep],
                        2,
                        0.0,
                        "rms",
                        activity=activity[keep].double().cpu().clamp_min(0),
                    )
                    row["decoder_rms_cross_cos_activity"] = math.sqrt(loss.item() / d_model)
            pairs.append(row)
    report["pairs"] = pairs
    return report
