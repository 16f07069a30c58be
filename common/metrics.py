"""Explained variance, defined once for training logs and eval reports.

``1 − E‖x−x̂‖² / Σ_d Var(x_d)``: the corrected definition (SAELens after its fix). Eval reports it
over all held-out rows as ``explained_variance``; training logs it per batch as ``ev_batch``.
"""

from __future__ import annotations


def explained_variance(mse: float, total_variance: float) -> float:
    """``1 − mse / total_variance``, with SAELens' guard for (near-)constant inputs."""
    if total_variance < 1e-10:
        return 1.0 if mse < 1e-10 else 0.0
    return 1.0 - mse / total_variance
