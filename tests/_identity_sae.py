"""Test SAEs with known answers, following the SAE interface in docs/architecture.md.

- ``IdentitySAE``: d_sae = 2·d_model, W_enc = [I, −I], W_dec = [I; −I], zero biases, so
  f = [relu(x), relu(−x)] and decode(encode(x)) == x exactly.
- ``ZeroSAE``: every weight 0, so f = 0 and x̂ = 0 (zero-ablation through the SAE path).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _LinearReluSAE(nn.Module):
    def __init__(self, W_enc: Tensor, W_dec: Tensor):
        super().__init__()
        self.d_model, self.d_sae = W_enc.shape
        self.W_enc = nn.Parameter(W_enc.clone())
        self.W_dec = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_model))

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


class IdentitySAE(_LinearReluSAE):
    def __init__(self, d_model: int):
        eye = torch.eye(d_model)
        super().__init__(torch.cat([eye, -eye], dim=1), torch.cat([eye, -eye], dim=0))


class ZeroSAE(_LinearReluSAE):
    def __init__(self, d_model: int, d_sae: int | None = None):
        d_sae = d_sae or 2 * d_model
        super().__init__(torch.zeros(d_model, d_sae), torch.zeros(d_sae, d_model))


class RandomSAE(_LinearReluSAE):
    """Random ReLU SAE with non-unit decoder rows and non-zero biases (for formula cross-checks)."""

    def __init__(self, d_model: int, d_sae: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        super().__init__(
            torch.randn(d_model, d_sae, generator=g) / d_model**0.5, torch.randn(d_sae, d_model, generator=g) * 0.3
        )
        with torch.no_grad():
            self.b_enc.copy_(torch.randn(self.d_sae, generator=g) * 0.1 - 0.05)
            self.b_dec.copy_(torch.randn(self.d_model, generator=g) * 0.1)
