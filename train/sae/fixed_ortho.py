"""Fixed orthogonal SAE: baseline + λ2 · L_ortho with a constant λ2 and FIXED groups.

Groups are an equal split of the features into ``n_groups`` contiguous blocks (feature i belongs
to group ``i * G // d_sae``); they never move, are not data-driven, and are not saved (a
non-persistent buffer ``block_groups`` recomputed from ``n_groups``), so the export is a plain
SAELens "standard" SAE. Per docs/architecture.md only the grouped SAE has a ``groups`` attribute;
``penalty_groups()`` is what L_ortho uses in either variant.

``ortho_weights`` picks the directions penalised: "decoder" (rows of W_dec, unit norm, so W_gᵀW_h
holds cosines) or "encoder" (columns of W_enc, not normalised).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SAE
from .ortho import contiguous_groups, ortho_loss

ORTHO_WEIGHTS = ("decoder", "encoder")


class FixedOrthoSAE(SAE):
    architecture = "standard"
    run_type = "fixed"

    def __init__(self, d_model, d_sae, *, lambda2: float, alpha: float = 0.0, n_groups: int = 2,
                 ortho_weights: str = "decoder", **base_kwargs):
        super().__init__(d_model, d_sae, **base_kwargs)
        if ortho_weights not in ORTHO_WEIGHTS:
            raise ValueError(f"ortho_weights must be one of {ORTHO_WEIGHTS}; got {ortho_weights!r}")
        self.lambda2, self.alpha, self.n_groups = float(lambda2), float(alpha), int(n_groups)
        self.ortho_weights = ortho_weights
        self.register_buffer("block_groups", contiguous_groups(self.d_sae, self.n_groups, self.W_dec.device), persistent=False)

    def lambda2_at(self, step: int) -> float:
        return self.lambda2

    def penalty_groups(self) -> Tensor:
        """Group id per feature used by L_ortho (fixed contiguous blocks here)."""
        return self.block_groups

    def directions(self) -> Tensor:
        """Feature directions as rows ``[d_sae, d_model]`` (what L_ortho and condition numbers use)."""
        return self.W_dec if self.ortho_weights == "decoder" else self.W_enc.T

    def ortho_penalty(self, step: int) -> tuple[Tensor, float]:
        lam2 = self.lambda2_at(step)
        with torch.set_grad_enabled(torch.is_grad_enabled() and lam2 != 0.0):
            loss = ortho_loss(self.directions(), self.penalty_groups(), self.n_groups, self.alpha)
        return loss, lam2

    def hyperparams(self) -> dict:
        return {**super().hyperparams(), "lambda2": self.lambda2, "alpha": self.alpha,
                "n_groups": self.n_groups, "ortho_weights": self.ortho_weights}
