"""SAE variants, one file per architecture keyed by run type (SAELens' ``saes/`` shape):
``baseline.py``, ``fixed.py``, ``adaptive.py`` on the shared ``base.py``; L_ortho in ``ortho.py``;
feature-group statistics, regrouping and health in ``grouping.py`` (see docs/architecture.md)."""

from __future__ import annotations

import torch

from orthosae.common.config import RunConfig

from .adaptive import AdaptiveOrthoSAE, bias_mix, grouped_decode
from .base import SAE, Coefficients, TrainOutput, fold_decoder_norms, is_grouped
from .baseline import BaselineSAE
from .fixed import FixedOrthoSAE
from .grouping import GroupHealth, GroupStats, RegroupReport, assign_groups, group_health, max_cosine, stop_reason
from .ortho import contiguous_groups, ortho_loss

SAE_CLASSES: dict[str, type[SAE]] = {
    "baseline": BaselineSAE,
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
    "SAE", "BaselineSAE", "Coefficients", "TrainOutput", "FixedOrthoSAE", "AdaptiveOrthoSAE", "SAE_CLASSES",
    "make_sae", "is_grouped", "fold_decoder_norms", "ortho_loss", "contiguous_groups", "GroupStats",
    "RegroupReport", "assign_groups", "group_health", "GroupHealth", "max_cosine", "stop_reason", "bias_mix",
    "grouped_decode",
]
