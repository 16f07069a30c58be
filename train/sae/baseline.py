"""Baseline: the plain ReLU SAE of ``base.SAE`` (recon + λ1·sparse, unit-norm decoder rows)."""

from __future__ import annotations

from .base import SAE


class BaselineSAE(SAE):
    architecture = "standard"
    run_type = "baseline"
