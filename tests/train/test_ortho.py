"""train/sae/ortho.py: L_ortho's three forms by hand, the Gram forms against the explicit n_g × n_h
reference (``naive_ortho_loss``, here: it was ``ortho_loss(naive=True)`` in the product), activity
weights, empty groups, memory, bfloat16 Grams, and the matmul precision L_ortho always runs at."""

from __future__ import annotations

import math

import pytest
import torch

from orthosae.train.sae import contiguous_groups, make_sae, ortho_loss
from orthosae.train.sae.ortho import matmul_precision
from tests._dispatch import MatmulDtypes, MaxNumel
from tests._sae import coeffs, run


def naive_ortho_loss(W, groups, n_groups, alpha=0.0, mode="rms", activity=None, eps=1e-12):
    """The reference: every pair of groups' n_g × n_h cross products formed explicitly (rms and
    hinge on unit rows, weighted by activity; seed on raw rows against the rectangular identity)."""
    idx = [torch.nonzero(groups == g, as_tuple=True)[0] for g in range(n_groups)]
    if mode != "seed":
        W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total = W.new_zeros(())
    for g in range(n_groups):
        for h in range(g + 1, n_groups):
            if not (len(idx[g]) and len(idx[h])):
                continue
            A, B = W[idx[g]], W[idx[h]]
            C = A @ B.T
            if mode == "seed":
                M = C - alpha * torch.eye(C.shape[0], C.shape[1], dtype=W.dtype)
                total = total + (torch.sqrt(M.pow(2).sum() + eps) - eps**0.5)
                continue
            C = torch.relu(C.abs() - alpha).pow(2) if mode == "hinge" else C.pow(2)
            if activity is None:
                n = A.shape[0] * B.shape[0]
            else:
                wa, wb = activity[idx[g]], activity[idx[h]]
                C = C * wa[:, None] * wb[None, :]
                n = wa.sum() * wb.sum()
                n = torch.where(n > 0, n, torch.ones_like(n))
            mean = C.sum() / n
            total = total + A.shape[1] * (mean if mode == "hinge" else torch.relu(mean - alpha * alpha))
    return total


def loss_of(W, groups, n_groups, alpha=0.0, mode="rms", naive=False, **kw):
    """The product's L_ortho, or with ``naive=True`` the explicit reference above."""
    return (
        naive_ortho_loss(W, groups, n_groups, alpha, mode, **kw)
        if naive
        else ortho_loss(W, groups, n_groups, alpha, mode, **kw)
    )


def test_ortho_seed_form_by_hand():
    r = 1 / math.sqrt(2)
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    # W_0ᵀ W_1 = (r, r)ᵀ → ||·||_F = 1
    assert loss_of(W, groups, 2, 0.0, "seed").item() == pytest.approx(1.0, abs=1e-5)
    # α = 0.5: rectangular I (2×1) has a 1 at (0, 0) → sqrt((r − .5)² + r²)
    expect = math.sqrt((r - 0.5) ** 2 + r**2)
    for naive in (False, True):
        assert loss_of(W, groups, 2, 0.5, "seed", naive=naive).item() == pytest.approx(expect, abs=1e-5)
    # three groups: pairs (0,1): |<e1, e2>| = 0, (0,2): r, (1,2): r
    g3 = torch.tensor([0, 1, 2])
    assert loss_of(W[:2], torch.tensor([0, 1]), 2, 0.0, "seed").item() == 0.0  # orthogonal pair: exactly 0
    assert loss_of(W, g3, 3, 0.0, "seed").item() == pytest.approx(2 * r, abs=1e-5)


def test_ortho_rms_and_hinge_by_hand():
    """Cross cosines of the pair below are r, r (rows scaled by 3: only directions count)."""
    r = 1 / math.sqrt(2)
    W = 3 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    d = 2  # both forms count in units of the random level 1/d_model
    for naive in (False, True):
        # rms: mean squared cosine (r² + r²)/2 = 0.5, beyond α²
        assert loss_of(W, groups, 2, 0.0, "rms", naive=naive).item() == pytest.approx(d * 0.5)
        assert loss_of(W, groups, 2, 0.5, "rms", naive=naive).item() == pytest.approx(d * 0.25)
        assert loss_of(W, groups, 2, 0.75, "rms", naive=naive).item() == 0.0  # within the allowance
    # hinge: mean over pairs of relu(|cos| − α)²
    assert loss_of(W, groups, 2, 0.5, "hinge").item() == pytest.approx(d * (r - 0.5) ** 2)
    assert loss_of(W, groups, 2, 0.8, "hinge").item() == 0.0


