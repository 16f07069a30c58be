"""Dead-feature resampling (optional, `[train] resample_dead`), after Anthropic's recipe, simplified.

Dead features get the direction of the reconstruction error of rows drawn in proportion to their
squared error, so they restart where the SAE is worst; the encoder column is scaled to 0.2 × the
mean norm of live columns, the encoder bias zeroed and the Adam moments of those weights reset.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def resample_dead(sae, opt: torch.optim.Optimizer, dead: torch.Tensor, x: torch.Tensor,
                  generator: torch.Generator | None = None) -> int:
    """Returns the number resampled; rows are drawn with ``generator`` (a CPU generator: the run's own)."""
    idx = dead.nonzero().squeeze(1)
    if len(idx) == 0:
        return 0
    err = x - sae(x)
    weights = err.pow(2).sum(-1)
    if float(weights.sum()) == 0:
        return 0
    picks = torch.multinomial(weights.float().cpu(), len(idx), replacement=len(idx) > len(x),
                              generator=generator).to(err.device)
    dirs = err[picks]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    live = ~dead
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs.to(sae.W_dec.dtype)
    sae.W_enc[:, idx] = (dirs.T * 0.2 * enc_norm).to(sae.W_enc.dtype)
    sae.b_enc[idx] = 0
    for param, index in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0
    return len(idx)
