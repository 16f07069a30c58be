"""SAE variants, one file per architecture (SAELens' ``saes/`` shape): ``baseline.py``, ``fixed.py``,
``adaptive.py`` on the shared ``base.py``, each declared by one line of the variant table
(``common/variants.py``), which names its class; L_ortho in ``ortho.py``; feature-group statistics,
regrouping and health in ``grouping.py`` (see docs/architecture.md)."""

from __future__ import annotations

import importlib

import torch

from orthosae.common.config import RunConfig

from .adaptive import AdaptiveOrthoSAE, bias_mix, grouped_decode
from .base import SAE, Coefficients, TrainOutput, fold_decoder_norms, is_grouped
from .baseline import BaselineSAE
from .fixed import FixedOrthoSAE
from .grouping import GroupHealth, GroupStats, RegroupReport, assign_groups, group_health, max_cosine, stop_reason
from .ortho import contiguous_groups, ortho_loss


def sae_class(run: RunConfig) -> type[SAE]:
    """The SAE class the variant table names for ``run.type`` (``Variant.sae_class``, "module:Class")."""
    module, _, name = run.variant.sae_class.partition(":")
    return getattr(importlib.import_module(module), name)


def make_sae(
    run: RunConfig, d_model: int, *, dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu"
) -> SAE:
    """The SAE variant of ``run.type`` (common/variants.py), built from the run's config."""
    return sae_class(run)(d_model, run, dtype=dtype, device=device)


__all__ = [
    "SAE",
    "BaselineSAE",
    "Coefficients",
    "TrainOutput",
    "FixedOrthoSAE",
    "AdaptiveOrthoSAE",
    "sae_class",
    "make_sae",
    "is_grouped",
    "fold_decoder_norms",
    "ortho_loss",
    "contiguous_groups",
    "GroupStats",
    "RegroupReport",
    "assign_groups",
    "group_health",
    "GroupHealth",
    "max_cosine",
    "stop_reason",
    "bias_mix",
    "grouped_decode",
]
