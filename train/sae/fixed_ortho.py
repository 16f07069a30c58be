"""Fixed orthogonal SAE: the baseline + λ2·L_ortho between FIXED feature groups (constant λ2).

Groups are an equal split of the features into ``[train.ortho] groups`` contiguous blocks (feature
i belongs to group ``i * G // d_sae``); they never move, are not data-driven, and are not saved (a
non-persistent buffer), so the export is a plain SAELens "standard" SAE.

``[train.ortho] weights`` picks the directions penalised: "decoder" (rows of W_dec, unit norm, so
W_gᵀW_h holds cosines) or "encoder" (columns of W_enc, not normalised). λ2 and its lazy weight are
the Trainer's (``train/trainer.py``); this class only says what L_ortho is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ortho
from .base import SAE


class FixedOrthoSAE(SAE):
    def __init__(self, d_model, run, **kwargs):
        super().__init__(d_model, run, **kwargs)
        self.n_groups = int(run.ortho.groups)
        self.register_buffer("block_groups", ortho.contiguous_groups(self.d_sae, self.n_groups, self.W_dec.device),
                             persistent=False)

    def penalty_groups(self) -> Tensor:
        """Group id per feature used by L_ortho (fixed contiguous blocks here)."""
        return self.block_groups

    def directions(self) -> Tensor:
        """Feature directions as rows ``[d_sae, d_model]`` (what L_ortho and condition numbers use)."""
        return self.W_dec if self.cfg.ortho.weights == "decoder" else self.W_enc.T

    def ortho_loss(self, activity: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """L_ortho; ``activity`` ([d_sae] activation mass of the batch) weighs the pairs when
        ``[train.ortho] weighting = "activity"``; ``generator`` draws the sketch (``sketch`` > 0)."""
        o = self.cfg.ortho
        weights = activity if o.weighting == "activity" else None
        return ortho.ortho_loss(self.directions(), self.penalty_groups(), self.n_groups, o.alpha, o.alpha_mode,
                                weights=weights, sketch=o.sketch, generator=generator, index=self.group_index(),
                                gram_dtype=o.gram_dtype)

    def group_index(self) -> list:
        """Each group's feature indices, recomputed only when the groups change (a regroup, a load):
        ``nonzero`` per group per step would read sizes back to the host on every step."""
        groups = self.penalty_groups()
        key = (groups.data_ptr(), groups._version)
        if getattr(self, "_index_key", None) != key:
            self._index, self._index_key = ortho.group_indices(groups, self.n_groups), key
        return self._index
