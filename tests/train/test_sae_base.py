"""train/sae/base.py: construction from a run's config (the registry), the loss terms by hand,
TopK / BatchTopK (SAELens recipes), and decoder-norm folding (one home for eval and SAELens)."""

from __future__ import annotations

import pytest
import torch

from orthosae.common.config import RunConfig
from orthosae.train.sae import AdaptiveOrthoSAE, BaselineSAE, FixedOrthoSAE, contiguous_groups, is_grouped, make_sae
from orthosae.train.sae.base import fold_decoder_norms
from orthosae.train.trainer import Trainer
from tests._sae import D, S, adaptive, all_variants, coeffs, run


def test_make_sae_types_and_unknown():
    b, f, a = all_variants()
    assert type(b) is BaselineSAE and type(f) is FixedOrthoSAE and type(a) is AdaptiveOrthoSAE
    assert b.architecture == f.architecture == "standard" and a.architecture == "orthosae_grouped"
    assert [is_grouped(s) for s in (b, f, a)] == [False, False, True]
    with pytest.raises(ValueError, match="'bogus'"):
        make_sae(run("bogus"), D)


def test_init_shapes_tied_unit_norm_and_seeded():
    for sae in all_variants():
        assert sae.W_enc.shape == (D, S) and sae.W_dec.shape == (S, D)
        assert sae.b_enc.shape == (S,) and sae.b_dec.shape == (D,)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(S))
        torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
        assert not sae.b_enc.any() and not sae.b_dec.any()
        again = make_sae(RunConfig.from_dict(sae.cfg.to_dict()), D)  # what cfg.json saves rebuilds it
        assert again.cfg == sae.cfg
        torch.testing.assert_close(again.W_dec, sae.W_dec)
    assert not torch.equal(make_sae(run("baseline", seed=1), D).W_dec, all_variants()[0].W_dec)
    a = adaptive()
    assert a.group_bias.shape == (2, D) and a.groups.dtype == torch.int64
    torch.testing.assert_close(a.groups, contiguous_groups(S, 2))
    assert "groups" in a.state_dict()  # learned groups are saved
    mean = torch.arange(D, dtype=torch.float32)
    a.init_b_dec(mean)
    torch.testing.assert_close(a.b_dec.data, mean)


def test_recon_and_sparse_terms_by_hand():
    sae = make_sae(RunConfig.of("baseline", d_sae=3), 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))  # row norms 1, 2, √2
        sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[2.5, 3.0], [0.5, 0.0]])
    # token 0: x − b_dec = (2, 3) → pre = (2, 2, −1) → f = (2, 2, 0) → x̂ = (2, 4) + b_dec = (2.5, 4)
    # token 1: x − b_dec = (0, 0) → pre = (0, −1, 0) → f = 0 → x̂ = b_dec = (0.5, 0)
    out = sae.training_forward(x, coeffs(lambda1=0.5))
    torch.testing.assert_close(out.f, torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.x_hat, torch.tensor([[2.5, 4.0], [0.5, 0.0]]))
    recon = ((0.0**2 + 1.0**2) + 0.0) / 2  # Σ_d over d_model, mean over tokens
    sparse = ((2 * 1 + 2 * 2 + 0) + 0) / 2  # Σ_i f_i ||W_dec[i]||, mean over tokens
    torch.testing.assert_close(out.recon, torch.tensor(recon))
    torch.testing.assert_close(out.sparse, torch.tensor(sparse))
    assert out.ortho is None  # the baseline has no L_ortho
    torch.testing.assert_close(out.total, torch.tensor(recon + 0.5 * sparse))
    half = sae.training_forward(x, coeffs(lambda1=0.25))
    torch.testing.assert_close(half.total, torch.tensor(recon + 0.25 * sparse))


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 2


@pytest.mark.parametrize("kind", ["baseline", "fixed", "adaptive"])
def test_topk_keeps_exactly_k_per_row(kind):
    sae = make_sae(run(kind, activation="topk", k=3, lambda2_max=0.1), D)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: TopK then keeps exactly k
        x = _data()
        f = sae.encode(x)
        assert ((f > 0).sum(-1) == 3).all()
        pre = sae.pre_activations(x)
        kept = torch.topk(pre, 3, dim=-1).indices
        assert torch.equal((f > 0), torch.zeros_like(f, dtype=torch.bool).scatter_(-1, kept, True))
        torch.testing.assert_close(f.gather(-1, kept), pre.gather(-1, kept))
        sae.b_enc.fill_(0.0)
        assert ((sae.encode(x) > 0).sum(-1) <= 3).all()  # ReLU after TopK: at most k
    out = sae.training_forward(x, coeffs())
    assert ((out.f > 0).sum(-1) <= 3).all() and out.f.shape == (64, S)


