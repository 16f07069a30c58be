"""eval.downstream on the tiny random Gemma2: splicing, CE/KL scores, hook hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import orthosae.eval.downstream as ds
from orthosae.common.model import decoder_layers
from tests._identity_sae import IdentitySAE, ZeroSAE

LAYER = 0


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def contexts():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 260, (5, 12), generator=g)
    ids[:, 0] = 2  # BOS
    return ids


def _block_out(model, ids):
    """Block LAYER's output, captured by a plain hook."""
    seen = {}
    h = decoder_layers(model)[LAYER].register_forward_hook(
        lambda m, i, o: seen.__setitem__("x", (o[0] if isinstance(o, tuple) else o).clone())
    )
    try:
        with torch.no_grad():
            model(ids)
    finally:
        h.remove()
    return seen["x"]


def test_head_and_ce_match_full_forward(model, contexts, monkeypatch):
    monkeypatch.setattr(ds, "LOGIT_BUDGET", 3 * 512)  # force several position chunks
    with torch.no_grad():
        logits = model(contexts).logits
        ours = ds.head_logits(model, ds.final_hidden(model, contexts))
        ce = ds.token_ce(model, contexts)
    assert torch.allclose(ours, logits.float(), atol=1e-5)
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), contexts[:, 1:].flatten(), reduction="none")
    assert torch.allclose(ce.flatten(), ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_ce_in_row_slices_is_bit_identical_to_one_loss_per_chunk(model, contexts, monkeypatch, dtype):
    """The loss runs a few rows at a time (CE_ROWS_BUDGET) to stay in cache: every row's loss is
    the one cross_entropy over the whole chunk gives, bit for bit, in float32 and from bf16 logits."""
    m = model.to(dtype)
    try:
        monkeypatch.setattr(ds, "HEAD_ROWS", 15)  # head calls of 3 positions x 5 contexts = 15 rows
        monkeypatch.setattr(ds, "CE_ROWS_BUDGET", 4 * 512)  # losses of 4 rows at a time: 4 + 4 + 4 + 3
        with torch.no_grad():
            hidden = ds.final_hidden(m, contexts)
            ce = ds.token_ce(m, contexts, hidden=hidden)
            expected = torch.cat(
                [
                    F.cross_entropy(
                        ds.head_logits(m, hidden[:, s : min(s + 3, 11)]).flatten(0, 1),
                        contexts[:, s + 1 : s + 4].flatten(),
                        reduction="none",
                    ).view(5, -1)
                    for s in range(0, 11, 3)
                ],
                dim=1,
            )
    finally:
        model.float()
    assert ce.shape == (5, 11) and ce.dtype == torch.float32
    assert torch.equal(ce, expected)


def test_identity_sae_scores_one(model, contexts):
    both = ds.spliced_ce(model, LAYER, {"id": IdentitySAE(64), "zero": ZeroSAE(64)}, contexts, batch_size=2)
    m = both["id"]
    assert both["zero"]["ce_loss_score"] == pytest.approx(0.0, abs=1e-4)  # one pass serves both
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert m["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6)
    assert m["kl_div_score"] == pytest.approx(1.0, abs=1e-4)
    assert m["ce_loss_with_ablation"] != m["ce_loss_without_sae"]
    assert m["n_tokens_ce"] == 5 * (12 - 2)


def test_zero_sae_scores_zero(model, contexts, monkeypatch):
    m = ds.spliced_ce(model, LAYER, {"z": ZeroSAE(64)}, contexts, batch_size=3)["z"]
    assert m["ce_loss_score"] == pytest.approx(0.0, abs=1e-4)
    assert m["kl_div_score"] == pytest.approx(0.0, abs=1e-4)
    monkeypatch.setattr(ds, "LOGIT_BUDGET", 2 * 512)  # chunking must not change the numbers
    m2 = ds.spliced_ce(model, LAYER, {"z": ZeroSAE(64)}, contexts, batch_size=5)["z"]
    assert m2["ce_loss_with_sae"] == pytest.approx(m["ce_loss_with_sae"], rel=1e-6)
    # SAEBench's zero-ablation also zeroes BOS: a different (larger-damage) baseline
    m3 = ds.spliced_ce(model, LAYER, {"z": ZeroSAE(64)}, contexts, batch_size=5, ablate_bos=True)["z"]
    assert m3["ce_loss_with_ablation"] != pytest.approx(m["ce_loss_with_ablation"], rel=1e-9)


def test_splice_skips_bos_and_is_removed(model, contexts):
    clean = _block_out(model, contexts)
    with ds.splice(model, LAYER, ds.zero_fn):
        spliced = _block_out(model, contexts)
    assert torch.equal(spliced[:, 0], clean[:, 0]) and spliced[:, 1:].abs().max() == 0
    with torch.no_grad():
        before = model(contexts).logits
    with pytest.raises(RuntimeError):
        with ds.splice(model, LAYER, ds.zero_fn):
            raise RuntimeError("boom")
    with torch.no_grad():
        after = model(contexts).logits
    assert torch.equal(before, after)
    assert not decoder_layers(model)[LAYER]._forward_hooks


class _TupleBlock(nn.Module):
    def forward(self, x):
        return x + 1, "extra"


class _Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_TupleBlock()])


def test_splice_handles_tuple_outputs():
    w = _Wrapper()
    x = torch.zeros(2, 4, 3)
    with ds.splice(w, 0, lambda r: r * 10):
        out, extra = w.model.layers[0](x)
    assert extra == "extra"
    assert torch.equal(out[:, 0], torch.ones(2, 3)) and torch.equal(out[:, 1:], torch.full((2, 3, 3), 10.0))


def test_lm_head_slice_is_sized_by_the_device(monkeypatch):
    assert ds.logit_budget(torch.device("cpu")) == ds.LOGIT_BUDGET
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * 2**30, 80 * 2**30))
    big = ds.logit_budget(torch.device("cuda"))
    assert ds.LOGIT_BUDGET < big <= 60 * 2**30 // (4 * ds.GPU_LOGIT_DIVISOR)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 80 * 2**30))
    assert ds.logit_budget(torch.device("cuda")) == ds.LOGIT_BUDGET  # never below the CPU slice
