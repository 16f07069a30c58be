"""Each feature's firing density on training rows, saved beside every export as SAELens'
``sparsity.safetensors`` (tensor ``sparsity`` = log10(density + 1e-10), SAELens' convention):
SAELens' loaders and SAEBench's autointerp read it to pick live features.

Measured on the exported SAE after training, not accumulated during it: the density of the
weights that ship, over the first rows of each training corpus in proportion to its size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from orthosae.common.errors import write_tensors
from orthosae.common.store import StoreReader
from orthosae.train.digests import write_atomic

SPARSITY_FILENAME = "sparsity.safetensors"
SPARSITY_ROWS = 16384
BATCH = 4096


def sparsity_rows(reader: StoreReader, corpora: list[str], rows: int = SPARSITY_ROWS) -> torch.Tensor:
    """Up to ``rows`` raw rows: the first of each training corpus, in proportion to its size (read
    once per sweep and shared by its runs)."""
    info = reader.corpora()
    total = sum(info[c].n_rows for c in corpora)
    return torch.cat([reader.read_rows(c, 0, min(info[c].n_rows, -(-rows * info[c].n_rows // total))) for c in corpora])


@torch.no_grad()
def feature_density(sae, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """Fraction of ``rows`` (raw, scaled by ``scale`` into the SAE's inputs) on which each feature
    fires (``sae.encode`` > 0), float32 on CPU."""
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    for lo in range(0, rows.shape[0], BATCH):
        x = rows[lo : lo + BATCH].to(sae.device, sae.dtype) * scale
        fired += (sae.encode(x) > 0).sum(0).double().cpu()
    return (fired / max(rows.shape[0], 1)).float()


def save_sparsity(run_dir: str | Path, density: torch.Tensor) -> Path:
    """``run_dir/sparsity.safetensors`` with SAELens' ``sparsity`` = log10(density + 1e-10)."""
    path = Path(run_dir) / SPARSITY_FILENAME
    tensors = {"sparsity": torch.log10(density.float() + 1e-10).contiguous()}
    write_atomic(path, lambda p: write_tensors(tensors, p, save_file))  # no temporary left on a full disk
    return path
