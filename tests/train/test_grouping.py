"""train/sae/grouping.py: forget / retain statistics, the regroup rule, group health."""

from __future__ import annotations

import math

import pytest
import torch

from orthosae.train.sae import GroupStats, assign_groups, group_health, max_cosine, stop_reason


def test_group_stats_normalise_by_row_counts():
    st = GroupStats(3, decay=0.0)
    f = torch.zeros(10, 3)
    f[:, 0] = 1.0  # same per-row mass on forget and retain rows → r = 0.5
    f[0, 1] = 2.0  # only on the (single) forget row → r = 1
    is_forget = torch.zeros(10, dtype=torch.bool)
    is_forget[0] = True
    st.update(f, is_forget)
    r = st.forget_share()
    assert r[0].item() == pytest.approx(0.5) and r[1].item() == pytest.approx(1.0)
    assert math.isnan(r[2].item())
    cur = torch.tensor([0, 0, 1])
    assert assign_groups(r, cur, 2).tolist() == [1, 1, 1]  # dead feature 2 keeps its group
    assert assign_groups(torch.tensor([0.0, 0.2, 0.5, 0.99, 1.0]), torch.zeros(5, dtype=torch.long), 3).tolist() == [
        0,
        0,
        1,
        2,
        2,
    ]
    assert assign_groups(None, cur, 2).tolist() == cur.tolist()
    only_retain = GroupStats(3, decay=0.0)
    only_retain.update(f, torch.zeros(10, dtype=torch.bool))
    assert only_retain.forget_share() is None


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
    collapsed = torch.randn(200, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, d, generator=g, dtype=torch.float64
    )
    reason = stop_reason(group_health(collapsed, torch.zeros(200, dtype=torch.long), 1), 0.1, 1.1)
    assert reason and "effective rank" in reason
    twins = torch.cat([W[:10], W[:1]])
    reason = stop_reason(group_health(twins, torch.zeros(11, dtype=torch.long), 1), 0.0, 0.999)
    assert reason and "|cos|" in reason


def test_max_cosine_matches_saebench():
    core = pytest.importorskip("sae_bench.evals.core.main", reason="sae_bench not installed")
    W = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(max_cosine(W, block=64), core.calculate_max_cosine_sim(W.T), rtol=1e-5, atol=1e-6)


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
