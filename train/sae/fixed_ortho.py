"""Fixed orthogonal SAE: baseline + λ2 · L_ortho with a constant λ2 and FIXED groups.

Groups are an equal split of the features into ``n_groups`` contiguous blocks (feature i belongs
to group ``i * G // d_sae``); they never move, are not data-driven, and are not saved (a
non-persistent buffer ``block_groups`` recomputed from ``n_groups``), so the export is a plain
SAELens "standard" SAE. Per docs/architecture.md only the grouped SAE has a ``groups`` attribute;
``penalty_groups()`` is what L_ortho uses in either variant.

``ortho_weights`` picks the directions penalised: "decoder" (rows of W_dec, unit norm, so W_gᵀW_h
holds cosines) or "encoder" (columns of W_enc, not normalised).

``ortho_every`` = k > 1 applies L_ortho lazily (StyleGAN2's lazy regularisation): on steps with
``step % k == 0`` the loss gets k·λ2(t)·L_ortho, on the others nothing, so the penalty's average
weight is unchanged while its O(d_sae·d_model²) cost is paid once per k steps. The logged
``ortho`` term is always the most recent value and ``lambda2`` the nominal λ2(t). With Adam this
is an approximation of the every-step loss (the update normalises gradient scale), so k = 1 is
the default; BENCHMARKS.md measures what k = 4 costs in orthogonality at 640×2048.
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
                 ortho_weights: str = "decoder", ortho_every: int = 1, **base_kwargs):
        super().__init__(d_model, d_sae, **base_kwargs)
        if ortho_weights not in ORTHO_WEIGHTS:
            raise ValueError(f"ortho_weights must be one of {ORTHO_WEIGHTS}; got {ortho_weights!r}")
        if int(ortho_every) < 1:
            raise ValueError(f"ortho_every must be >= 1; got {ortho_every}")
        self.ortho_every = int(ortho_every)
        self._last_ortho: Tensor | None = None  # logged on steps the lazy penalty skips
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

    def _ortho_value(self) -> Tensor:
        return ortho_loss(self.directions(), self.penalty_groups(), self.n_groups, self.alpha)

    def ortho_penalty(self, step: int) -> tuple[Tensor, float, float]:
        """(L_ortho, nominal λ2(step), weight applied in the loss this step)."""
        lam2 = self.lambda2_at(step)
        if step % self.ortho_every != 0:
            if self._last_ortho is None:  # resumed on a skipped step: a value for the log only
                with torch.no_grad():
                    self._last_ortho = self._ortho_value()
            return self._last_ortho, lam2, 0.0
        with torch.set_grad_enabled(torch.is_grad_enabled() and lam2 != 0.0):
            loss = self._ortho_value()
        self._last_ortho = loss.detach()
        return loss, lam2, lam2 * self.ortho_every

    def hyperparams(self) -> dict:
        return {**super().hyperparams(), "lambda2": self.lambda2, "alpha": self.alpha,
                "n_groups": self.n_groups, "ortho_weights": self.ortho_weights, "ortho_every": self.ortho_every}
