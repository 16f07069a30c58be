"""The inter-group orthogonality penalty L_ortho, in three forms (``[train.ortho] alpha_mode``).

``W`` is ``[d_sae, d_model]`` with one feature direction per ROW (``W_dec`` as stored, or
``W_enc.T``); ``W_g`` are the rows of group g. Sums run over group pairs g < h.

- ``"rms"`` (default): ``Σ d_model·relu(‖Ŵ_gᵀŴ_h‖²_F / (n_g·n_h) − α²)`` with Ŵ the unit-normalised
  rows, i.e. the groups' mean squared cosine beyond α², in units of its random level 1/d_model. α is the allowed RMS cosine between a feature of
  one group and a feature of another; random unit vectors in d_model dimensions sit at 1/√d_model
  (0.04 at d = 640, 0.02 at 2304), so α at or above that leaves random-looking groups alone and
  penalises only structured sharing. Through d_model × d_model Grams (never n_g × n_h).
- ``"hinge"``: ``Σ d_model·Σ_{i∈g, j∈h} relu(|cos_ij| − α)² / (n_g·n_h)``: every cross-group pair of
  features may share up to |cos| = α for free. Computed in row blocks so no n_g × n_h matrix is held whole.
- ``"seed"``: the prototype's ``‖W_gᵀW_h − αI‖_F`` (unsquared, unnormalised, raw rows). ``I`` is
  the rectangular n_g × n_h identity: α pairs the i-th feature of g with the i-th of h by feature
  INDEX, an arbitrary pairing that touches 1/n_g of the entries, so α barely moves it; kept only to
  reproduce the seed.

``[train.ortho] weighting = "activity"`` (default) weighs each pair of features by the product of
their activation mass in the step's batch: sharing is measured on the features the SAE uses, and
a rarely active feature is not pushed around by a penalty it cannot pay for with reconstruction
(uniform weighting drove such features into directions no data uses, where they died).

λ2 weighs a per-pair mean in "rms" and "hinge", in units of the random level 1/d_model: it
transfers across d_sae, and across d_model as L_recon does (activations are scaled to
E‖x‖² = d_model, so L_recon grows with d_model too). In "seed" λ2 weighs the raw Frobenius norm
(each entry weighted λ2/‖M‖, which shrinks as the SAE grows).

Seed-form Gram rewrite, with A = W_g, B = W_h:
``‖AᵀB − αI‖²_F = tr((AAᵀ)(BBᵀ)) − 2α Σ_{i<m} a_i·b_i + α² m``, m = min(n_g, n_h); the pair's
term is ``sqrt(max(s, 0) + eps) − sqrt(eps)`` (eps = 1e-12): finite gradient at s = 0, and an
orthogonal pair costs exactly 0. Pairs where either group is empty contribute exactly 0 (all forms).
Cost of the Gram forms: O(d_sae·d_model²) plus O(G²·d_model²); the Gram's backward is one matmul
(``_Gram``) instead of autograd's two for ``AᵀA``. The hinge costs O(n_g·n_h·d_model). Lazy
application (``every`` > 1) is the Trainer's schedule (``train/trainer.py``).

A sketched estimate of the rms form (k-row Gaussian sketches, unbiased but with a gradient many
times noisier than the exact one) trained badly and left the product: it lives beside its
measurement in ``bench/sketch_noise.py`` (docs/method-results.md, "The sketched L_ortho").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

EPS = 1e-12


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision`` inside the block only (it is process-global).

    "highest" keeps every float32 matmul in full fp32. "high" lets CUDA use TF32 (inputs rounded to
    a 10-bit mantissa, fp32 accumulation; about 3× the fp32 matmul rate on A100/H100): each encoder
    and decoder product then carries a relative error near 1e-3, well below the SAE's reconstruction
    error. The Trainer runs its step at ``[train] matmul_precision``; L_ortho is always computed at
    "highest" (here): the seed form's Gram rewrite subtracts nearly equal large terms
    (tr(G_gG_h) − 2α·Σa_i·b_i + α²·m), whose difference TF32's rounding would swamp; every form
    follows the one rule, so L_ortho never depends on the setting. The rms form's Grams have their
    own, explicit precision, ``[train.ortho] gram_dtype``: a sum of squares with nothing to cancel,
    so bfloat16 inputs cost accuracy only in proportion. On CPU, "high" leaves fp32 matmuls as they
    are (measured bit-identical with torch 2.13)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class _Gram(torch.autograd.Function):
    """G = AᵀA with the backward dA = A(dG + dGᵀ): one matmul where autograd would run two."""

    @staticmethod
    def forward(ctx, A: Tensor) -> Tensor:
        ctx.save_for_backward(A)
        return A.T @ A

    @staticmethod
    def backward(ctx, dG: Tensor) -> Tensor:
        (A,) = ctx.saved_tensors
        with matmul_precision("highest"):
            return A @ (dG + dG.T)


def gram(A: Tensor) -> Tensor:
    """``AᵀA`` (``[d_model, d_model]`` for rows ``A [n, d_model]``), differentiable."""
    return _Gram.apply(A)


def group_onehot(groups: Tensor, n_groups: int, dtype: torch.dtype) -> Tensor:
    """``[d_sae, G]`` membership matrix. Not ``F.one_hot``: it checks the ids' range on the host,
    a GPU sync on every training step."""
    return (groups.unsqueeze(1) == torch.arange(n_groups, device=groups.device)).to(dtype)


def group_indices(groups: Tensor, n_groups: int) -> list[Tensor]:
    """Feature indices of each group, ascending (empty tensor for an empty group)."""
    return [torch.nonzero(groups == g, as_tuple=True)[0] for g in range(n_groups)]


ALPHA_MODES = ("rms", "hinge", "seed")
GRAM_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: the weights' own dtype
HINGE_BLOCK = 2048  # rows of W_g per block: the hinge holds [block, n_h] at a time


def _positive(m: float | Tensor) -> float | Tensor:
    """A pair's weight Σw_g·Σw_h as a divisor: 0 (a weightless group, whose terms are 0) → 1."""
    return m if isinstance(m, float) else torch.where(m > 0, m, torch.ones_like(m))


