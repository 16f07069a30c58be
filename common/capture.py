"""Run the model only up to block L (the deepest of several) and return the residual stream after it.

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
    return residuals_after_blocks(model, (layer,), input_ids)[layer]


@torch.no_grad()
def residuals_after_blocks(model: torch.nn.Module, layers, input_ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Residual stream after each block of `layers` in one forward pass, stopped after the deepest:
    {layer: [batch, T, d_model]}. Each block's output is what the one-layer pass returns for it."""
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def hook_for(layer: int):
        def hook(_module, _args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == deepest:
                raise _StopForward

        return hook

    blocks = decoder_layers(model)
    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in sorted(set(layers))]
    try:
        model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer for layer in layers if layer not in captured]
    if missing:
        raise RuntimeError(f"block {missing[0]} never ran: the model's forward skipped it")
    return captured
