"""How noisy is the sketched L_ortho's gradient? Value and gradient of the sketched rms L_ortho
against the exact one on a trained SAE's decoder and on random unit directions, side by side;
and, in the row k = "bf16 Grams", the exact form with bfloat16 Gram inputs (``gram_dtype``).

    python -m bench.sketch_noise [RUN_DIR ...] [--draws 10]

For each k: the sketched value's mean over draws relative to the exact value, and the mean relative
gradient error ‖g_sketch − g_exact‖ / ‖g_exact‖ (uniform pair weights, α = 0, where the sketch is
unbiased). An unbiased estimate whose error is many times the signal moves the weights mostly at
random, and through gradient clipping it shrinks every other term's step too.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from train.sae.ortho import contiguous_groups, ortho_loss

KS = (32, 128, 512, 2048)


def value_and_grad(W0: torch.Tensor, groups: torch.Tensor, n_groups: int, **kw) -> tuple[float, torch.Tensor]:
    W = W0.clone().requires_grad_(True)
    v = ortho_loss(W, groups, n_groups, 0.0, "rms", **kw)
    v.backward()
    return v.item(), W.grad


def rows(name: str, W: torch.Tensor, groups: torch.Tensor, draws: int) -> list[str]:
    G = int(groups.max()) + 1
    exact_v, exact_g = value_and_grad(W, groups, G)
    out = []
    for k in KS:
        gen = torch.Generator().manual_seed(0)
        vals, errs = [], []
        for _ in range(draws):
            v, g = value_and_grad(W, groups, G, sketch=k, generator=gen)
            vals.append(v)
            errs.append(((g - exact_g).norm() / exact_g.norm()).item())
        out.append(f"| {name} | {k} | {exact_v:.4f} | {sum(vals) / draws / exact_v:.3f} | {sum(errs) / draws:.2f} |")
    v, g = value_and_grad(W, groups, G, gram_dtype="bfloat16")  # deterministic: one evaluation
    out.append(f"| {name} | bf16 Grams | {exact_v:.4f} | {v / exact_v:.4f} | {((g - exact_g).norm() / exact_g.norm()).item():.4f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", default=["runs/experiment/adaptive-alpha0-s0"])
    ap.add_argument("--draws", type=int, default=10)
    args = ap.parse_args()
    print("| directions | k | exact L_ortho | sketched mean / exact | gradient error / ‖exact gradient‖ |")
    print("|---|---:|---:|---:|---:|")
    shapes = set()
    for run in args.runs:
        sd = load_file(str(Path(run) / "sae_weights.safetensors"))
        W, groups = sd["W_dec"].float(), sd["groups"].long()
        for line in rows(f"{Path(run).name} (trained, {W.shape[0]}×{W.shape[1]})", W, groups, args.draws):
            print(line)
        shapes.add(tuple(W.shape))
    for shape in sorted(shapes):  # the same sizes at random (initialisation-like) directions
        rand = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for line in rows(f"random unit rows ({shape[0]}×{shape[1]})", rand / rand.norm(dim=1, keepdim=True),
                         contiguous_groups(shape[0], 2), args.draws):
            print(line)
    print(f"\n{args.draws} draws per k; uniform pair weights, α = 0.")


if __name__ == "__main__":
    main()
