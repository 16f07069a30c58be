"""SAE variants: losses, L_ortho (Gram == naive), λ2 schedule, grouping, group biases, health."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common.config import RunConfig
from train.sae import (
    SAE,
    AdaptiveOrthoSAE,
    Coefficients,
    FixedOrthoSAE,
    GroupStats,
    assign_groups,
    contiguous_groups,
    group_health,
    group_shares,
    is_grouped,
    make_sae,
    ortho_loss,
    max_cosine,
    stop_reason,
)
from train.trainer import Schedules, Trainer

D, S = 6, 24
COMMON = dict(l1_coefficient=0.01, seed=0, d_sae=S, l1_warmup_steps=0)


def run(kind: str, **keys) -> RunConfig:
    return RunConfig.of(kind, **{**COMMON, **keys})


def adaptive(**kw) -> AdaptiveOrthoSAE:
    return make_sae(run("adaptive", **{"lambda2_max": 0.1, "t0": 10, **kw}), D)


def all_variants():
    return [make_sae(run("baseline"), D), make_sae(run("fixed", lambda2_max=0.1), D), adaptive()]


def coeffs(lambda1=0.01, ortho_weight=0.0, due=True, lambda2=0.0) -> Coefficients:
    return Coefficients(lr=1e-3, lambda1=lambda1, lambda2=lambda2, ortho_weight=ortho_weight, ortho_due=due)


# ------------------------------------------------------------------ construction

def test_make_sae_types_and_unknown():
    b, f, a = all_variants()
    assert type(b) is SAE and type(f) is FixedOrthoSAE and type(a) is AdaptiveOrthoSAE
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
    assert a.penalty_groups() is a.groups and "groups" in a.state_dict()
    mean = torch.arange(D, dtype=torch.float32)
    a.init_b_dec(mean)
    torch.testing.assert_close(a.b_dec.data, mean)


# ------------------------------------------------------------------ recon / sparse by hand

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


# ------------------------------------------------------------------ L_ortho

def test_ortho_seed_form_by_hand():
    r = 1 / math.sqrt(2)
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    # W_0ᵀ W_1 = (r, r)ᵀ → ||·||_F = 1
    assert ortho_loss(W, groups, 2, 0.0, "seed").item() == pytest.approx(1.0, abs=1e-5)
    # α = 0.5: rectangular I (2×1) has a 1 at (0, 0) → sqrt((r − .5)² + r²)
    expect = math.sqrt((r - 0.5) ** 2 + r**2)
    for naive in (False, True):
        assert ortho_loss(W, groups, 2, 0.5, "seed", naive=naive).item() == pytest.approx(expect, abs=1e-5)
    # three groups: pairs (0,1): |<e1, e2>| = 0, (0,2): r, (1,2): r
    g3 = torch.tensor([0, 1, 2])
    assert ortho_loss(W[:2], torch.tensor([0, 1]), 2, 0.0, "seed").item() == 0.0  # orthogonal pair: exactly 0
    assert ortho_loss(W, g3, 3, 0.0, "seed").item() == pytest.approx(2 * r, abs=1e-5)


def test_ortho_rms_and_hinge_by_hand():
    """Cross cosines of the pair below are r, r (rows scaled by 3: only directions count)."""
    r = 1 / math.sqrt(2)
    W = 3 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    d = 2  # both forms count in units of the random level 1/d_model
    for naive in (False, True):
        # rms: mean squared cosine (r² + r²)/2 = 0.5, beyond α²
        assert ortho_loss(W, groups, 2, 0.0, "rms", naive=naive).item() == pytest.approx(d * 0.5)
        assert ortho_loss(W, groups, 2, 0.5, "rms", naive=naive).item() == pytest.approx(d * 0.25)
        assert ortho_loss(W, groups, 2, 0.75, "rms", naive=naive).item() == 0.0  # within the allowance
    # hinge: mean over pairs of relu(|cos| − α)²
    assert ortho_loss(W, groups, 2, 0.5, "hinge").item() == pytest.approx(d * (r - 0.5) ** 2)
    assert ortho_loss(W, groups, 2, 0.8, "hinge").item() == 0.0


def test_alpha_moves_the_principled_loss_but_barely_the_seed_form():
    """At init (random unit rows) α = 0.1–0.3 moves the seed form by a few % (it pairs features by
    index); the rms form is its mean squared cosine minus α², so α past the random level zeroes it."""
    d, n = 64, 256
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    groups = contiguous_groups(n, 2)
    seed = [ortho_loss(W / W.norm(dim=1, keepdim=True), groups, 2, a, "seed").item() for a in (0.0, 0.1, 0.3)]
    assert max(seed) / min(seed) < 1.05
    rms = [ortho_loss(W, groups, 2, a, "rms").item() for a in (0.0, 0.5 / math.sqrt(d), 2 / math.sqrt(d))]
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
        v = ortho_loss(W, groups, G, alpha, mode, naive=naive)
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
        v = ortho_loss(W, groups, 2, 0.1, mode, naive=naive, weights=w)
        v.backward()
        vals.append(v.detach()), grads.append(W.grad)
    torch.testing.assert_close(vals[0], vals[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)
    # equal weights are the unweighted mean; a zero-weight feature neither counts nor moves
    torch.testing.assert_close(ortho_loss(W0, groups, 2, 0.1, mode, weights=torch.full((23,), 3.0, dtype=torch.float64)),
                               ortho_loss(W0, groups, 2, 0.1, mode))
    w0 = w.clone()
    w0[4] = 0.0
    W = W0.clone().requires_grad_(True)
    ortho_loss(W, groups, 2, 0.0, mode, weights=w0).backward()
    assert W.grad[4].abs().max() == 0
    keep = torch.arange(23) != 4
    torch.testing.assert_close(ortho_loss(W0, groups, 2, 0.0, mode, weights=w0),
                               ortho_loss(W0[keep], groups[keep], 2, 0.0, mode, weights=w0[keep]))
    silent = torch.where(groups == 1, 0.0, 1.0).to(torch.float64)  # a group with no activity: 0
    assert ortho_loss(W0, groups, 2, 0.0, mode, weights=silent).item() == 0.0


@pytest.mark.parametrize("mode", ["seed", "rms", "hinge"])
def test_ortho_empty_group_contributes_zero(mode):
    W = torch.randn(10, 4, dtype=torch.float64)
    groups = torch.tensor([0] * 5 + [2] * 5)  # group 1 empty
    two = ortho_loss(W, torch.tensor([0] * 5 + [1] * 5), 2, 0.2, mode)
    for naive in (False, True):
        torch.testing.assert_close(ortho_loss(W, groups, 3, 0.2, mode, naive=naive), two)


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
    with MaxNumel() as mode:
        loss = ortho_loss(W, groups, 2, alpha=0.1, mode="rms")
        loss.backward()
    # nothing bigger than W itself; n_g × n_h would be 8192² = 6.7e7 elements
    assert mode.max_numel <= d_sae * d_model < (d_sae // 2) ** 2
    # the whole adaptive training loss, too (tiny batch)
    sae = make_sae(run("adaptive", d_sae=d_sae), d_model)
    with MaxNumel() as mode:
        sae.training_forward(torch.randn(4, d_model), coeffs(ortho_weight=1.0)).total.backward()
    assert mode.max_numel <= d_sae * d_model


# ------------------------------------------------------------------ coefficient schedules

def test_lambda2_schedule():
    x = torch.randn(8, D)
    a_run = run("adaptive", lambda2_max=0.4, t0=100)
    a, sched = make_sae(a_run, D), Schedules(a_run, 1000)
    for t, want in [(0, 0.0), (50, 0.2), (100, 0.4), (200, 0.4)]:
        c = sched.at(t)
        assert c.lambda2 == pytest.approx(want) and c.ortho_weight == pytest.approx(want) and c.ortho_due
        out = a.training_forward(x, c)
        torch.testing.assert_close(out.total, out.recon + 0.01 * out.sparse + want * out.ortho)
    assert out.ortho.item() > 0
    assert Schedules(run("fixed", lambda2_max=0.3, t0=100), 1000).at(0).lambda2 == pytest.approx(0.3)
    assert Schedules(run("fixed", lambda2_max=0.3), 1000).at(200).lambda2 == pytest.approx(0.3)
    base = Schedules(run("baseline", lambda2_max=0.3), 1000).at(5)
    assert base.lambda2 == 0.0 and base.ortho_weight == 0.0 and not base.ortho_due


def test_lambda1_and_lr_schedules():
    s = Schedules(run("baseline", lr=1.0, lr_warmup_steps=10, lr_decay_frac=0.2, l1_coefficient=2.0,
                      l1_warmup_steps=4), 100)
    assert s.lr(0) == pytest.approx(0.1) and s.lr(9) == 1.0 and s.lr(50) == 1.0 and s.lr(90) == pytest.approx(0.5)
    assert [s.lambda1(t) for t in (0, 1, 3, 50)] == pytest.approx([0.5, 1.0, 2.0, 2.0])
    assert Schedules(run("baseline", l1_coefficient=2.0, l1_warmup_steps=0), 10).lambda1(0) == 2.0


def test_lazy_ortho_every_k_steps():
    """every = k: k·λ2·L_ortho on steps ≡ 0 (mod k), nothing on the others."""
    x = torch.randn(8, D)
    lazy_run = run("fixed", lambda2_max=0.3, every=3)
    lazy, sched = make_sae(lazy_run, D), Schedules(lazy_run, 100)
    plain = make_sae(run("baseline"), D)
    plain.load_state_dict(lazy.state_dict())
    c0 = sched.at(0)
    assert c0.ortho_due and c0.ortho_weight == pytest.approx(0.9)
    applied = lazy.training_forward(x, c0)
    assert applied.ortho.item() > 0
    torch.testing.assert_close(applied.total, applied.recon + 0.01 * applied.sparse + 0.9 * applied.ortho)
    for step in (1, 2):
        c = sched.at(step)
        assert not c.ortho_due and c.ortho_weight == 0.0 and c.lambda2 == pytest.approx(0.3)  # nominal λ2(t)
        skipped = lazy.training_forward(x, c)
        assert skipped.ortho is None
        ref = plain.training_forward(x, c)
        torch.testing.assert_close(skipped.total, ref.total)
        lazy.zero_grad(), plain.zero_grad()
        skipped.total.backward(), ref.total.backward()
        torch.testing.assert_close(lazy.W_dec.grad, plain.W_dec.grad)  # no L_ortho gradient
    assert sched.at(3).ortho_due and sched.at(3).ortho_weight == pytest.approx(0.9)


def test_lazy_ortho_logs_the_latest_value():
    trainer = Trainer(run("fixed", lambda2_max=0.3, every=3, log_every=1), make_sae(run("fixed", every=3), D), 10)
    x, fg = torch.randn(16, D), torch.arange(16) < 8
    logged = [trainer.train_step(x, fg)["ortho"] for _ in range(4)]
    assert logged[0] == logged[1] == logged[2] != logged[3]  # evaluated at steps 0 and 3 only


def test_fixed_groups_are_contiguous_and_not_persistent():
    f = make_sae(run("fixed", groups=3), D)
    assert f.penalty_groups().tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert not hasattr(f, "groups") and "block_groups" not in f.state_dict()
    enc = make_sae(run("fixed", weights="encoder"), D)
    with torch.no_grad():
        enc.W_enc.mul_(2.0)
    torch.testing.assert_close(enc.ortho_loss(), ortho_loss(enc.W_enc.T, enc.penalty_groups(), 2, 0.0))


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


def _grouped_trainer(**keys) -> Trainer:
    r = run("adaptive", d_sae=8, **{"t0": 1, "regroup_margin": 0.0, **keys})
    return Trainer(r, make_sae(r, 4), 100)


def test_regroup_follows_data():
    trainer = _grouped_trainer(stats_decay=0.5)
    a = trainer.sae
    assert a.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    lo, hi = [0, 1, 2], [4, 5, 6]  # features 3 and 7 never fire
    f, is_forget = _feature_batch(lo, hi)
    trainer.group_stats.update(f, is_forget)
    report = trainer.regroup()
    assert report.n_moved == 6 and report.health.sizes == [4, 4] and report.empty_groups == []
    assert len(report.health.cond) == 2 and len(report.health.eff_rank_frac) == 2
    # forget-only features → group 1 (G−1 = forget), retain-only → group 0, dead keep theirs
    assert a.groups.tolist() == [1, 1, 1, 0, 0, 0, 0, 1]
    f2, _ = _feature_batch(hi, lo)  # flip: old forget features now fire on retain rows only
    for _ in range(10):
        trainer.group_stats.update(f2, is_forget)
    trainer.regroup()
    assert a.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_regroup_guards_min_mass_and_hysteresis():
    trainer = _grouped_trainer(stats_decay=0.0, regroup_min_mass=0.01, regroup_margin=0.1)
    f, is_forget = _feature_batch([0, 1], [4, 5])
    f[:, 2] = 0.0
    f[0, 2] = 0.05  # one stray activation on a forget row: 0.05 / 8 rows < min mass
    f[:8, 3], f[8:, 3] = 0.55, 0.45  # share 0.55: past 0.5, but inside the 0.1 margin of group 0
    f[:8, 6], f[8:, 6] = 0.7, 0.3  # share 0.7: past the margin
    trainer.group_stats.update(f, is_forget)
    trainer.regroup()
    assert trainer.sae.groups.tolist() == [1, 1, 0, 0, 0, 0, 1, 1]


def test_an_empty_group_is_warned_about():
    trainer = _grouped_trainer(stats_decay=0.0)
    f, is_forget = _feature_batch(list(range(8)), [])  # every feature forget-only
    trainer.group_stats.update(f, is_forget)
    with pytest.warns(UserWarning, match=r"group\(s\) \[0\] empty"):
        report = trainer.regroup()
    assert report.empty_groups == [0] and math.isnan(report.health.cond[0])


def test_no_regroup_after_the_last_update():
    torch.manual_seed(0)
    trainer = _grouped_trainer(regroup_every=3, log_every=1000)
    trainer.total_steps = 6
    x, fg = torch.randn(16, 4), torch.arange(16) < 8
    regrouped = [trainer.step for _ in range(6) if (rec := trainer.train_step(x, fg)) and rec.get("regrouped")]
    assert regrouped == [3]  # not at step 6, the last: the exported groups are the trained ones


def test_regroup_every_n_steps_on_real_forward_passes():
    torch.manual_seed(0)
    trainer = _grouped_trainer(regroup_every=3, log_every=1000)
    x, fg = torch.randn(16, 4), torch.arange(16) < 8
    regrouped = [trainer.step for _ in range(9) if (rec := trainer.train_step(x, fg)) and rec.get("regrouped")]
    assert regrouped == [3, 6, 9]
    r = trainer.group_stats.forget_ratio()
    live = ~torch.isnan(r)
    assert live.any() and torch.equal(trainer.sae.groups[live], (r[live] >= 0.5).long())


# ------------------------------------------------------------------ group biases

def test_group_bias_is_applied_per_token():
    a = make_sae(run("adaptive", d_sae=4, tau=0.0), 3)  # groups [0, 0, 1, 1]; τ = 0: exact shares
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


def test_group_bias_mix_is_smooth_as_activity_vanishes():
    """π_g = m_g/(Σm + τ): a token with a 1e-9 activation gets ~no bias; ∂x̂/∂f stays bounded."""
    a = make_sae(run("adaptive", d_sae=4, tau=0.05), 3)
    with torch.no_grad():
        a.group_bias.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0]]))
    norms = []
    for total in (2.0, 2e-2, 2e-4, 1e-9):
        f = torch.tensor([[total, 0.0, 0.0, 0.0]], requires_grad=True)
        extra = a.decode(f) - f @ a.W_dec - a.b_dec
        torch.testing.assert_close(extra.detach(), torch.tensor([[total / (total + 0.05), 0.0, 0.0]]))
        (grad,) = torch.autograd.grad(extra.sum(), f)
        norms.append(grad.norm().item())
    # each ∂π_g/∂f_j is at most 1/τ: bounded by √d_sae · max‖group_bias‖ / τ, and flat as Σf → 0
    assert max(norms) <= 2 * 10 / 0.05 and norms[-1] < 1.01 * norms[-2]
    unsmoothed = make_sae(run("adaptive", d_sae=4, tau=0.0), 3)
    with torch.no_grad():
        unsmoothed.group_bias.copy_(a.group_bias)
    f = torch.tensor([[1e-9, 0.0, 0.0, 0.0]], requires_grad=True)
    out = unsmoothed.decode(f) - unsmoothed.b_dec
    assert out[0, 0] > 0.99  # τ = 0: the prototype's jump to the whole bias
    assert torch.autograd.grad(out.sum(), f)[0].norm() > 1e6  # and its 1/Σf gradient


def test_group_biases_learn_different_offsets():
    torch.manual_seed(0)
    d = 8
    r = run("adaptive", d_sae=32, lambda2_max=0.1, t0=10, regroup_every=5, l1_coefficient=1e-3, seed=1,
            lr=1e-2, lr_warmup_steps=0, lr_decay_frac=0.0, grad_clip=0.0)
    trainer = Trainer(r, make_sae(r, d), 30)
    mu_f, mu_r = torch.zeros(d), torch.zeros(d)
    mu_f[0], mu_r[1] = 4.0, 4.0
    for _ in range(30):
        fg = torch.arange(64) < 32
        trainer.train_step(torch.randn(64, d) * 0.3 + torch.where(fg[:, None], mu_f, mu_r), fg)
    gb = trainer.sae.group_bias.detach()
    assert (gb[0] - gb[1]).norm() > 0.05
    assert not torch.allclose(gb[0], gb[1])


# ------------------------------------------------------------------ decoder norms

def test_decoder_rows_unit_norm_after_step():
    for sae in all_variants():
        trainer = Trainer(sae.cfg, sae, 100)
        before = sae.W_dec.detach().clone()
        trainer.train_step(torch.randn(16, D) * 3, torch.arange(16) < 8)
        assert not torch.equal(sae.W_dec, before)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(S))


# ------------------------------------------------------------------ health

def test_group_health_measures():
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    ortho = Q[:3]  # 3 orthonormal rows
    diag = torch.tensor([[3.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]], dtype=torch.float64)
    W = torch.cat([ortho, diag])
    h = group_health(W, torch.tensor([0, 0, 0, 1, 1]), 2)
    assert h.sizes == [3, 2]
    assert h.cond == pytest.approx([1.0, 3.0])
    p = torch.tensor([0.75, 0.25])
    assert h.eff_rank == pytest.approx([3.0, math.exp(-(p * p.log()).sum().item())])
    assert h.eff_rank_frac == pytest.approx([1.0, h.eff_rank[1] / 2])
    assert h.max_cos == pytest.approx([0.0, 0.0], abs=1e-6)  # float32 cosines
    # empty group → nan, one feature → 1; rank-deficient → inf cond and a duplicate at |cos| 1
    e = group_health(W, torch.tensor([0, 0, 0, 0, 2]), 3)
    assert math.isnan(e.cond[1]) and math.isnan(e.eff_rank_frac[1]) and e.cond[2] == 1.0 and e.max_cos[2] == 0.0
    dup = group_health(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]), torch.tensor([0, 0]), 1)
    assert dup.cond[0] == math.inf and dup.max_cos[0] == pytest.approx(1.0)


def test_degeneracy_measures_do_not_depend_on_group_size():
    """κ of random unit rows explodes as n_g → d_model; the stop rule's measures stay put."""
    d = 64
    g = torch.Generator().manual_seed(0)
    fracs, conds = [], []
    for n in (32, 64, 128, 512):
        W = torch.randn(n, d, generator=g, dtype=torch.float64)
        h = group_health(W / W.norm(dim=1, keepdim=True), torch.zeros(n, dtype=torch.long), 1)
        fracs.append(h.eff_rank_frac[0]), conds.append(h.cond[0])
        assert stop_reason(h, stop_eff_rank=0.1, stop_max_cos=0.999) is None
    assert max(conds) > 50 * min(conds)  # the condition number measures n_g / d_model
    assert 0.6 < min(fracs) and max(fracs) < 1.0  # the effective-rank fraction does not
    collapsed = torch.randn(200, 2, generator=g, dtype=torch.float64) @ torch.randn(2, d, generator=g, dtype=torch.float64)
    reason = stop_reason(group_health(collapsed, torch.zeros(200, dtype=torch.long), 1), 0.1, 1.1)
    assert reason and "effective rank" in reason
    twins = torch.cat([W[:10], W[:1]])
    reason = stop_reason(group_health(twins, torch.zeros(11, dtype=torch.long), 1), 0.0, 0.999)
    assert reason and "|cos|" in reason


