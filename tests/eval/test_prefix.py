"""eval.prefix: an intervention rerun from the cached block output gives the full forward's CE."""

from __future__ import annotations

import torch

from orthosae.eval.downstream import final_hidden, splice, token_ce
from orthosae.eval.prefix import PrefixCache
from orthosae.eval.unlearning import clamp_features
from tests._identity_sae import RandomSAE


def _model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_cached_prefix_gives_the_full_forward_ce(tiny_model_dir):
    model = _model(tiny_model_dir)
    d = model.config.hidden_size
    ids = torch.randint(4, 260, (3, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    sae = RandomSAE(d, 40, seed=1)
    fn = clamp_features(sae, [0, 3, 5, 7], 5.0)
    with torch.no_grad():
        for layer in (0, 1):
            prefix = PrefixCache(model, layer)
            clean_full = token_ce(model, ids)
            clean = token_ce(model, ids, prefix=prefix)  # records
            with splice(model, layer, fn):
                edited_full = token_ce(model, ids)
                edited = token_ce(model, ids, prefix=prefix)  # served from the cache
            assert prefix.hits == 1 and len(prefix.store) == 1
            assert torch.allclose(clean, clean_full, atol=1e-6)
            assert torch.allclose(edited, edited_full, atol=1e-5)
            assert (edited - clean).abs().max() > 1e-3  # the clamp changed something: a real test
            # blocks are restored after a served call
            assert torch.allclose(final_hidden(model, ids), final_hidden(model, ids, prefix=prefix), atol=1e-6)


def test_blocks_before_the_layer_do_not_run_when_served(tiny_model_dir):
    from orthosae.common.model import decoder_layers

    model = _model(tiny_model_dir)
    ids = torch.randint(4, 260, (2, 8), generator=torch.Generator().manual_seed(3))
    prefix = PrefixCache(model, 0)
    calls = []
    real = type(decoder_layers(model)[0]).forward
    decoder_layers(model)[0].register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    assert len(decoder_layers(model)) == 2  # block 1 still runs: the test separates the two
    with torch.no_grad():
        prefix.hidden(lambda: final_hidden(model, ids), ids, None)
        n_first = len(calls)
        counted = []
        first = decoder_layers(model)[0]  # the class is shared by every block: count block 0 only
        type(first).forward = lambda self, *a, **k: (self is first and counted.append(1)) or real(self, *a, **k)
        try:
            final_hidden(model, ids, prefix=prefix)
        finally:
            type(decoder_layers(model)[0]).forward = real
    assert n_first == 1 and counted == [] and prefix.hits == 1  # the cached call never ran block 0's real forward