def unit_rows(W: Tensor) -> Tensor:
    """Each row scaled to norm 1 (an all-zero row stays zero)."""
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def ortho_loss(
    W: Tensor,
    groups: Tensor,
    n_groups: int,
    alpha: float = 0.0,
    mode: str = "rms",
    eps: float = EPS,
    activity: Tensor | None = None,
    index: list[Tensor] | None = None,
    gram_dtype: str = "float32",
) -> Tensor:
    """L_ortho of ``W [d_sae, d_model]`` (rows = feature directions) in form ``mode``.

    ``groups``: LongTensor ``[d_sae]`` with values in ``0..n_groups-1``. ``activity`` (``[d_sae]``,
    ≥ 0, the batch's activation mass per feature; rms and hinge only): each pair (i, j) counts with
    weight w_i·w_j, and the mean divides by Σw_g·Σw_h, so a pair of groups with no activity
    contributes 0. ``index``: the groups' feature indices (``group_indices``), cached by the caller
    between regroups. ``gram_dtype``: the rms form's Gram input precision (``gram_rms``).
    """
    if W.ndim != 2 or groups.shape != (W.shape[0],):
        raise ValueError(
            f"ortho_loss: W must be [d_sae, d_model] and groups [d_sae]; got {tuple(W.shape)}, {tuple(groups.shape)}"
        )
    if gram_dtype != "float32" and mode != "rms":
        raise ValueError(f"ortho_loss: gram_dtype {gram_dtype!r} is for the exact rms form only")
    if mode not in ALPHA_MODES:
        raise ValueError(f"ortho_loss: mode must be one of {ALPHA_MODES}; got {mode!r}")
    with matmul_precision("highest"):  # never TF32: the seed form's Gram rewrite cancels large terms
        return _ortho_loss(W, groups, n_groups, alpha, mode, eps, activity, index, GRAM_DTYPES[gram_dtype])


