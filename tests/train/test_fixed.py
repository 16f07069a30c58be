"""train/sae/fixed.py: fixed contiguous groups, never saved; L_ortho over them."""

from __future__ import annotations

import torch

from orthosae.train.sae import is_grouped, make_sae, ortho_loss
from tests._sae import D, run


def test_fixed_groups_are_contiguous_and_not_persistent():
    f = make_sae(run("fixed", groups=3), D)
    assert f.groups.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert "groups" not in f.state_dict() and not is_grouped(f)  # fixed: never saved
    enc = make_sae(run("fixed", weights="encoder"), D)
    with torch.no_grad():
        enc.W_enc.mul_(2.0)
    torch.testing.assert_close(enc.ortho_loss(), ortho_loss(enc.W_enc.T, enc.groups, 2, 0.0))
