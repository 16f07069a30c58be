"""SAE base class: ReLU encoder, linear decoder with unit-norm rows, SAELens-standard losses.

Conventions (match ``sae_lens.saes.standard_sae.StandardTrainingSAE`` 6.x):

- ``recon``  = Σ_d (x̂ − x)² per token, mean over tokens (SAELens ``mse_loss``: sum over d_in, mean
  over the batch);
- ``sparse`` = Σ_i f_i · ||W_dec[i]||, mean over tokens (SAELens "l1" with the decoder-norm
  weighting; f ≥ 0 after the ReLU so the L1 norm is the plain sum);
- ``total``  = recon + l1_scale · l1_coefficient · sparse + λ2(step) · ortho. The λ1 warm-up is the
  caller's: it passes ``l1_scale`` ∈ [0, 1] (SAELens multiplies the coefficient the same way).

Differences from SAELens: decoder rows are initialised (and kept, by ``on_step_end``) at unit norm
rather than SAELens' ``decoder_init_norm=0.1``; W_enc = W_dec.T at init (tied init, as SAELens).
Initialisation uses a CPU ``torch.Generator`` seeded with ``seed``, so it is device-independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class LossOutput:
    total: Tensor  # scalar, for backward
    terms: dict[str, Tensor] = field(default_factory=dict)  # detached scalars
    f: Tensor | None = None  # feature activations [batch, d_sae], detached
    fired: Tensor | None = None  # [d_sae] bool: fired on any row of the batch (dead-feature tracking)


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    out = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(out, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return out


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class SAE(nn.Module):
    """Baseline ReLU SAE (SAELens "standard"). Variants override ``ortho_penalty`` / ``decode``."""

    architecture: str = "standard"
    run_type: str = "baseline"

    def __init__(
        self,
        d_model: int,
        d_sae: int,
        *,
        l1_coefficient: float,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.d_model, self.d_sae = int(d_model), int(d_sae)
        self.l1_coefficient = float(l1_coefficient)
        self.seed = int(seed)
        dt = as_dtype(dtype)
        gen = torch.Generator().manual_seed(self.seed)
        W = torch.randn(self.d_sae, self.d_model, generator=gen, dtype=torch.float32)
        W = W / W.norm(dim=1, keepdim=True)
        kw = dict(dtype=dt, device=device)
        self.W_dec = nn.Parameter(W.to(**kw))
        self.W_enc = nn.Parameter(W.T.contiguous().to(**kw))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(self.d_model, **kw))

    # SAEBench / SAELens expect these attributes
    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @torch.no_grad()
    def init_b_dec(self, mean: Tensor) -> None:
        """Set b_dec to a data centre (mean or geometric median) of the (normalised) activations."""
        if mean.shape != (self.d_model,):
            raise ValueError(f"init_b_dec: expected shape ({self.d_model},), got {tuple(mean.shape)}")
        self.b_dec.copy_(mean.to(self.b_dec))

    def encode(self, x: Tensor) -> Tensor:
        # addmm fuses the bias add; relu_ reuses addmm's output (its backward does not need it)
        x = x.to(self.dtype) - self.b_dec
        f = torch.addmm(self.b_enc, x.reshape(-1, self.d_model), self.W_enc).relu_()
        return f.reshape(*x.shape[:-1], self.d_sae)

    def decode(self, f: Tensor, *, nonneg: bool = False) -> Tensor:
        """``nonneg``: f is the encoder's own ReLU output (variants may skip work on that promise)."""
        return torch.addmm(self.b_dec, f.reshape(-1, self.d_sae), self.W_dec).reshape(*f.shape[:-1], self.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def ortho_penalty(self, step: int) -> tuple[Tensor, float, float]:
        """(L_ortho, nominal λ2(step), weight applied this step); the baseline has none."""
        return self.W_dec.new_zeros(()), 0.0, 0.0

    def training_loss(self, x: Tensor, is_forget: Tensor | None = None, step: int = 0, *, l1_scale: float = 1.0) -> LossOutput:
        x = x.to(self.dtype)
        f = self.encode(x)
        x_hat = self.decode(f, nonneg=True)
        recon = (x_hat - x).pow(2).sum(dim=-1).mean()
        # Σ_t Σ_i f_ti·||W_dec[i]|| / T, summed over tokens first: no [batch, d_sae] product tensor
        sparse = f.sum(dim=0) @ self.W_dec.norm(dim=1) / f.shape[0]
        ortho, lam2, weight = self.ortho_penalty(step)
        l1 = self.l1_coefficient * float(l1_scale)
        total = recon + l1 * sparse + (weight * ortho if weight != 0.0 else 0.0)
        active = f.detach() > 0  # one pass serves L0 and the dead-feature mask
        terms = {
            "recon": recon,
            "sparse": sparse,
            "ortho": ortho,
            "lambda2": torch.tensor(float(lam2)),
            "lambda1": torch.tensor(l1),
            "l0": active.sum(dim=-1, dtype=torch.float32).mean(),
            "total": total,
        }
        return LossOutput(total=total, terms={k: v.detach() for k, v in terms.items()}, f=f.detach(),
                          fired=active.any(dim=0))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def on_step_end(self, step: int, f: Tensor | None = None, is_forget: Tensor | None = None) -> dict:
        """After ``optimizer.step()``: renormalise decoder rows to unit norm."""
        self.normalize_decoder()
        return {"regrouped": False}

    def hyperparams(self) -> dict:
        """Constructor arguments (JSON-able); ``make_sae(**hyperparams())`` rebuilds the SAE."""
        return {
            "run_type": self.run_type,
            "d_model": self.d_model,
            "d_sae": self.d_sae,
            "l1_coefficient": self.l1_coefficient,
            "seed": self.seed,
            "dtype": dtype_name(self.dtype),
        }
