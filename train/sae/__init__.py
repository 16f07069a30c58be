"""SAE variants: baseline, fixed-orthogonal and grouped adaptive-orthogonal (see docs/architecture.md)."""

from __future__ import annotations

from .adaptive_ortho import AdaptiveOrthoSAE, group_shares
from .base import SAE, LossOutput
from .baseline import BaselineSAE
from .fixed_ortho import FixedOrthoSAE
from .grouping import (
    GroupStats,
    assign_groups,
    group_health,
    should_stop,
)
from .ortho import contiguous_groups, ortho_loss

SAE_CLASSES: dict[str, type[SAE]] = {
    "baseline": BaselineSAE,
    "fixed": FixedOrthoSAE,
    "adaptive": AdaptiveOrthoSAE,
}


def make_sae(run_type: str, d_model: int, d_sae: int, **kwargs) -> SAE:
    """Build an SAE variant: run_type in {"baseline", "fixed", "adaptive"}.

    kwargs: all: l1_coefficient, seed, dtype, device; fixed: lambda2, alpha, n_groups, ortho_weights, ortho_every;
    adaptive: lambda2_max, t0, alpha, n_groups, ortho_weights, ortho_every, regroup_every, stats_decay.
    """
    try:
        cls = SAE_CLASSES[run_type]
    except KeyError:
        raise ValueError(f"unknown run_type {run_type!r}; expected one of {', '.join(SAE_CLASSES)}") from None
    return cls(d_model, d_sae, **kwargs)


__all__ = [
    "SAE", "LossOutput", "BaselineSAE", "FixedOrthoSAE", "AdaptiveOrthoSAE", "SAE_CLASSES", "make_sae",
    "ortho_loss", "contiguous_groups", "GroupStats", "assign_groups", "group_health",
    "should_stop", "group_shares",
]
