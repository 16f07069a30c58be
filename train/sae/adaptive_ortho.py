"""Grouped adaptive-orthogonal SAE (the method). What it adds to ``FixedOrthoSAE``:

1. Learned groups: a persistent buffer ``groups [d_sae]`` (saved and exported), the fixed
   contiguous split until the Trainer's first regroup (rule in ``grouping.py``; λ2(t) and the
   regroup schedule are the Trainer's, ``train/trainer.py``).
2. Group-specific decoder biases with shared weights: parameter ``group_bias [G, d_model]``
   (init 0). Per token, x̂ = f @ W_dec + b_dec + Σ_g π_g · group_bias[g], with
   π_g = m_g / (Σ_h m_h + τ), m_g = Σ_{i∈g} f_i (``[train.ortho] tau``). τ makes π continuous:
   without it a token whose only activation is 1e-9 got the whole bias of that group, and
   ∂x̂/∂f ∝ 1/Σf exploded on near-silent tokens; with it π → 0 smoothly and the gradient is at most
   ‖group_bias‖/τ. ``b_dec`` stays shared because it also centres the encoder input, which cannot
   depend on the groups. τ is in activation units: folding a uniform decoder norm c into the
   encoder scales f by c, so ``tau`` (a buffer, exported) scales with it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .fixed_ortho import FixedOrthoSAE
from .ortho import group_onehot


def require_uniform_norms(norms: Tensor) -> None:
    """Folding decoder norms into the encoder rescales f per feature; π is invariant only under a
    uniform scale, so a grouped SAE with non-uniform decoder norms cannot be folded (nor a TopK SAE,
    whose choice of the k largest would change)."""
    if not torch.allclose(norms, norms.mean().expand_as(norms), rtol=1e-3):
        raise ValueError("folding non-uniform decoder norms would change the group shares π "
                         "(orthosae_grouped) or the TopK choice (topk)")


def group_shares(f: Tensor, groups: Tensor, n_groups: int, *, nonneg: bool = False, tau: float | Tensor = 0.0) -> Tensor:
    """π ``[..., G]``: m_g / (Σm + τ) per token (τ = 0: the plain share, 0 where no feature fires).

    Mass counts only positive activations: an intervention that clamps features to −m (SAEBench's
    unlearning) must not turn π into huge or negative weights of the group biases. ``nonneg=True``
    says f came straight from the ReLU encoder, which skips that clamp (a full [batch, d_sae] pass
    forward and backward). The mass is a matmul with the one-hot group matrix: on CPU it is about
    twice as fast as ``index_add`` over the feature axis, forward plus backward.
    """
    onehot = group_onehot(groups, n_groups, f.dtype)
    mass = (f if nonneg else f.clamp_min(0)) @ onehot
    tot = mass.sum(dim=-1, keepdim=True) + tau
    return mass / torch.where(tot > 0, tot, torch.ones_like(tot))


def grouped_decode(f: Tensor, groups: Tensor, group_bias: Tensor, tau: float | Tensor,
                   linear: Callable[[Tensor], Tensor], *, nonneg: bool = False,
                   shares_from: Tensor | None = None) -> Tensor:
    """x̂ = linear(f) + Σ_g π_g·group_bias[g] per token, where ``linear(f) = f @ W_dec + b_dec``.
    One definition for training and for the SAELens class of the export (``train/export.py``).

    ``shares_from``: compute π from these activations instead of f. An intervention that clamps
    features passes the unclamped ones, so it edits the features alone and does not also remove
    the clamped group's bias (a second intervention a plain SAE would not get)."""
    pi = group_shares(f if shares_from is None else shares_from, groups, group_bias.shape[0],
                      nonneg=nonneg and shares_from is None, tau=tau)
    return linear(f) + pi @ group_bias


class AdaptiveOrthoSAE(FixedOrthoSAE):
    grouped = True

    def __init__(self, d_model, run, **kwargs):
        super().__init__(d_model, run, **kwargs)
        self.register_buffer("groups", self.block_groups.clone())  # learned, persistent
        self.group_bias = nn.Parameter(torch.zeros(self.n_groups, self.d_model, dtype=self.dtype, device=self.device))
        self.register_buffer("tau", torch.tensor(float(run.ortho.tau), dtype=self.dtype, device=self.device))

    def penalty_groups(self) -> Tensor:
        return self.groups

    def decode(self, f: Tensor, *, nonneg: bool = False, shares_from: Tensor | None = None) -> Tensor:
        return grouped_decode(f, self.groups, self.group_bias, self.tau, super().decode, nonneg=nonneg,
                              shares_from=shares_from)
