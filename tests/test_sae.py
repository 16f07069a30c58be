"""SAE variants: losses, L_ortho (Gram == naive), λ2 schedule, grouping, group biases, health."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from train.sae import (
    AdaptiveOrthoSAE,
    BaselineSAE,
    FixedOrthoSAE,
    GroupStats,
    assign_groups,
    contiguous_groups,
    group_health,
    group_shares,
    make_sae,
    ortho_loss,
    should_stop,
)

D, S = 6, 24
COMMON = dict(l1_coefficient=0.01, seed=0)


def adaptive(**kw) -> AdaptiveOrthoSAE:
    args = dict(d_model=D, d_sae=S, lambda2_max=0.1, t0=10, **COMMON)
    args.update(kw)
    return make_sae("adaptive", **args)


def all_variants():
    return [
        make_sae("baseline", D, S, **COMMON),
        make_sae("fixed", D, S, lambda2=0.1, **COMMON),
        adaptive(),
    ]


# ------------------------------------------------------------------ construction

def test_make_sae_types_and_unknown():
    b, f, a = all_variants()
    assert type(b) is BaselineSAE and type(f) is FixedOrthoSAE and type(a) is AdaptiveOrthoSAE
    assert b.architecture == f.architecture == "standard" and a.architecture == "orthosae_grouped"
    with pytest.raises(ValueError, match="'bogus'"):
        make_sae("bogus", D, S, **COMMON)


def test_init_shapes_tied_unit_norm_and_seeded():
    for sae in all_variants():
        assert sae.W_enc.shape == (D, S) and sae.W_dec.shape == (S, D)
        assert sae.b_enc.shape == (S,) and sae.b_dec.shape == (D,)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(S))
        torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
        assert not sae.b_enc.any() and not sae.b_dec.any()
        hp = sae.hyperparams()
        again = make_sae(hp.pop("run_type"), hp.pop("d_model"), hp.pop("d_sae"), **hp)
        torch.testing.assert_close(again.W_dec, sae.W_dec)
    a = adaptive()
    assert a.group_bias.shape == (2, D) and a.groups.dtype == torch.int64
    torch.testing.assert_close(a.groups, contiguous_groups(S, 2))
    assert a.penalty_groups() is a.groups and "groups" in a.state_dict()
    mean = torch.arange(D, dtype=torch.float32)
    a.init_b_dec(mean)
    torch.testing.assert_close(a.b_dec.data, mean)


# ------------------------------------------------------------------ recon / sparse by hand

def test_recon_and_sparse_terms_by_hand():
    sae = make_sae("baseline", 2, 3, l1_coefficient=0.5, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))  # row norms 1, 2, √2
        sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[2.5, 3.0], [0.5, 0.0]])
    # token 0: x − b_dec = (2, 3) → pre = (2, 2, −1) → f = (2, 2, 0) → x̂ = (2, 4) + b_dec = (2.5, 4)
    # token 1: x − b_dec = (0, 0) → pre = (0, −1, 0) → f = 0 → x̂ = b_dec = (0.5, 0)
    out = sae.training_loss(x, torch.tensor([True, False]), 0)
    torch.testing.assert_close(out.f, torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    recon = ((0.0**2 + 1.0**2) + 0.0) / 2  # Σ_d over d_model, mean over tokens
    sparse = ((2 * 1 + 2 * 2 + 0) + 0) / 2  # Σ_i f_i ||W_dec[i]||, mean over tokens
    torch.testing.assert_close(out.terms["recon"], torch.tensor(recon))
    torch.testing.assert_close(out.terms["sparse"], torch.tensor(sparse))
    torch.testing.assert_close(out.terms["ortho"], torch.tensor(0.0))
    torch.testing.assert_close(out.terms["l0"], torch.tensor(1.0))
    torch.testing.assert_close(out.total, torch.tensor(recon + 0.5 * sparse))
    half = sae.training_loss(x, None, 0, l1_scale=0.5)
    torch.testing.assert_close(half.total, torch.tensor(recon + 0.25 * sparse))


# ------------------------------------------------------------------ L_ortho

def test_ortho_by_hand():
    r = 1 / math.sqrt(2)
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    # W_0ᵀ W_1 = (r, r)ᵀ → ||·||_F = 1
    assert ortho_loss(W, groups, 2, 0.0).item() == pytest.approx(1.0, abs=1e-5)
    # α = 0.5: rectangular I (2×1) has a 1 at (0, 0) → sqrt((r − .5)² + r²)
    expect = math.sqrt((r - 0.5) ** 2 + r**2)
    for naive in (False, True):
        assert ortho_loss(W, groups, 2, 0.5, naive=naive).item() == pytest.approx(expect, abs=1e-5)
    # three groups: pairs (0,1): |<e1, e2>| = 0, (0,2): r, (1,2): r
    g3 = torch.tensor([0, 1, 2])
    assert ortho_loss(W[:2], torch.tensor([0, 1]), 2, 0.0).item() == 0.0  # orthogonal pair: exactly 0
    assert ortho_loss(W, g3, 3, 0.0).item() == pytest.approx(2 * r, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, -0.7, 1.5])
@pytest.mark.parametrize("shape", [(5, 23, 3), (4, 9, 2), (16, 7, 3)])
def test_ortho_gram_equals_naive_value_and_grad(alpha, shape):
    d_model, d_sae, G = shape
    gen = torch.Generator().manual_seed(d_sae)
    W0 = torch.randn(d_sae, d_model, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, G, (d_sae,), generator=gen)
    groups[:G] = torch.arange(G)  # every group non-empty, sizes unequal
    vals, grads = [], []
    for naive in (False, True):
        W = W0.clone().requires_grad_(True)
        v = ortho_loss(W, groups, G, alpha, naive=naive)
        v.backward()
        vals.append(v.detach())
        grads.append(W.grad)
    torch.testing.assert_close(vals[0], vals[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)


def test_ortho_empty_group_contributes_zero():
    W = torch.randn(10, 4, dtype=torch.float64)
    groups = torch.tensor([0] * 5 + [2] * 5)  # group 1 empty
    two = ortho_loss(W, torch.tensor([0] * 5 + [1] * 5), 2, 0.2)
    for naive in (False, True):
        torch.testing.assert_close(ortho_loss(W, groups, 3, 0.2, naive=naive), two)


class MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_ortho_gram_path_is_cheap_at_large_d_sae():
    d_model, d_sae = 64, 16384
    W = torch.randn(d_sae, d_model, requires_grad=True)
    groups = contiguous_groups(d_sae, 2)
    t = time.perf_counter()
    with MaxNumel() as mode:
        loss = ortho_loss(W, groups, 2, alpha=0.1)
        loss.backward()
    assert time.perf_counter() - t < 5.0
    # nothing bigger than W itself; n_g × n_h would be 8192² = 6.7e7 elements
    assert mode.max_numel <= d_sae * d_model < (d_sae // 2) ** 2
    # the whole adaptive training loss, too (tiny batch)
    sae = make_sae("adaptive", d_model, d_sae, lambda2_max=1.0, t0=0, **COMMON)
    with MaxNumel() as mode:
        sae.training_loss(torch.randn(4, d_model), torch.tensor([1, 0, 1, 0]).bool(), 1).total.backward()
    assert mode.max_numel <= d_sae * d_model


# ------------------------------------------------------------------ λ2 schedule

def test_lambda2_schedule():
    a = adaptive(lambda2_max=0.4, t0=100)
    x, fg = torch.randn(8, D), torch.zeros(8, dtype=torch.bool)
    for t, want in [(0, 0.0), (50, 0.2), (100, 0.4), (200, 0.4)]:
        assert a.lambda2_at(t) == pytest.approx(want)
        out = a.training_loss(x, fg, t)
        assert out.terms["lambda2"].item() == pytest.approx(want)
        torch.testing.assert_close(
            out.total, out.terms["recon"] + 0.01 * out.terms["sparse"] + want * out.terms["ortho"])
    assert out.terms["ortho"].item() > 0
    assert adaptive(t0=0).lambda2_at(0) == pytest.approx(0.1)
    f = make_sae("fixed", D, S, lambda2=0.3, **COMMON)
    for t in (0, 50, 100, 200):
        assert f.training_loss(x, fg, t).terms["lambda2"].item() == pytest.approx(0.3)
    b = make_sae("baseline", D, S, **COMMON)
    assert b.training_loss(x, fg, 5).terms["lambda2"].item() == 0.0


def test_lazy_ortho_every_k_steps():
    """every = k: k·λ2·L_ortho on steps ≡ 0 (mod k), nothing on the others; the log keeps the value."""
    x, fg = torch.randn(8, D), torch.zeros(8, dtype=torch.bool)
    lazy = make_sae("fixed", D, S, lambda2=0.3, ortho_every=3, **COMMON)
    plain = make_sae("baseline", D, S, **COMMON)
    plain.load_state_dict(lazy.state_dict())
    applied = lazy.training_loss(x, fg, 0)
    assert applied.terms["ortho"].item() > 0
    torch.testing.assert_close(applied.total, applied.terms["recon"] + 0.01 * applied.terms["sparse"]
                               + 0.9 * applied.terms["ortho"])
    for step in (1, 2):
        skipped = lazy.training_loss(x, fg, step)
        assert skipped.terms["lambda2"].item() == pytest.approx(0.3)  # nominal λ2(t) is logged
        torch.testing.assert_close(skipped.terms["ortho"], applied.terms["ortho"])
        ref = plain.training_loss(x, fg, step)
        torch.testing.assert_close(skipped.total, ref.total)
        lazy.zero_grad(), plain.zero_grad()
        skipped.total.backward(), ref.total.backward()
        torch.testing.assert_close(lazy.W_dec.grad, plain.W_dec.grad)  # no L_ortho gradient
    again = lazy.training_loss(x, fg, 3)
    torch.testing.assert_close(again.total - again.terms["recon"] - 0.01 * again.terms["sparse"],
                               0.9 * again.terms["ortho"])
    a = adaptive(ortho_every=2, t0=0)
    assert a.hyperparams()["ortho_every"] == 2
    assert make_sae(**{"d_model" if k == "d_model" else k: v for k, v in a.hyperparams().items()
                       if k != "run_type"}, run_type="adaptive").ortho_every == 2
    with pytest.raises(ValueError, match="ortho_every must be >= 1"):
        make_sae("fixed", D, S, lambda2=0.3, ortho_every=0, **COMMON)


def test_fixed_groups_are_contiguous_and_not_persistent():
    f = make_sae("fixed", D, S, lambda2=0.3, n_groups=3, **COMMON)
    assert f.penalty_groups().tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert not hasattr(f, "groups") and "block_groups" not in f.state_dict()
    enc = make_sae("fixed", D, S, lambda2=0.3, ortho_weights="encoder", **COMMON)
    with torch.no_grad():
        enc.W_enc.mul_(2.0)
    torch.testing.assert_close(enc.ortho_penalty(0)[0], ortho_loss(enc.W_enc.T, enc.penalty_groups(), 2, 0.0))
    with pytest.raises(ValueError, match="ortho_weights"):
        make_sae("fixed", D, S, lambda2=0.3, ortho_weights="both", **COMMON)


# ------------------------------------------------------------------ grouping

def test_group_stats_normalise_by_row_counts():
    st = GroupStats(3, decay=0.0)
    f = torch.zeros(10, 3)
    f[:, 0] = 1.0  # same per-row mass on forget and retain rows → r = 0.5
    f[0, 1] = 2.0  # only on the (single) forget row → r = 1
    is_forget = torch.zeros(10, dtype=torch.bool)
    is_forget[0] = True
    st.update(f, is_forget)
    r = st.forget_ratio()
    assert r[0].item() == pytest.approx(0.5) and r[1].item() == pytest.approx(1.0)
    assert math.isnan(r[2].item())
    cur = torch.tensor([0, 0, 1])
    assert assign_groups(r, cur, 2).tolist() == [1, 1, 1]  # dead feature 2 keeps its group
    assert assign_groups(torch.tensor([0.0, 0.2, 0.5, 0.99, 1.0]), torch.zeros(5, dtype=torch.long), 3).tolist() == [0, 0, 1, 2, 2]
    assert assign_groups(None, cur, 2).tolist() == cur.tolist()
    only_retain = GroupStats(3, decay=0.0)
    only_retain.update(f, torch.zeros(10, dtype=torch.bool))
    assert only_retain.forget_ratio() is None


def _feature_batch(forget_feats, retain_feats, n=8):
    """f [2n, 8]: features in ``forget_feats`` fire only on forget rows, ``retain_feats`` on retain rows."""
    f = torch.zeros(2 * n, 8)
    is_forget = torch.arange(2 * n) < n
    f[:n, forget_feats] = 1.0
    f[n:, retain_feats] = 1.0
    return f, is_forget


def test_regroup_every_n_steps_and_follows_data():
    a = make_sae("adaptive", 4, 8, lambda2_max=0.1, t0=0, regroup_every=5, stats_decay=0.5, **COMMON)
    assert a.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    lo, hi = [0, 1, 2], [4, 5, 6]  # features 3 and 7 never fire
    f, is_forget = _feature_batch(lo, hi)
    regrouped = []
    for step in range(1, 21):
        out = a.on_step_end(step, f, is_forget)
        assert sum(out["group_sizes"]) == 8
        if out["regrouped"]:
            regrouped.append(step)
            assert len(out["cond"]) == 2 and len(out["eff_rank"]) == 2
        if step == 5:
            assert out["n_moved"] == 6
            # forget-only features → group 1 (G−1 = forget), retain-only → group 0, dead keep theirs
            assert a.groups.tolist() == [1, 1, 1, 0, 0, 0, 0, 1]
    assert regrouped == [5, 10, 15, 20]
    f2, _ = _feature_batch(hi, lo)  # flip: old forget features now fire on retain rows only
    for step in range(21, 31):
        out = a.on_step_end(step, f2, is_forget)
    assert out["regrouped"] and a.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_regroup_on_real_forward_pass_moves_features():
    torch.manual_seed(0)
    a = make_sae("adaptive", 4, 8, lambda2_max=0.1, t0=0, regroup_every=3, **COMMON)
    x = torch.randn(16, 4)
    fg = torch.arange(16) < 8
    out = a.training_loss(x, fg, 1)
    for s in (1, 2, 3):
        info = a.on_step_end(s, out.f, fg)
    assert info["regrouped"]
    r = a.group_stats.forget_ratio()
    live = ~torch.isnan(r)
    assert torch.equal(a.groups[live], (r[live] >= 0.5).long())


# ------------------------------------------------------------------ group biases

def test_group_bias_is_applied_per_token():
    a = make_sae("adaptive", 3, 4, lambda2_max=0.0, t0=0, **COMMON)  # groups [0, 0, 1, 1]
    with torch.no_grad():
        a.group_bias.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0]]))
        a.b_dec.copy_(torch.tensor([0.0, 0.0, 5.0]))
    f = torch.tensor([
        [1.0, 2.0, 0.0, 0.0],  # only group 0 → + group_bias[0]
        [0.0, 0.0, 0.5, 0.0],  # only group 1 → + group_bias[1]
        [0.0, 0.0, 0.0, 0.0],  # nothing active → b_dec only
        [1.0, 0.0, 3.0, 0.0],  # π = (1/4, 3/4)
    ])
    extra = a.decode(f) - f @ a.W_dec
    want = torch.tensor([[1.0, 0.0, 5.0], [0.0, 10.0, 5.0], [0.0, 0.0, 5.0], [0.25, 7.5, 5.0]])
    torch.testing.assert_close(extra, want)
    torch.testing.assert_close(group_shares(f, a.groups, 2)[3], torch.tensor([0.25, 0.75]))
    # leading dimensions are kept
    torch.testing.assert_close(a.decode(f.view(2, 2, 4)), a.decode(f).view(2, 2, 3))


def test_group_biases_learn_different_offsets():
    torch.manual_seed(0)
    d = 8
    a = make_sae("adaptive", d, 32, lambda2_max=0.1, t0=10, regroup_every=5, l1_coefficient=1e-3, seed=1)
    mu_f, mu_r = torch.zeros(d), torch.zeros(d)
    mu_f[0], mu_r[1] = 4.0, 4.0
    opt = torch.optim.Adam(a.parameters(), lr=1e-2)
    for step in range(1, 31):
        fg = torch.arange(64) < 32
        x = torch.randn(64, d) * 0.3 + torch.where(fg[:, None], mu_f, mu_r)
        out = a.training_loss(x, fg, step)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        a.on_step_end(step, out.f, fg)
    gb = a.group_bias.detach()
    assert (gb[0] - gb[1]).norm() > 0.05
    assert not torch.allclose(gb[0], gb[1])


# ------------------------------------------------------------------ decoder norms

def test_decoder_rows_unit_norm_after_step():
    for sae in all_variants():
        opt = torch.optim.SGD(sae.parameters(), lr=1.0)
        fg = torch.arange(16) < 8
        out = sae.training_loss(torch.randn(16, D) * 3, fg, 20)
        out.total.backward()
        opt.step()
        assert not torch.allclose(sae.W_dec.norm(dim=1), torch.ones(S), atol=1e-4)
        sae.on_step_end(20, out.f, fg)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(S))


# ------------------------------------------------------------------ health

def test_condition_numbers_and_effective_ranks():
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    ortho = Q[:3]  # 3 orthonormal rows
    diag = torch.tensor([[3.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]], dtype=torch.float64)
    W = torch.cat([ortho, diag])
    groups = torch.tensor([0, 0, 0, 1, 1])
    torch.testing.assert_close(group_health(W, groups, 2)[0], torch.tensor([1.0, 3.0], dtype=torch.float64))
    er = group_health(W, groups, 2)[1]
    assert er[0].item() == pytest.approx(3.0)
    p = torch.tensor([0.75, 0.25])
    assert er[1].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    # empty group → nan, one feature → 1, rank-deficient → inf; more features than d_model is fine
    c = group_health(W, torch.tensor([0, 0, 0, 0, 2]), 3)[0]
    assert math.isnan(c[1].item()) and c[2].item() == 1.0
    assert group_health(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0]), 1)[0][0] == math.inf
    wide = torch.randn(40, 4)
    assert torch.isfinite(group_health(wide, contiguous_groups(40, 2), 2)[0]).all()
    assert should_stop(torch.tensor([1.0, 3.0]), 2.5)
    assert not should_stop(torch.tensor([1.0, 3.0]), 3.5)
    assert not should_stop([math.nan, 1.0], 2.0) and should_stop([math.inf], 1e9)
    assert not should_stop([], 2.0)


def test_training_decode_skips_clamp_only_for_encoder_output():
    a = adaptive()
    x = torch.randn(16, D)
    with torch.no_grad():
        a.group_bias.copy_(torch.randn(2, D))
    f = a.encode(x)
    assert (f >= 0).all()
    torch.testing.assert_close(a.decode(f, nonneg=True), a.decode(f))
    torch.testing.assert_close(group_shares(f, a.groups, 2, nonneg=True), group_shares(f, a.groups, 2))
    out = a.training_loss(x, torch.zeros(16, dtype=torch.bool), 0)
    assert torch.equal(out.fired, (out.f > 0).any(0))
    assert out.terms["l0"].item() == pytest.approx((out.f > 0).sum(-1).float().mean().item())


def test_group_shares_ignore_negative_clamped_activations():
    """A feature clamped to −m (unlearning intervention) must not blow up the group-bias mix."""
    from train.sae.adaptive_ortho import group_shares
    groups = torch.tensor([0, 0, 1, 1])
    f = torch.tensor([[2.0, -25.0, 1.0, 0.0], [0.0, -25.0, 0.0, 0.0]])
    pi = group_shares(f, groups, 2)
    assert torch.allclose(pi, torch.tensor([[2 / 3, 1 / 3], [0.0, 0.0]]))


def test_group_spectra_match_svd_for_wide_and_tall_groups():
    """The Gram/eigvalsh shortcut gives the SVD's condition numbers and effective ranks."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 16, generator=g, dtype=torch.float64)
    groups = torch.tensor([0] * 30 + [1] * 10)  # 30 > d_model rows, 10 < d_model rows
    conds, ranks = group_health(W, groups, 2)
    for k, idx in enumerate((slice(0, 30), slice(30, 40))):
        s = torch.linalg.svdvals(W[idx])
        assert conds[k].item() == pytest.approx((s[0] / s[-1]).item(), rel=1e-8)
        p = s / s.sum()
        assert ranks[k].item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-8)
