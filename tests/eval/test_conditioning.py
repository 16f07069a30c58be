"""eval.conditioning on matrices with known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from orthosae.eval.conditioning import conditioning_report, principal_angles_deg


def _sae(W_dec: torch.Tensor, groups: torch.Tensor | None = None, W_enc: torch.Tensor | None = None):
    sae = SimpleNamespace(W_dec=W_dec, W_enc=W_dec.T.clone() if W_enc is None else W_enc)
    if groups is not None:
        sae.groups, sae.grouped = groups, True  # as a grouped SAE (train.sae.is_grouped)
    return sae


def test_orthonormal_single_group():
    Q = torch.linalg.qr(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)))[0]  # [8, 5]
    r = conditioning_report(_sae(Q.T))  # rows = 5 orthonormal features, no groups -> one group
    assert r["n_groups"] == 1 and r["group_sizes"] == [5] and r["pairs"] == []
    assert r["decoder"]["cond"][0] == pytest.approx(1.0)
    assert r["decoder"]["eff_rank"][0] == pytest.approx(5.0)
    assert r["encoder"]["cond"][0] == pytest.approx(1.0)


def test_diag_condition_number():
    W = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # two features along e1 (norm 3) and e2
    r = conditioning_report(_sae(W))
    assert r["decoder"]["cond"][0] == pytest.approx(3.0)


def test_identical_groups_have_zero_angle():
    A = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))  # 3 features in R^6
    W = torch.cat([A, 2 * A])
    r = conditioning_report(_sae(W, torch.tensor([0, 0, 0, 1, 1, 1])))
    p = r["pairs"][0]
    assert (p["g"], p["h"]) == (0, 1)
    assert p["decoder_min_angle_deg"] == pytest.approx(0.0, abs=1e-3)
    assert p["decoder_mean_angle_deg"] == pytest.approx(0.0, abs=1e-3)
    naive = (A @ (2 * A).T).norm().item()
    assert p["decoder_overlap_fro"] == pytest.approx(naive, rel=1e-6)


def test_orthogonal_groups_are_at_90_degrees():
    E = torch.eye(6)
    W = torch.cat([E[:2], E[2:5]])  # groups span e1,e2 and e3..e5
    s = conditioning_report(_sae(W), groups=torch.tensor([0, 0, 1, 1, 1]))["pairs"][0]
    assert s["decoder_min_angle_deg"] == pytest.approx(90.0) and s["decoder_mean_angle_deg"] == pytest.approx(90.0)
    assert s["decoder_overlap_fro"] == pytest.approx(0.0, abs=1e-12)


def test_partial_overlap_and_rank_cap():
    E = torch.eye(3)
    # 45° between span{e1} and span{(e1+e2)/√2}
    ang = principal_angles_deg(E[:, :1].double(), (E[:, :1] + E[:, 1:2]).double() / math.sqrt(2))
    assert ang.tolist() == pytest.approx([45.0])
    # a group with more features than d_model spans all of R^3: meets any other group at 0°
    W = torch.cat([torch.randn(5, 3, generator=torch.Generator().manual_seed(2)), E[:1]])
    s = conditioning_report(_sae(W), groups=torch.tensor([0] * 5 + [1]))["pairs"][0]
    assert s["decoder_min_angle_deg"] == pytest.approx(0.0, abs=1e-3)


def test_empty_group_is_nan():
    r = conditioning_report(_sae(torch.eye(3)), groups=torch.tensor([0, 0, 0]), n_groups=2)
    assert math.isnan(r["decoder"]["cond"][1]) and r["pairs"] == [{"g": 0, "h": 1}]


def test_post_hoc_groups_use_activation_mass_like_training():
    """Feature 0 fires more often on retain rows but carries more mass on forget rows: grouped as
    forget-leaning, by the statistic training regroups on."""
    from orthosae.eval.conditioning import feature_groups

    sae = _sae(torch.eye(3))
    groups, n_groups, how = feature_groups(sae, torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.5, 1.0, 0.0]), 2)
    assert groups.tolist() == [1, 0, 0] and n_groups == 2 and "mass" in how


def test_activity_weighted_rms_cosine_is_what_l_ortho_bounds():
    """Equal activity: the plain RMS cross cosine; a silent feature drops out of the weighted one."""
    W = torch.randn(12, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    W = W / W.norm(dim=1, keepdim=True)
    groups = torch.tensor([0] * 6 + [1] * 6)
    pair = conditioning_report(_sae(W, groups), activity=torch.ones(12, dtype=torch.float64))["pairs"][0]
    assert pair["decoder_rms_cross_cos_activity"] == pytest.approx(pair["decoder_rms_cross_cos"])
    active = torch.ones(12, dtype=torch.float64)
    active[0] = 0.0
    weighted = conditioning_report(_sae(W, groups), activity=active)["pairs"][0]["decoder_rms_cross_cos_activity"]
    assert weighted == pytest.approx((W[1:6] @ W[6:].T).pow(2).mean().sqrt().item())
