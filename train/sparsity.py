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

from common.store import StoreReader

SPARSITY_FILENAME = "sparsity.safetensors"
SPARSITY_ROWS = 16384
BATCH = 4096


@torch.no_grad()
def feature_density(sae, reader: StoreReader, corpora: list[str], scale: float, rows: int = SPARSITY_ROWS) -> torch.Tensor:
    """Fraction of rows on which each feature fires (``sae.encode`` > 0), over up to ``rows`` raw
    rows scaled by ``scale`` (the SAE's training inputs), float32 on CPU."""
    info = reader.corpora()
    total = sum(info[c].n_rows for c in corpora)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    seen = 0
    for c in corpora:
        take = min(info[c].n_rows, -(-rows * info[c].n_rows // total))
        for lo in range(0, take, BATCH):
            x = reader.read_rows(c, lo, min(lo + BATCH, take)).to(sae.device, sae.dtype) * scale
            fired += (sae.encode(x) > 0).sum(0).double().cpu()
            seen += x.shape[0]
    return (fired / max(seen, 1)).float()


def save_sparsity(run_dir: str | Path, density: torch.Tensor) -> Path:
    """``run_dir/sparsity.safetensors`` with SAELens' ``sparsity`` = log10(density + 1e-10)."""
    path = Path(run_dir) / SPARSITY_FILENAME
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"sparsity": torch.log10(density.float() + 1e-10).contiguous()}, str(tmp))
    tmp.replace(path)
    return path
