"""Feature-group statistics, the regrouping rule, and group health (degeneracy measures).

Statistics (``GroupStats``, updated once per optimiser step with the step's detached activations):
exponential moving averages, decay ``d`` per step (default 0.99), of

    S_forget[i] = Σ_{forget rows} f_i     N_forget = number of forget rows
    S_retain[i] = Σ_{retain rows} f_i     N_retain = number of retain rows

Each feature's mass per row is ``m_forget_i = S_forget[i] / N_forget`` (same for retain). Sums and
counts share one decay, so their ratio is an exponentially weighted per-row mean that needs no
bias correction and is correct when the fraction of forget rows varies between batches.

Regrouping rule (``assign_groups``), every ``regroup_every`` steps (the Trainer calls it):

    r_i = m_forget_i / (m_forget_i + m_retain_i)  ∈ [0, 1]   (the feature's forget share)
    g_i = min(floor(r_i · G), G − 1)           (G equal-width bins of [0, 1])

so group G−1 is the most forget-specific; for G = 2, r ≥ 0.5 → group 1 (forget-leaning), else 0.
Guards: a feature keeps its group when its mass per row m_forget + m_retain is below ``min_mass``
(dead so far, or a few stray activations), and while r stays within ``margin`` of its current
bin (hysteresis: generic features near r = 0.5 do not churn at every regroup). If no forget row
or no retain row has been seen yet, r is undefined and every feature keeps its group.

Health (``group_health``), per group of ``d_model × n_g`` directions:
- ``cond``: σ_max/σ_min (σ_min = the min(d_model, n_g)-th singular value; inf when 0). This is the
  frame bound of the group's rows and depends on n_g alone for random rows (≈ 8 at n_g = 1024,
  thousands at n_g = d_model = 640), so it is reported beside n_g, never used to stop;
- ``eff_rank_frac``: effective rank exp(entropy of σ/Σσ) divided by min(n_g, d_model), ≈ 0.7–0.9
  for random rows at any n_g: small when the group collapses onto few directions;
- ``max_cos``: the largest |cos| between two features of the group (duplicated features → 1).
Empty group → nan everywhere, one feature → 1, 1, 0. ``stop_reason`` names the first group whose
eff_rank_frac falls below ``stop_eff_rank`` or whose max_cos reaches ``stop_max_cos``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .ortho import gram, group_indices


class GroupStats(nn.Module):
    """EMA activation mass per feature on forget vs retain rows (buffers, so they checkpoint)."""

    def __init__(self, d_sae: int, decay: float = 0.99, device: torch.device | str = "cpu"):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"stats_decay must be in [0, 1); got {decay}")
        self.decay = float(decay)
        f64 = dict(dtype=torch.float64, device=device)
        self.register_buffer("sum_forget", torch.zeros(d_sae, **f64))
        self.register_buffer("sum_retain", torch.zeros(d_sae, **f64))
        self.register_buffer("n_forget", torch.zeros((), **f64))
        self.register_buffer("n_retain", torch.zeros((), **f64))

    @torch.no_grad()
    def update(self, f: Tensor, is_forget: Tensor) -> None:
        """One EMA step from activations ``f [batch, d_sae]`` and ``is_forget [batch] bool``."""
        f = f.detach().reshape(-1, f.shape[-1])  # no float64 copy of f: matmul in f's dtype
        mask = is_forget.reshape(-1).to(device=f.device, dtype=torch.bool)
        if mask.shape[0] != f.shape[0]:
            raise ValueError(f"is_forget has {mask.shape[0]} rows, f has {f.shape[0]}")
        w = mask.to(f.dtype)
        n_f = mask.sum().to(torch.float64)
        d = self.decay
        self.sum_forget.mul_(d).add_((w @ f).to(torch.float64), alpha=1 - d)
        self.sum_retain.mul_(d).add_(((1 - w) @ f).to(torch.float64), alpha=1 - d)
        self.n_forget.mul_(d).add_(n_f, alpha=1 - d)
        self.n_retain.mul_(d).add_(mask.numel() - n_f, alpha=1 - d)

    def mass(self) -> Tensor:
        """m_forget + m_retain per feature: activation mass per row (0 before rows are seen)."""
        return (self.sum_forget / self.n_forget.clamp_min(1e-12)) + (self.sum_retain / self.n_retain.clamp_min(1e-12))

    def forget_share(self) -> Tensor | None:
        """r_i per feature (nan where the feature has no mass); None before both row kinds are seen."""
        if self.n_forget.item() <= 0 or self.n_retain.item() <= 0:
            return None
        return forget_share(self.sum_forget / self.n_forget, self.sum_retain / self.n_retain)


def forget_share(forget_mass: Tensor, retain_mass: Tensor) -> Tensor:
    """The forget share r_i = m_forget,i / (m_forget,i + m_retain,i) per feature (``[eval.unlearning]
    references``' "forget_share" ranks by it); nan where both are 0."""
    tot = forget_mass + retain_mass
    return torch.where(
        tot > 0, forget_mass / torch.where(tot > 0, tot, torch.ones_like(tot)), torch.full_like(tot, math.nan)
    )


def assign_groups(
    r: Tensor | None,
    groups: Tensor,
    n_groups: int,
    *,
    mass: Tensor | None = None,
    min_mass: float = 0.0,
    margin: float = 0.0,
) -> Tensor:
    """New group per feature: the bin of its forget share r in G equal bins of [0, 1]. A feature
    keeps its current group (``groups``) where r is nan (no mass), where ``mass`` < ``min_mass``, or
    where r lies within ``margin`` of its current bin."""
    if r is None:
        return groups.clone()
    r = r.to(groups.device)
    bins = torch.clamp(torch.floor(r.nan_to_num(0.0) * n_groups), 0, n_groups - 1).to(groups.dtype)
    lo, hi = groups.to(r.dtype) / n_groups - margin, (groups.to(r.dtype) + 1) / n_groups + margin
    keep = torch.isnan(r) | (bins == groups) | ((margin > 0) & (r > lo) & (r < hi))
    if mass is not None:
        keep |= mass.to(r.device) < min_mass
    return torch.where(keep, groups, bins)


def _svdvals_per_group(W: Tensor, groups: Tensor, n_groups: int) -> list[Tensor | None]:
    out: list[Tensor | None] = []
    for idx in group_indices(groups, n_groups):
        if len(idx) == 0:
            out.append(None)
        else:
            # Singular values via eigvalsh of the smaller float64 Gram, far cheaper than an SVD of a
            # wide group; squaring the spectrum costs accuracy only beyond cond ~1e6 in float64.
            A = W[idx].detach().to(torch.float64)
            G = gram(A.T) if A.shape[0] <= A.shape[1] else gram(A)
            out.append(torch.linalg.eigvalsh(G).clamp_min(0).sqrt().flip(0))
    return out


@torch.no_grad()
def max_cosine(A: Tensor, B: Tensor | None = None, *, absolute: bool = False, block: int = 1024) -> Tensor:
    """Per row of ``A``, the largest cosine with a row of ``B`` (default: another row of A), in row
    blocks so no n × n matrix is held. ``absolute``: largest |cos|. SAEBench's
    ``calculate_max_cosine_sim`` is ``max_cosine(W)`` (signed, self excluded)."""
    An = A / A.norm(dim=1, keepdim=True).clamp_min(1e-12)
    Bn = An if B is None else B / B.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.empty(An.shape[0], dtype=An.dtype, device=An.device)
    for start in range(0, An.shape[0], block):
        C = An[start : start + block] @ Bn.T
        if absolute:
            C = C.abs()
        if B is None:  # a row is not its own neighbour
            rows = torch.arange(C.shape[0], device=C.device)
            C[rows, rows + start] = -math.inf
        out[start : start + block] = C.max(dim=1).values
    return out


@dataclass(frozen=True)
class GroupHealth:
    """Per group (lists of length G): size, condition number, effective-rank fraction, max |cos|."""

    sizes: list[int]
    cond: list[float]
    eff_rank: list[float]  # exp(entropy of σ/Σσ)
    eff_rank_frac: list[float]  # eff_rank / min(n_g, d_model)
    max_cos: list[float]  # largest |cos| between two features of the group


@torch.no_grad()
def group_health(W: Tensor, groups: Tensor, n_groups: int) -> GroupHealth:
    """Health of each group of ``W [d_sae, d_model]`` (rows = directions), from one spectrum per
    group (the spectra are the expensive part) and one blockwise cosine pass."""
    sizes, conds, ranks, fracs, coss = [], [], [], [], []
    for idx, s in zip(group_indices(groups, n_groups), _svdvals_per_group(W, groups, n_groups)):
        sizes.append(len(idx))
        if s is None:
            conds.append(math.nan), ranks.append(math.nan), fracs.append(math.nan), coss.append(math.nan)
            continue
        smin, smax = s[-1].item(), s[0].item()
        conds.append(math.inf if smin == 0.0 else smax / smin)
        if s.sum() == 0:
            rank = math.nan
        else:
            p = s / s.sum()
            p = p[p > 0]
            rank = math.exp(-(p * p.log()).sum().item())
        ranks.append(rank)
        fracs.append(rank / min(len(idx), W.shape[1]))
        coss.append(max_cosine(W[idx].detach().float(), absolute=True).max().item() if len(idx) > 1 else 0.0)
    return GroupHealth(sizes=sizes, cond=conds, eff_rank=ranks, eff_rank_frac=fracs, max_cos=coss)


@dataclass(frozen=True)
class RegroupReport:
    """What one regroup did: features moved, and each group's health afterwards."""

    step: int
    n_moved: int
    health: GroupHealth

    @property
    def empty_groups(self) -> list[int]:
        return [g for g, n in enumerate(self.health.sizes) if n == 0]


def stop_reason(health: GroupHealth, stop_eff_rank: float, stop_max_cos: float) -> str | None:
    """Why the groups count as degenerate (size-independent measures), or None. Empty groups are
    not degenerate here: the Trainer warns about them."""
    for g, (frac, cos) in enumerate(zip(health.eff_rank_frac, health.max_cos)):
        if not math.isnan(frac) and frac < stop_eff_rank:
            return f"group {g} effective rank {frac:.3f} of min(n_g, d_model) < stop_eff_rank {stop_eff_rank:g}"
        if not math.isnan(cos) and cos >= stop_max_cos:
            return f"group {g} holds two features at |cos| {cos:.4f} >= stop_max_cos {stop_max_cos:g}"
    return None
