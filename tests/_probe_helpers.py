"""Small SAEs and labelled residuals shared by the probing, TPP and absorption tests."""

from __future__ import annotations

import torch
from torch import Tensor

from orthosae.eval.probing import prepare_probe_rows
from tests._identity_sae import _LinearReluSAE


class RandomSAE(_LinearReluSAE):
    """A ReLU SAE with given or random weights; ``dtype`` / ``device`` as SAEBench's code reads them."""

    def __init__(self, d_model: int, d_sae: int, seed: int = 0, b_enc: float = -0.1):
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_model, generator=g)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        super().__init__(W_dec.T.clone(), W_dec)
        with torch.no_grad():
            self.b_enc.fill_(b_enc)

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device


def labelled_tokens(
    classes: list[str], n: int, T: int, d: int, seed: int = 0, signal: float = 1.5
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per class ``[n, T, d]`` token residuals (class c shifted along its own direction) and a mask
    with a random number of trailing padded positions (zeroed, as SAEBench zeroes them)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(len(classes), d, generator=g)
    acts, masks = {}, {}
    for i, c in enumerate(classes):
        x = torch.randn(n, T, d, generator=g) + signal * dirs[i]
        keep = torch.randint(2, T + 1, (n,), generator=g)
        mask = torch.arange(T)[None, :] < keep[:, None]
        acts[c] = x * mask[..., None]
        masks[c] = mask
    return acts, masks


def prepare_probe_data(
    acts: dict[str, Tensor], cls: str, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """SAEBench ``prepare_probe_data`` (one-vs-rest) from ``prepare_probe_rows``: (rows, int labels),
    shuffled, to compare with SAEBench's own."""
    rows, labels = prepare_probe_rows({c: len(v) for c, v in acts.items()}, cls, generator)
    return torch.stack([acts[c][i] for c, i in rows]) if rows else torch.zeros(0), labels


def their_probe(w: Tensor, b: float):
    """sae_bench's own probe module holding the weights (w, b) of one of ours."""
    from sae_bench.evals.sparse_probing import probe_training as pt

    probe = pt.Probe(len(w), torch.float32)
    with torch.no_grad():
        probe.net.weight.copy_(w[None])
        probe.net.bias.fill_(b)
    return probe