def _ortho_loss(W, groups, n_groups, alpha, mode, eps, activity, index, gram_dtype) -> Tensor:
    idx = group_indices(groups, n_groups) if index is None else index
    if mode == "rms":
        return gram_rms(W, idx, n_groups, alpha, activity, gram_dtype)
    pairs = [(g, h) for g in range(n_groups) for h in range(g + 1, n_groups) if len(idx[g]) and len(idx[h])]
    total = W.new_zeros(())
    if mode == "hinge":
        W = unit_rows(W)
        for g, h in pairs:
            wg, wh = (None, None) if activity is None else (activity[idx[g]], activity[idx[h]])
            total = total + _pair_hinge(W[idx[g]], W[idx[h]], alpha, wg, wh)
        return total
    grams = [gram(W[i]) if len(i) else None for i in idx]  # seed form: each [d_model, d_model]
    for g, h in pairs:
        s = (grams[g] * grams[h]).sum()  # tr(G_g G_h) = ‖W_gᵀW_h‖²_F; Grams are symmetric
        if alpha != 0.0:
            m = min(len(idx[g]), len(idx[h]))
            diag = (W[idx[g][:m]] * W[idx[h][:m]]).sum()
            s = s - 2.0 * alpha * diag + alpha * alpha * m
        total = total + (torch.sqrt(s.clamp_min(0) + eps) - eps**0.5)
    return total


class _GramRms(torch.autograd.Function):
    """The exact rms L_ortho through each group's Gram, with a hand-written backward.

    Forward: the rows of group g scaled by √w_i/‖W_i‖ (A_g: one gather, in ``dtype``), its Gram
    G_g = A_gᵀA_g (accumulated in float32 by the matmul, kept in W's dtype), s_gh = ⟨G_g, G_h⟩ =
    Σ w_i w_j cos²_ij. Backward: ∂/∂G_g = D_g = Σ_h a_gh G_h (a_gh = ∂loss/∂s_gh), so
    ∂/∂A_g = 2 A_g D_g, one matmul per group; the row scale's own derivative is the projection
    removing each row's radial part, dW_i = c_i (dA_i − ⟨dA_i, A_i⟩ A_i / ‖A_i‖²). Autograd would
    instead keep the normalised and the weighted copy of W and run a norm backward and a scatter
    over each (about a third of the term's time at 2304 × 16384 on CPU)."""

    @staticmethod
    def forward(ctx, W: Tensor, index: list, mass: Tensor, scale: Tensor, alpha: float, dtype: torch.dtype) -> Tensor:
        G = len(index)
        rows = [W.detach().index_select(0, i).mul_(scale[i].unsqueeze(1)).to(dtype or W.dtype) for i in index]  # A_g
        with matmul_precision("highest"):  # float32 products stay float32 (``matmul_precision``)
            grams = [(A.T @ A).to(W.dtype) for A in rows]
        s = torch.stack([torch.stack([(grams[g] * grams[h]).sum() for h in range(G)]) for g in range(G)])
        m = mass.unsqueeze(1) * mass.unsqueeze(0)  # Σw_g·Σw_h
        # pairs g < h with weight on both sides (an empty group has none): else exactly 0
        ok = torch.ones_like(s, dtype=torch.bool).triu(1) & (m > 0)
        m = torch.where(ok, m, torch.ones_like(m))
        excess = s / m - alpha * alpha
        live = ok & (excess > 0)
        d_model = W.shape[1]
        a = torch.where(live, d_model / m, 0.0)
        ctx.save_for_backward(a, scale, *rows, *grams)
        ctx.index, ctx.n_groups, ctx.d_sae = index, G, W.shape[0]
        return d_model * torch.where(live, excess, torch.zeros_like(excess)).sum()

    @staticmethod
    def backward(ctx, dloss: Tensor):
        G = ctx.n_groups
        a, scale, *saved = ctx.saved_tensors
        rows, grams = saved[:G], saved[G:]
        a = dloss * (a + a.T)  # symmetric: s_gh = s_hg
        dW = torch.zeros(ctx.d_sae, rows[0].shape[1] if G else 0, dtype=scale.dtype, device=scale.device)
        with matmul_precision("highest"):
            for g, (i, A) in enumerate(zip(ctx.index, rows)):
                if not len(i) or G < 2:
                    continue
                D = sum(a[g, h] * grams[h] for h in range(G) if h != g)  # symmetric, [d_model, d_model]
                dA = (A @ (2 * D).to(A.dtype)).to(D.dtype)  # [n_g, d_model]
                A = A.to(D.dtype)
                sq = A.pow(2).sum(dim=1).clamp_min(1e-30)  # ‖A_i‖² = w_i (0 for a weightless row: then A_i = dA_i = 0)
                radial = torch.bmm(dA.unsqueeze(1), A.unsqueeze(2)).reshape(-1) / sq
                dW[i] = dA.addcmul_(A, radial.unsqueeze(1), value=-1.0).mul_(scale[i].unsqueeze(1))
        return dW, None, None, None, None, None


