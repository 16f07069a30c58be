"""The baseline SAE: SAELens' own architectures, no L_ortho.

Inference and training forward are the shared base's (``base.py``: ``encode``, linear ``decode``,
``training_forward`` with no L_ortho term). Its export is a plain SAELens SAE, loaded by
``sae_lens.SAE.load_from_disk`` with SAELens' own class: "standard" for ``activation = "relu"``,
"topk" (with ``k``) for topk, "jumprelu" (with the learned ``threshold``) for batchtopk, which is
how SAELens itself saves BatchTopK SAEs for inference. The fixed-orthogonal SAE exports the same way.
"""

from __future__ import annotations

import torch

from .base import SAE, require_uniform_norms


class BaselineSAE(SAE):
    """ReLU / TopK / BatchTopK SAE (SAELens "standard" / "topk" / "jumprelu": ``SAELENS_BY_ACTIVATION``,
    common/variants.py)."""


@torch.no_grad()
def fold_sae_lens_decoder_norms(sae) -> None:
    """``sae.fold_W_dec_norm()`` of a loaded SAELens object; for a "topk" export (decoder norms
    uniform, 1/scale) the plain fold, which SAELens' ``TopKSAE`` refuses without
    ``rescale_acts_by_decoder_norm`` because non-uniform norms would change which k features win; a
    uniform scale cannot, so it is checked and done."""
    arch = sae.cfg.architecture() if callable(sae.cfg.architecture) else sae.cfg.architecture
    if arch != "topk":
        sae.fold_W_dec_norm()
        return
    require_uniform_norms(sae.get_W_dec_norm())
    sae.fold_and_get_W_dec_norm()
