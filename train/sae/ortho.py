"""Inter-group orthogonality penalty L_ortho.

    L_ortho = Σ_{g<h} ||W_gᵀ W_h − α I||_F

``W`` is passed as ``[d_sae, d_model]`` with one feature direction per ROW (that is ``W_dec`` as
stored, or ``W_enc.T``); ``W_g`` in the formula is the ``d_model × n_g`` matrix whose columns are
the rows ``W[groups == g]`` in ascending feature index. ``I`` is the rectangular ``n_g × n_h``
identity, so ``α`` pairs the i-th feature of g with the i-th feature of h (by feature index);
with the default α = 0 this pairing is irrelevant.

Gram rewrite (never forms ``n_g × n_h`` or ``d_sae × d_sae``), with A = W_g, B = W_h:

    ||AᵀB − αI||²_F = tr((AAᵀ)(BBᵀ)) − 2α Σ_{i<m} a_i·b_i + α² m,   m = min(n_g, n_h)

``AAᵀ`` is ``d_model × d_model``; the pair's term is ``sqrt(max(s, 0) + eps) − sqrt(eps)``
(eps = 1e-12): finite gradient at s = 0, an orthogonal pair costs exactly 0, and any other pair is
off by at most sqrt(eps) = 1e-6. The naive path uses the same eps, so both agree to rounding in
value and gradient. Pairs where either group is empty contribute exactly 0 (both paths).
Cost: O(d_sae·d_model²) for the Grams plus O(G²·d_model²), memory O(G·d_model²). The Gram's
backward is one matmul (``_Gram``) instead of autograd's two for ``AᵀA``: a third off L_ortho.
Lazy application (``every`` > 1, StyleGAN2's lazy regularisation) is the Trainer's schedule
(``train/trainer.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-12


class _Gram(torch.autograd.Function):
    """G = AᵀA with the backward dA = A(dG + dGᵀ): one matmul where autograd would run two."""

    @staticmethod
    def forward(ctx, A: Tensor) -> Tensor:
        ctx.save_for_backward(A)
        return A.T @ A

    @staticmethod
    def backward(ctx, dG: Tensor) -> Tensor:
        (A,) = ctx.saved_tensors
        return A @ (dG + dG.T)


def gram(A: Tensor) -> Tensor:
    """``AᵀA`` (``[d_model, d_model]`` for rows ``A [n, d_model]``), differentiable."""
    return _Gram.apply(A)


def group_indices(groups: Tensor, n_groups: int) -> list[Tensor]:
    """Feature indices of each group, ascending (empty tensor for an empty group)."""
    return [torch.nonzero(groups == g, as_tuple=True)[0] for g in range(n_groups)]


def ortho_loss(
    W: Tensor,
    groups: Tensor,
    n_groups: int,
    alpha: float = 0.0,
    naive: bool = False,
    eps: float = EPS,
) -> Tensor:
    """Σ_{g<h} ||W_gᵀW_h − αI||_F for ``W [d_sae, d_model]`` (rows = feature directions).

    ``groups``: LongTensor ``[d_sae]`` with values in ``0..n_groups-1``. ``naive=True`` forms the
    ``n_g × n_h`` matrices explicitly (reference implementation for tests only).
    """
    if W.ndim != 2 or groups.shape != (W.shape[0],):
        raise ValueError(f"ortho_loss: W must be [d_sae, d_model] and groups [d_sae]; got {tuple(W.shape)}, {tuple(groups.shape)}")
    idx = group_indices(groups, n_groups)
    total = W.new_zeros(())
    if naive:
        for g in range(n_groups):
            for h in range(g + 1, n_groups):
                if len(idx[g]) == 0 or len(idx[h]) == 0:
                    continue
                M = W[idx[g]] @ W[idx[h]].T  # [n_g, n_h]
                M = M - alpha * torch.eye(M.shape[0], M.shape[1], dtype=W.dtype, device=W.device)
                total = total + (torch.sqrt(M.pow(2).sum().clamp_min(0) + eps) - eps**0.5)
        return total

    grams = [gram(W[i]) if len(i) else None for i in idx]  # each [d_model, d_model]
    for g in range(n_groups):
        for h in range(g + 1, n_groups):
            if grams[g] is None or grams[h] is None:
                continue
            s = (grams[g] * grams[h]).sum()  # tr(G_g G_h); Grams are symmetric
            if alpha != 0.0:
                m = min(len(idx[g]), len(idx[h]))
                diag = (W[idx[g][:m]] * W[idx[h][:m]]).sum()
                s = s - 2.0 * alpha * diag + alpha * alpha * m
            total = total + (torch.sqrt(s.clamp_min(0) + eps) - eps**0.5)
    return total


def contiguous_groups(d_sae: int, n_groups: int, device: torch.device | str = "cpu") -> Tensor:
    """Fixed equal split into ``n_groups`` contiguous blocks: feature i -> ``i * G // d_sae``."""
    if not 1 <= n_groups <= d_sae:
        raise ValueError(f"n_groups must be in 1..d_sae ({d_sae}); got {n_groups}")
    return (torch.arange(d_sae, device=device) * n_groups) // d_sae