def test_alpha_moves_the_principled_loss_but_barely_the_seed_form():
    """At init (random unit rows) α = 0.1–0.3 moves the seed form by a few % (it pairs features by
    index); the rms form is its mean squared cosine minus α², so α past the random level zeroes it."""
    d, n = 64, 256
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    groups = contiguous_groups(n, 2)
    seed = [loss_of(W / W.norm(dim=1, keepdim=True), groups, 2, a, "seed").item() for a in (0.0, 0.1, 0.3)]
    assert max(seed) / min(seed) < 1.05
    rms = [loss_of(W, groups, 2, a, "rms").item() for a in (0.0, 0.5 / math.sqrt(d), 2 / math.sqrt(d))]
    assert rms[0] == pytest.approx(1.0, rel=0.15)  # random level: mean cos² = 1/d, i.e. 1 in its units
    assert rms[1] == pytest.approx(rms[0] - 0.25) and rms[2] == 0.0


@pytest.mark.parametrize("mode", ["seed", "rms"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, -0.7, 1.5])
@pytest.mark.parametrize("shape", [(5, 23, 3), (4, 9, 2), (16, 7, 3)])
def test_ortho_gram_equals_naive_value_and_grad(alpha, shape, mode):
    d_model, d_sae, G = shape
    gen = torch.Generator().manual_seed(d_sae)
    W0 = torch.randn(d_sae, d_model, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, G, (d_sae,), generator=gen)
    groups[:G] = torch.arange(G)  # every group non-empty, sizes unequal
    vals, grads = [], []
    for naive in (False, True):
        W = W0.clone().requires_grad_(True)
        v = loss_of(W, groups, G, alpha, mode, naive=naive)
        v.backward()
        vals.append(v.detach())
        grads.append(W.grad)
    torch.testing.assert_close(vals[0], vals[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("mode", ["rms", "hinge"])
def test_activity_weighted_ortho_gram_equals_naive_and_weights_pairs(mode):
    gen = torch.Generator().manual_seed(5)
    W0 = torch.randn(23, 6, generator=gen, dtype=torch.float64)
    groups = torch.tensor([0] * 10 + [1] * 13)
    w = torch.rand(23, generator=gen, dtype=torch.float64)
    vals, grads = [], []
    for naive in (False, True):
        W = W0.clone().requires_grad_(True)
        v = loss_of(W, groups, 2, 0.1, mode, naive=naive, activity=w)
        v.backward()
        vals.append(v.detach()), grads.append(W.grad)
    torch.testing.assert_close(vals[0], vals[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)
    # equal weights are the unweighted mean; a zero-weight feature neither counts nor moves
    torch.testing.assert_close(
        loss_of(W0, groups, 2, 0.1, mode, activity=torch.full((23,), 3.0, dtype=torch.float64)),
        loss_of(W0, groups, 2, 0.1, mode),
    )
    w0 = w.clone()
    w0[4] = 0.0
    W = W0.clone().requires_grad_(True)
    loss_of(W, groups, 2, 0.0, mode, activity=w0).backward()
    assert W.grad[4].abs().max() == 0
    keep = torch.arange(23) != 4
    torch.testing.assert_close(
        loss_of(W0, groups, 2, 0.0, mode, activity=w0), loss_of(W0[keep], groups[keep], 2, 0.0, mode, activity=w0[keep])
    )
    silent = torch.where(groups == 1, 0.0, 1.0).to(torch.float64)  # a group with no activity: 0
    assert loss_of(W0, groups, 2, 0.0, mode, activity=silent).item() == 0.0


@pytest.mark.parametrize("mode", ["seed", "rms", "hinge"])
def test_ortho_empty_group_contributes_zero(mode):
    W = torch.randn(10, 4, dtype=torch.float64)
    groups = torch.tensor([0] * 5 + [2] * 5)  # group 1 empty
    two = loss_of(W, torch.tensor([0] * 5 + [1] * 5), 2, 0.2, mode)
    for naive in (False, True):
        torch.testing.assert_close(loss_of(W, groups, 3, 0.2, mode, naive=naive), two)


def test_ortho_gram_path_is_cheap_at_large_d_sae():
    d_model, d_sae = 64, 16384
    W = torch.randn(d_sae, d_model, requires_grad=True)
    groups = contiguous_groups(d_sae, 2)
    with MaxNumel() as mode:
        loss = loss_of(W, groups, 2, alpha=0.1, mode="rms")
        loss.backward()
    # nothing bigger than W itself; n_g × n_h would be 8192² = 6.7e7 elements
    assert mode.max_numel <= d_sae * d_model < (d_sae // 2) ** 2
    # the whole adaptive training loss, too (tiny batch)
    sae = make_sae(run("adaptive", d_sae=d_sae), d_model)
    with MaxNumel() as mode:
        sae.training_forward(torch.randn(4, d_model), coeffs(ortho_weight=1.0)).total.backward()
    assert mode.max_numel <= d_sae * d_model


def test_bfloat16_grams_run_in_bfloat16_and_stay_close_to_float32():
    """``gram_dtype = "bfloat16"``: the Grams' products (forward and backward) take bf16 inputs, and
    value and gradient stay within 1e-3 and 2e-2 of float32 (activity weights, an empty-weight row)."""
    gen = torch.Generator().manual_seed(3)
    W0 = torch.randn(300, 64, generator=gen)
    groups = torch.randint(0, 2, (300,), generator=gen)
    w = torch.rand(300, generator=gen)
    w[:7] = 0.0
    out = {}
    for dtype in ("float32", "bfloat16"):
        W = W0.clone().requires_grad_(True)
        with MatmulDtypes() as seen:
            v = loss_of(W, groups, 2, 0.0, "rms", activity=w, gram_dtype=dtype)
            v.backward()
        out[dtype] = (v.detach(), W.grad, seen.seen)
    (v32, g32, mm32), (v16, g16, mm16) = out["float32"], out["bfloat16"]
    assert {t for s in mm32 for t in s} == {torch.float32}
    assert sum(all(t == torch.bfloat16 for t in s) for s in mm16) == 4  # 2 Grams + 2 backward products
    assert abs(v16 - v32) / v32 < 1e-3
    assert (g16 - g32).norm() / g32.norm() < 2e-2 and g16[:7].abs().max() == 0.0
    with pytest.raises(ValueError, match="gram_dtype 'bfloat16' is for the exact rms form only"):
        loss_of(W0, groups, 2, 0.0, "hinge", gram_dtype="bfloat16")


@pytest.mark.parametrize("G, empty", [(1, None), (3, 1), (4, 0)])
def test_gram_rms_with_one_group_or_an_empty_one(G, empty):
    """One group: no pair, exactly 0 and a zero gradient. An empty group: its pairs give exactly 0;
    the rest equal the naive form in value and gradient."""
    gen = torch.Generator().manual_seed(G)
    W0 = torch.randn(40, 16, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, G, (40,), generator=gen)
    if empty is not None:
        groups[groups == empty] = (empty + 1) % G
    w = torch.rand(40, generator=gen, dtype=torch.float64)
    res = []
    for naive in (False, True) if G > 1 else (False,):  # the naive form has no graph without a pair
        W = W0.clone().requires_grad_(True)
        v = loss_of(W, groups, G, 0.01, "rms", naive=naive, activity=w)
        v.backward()
        res.append((v.detach(), W.grad))
    if G == 1:
        assert res[0][0].item() == 0.0 and not res[0][1].any()
        return
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-7, atol=1e-12)


def test_matmul_precision_holds_inside_the_block_only():
    """The process-wide float32 matmul precision is set for the block and restored after, also when
    the block raises (the Trainer sets "high" around its step; L_ortho always "highest")."""
    before = torch.get_float32_matmul_precision()
    with matmul_precision("high"):
        assert torch.get_float32_matmul_precision() == "high"
        with matmul_precision("highest"):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), matmul_precision("high"):
        raise RuntimeError("boom")
    assert torch.get_float32_matmul_precision() == before
