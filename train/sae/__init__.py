"""SAE variants: baseline, fixed-orthogonal and grouped adaptive-orthogonal (see docs/architecture.md)."""

from __future__ import annotations

import torch

from common.config import RunConfig

from .adaptive_ortho import AdaptiveOrthoSAE, grouped_decode, group_shares
from .base import SAE, Coefficients, TrainOutput, is_grouped
from .fixed_ortho import FixedOrthoSAE
from .grouping import GroupHealth, GroupStats, RegroupReport, assign_groups, group_health, max_cosine, stop_reason
from .ortho import contiguous_groups, ortho_loss

SAE_CLASSES: dict[str, type[SAE]] = {
    "baseline": SAE,
    "fixed": FixedOrthoSAE,
    "adaptive": AdaptiveOrthoSAE,
}


def make_sae(run: RunConfig, d_model: int, *, dtype: torch.dtype | str = torch.float32,
             device: torch.device | str = "cpu") -> SAE:
    """The SAE variant of ``run.type`` ("baseline", "fixed" or "adaptive"), built from the run's config."""
    try:
        cls = SAE_CLASSES[run.type]
    except KeyError:
        raise ValueError(f"unknown run type {run.type!r}; expected one of {', '.join(SAE_CLASSES)}") from None
    return cls(d_model, run, dtype=dtype, device=device)


__all__ = [
    "SAE", "Coefficients", "TrainOutput", "FixedOrthoSAE", "AdaptiveOrthoSAE", "SAE_CLASSES", "make_sae",
    "is_grouped", "ortho_loss", "contiguous_groups", "GroupStats", "RegroupReport", "assign_groups",
    "group_health", "GroupHealth", "max_cosine", "stop_reason", "group_shares", "grouped_decode",
]
