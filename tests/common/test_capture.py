"""The harvest's capture (`common.capture.residual_after_block`, the hook the harvest runner uses)
in every decoder-only family the tests cover (tests/_families.py).

Per family and block L it must return the model's own `output_hidden_states` entry L+1 bit for bit
in float32 for every L below the last block, and run no block after L, no final norm, no LM head.
The last entry has the final norm folded in for every family here: the harvest keeps the residual
before it (TransformerLens' `blocks.L.hook_resid_post`), and the final norm of that row is the
entry, bit for bit.
"""

import pytest
import torch
from torch import nn

from orthosae.common.capture import residual_after_block
from orthosae.common.model import decoder_layers, final_norm
from tests._families import FAMILIES, IDS, N_LAYERS, family_forward


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return family_forward(request.param)


def _calls(model: nn.Module):
    """Forward hooks that record which blocks, final norm and LM head run."""
    ran, handles = [], []
    watched = [(f"block {i}", b) for i, b in enumerate(decoder_layers(model))]
    watched += [("final norm", final_norm(model)), ("lm head", model.get_output_embeddings())]
    for name, module in watched:
        handles.append(module.register_forward_hook(lambda *_, name=name: ran.append(name)))
    return ran, handles


@pytest.mark.parametrize("layer", range(N_LAYERS - 1))
def test_harvested_row_is_the_hidden_state_and_later_blocks_never_run(family, layer):
    name, model, hidden = family
    ran, handles = _calls(model)
    try:
        rows = residual_after_block(model, layer, IDS)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(rows, hidden[layer + 1]), name
    assert ran == [f"block {i}" for i in range(layer + 1)], name


def test_last_block_is_before_the_final_norm(family):
    name, model, hidden = family
    ran, handles = _calls(model)
    try:
        rows = residual_after_block(model, N_LAYERS - 1, IDS)
    finally:
        for h in handles:
            h.remove()
    assert ran == [f"block {i}" for i in range(N_LAYERS)], name  # no final norm, no LM head
    norm = final_norm(model)
    assert norm is not None, name
    with torch.no_grad():
        assert torch.equal(norm(rows), hidden[-1]), name  # the last entry is final_norm(residual)
    assert not torch.allclose(rows, hidden[-1], atol=1e-3), name  # and is not the residual itself
