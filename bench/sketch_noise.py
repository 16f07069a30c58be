"""How noisy is the sketched L_ortho's gradient? Value and gradient of the sketched rms L_ortho
against the exact one on a trained SAE's decoder and on random unit directions, side by side;
and, in the row k = "bf16 Grams", the exact form with bfloat16 Gram inputs (``gram_dtype``).

    python -m bench.sketch_noise [RUN_DIR ...] [--draws 10] [--quick]

For each k: the sketched value's mean over draws relative to the exact value, and the mean relative
gradient error ‖g_sketch − g_exact‖ / ‖g_exact‖ (uniform pair weights, α = 0, where the sketch is
unbiased). An unbiased estimate whose error is many times the signal moves the weights mostly at
random, and through gradient clipping it shrinks every other term's step too.

The sketched L_ortho itself lives here (``sketched_rms``): it was ``[train.ortho] sketch`` until
issue 25 removed it from the product, having measured that it trains badly (docs/method-results.md,
"The sketched L_ortho"); its tests are ``tests/bench/test_sketch_noise.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from orthosae.common.config import RunConfig
from orthosae.train.sae.adaptive import AdaptiveOrthoSAE
from orthosae.train.sae.ortho import contiguous_groups, group_onehot, matmul_precision, ortho_loss
from orthosae.train.trainer import Trainer

KS = (32, 128, 512, 2048)


class _SketchedRms(torch.autograd.Function):
    """The sketched rms L_ortho of W with a hand-written backward (see ``sketched_rms``).

    Forward: T = L W (``L [G·k, d_sae]`` = each group's sketch, masked to its columns and scaled by
    √w_i/‖W_i‖), the k × k blocks C_gh = T_g T_hᵀ, s_gh = ‖C_gh‖²_F. Backward: with the row
    scales held fixed, M = Lᵀ dT (one matmul) is diag(√w/‖W‖) times the gradient with respect to
    the scaled rows; the scale's own derivative is exactly the projection that removes each row's
    radial part, dW_i = M_i − ⟨W_i, M_i⟩ W_i / ‖W_i‖² (the gradient of a function of W_i/‖W_i‖),
    done in place. Autograd would instead run a second matmul for dL and a norm backward over W."""

    @staticmethod
    def forward(ctx, W: Tensor, L: Tensor, n_groups: int, mass: Tensor, alpha: float, sq_norms: Tensor) -> Tensor:
        k = L.shape[0] // n_groups
        T = L @ W  # [G·k, d_model]: row block g = S_g Ŵ_g
        C = (T @ T.T).reshape(n_groups, k, n_groups, k)
        s = C.pow(2).sum(dim=(1, 3))  # [G, G]: s_gh ≈ ‖Ŵ_gᵀŴ_h‖²_F (weighted), unbiased for g ≠ h
        m = mass.unsqueeze(1) * mass.unsqueeze(0)  # Σw_g·Σw_h
        # pairs g < h with weight on both sides; a pair with an empty group contributes exactly 0
        ok = torch.ones_like(s, dtype=torch.bool).triu(1) & (m > 0)
        excess = s / torch.where(ok, m, torch.ones_like(m)) - alpha * alpha
        live = ok & (excess > 0)
        d_model = W.shape[1]
        ctx.save_for_backward(
            W, L, T, C, torch.where(live, d_model / torch.where(ok, m, torch.ones_like(m)), 0.0), sq_norms
        )
        ctx.n_groups = n_groups
        return d_model * torch.where(live, excess, torch.zeros_like(excess)).sum()

    @staticmethod
    def backward(ctx, dloss: Tensor):
        W, L, T, C, a, sq_norms = ctx.saved_tensors  # a[g, h] = ∂loss/∂s_gh
        G, k = ctx.n_groups, C.shape[1]
        dC = (2 * dloss) * a[:, None, :, None] * C  # ∂/∂C of Σ a_gh ‖C_gh‖²
        dC = dC.reshape(G * k, G * k)
        with matmul_precision("highest"):
            dT = (dC + dC.T) @ T
            M = L.T @ dT  # [d_sae, d_model], the one full-size product
            # row-wise ⟨W_i, M_i⟩ as a batched matmul: no [d_sae, d_model] temporary (W * M would make one)
            radial = torch.bmm(W.unsqueeze(1), M.unsqueeze(2)).reshape(-1) / sq_norms
        return M.addcmul_(W, radial.unsqueeze(1), value=-1.0), None, None, None, None, None


def sketched_rms(
    W: Tensor,
    groups: Tensor,
    n_groups: int,
    alpha: float,
    k: int,
    activity: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The rms L_ortho with each pair's Σ w_i w_j cos²_ij estimated through independent k-row
    Gaussian sketches S_g, S_h of both groups (E[SᵀS] = I): ‖S_g Ŵ_g Ŵ_hᵀ S_hᵀ‖²_F, unbiased in
    value and gradient (independent sides; the relu at α² biases the loss upward near α, as for
    any estimate; at α = 0 it is exact in expectation). One k × d_sae draw serves every group, its
    columns split by group, so the sketches are independent.

    Its gradient is far noisier than its value: the noise scales with the groups' whole size
    (‖A‖_F·‖B‖_F/√k), not with the overlap, so at k ≪ n_g the gradient's error is many times the
    exact gradient (this bench; docs/method-results.md). It left the product for that reason.

    Cost: one [G·k, d_sae] @ [d_sae, d_model] product forward and one backward, O(G·k·d_sae·d_model),
    against the Grams' O(d_sae·d_model²); it never normalises, weighs or gathers W (the row scales
    √w_i/‖W_i‖ ride on the sketch) and never syncs with the host (groups as a one-hot matrix)."""
    d_sae = W.shape[0]
    onehot = group_onehot(groups, n_groups, W.dtype)
    w = torch.ones(d_sae, dtype=W.dtype, device=W.device) if activity is None else activity.detach().to(W.dtype)
    norms = W.detach().norm(dim=1).clamp_min(1e-12)
    scale = w.sqrt() / norms  # √w_i / ‖W_i‖
    S = torch.randn(k, d_sae, generator=generator, dtype=W.dtype).to(W.device) / k**0.5
    L = (S.unsqueeze(0) * (scale.unsqueeze(1) * onehot).T.unsqueeze(1)).reshape(n_groups * k, d_sae)
    return _SketchedRms.apply(W, L, n_groups, w @ onehot, alpha, norms.pow(2))