def test_max_cosine_matches_saebench():
    core = pytest.importorskip("sae_bench.evals.core.main", reason="sae_bench not installed")
    W = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(max_cosine(W, block=64), core.calculate_max_cosine_sim(W.T), rtol=1e-5, atol=1e-6)


def test_training_decode_skips_clamp_only_for_encoder_output():
    a = adaptive()
    x = torch.randn(16, D)
    with torch.no_grad():
        a.group_bias.copy_(torch.randn(2, D))
    f = a.encode(x)
    assert (f >= 0).all()
    torch.testing.assert_close(a.decode(f, nonneg=True), a.decode(f))
    torch.testing.assert_close(group_shares(f, a.groups, 2, nonneg=True), group_shares(f, a.groups, 2))
    out = a.training_forward(x, coeffs())
    torch.testing.assert_close(out.x_hat, a.decode(f))


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
    h = group_health(W, groups, 2)
    for k, idx in enumerate((slice(0, 30), slice(30, 40))):
        s = torch.linalg.svdvals(W[idx])
        assert h.cond[k] == pytest.approx((s[0] / s[-1]).item(), rel=1e-8)
        p = s / s.sum()
        assert h.eff_rank[k] == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-8)


# ------------------------------------------------------------------ α does what it says

def test_trained_cross_group_overlap_follows_alpha():
    """rms mode: a trained SAE's RMS cross-group cosine sits at α while α is below the data's own
    level, and rises with it; without L_ortho it would sit above all of them."""
    g = torch.Generator().manual_seed(0)
    dictionary = torch.randn(48, 16, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    batches = [((torch.rand(256, 48, generator=g) < 0.08) * torch.rand(256, 48, generator=g)) @ dictionary
               for _ in range(150)]
    fg = torch.arange(256) < 128

    def trained_rms(**keys) -> float:
        """The RMS cross-group cosine the loss measures: activity-weighted by default."""
        r = run("fixed", d_sae=32, l1_coefficient=0.05, lr=3e-3, lr_warmup_steps=10, **keys)
        trainer = Trainer(r, make_sae(r, 16), len(batches))
        for x in batches:
            trainer.train_step(x, fg)
        sae = trainer.sae
        W, groups = sae.W_dec.detach(), sae.penalty_groups()
        with torch.no_grad():
            w = sum(sae.encode(x).sum(0) for x in batches) if r.ortho.weighting == "activity" else torch.ones(32)
        C2 = (W[groups == 0] @ W[groups == 1].T).pow(2) * w[groups == 0, None] * w[None, groups == 1]
        return (C2.sum() / (w[groups == 0].sum() * w[groups == 1].sum())).sqrt().item()

    for weighting in ("activity", "uniform"):
        free = trained_rms(lambda2_max=0.0, weighting=weighting)
        rms = [trained_rms(alpha=a, alpha_mode="rms", lambda2_max=2.0, weighting=weighting) for a in (0.0, 0.05, 0.1)]
        assert rms == sorted(rms) and rms[-1] - rms[0] > 0.07, weighting
        assert rms == pytest.approx([0.0, 0.05, 0.1], abs=0.025) and free > 0.15, weighting


def test_log_record_comes_from_the_step_forward_pass():
    """The log's recon and ev_batch are what the loss saw (pre-step weights), not a second decode."""
    import copy
    r = run("adaptive", log_every=1, lr=0.1, lr_warmup_steps=0)
    trainer = Trainer(r, make_sae(r, D), 10)
    x, fg = torch.randn(32, D) * 3, torch.arange(32) < 16
    before = copy.deepcopy(trainer.sae)
    rec = trainer.train_step(x, fg)
    with torch.no_grad():
        recon = (before(x) - x).pow(2).sum(-1).mean().item()
        after = (trainer.sae(x) - x).pow(2).sum(-1).mean().item()
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean().item()
    assert abs(after - recon) > 1e-3 * recon  # the step moved the weights
    assert rec["recon"] == pytest.approx(recon, rel=1e-5)
    assert rec["ev_batch"] == pytest.approx(1 - recon / total_var, rel=1e-5)
    assert rec["grad_norm"] > 0 and rec["group_sizes"] == [12, 12]


# ------------------------------------------------------------------ TopK / BatchTopK (SAELens recipes)

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
    assert archs == {("baseline", "topk"): "topk", ("fixed", "batchtopk"): "jumprelu",
                     ("adaptive", "topk"): "orthosae_grouped", ("adaptive", "batchtopk"): "orthosae_grouped"}


# ------------------------------------------------------------------ sketched L_ortho

class MatmulDtypes(TorchDispatchMode):
    """The input dtypes of each matrix product."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in ("aten::mm", "aten::addmm", "aten::bmm"):
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


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
            v = ortho_loss(W, groups, 2, 0.0, "rms", weights=w, gram_dtype=dtype)
            v.backward()
        out[dtype] = (v.detach(), W.grad, seen.seen)
    (v32, g32, mm32), (v16, g16, mm16) = out["float32"], out["bfloat16"]
    assert {t for s in mm32 for t in s} == {torch.float32}
    assert sum(all(t == torch.bfloat16 for t in s) for s in mm16) == 4  # 2 Grams + 2 backward products
    assert abs(v16 - v32) / v32 < 1e-3
    assert (g16 - g32).norm() / g32.norm() < 2e-2 and g16[:7].abs().max() == 0.0
    with pytest.raises(ValueError, match="gram_dtype 'bfloat16' is for the exact rms form only"):
        ortho_loss(W0, groups, 2, 0.0, "hinge", gram_dtype="bfloat16")


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
        v = ortho_loss(W, groups, G, 0.01, "rms", naive=naive, weights=w)
        v.backward()
        res.append((v.detach(), W.grad))
    if G == 1:
        assert res[0][0].item() == 0.0 and not res[0][1].any()
        return
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-7, atol=1e-12)


def test_sketched_ortho_is_unbiased_in_value_and_gradient():
    """E‖S_g A Bᵀ S_hᵀ‖²_F = ‖A Bᵀ‖²_F with independent E[SᵀS] = I on both sides: the mean over
    4000 sketches (k = 8) matches the exact activity-weighted rms L_ortho (α = 0, where the relu is
    inactive) within 3 % in value and in gradient norm, and the gradient directions agree to
    cosine > 0.99."""
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(60, 8, generator=gen, dtype=torch.float64)
    groups, w = contiguous_groups(60, 2), torch.rand(60, generator=gen, dtype=torch.float64)

    def value_and_grad(**kw):
        W = W0.clone().requires_grad_(True)
        v = ortho_loss(W, groups, 2, 0.0, "rms", weights=w, **kw)
        v.backward()
        return v.detach(), W.grad

    exact_v, exact_g = value_and_grad()
    sketch_gen = torch.Generator().manual_seed(1)
    draws = [value_and_grad(sketch=8, generator=sketch_gen) for _ in range(4000)]
    mean_v = torch.stack([v for v, _ in draws]).mean()
    mean_g = torch.stack([g for _, g in draws]).mean(0)
    assert mean_v.item() == pytest.approx(exact_v.item(), rel=0.03)
    assert mean_g.norm().item() == pytest.approx(exact_g.norm().item(), rel=0.03)
    assert torch.nn.functional.cosine_similarity(mean_g.flatten(), exact_g.flatten(), dim=0) > 0.99
    assert draws[0][0] != draws[1][0]  # a fresh sketch per call


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_sketched_ortho_backward_equals_autograd_of_the_same_sketch(alpha):
    """The hand-written backward (one matmul + the radial projection) is the exact gradient of the
    sketched loss: autograd through normalise → weigh → per-group sketch → ‖C_gh‖² with the same
    draw agrees to 1e-12, over 4 groups with one empty and (α = 0.3) some pairs under the relu."""
    from train.sae.ortho import sketched_rms
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(90, 8, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, 4, (90,), generator=gen)
    groups[groups == 2] = 3  # group 2 empty
    w = torch.rand(90, generator=gen, dtype=torch.float64)
    W = W0.clone().requires_grad_(True)
    ours = sketched_rms(W, groups, 4, alpha, 5, w, torch.Generator().manual_seed(3))
    ours.backward()
    R = W0.clone().requires_grad_(True)
    S = torch.randn(5, 90, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / 5 ** 0.5
    V = R / R.norm(dim=1, keepdim=True) * w.sqrt()[:, None]
    ref, live = R.new_zeros(()), 0
    for g in range(4):
        for h in range(g + 1, 4):
            a, b = groups == g, groups == h
            if a.any() and b.any():
                s = ((S[:, a] @ V[a]) @ (S[:, b] @ V[b]).T).pow(2).sum() / (w[a].sum() * w[b].sum())
                live += int(s > alpha ** 2)
                ref = ref + 8 * torch.relu(s - alpha ** 2)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(W.grad, R.grad, atol=1e-12, rtol=0)
    assert 0 < live < 3 if alpha else live == 3  # α = 0.3 leaves some of the 3 pairs under the relu


def test_sketched_training_is_deterministic_and_resumes_bitwise(tmp_path):
    from train.checkpoint import load_checkpoint, save_checkpoint
    r = run("adaptive", sketch=8, regroup_every=5, log_every=1000)
    x = [torch.randn(32, D, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    fg = torch.arange(32) < 16

    def trained(steps, trainer=None):
        trainer = trainer or Trainer(r, make_sae(r, D), 12)
        for i in range(trainer.step, steps):
            trainer.train_step(x[i], fg)
        return trainer

    a, b = trained(12), trained(12)
    assert all(torch.equal(p, q) for p, q in zip(a.sae.state_dict().values(), b.sae.state_dict().values()))
    half = trained(6)
    save_checkpoint(tmp_path, {"trainer": half.state_dict()})
    resumed = Trainer(r, make_sae(r, D), 12)
    resumed.load_state_dict(load_checkpoint(tmp_path)["trainer"])
    resumed = trained(12, resumed)
    assert all(torch.equal(p, q) for p, q in zip(a.sae.state_dict().values(), resumed.sae.state_dict().values()))
    c = Trainer(RunConfig.of("adaptive", **{**COMMON, "sketch": 8, "regroup_every": 5, "seed": 1}),
                make_sae(r, D), 12)  # another run seed: another sketch stream
    c = trained(12, c)
    assert not torch.equal(a.sae.W_dec, c.sae.W_dec)


# ------------------------------------------------------------------ host syncs in the hot path

class HostReads(TorchDispatchMode):
    """Records the ops that read a device value back to the host (a GPU sync): scalar reads
    (``item``, ``bool``, ``float``), ``nonzero``, ``masked_select`` and boolean-mask indexing, whose
    output size depends on the data. ``exempt``: tensors allowed to be read (Adam's step counters,
    which live on the host even on a GPU)."""

    def __init__(self, exempt=()):
        super().__init__()
        self.exempt, self.reads = {id(t) for t in exempt}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name == "aten::_local_scalar_dense" and id(args[0]) not in self.exempt:
            self.reads.append(name)
        elif name in ("aten::nonzero", "aten::masked_select"):
            self.reads.append(name)
        elif name == "aten::index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                          for i in args[1] if i is not None):
            self.reads.append("boolean-mask index")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind,keys", [
    ("adaptive", {}), ("adaptive", {"sketch": 4}), ("adaptive", {"alpha_mode": "hinge"}), ("fixed", {}),
    ("baseline", {"activation": "batchtopk", "k": 3, "l1_coefficient": 0.0}),
    ("baseline", {"target_l0": 3.0}),
])
def test_training_steps_that_do_not_log_never_read_the_device(kind, keys):
    """Between log, checkpoint and regroup steps a training step runs without one host read (issue
    13): the NaN guard and the target-L0 controller stay on the device, group indices are cached
    between regroups, a weightless group is masked on the device, BatchTopK's threshold moves
    without boolean indexing."""
    r = run(kind, log_every=1000, checkpoint_every=1000, regroup_every=1000, dead_window=1000, **keys)
    trainer = Trainer(r, make_sae(r, D), 1000)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, D, generator=g) for _ in range(4)]
    fg = torch.arange(16) < 8
    trainer.train_step(xs[0], fg)  # the first step creates Adam's state
    steps = [s["step"] for s in trainer.opt.state.values()]
    with HostReads(exempt=steps) as mode:
        for x in xs[1:]:
            assert trainer.train_step(x, fg) is None  # no log record on these steps
    assert mode.reads == []
    assert trainer.running and trainer.step == 4


class MatmulPrecisions(TorchDispatchMode):
    """The float32 matmul precision in force at each matrix product, by op name."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
            self.seen.append(torch.get_float32_matmul_precision())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("keys", [{}, {"sketch": 4}])
def test_tf32_applies_to_the_sae_but_never_to_l_ortho(keys):
    """``[train] matmul_precision = "high"`` (TF32 on CUDA) holds for the encoder / decoder products
    of a step; every product of L_ortho, forward and backward, runs at "highest"; the process-wide
    setting is restored after the step."""
    from train.sae.ortho import ortho_loss as loss_fn
    W = torch.randn(S, D, requires_grad=True)
    torch.set_float32_matmul_precision("high")
    try:
        with MatmulPrecisions() as mode:
            loss_fn(W, contiguous_groups(S, 2), 2, 0.0, "rms", weights=torch.rand(S), **keys,
                    generator=torch.Generator().manual_seed(0)).backward()
    finally:
        torch.set_float32_matmul_precision("highest")
    assert mode.seen and set(mode.seen) == {"highest"}
    r = run("adaptive", matmul_precision="high", **keys)
    trainer = Trainer(r, make_sae(r, D), 10)
    with MatmulPrecisions() as mode:
        trainer.train_step(torch.randn(16, D), torch.arange(16) < 8)
    assert {"high", "highest"} <= set(mode.seen)  # the SAE's products in TF32, L_ortho's in fp32
    assert torch.get_float32_matmul_precision() == "highest"