def gram_rms(
    W: Tensor,
    index: list[Tensor],
    n_groups: int,
    alpha: float,
    activity: Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The exact rms L_ortho, ``Σ_{g<h} d_model·relu(Σ w_i w_j cos²_ij / (Σw_g·Σw_h) − α²)``, through
    d_model × d_model Grams (``_GramRms``). ``dtype`` is the Grams' input precision (None: W's): bfloat16 halves
    their cost on hardware with bf16 matmuls (CPUs with AVX512-BF16/AMX, GPUs' tensor cores), with
    float32 accumulation; its value and gradient stay within about 1e-4 and 1e-2 relative of float32
    (tests; docs/method-results.md for what it trains). There is no cancellation in this form (a sum of
    squares, α² subtracted after), so low-precision inputs cost accuracy in proportion only."""
    w = torch.ones(W.shape[0], dtype=W.dtype, device=W.device) if activity is None else activity.detach().to(W.dtype)
    scale = w.sqrt() / W.detach().norm(dim=1).clamp_min(1e-12)  # √w_i / ‖W_i‖
    mass = torch.stack([w[i].sum() for i in index]) if index else w.new_zeros(0)
    return _GramRms.apply(W, index, mass, scale, alpha, dtype)


def _pair_hinge(A: Tensor, B: Tensor, alpha: float, wa: Tensor | None = None, wb: Tensor | None = None) -> Tensor:
    """One pair's hinge term from row blocks of ``A Bᵀ`` (A, B: unit rows; wa, wb: their activity)."""
    total = A.new_zeros(())
    for start in range(0, A.shape[0], HINGE_BLOCK):
        C = A[start : start + HINGE_BLOCK] @ B.T  # cosines (rows are unit vectors)
        C = torch.relu(C.abs() - alpha).pow(2)
        if wa is not None:
            C = C * wa[start : start + HINGE_BLOCK, None] * wb[None, :]
        total = total + C.sum()
    n = A.shape[0] * B.shape[0] if wa is None else _positive(wa.sum() * wb.sum())
    return A.shape[1] * (total / n)


def contiguous_groups(d_sae: int, n_groups: int, device: torch.device | str = "cpu") -> Tensor:
    """Fixed equal split into ``n_groups`` contiguous blocks: feature i -> ``i * G // d_sae``."""
    if not 1 <= n_groups <= d_sae:
        raise ValueError(f"n_groups must be in 1..d_sae ({d_sae}); got {n_groups}")
    return (torch.arange(d_sae, device=device) * n_groups) // d_sae
