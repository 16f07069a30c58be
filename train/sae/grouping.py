"""Feature-group statistics, the regrouping rule, and group health (condition numbers).

Statistics (``GroupStats``, updated once per optimiser step with the step's detached activations):
exponential moving averages, decay ``d`` per step (default 0.99), of

    S_forget[i] = Σ_{forget rows} f_i     N_forget = number of forget rows
    S_retain[i] = Σ_{retain rows} f_i     N_retain = number of retain rows

Each feature's mass per row is ``m_forget_i = S_forget[i] / N_forget`` (same for retain). Sums and
counts share one decay, so their ratio is an exponentially weighted per-row mean that needs no
bias correction and is correct when the forget share varies between batches.

Regrouping rule (``assign_groups``), every ``regroup_every`` steps:

    r_i = m_forget_i / (m_forget_i + m_retain_i)  ∈ [0, 1]
    g_i = min(floor(r_i · G), G − 1)           (G equal-width bins of [0, 1])

so group G−1 is the most forget-specific; for G = 2, r ≥ 0.5 → group 1 (forget-leaning), else 0.
Features with no mass (m_forget + m_retain = 0: dead so far) keep their group. If no forget row
or no retain row has been seen yet, r is undefined and every feature keeps its group.

Health: ``group_health`` returns, from one spectrum per group, the condition number σ_max/σ_min of
each group's ``d_model × n_g`` direction matrix (σ_min = the min(d_model, n_g)-th singular value;
inf when it is 0; empty group → nan; one-feature group → 1) and its effective rank exp(entropy of
σ/Σσ) (empty → nan, one feature → 1). ``should_stop`` is true once any group's condition number
exceeds ``cond_max`` (nan ignored, inf counts): the grouped subspace has degenerated.
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

    def forget_ratio(self) -> Tensor | None:
        """r_i per feature (nan where the feature has no mass); None before both row kinds are seen."""
        if self.n_forget.item() <= 0 or self.n_retain.item() <= 0:
            return None
        return forget_share(self.sum_forget / self.n_forget, self.sum_retain / self.n_retain)


def forget_share(forget_mass: Tensor, retain_mass: Tensor) -> Tensor:
    """r_i = m_forget,i / (m_forget,i + m_retain,i) per feature; nan where both are 0."""
    tot = forget_mass + retain_mass
    return torch.where(tot > 0, forget_mass / torch.where(tot > 0, tot, torch.ones_like(tot)),
                       torch.full_like(tot, math.nan))


def assign_groups(r: Tensor | None, current: Tensor, n_groups: int) -> Tensor:
    """New group per feature: bin of r in G equal bins of [0, 1]; nan r (no mass) keeps ``current``."""
    if r is None:
        return current.clone()
    bins = torch.clamp(torch.floor(r.nan_to_num(0.0) * n_groups), 0, n_groups - 1).to(current.dtype)
    return torch.where(torch.isnan(r).to(current.device), current, bins.to(current.device))


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
def group_health(W: Tensor, groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """(σ_max/σ_min, exp(entropy of σ/Σσ)) per group of ``W [d_sae, d_model]`` (rows = directions),
    each float64 ``[G]``, from one spectrum per group (the spectra are the expensive part)."""
    conds, ranks = [], []
    for s in _svdvals_per_group(W, groups, n_groups):
        if s is None:
            conds.append(math.nan)
            ranks.append(math.nan)
            continue
        smin, smax = s[-1].item(), s[0].item()
        conds.append(math.inf if smin == 0.0 else smax / smin)
        if s.sum() == 0:
            ranks.append(math.nan)
        else:
            p = s / s.sum()
            p = p[p > 0]
            ranks.append(math.exp(-(p * p.log()).sum().item()))
    return torch.tensor(conds, dtype=torch.float64), torch.tensor(ranks, dtype=torch.float64)


@dataclass(frozen=True)
class RegroupReport:
    """What one regroup did: features moved, the new group sizes, and each group's health."""
    step: int
    n_moved: int
    group_sizes: list[int]
    cond: list[float]  # σ_max/σ_min per group (decoder or encoder directions, as L_ortho uses)
    eff_rank: list[float]


def should_stop(conds: Tensor | list[float], cond_max: float) -> bool:
    """True when any group's condition number exceeds ``cond_max`` (nan ignored, inf counts)."""
    c = torch.as_tensor(conds, dtype=torch.float64)
    c = c[~torch.isnan(c)]
    return bool((c > cond_max).any().item()) if c.numel() else False