@pytest.mark.parametrize("kind", ["baseline", "fixed", "adaptive"])
def test_batchtopk_keeps_k_per_row_on_average_and_learns_its_threshold(kind):
    sae = make_sae(run(kind, activation="batchtopk", k=4, lambda2_max=0.1), D)
    x = _data(50)
    out = sae.training_forward(x, coeffs())
    active = (out.f > 0).sum(-1)
    assert int(active.sum()) == 4 * 50 and float(active.float().mean()) == 4.0
    assert active.min() < active.max()  # per row it varies: the budget is the batch's
    pre = sae.pre_activations(x).detach().relu()
    assert torch.equal(out.f > 0, pre >= torch.topk(pre.flatten(), 200).values.min())
    # θ ← 0.99·θ + 0.01·(smallest kept activation), SAELens' update_topk_threshold
    smallest = out.f[out.f > 0].min()
    torch.testing.assert_close(sae.threshold, torch.full((S,), 0.01 * float(smallest)))
    with torch.no_grad():
        sae.threshold.fill_(float(smallest))
        f = sae.encode(x)  # inference: JumpReLU at θ, row by row
        assert torch.equal(f > 0, sae.pre_activations(x) > smallest)
        assert abs(float((f > 0).sum(-1).float().mean()) - 4.0) <= 0.5
    with torch.no_grad():  # no threshold update outside training
        sae.training_forward(x, coeffs())
    assert torch.equal(sae.threshold, torch.full((S,), float(smallest)))


def test_topk_training_lands_on_k_and_learns(tmp_path):
    """TopK trains (loss falls) and the exported architecture names follow SAELens."""
    torch.manual_seed(0)
    archs = {}
    for kind, act in [("baseline", "topk"), ("fixed", "batchtopk"), ("adaptive", "topk"), ("adaptive", "batchtopk")]:
        r = run(kind, activation=act, k=2, l1_coefficient=0.0, lr=1e-2, lr_warmup_steps=0, lambda2_max=0.1)
        sae = make_sae(r, D)
        trainer = Trainer(r, sae, 60)
        first = last = None
        for step in range(60):
            x = _data(32, seed=step % 5)
            rec = trainer.train_step(x, torch.arange(32) < 16)
            if rec:
                first = first or rec["recon"]
                last = rec
        assert last["recon"] < first and last["l0"] == pytest.approx(2.0, abs=1e-6 if act == "batchtopk" else 0.01)
        archs[(kind, act)] = sae.architecture
    assert archs == {
        ("baseline", "topk"): "topk",
        ("fixed", "batchtopk"): "jumprelu",
        ("adaptive", "topk"): "orthosae_grouped",
        ("adaptive", "batchtopk"): "orthosae_grouped",
    }


@pytest.mark.parametrize(
    "kind,keys",
    [
        ("baseline", {}),
        ("fixed", {"activation": "batchtopk", "k": 3}),
        ("adaptive", {}),
        ("adaptive", {"activation": "topk", "k": 3}),
    ],
)
def test_folding_decoder_norms_keeps_reconstructions_and_unit_rows(kind, keys):
    """W_dec rows at norm c (as an export's 1/scale): the fold moves c into the encoder (f scales by
    c), keeps x̂, and for the grouped SAE scales τ by c so the bias mix π is unchanged; batchtopk's
    θ scales with the pre-activations. The original SAE is left as it was."""
    sae = make_sae(run(kind, lambda2_max=0.1, **keys), D)
    with torch.no_grad():
        sae.W_dec.mul_(4.0)
        if is_grouped(sae):
            sae.group_bias.copy_(torch.randn(2, D, generator=torch.Generator().manual_seed(1)))
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.5)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    x = _data(32)
    folded = fold_decoder_norms(sae)
    with torch.no_grad():
        torch.testing.assert_close(folded.W_dec.norm(dim=1), torch.ones(S))
        torch.testing.assert_close(folded.encode(x), 4.0 * sae.encode(x))
        torch.testing.assert_close(folded(x), sae(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, sae.state_dict()[k]) for k, v in before.items())  # a copy was folded
    if is_grouped(sae):
        assert float(folded.tau) == pytest.approx(4.0 * float(sae.tau))


@pytest.mark.parametrize("keys", [{}, {"activation": "topk", "k": 3}])
def test_folding_non_uniform_decoder_norms_is_refused_where_it_would_change_the_output(keys):
    """Non-uniform norms would change the grouped SAE's π and the TopK choice: the fold raises; a
    plain ReLU SAE folds them."""
    scales = torch.linspace(1.0, 3.0, S)[:, None]
    sae = make_sae(run("adaptive", **keys), D)
    with torch.no_grad():
        sae.W_dec.mul_(scales)
    with pytest.raises(ValueError, match="non-uniform decoder norms"):
        fold_decoder_norms(sae)
    plain = make_sae(run("baseline"), D)
    with torch.no_grad():
        plain.W_dec.mul_(scales)
    x = _data(16)
    torch.testing.assert_close(fold_decoder_norms(plain)(x), plain(x).detach(), rtol=1e-5, atol=1e-5)