def sketched_ortho_loss(
    W: Tensor,
    groups: Tensor,
    n_groups: int,
    alpha: float,
    k: int,
    activity: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``sketched_rms`` at full float32 precision, as L_ortho always runs (never TF32)."""
    with matmul_precision("highest"):
        return sketched_rms(W, groups, n_groups, alpha, k, activity, generator)


class SketchedAdaptiveSAE(AdaptiveOrthoSAE):
    """The adaptive SAE with the sketched L_ortho, as ``[train.ortho] sketch = k`` trained it before
    issue 25 (``bench/train_bench.py --only sketch`` times it). Build it with ``sketched_trainer``."""

    def __init__(
        self, d_model: int, run: RunConfig, *, sketch: int, generator: torch.Generator | None = None, **kwargs
    ):
        super().__init__(d_model, run, **kwargs)
        self.sketch, self.generator = int(sketch), generator

    def ortho_loss(self, activity: Tensor | None = None) -> Tensor:
        o = self.cfg.ortho
        return sketched_ortho_loss(
            self.directions(),
            self.groups,
            self.n_groups,
            o.alpha,
            self.sketch,
            activity if o.weighting == "activity" else None,
            self.generator,
        )


def sketched_trainer(run: RunConfig, d_model: int, total_steps: int, sketch: int) -> Trainer:
    """A Trainer of ``SketchedAdaptiveSAE`` whose sketches come from the run's own random stream
    (the Trainer's generator, which its checkpoint carries), as the product drew them."""
    sae = SketchedAdaptiveSAE(d_model, run, sketch=sketch)
    trainer = Trainer(run, sae, total_steps)
    sae.generator = trainer.generator
    return trainer


def value_and_grad(
    W0: torch.Tensor,
    groups: torch.Tensor,
    n_groups: int,
    sketch: int = 0,
    generator: torch.Generator | None = None,
    **kw,
) -> tuple[float, torch.Tensor]:
    W = W0.clone().requires_grad_(True)
    v = (
        sketched_ortho_loss(W, groups, n_groups, 0.0, sketch, generator=generator)
        if sketch
        else ortho_loss(W, groups, n_groups, 0.0, "rms", **kw)
    )
    v.backward()
    return v.item(), W.grad


def rows(name: str, W: torch.Tensor, groups: torch.Tensor, draws: int, ks: tuple[int, ...] = KS) -> list[str]:
    G = int(groups.max()) + 1
    exact_v, exact_g = value_and_grad(W, groups, G)
    out = []
    for k in ks:
        gen = torch.Generator().manual_seed(0)
        vals, errs = [], []
        for _ in range(draws):
            v, g = value_and_grad(W, groups, G, sketch=k, generator=gen)
            vals.append(v)
            errs.append(((g - exact_g).norm() / exact_g.norm()).item())
        out.append(f"| {name} | {k} | {exact_v:.4f} | {sum(vals) / draws / exact_v:.3f} | {sum(errs) / draws:.2f} |")
    v, g = value_and_grad(W, groups, G, gram_dtype="bfloat16")  # deterministic: one evaluation
    out.append(
        f"| {name} | bf16 Grams | {exact_v:.4f} | {v / exact_v:.4f} | {((g - exact_g).norm() / exact_g.norm()).item():.4f} |"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", default=["runs/experiment/adaptive-alpha0-s0"])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="smoke check: one draw of k = 8 and 32")
    args = ap.parse_args()
    ks = (8, 32) if args.quick else KS
    if args.quick:
        args.draws = 1
    print("| directions | k | exact L_ortho | sketched mean / exact | gradient error / ‖exact gradient‖ |")
    print("|---|---:|---:|---:|---:|")
    shapes = set()
    for run in args.runs:
        sd = load_file(str(Path(run) / "sae_weights.safetensors"))
        W, groups = sd["W_dec"].float(), sd["groups"].long()
        for line in rows(f"{Path(run).name} (trained, {W.shape[0]}×{W.shape[1]})", W, groups, args.draws, ks):
            print(line)
        shapes.add(tuple(W.shape))
    for shape in sorted(shapes):  # the same sizes at random (initialisation-like) directions
        rand = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for line in rows(
            f"random unit rows ({shape[0]}×{shape[1]})",
            rand / rand.norm(dim=1, keepdim=True),
            contiguous_groups(shape[0], 2),
            args.draws,
            ks,
        ):
            print(line)
    print(f"\n{args.draws} draws per k; uniform pair weights, α = 0.")


if __name__ == "__main__":
    main()
