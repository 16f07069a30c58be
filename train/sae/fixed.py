"""Fixed orthogonal SAE: the baseline + λ2·L_ortho between FIXED feature groups (constant λ2).

Groups are an equal split of the features into ``[train.ortho] groups`` contiguous blocks (feature
i belongs to group ``i * G // d_sae``, ``ortho.contiguous_groups``); they never move, are not
data-driven, and are not saved (``groups`` is a non-persistent buffer), so the export is a plain
SAELens SAE, as the baseline's (``baseline.py``).

The training forward is the shared base's (``base.py``) with its L_ortho term over ``groups``
(``ortho.py``); ``[train.ortho] weights`` picks the directions penalised: "decoder" (rows of W_dec,
unit norm, so W_gᵀW_h holds cosines) or "encoder" (columns of W_enc, not normalised). λ2 and its
lazy weight are the Trainer's (``train/trainer.py``).
"""

from __future__ import annotations

from . import ortho
from .baseline import BaselineSAE


class FixedOrthoSAE(BaselineSAE):
    def __init__(self, d_model, run, **kwargs):
        super().__init__(d_model, run, **kwargs)
        self.n_groups = int(run.ortho.groups)
        self.register_buffer(
            "groups", ortho.contiguous_groups(self.d_sae, self.n_groups, self.W_dec.device), persistent=False
        )
