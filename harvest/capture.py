"""Run the model only up to block L and return the residual stream after it.

A forward hook on block L stores its output and raises, so the later blocks and the LM head (which
dominates CPU cost for Gemma's 262k vocabulary) are never run. The same works for every
decoder-only model whose blocks `common.model.decoder_layers` finds.
"""
from __future__ import annotations

import torch

from orthosae.common.model import decoder_layers


class _StopForward(Exception):
    """Raised from the hook to leave the forward pass early."""


@torch.no_grad()
def residual_after_block(model: torch.nn.Module, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    """Residual stream after block `layer` for `input_ids` [batch, T] -> [batch, T, d_model]."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        captured["resid"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "resid" not in captured:
        raise RuntimeError(f"block {layer} never ran: the model's forward skipped it")
    return captured["resid"]
