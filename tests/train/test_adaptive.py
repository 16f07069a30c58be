"""train/sae/adaptive.py: the group decoder biases and their mix π (the grouped SAE's decode)."""

from __future__ import annotations

import torch

from orthosae.train.sae import bias_mix, make_sae
from orthosae.train.trainer import Trainer
from tests._sae import D, adaptive, coeffs, run


def test_group_bias_is_applied_per_token():
    a = make_sae(run("adaptive", d_sae=4, tau=0.0), 3)  # groups [0, 0, 1, 1]; τ = 0: exact shares
    with torch.no_grad():
        a.group_bias.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0]]))
        a.b_dec.copy_(torch.tensor([0.0, 0.0, 5.0]))
    f = torch.tensor(
        [
            [1.0, 2.0, 0.0, 0.0],  # only group 0 → + group_bias[0]
            [0.0, 0.0, 0.5, 0.0],  # only group 1 → + group_bias[1]
            [0.0, 0.0, 0.0, 0.0],  # nothing active → b_dec only
            [1.0, 0.0, 3.0, 0.0],  # π = (1/4, 3/4)
        ]
    )
    extra = a.decode(f) - f @ a.W_dec
    want = torch.tensor([[1.0, 0.0, 5.0], [0.0, 10.0, 5.0], [0.0, 0.0, 5.0], [0.25, 7.5, 5.0]])
    torch.testing.assert_close(extra, want)
    torch.testing.assert_close(bias_mix(f, a.groups, 2)[3], torch.tensor([0.25, 0.75]))
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
    r = run(
        "adaptive",
        d_sae=32,
        lambda2_max=0.1,
        t0=10,
        regroup_every=5,
        l1_coefficient=1e-3,
        seed=1,
        lr=1e-2,
        lr_warmup_steps=0,
        lr_decay_frac=0.0,
        grad_clip=0.0,
    )
    trainer = Trainer(r, make_sae(r, d), 30)
    mu_f, mu_r = torch.zeros(d), torch.zeros(d)
    mu_f[0], mu_r[1] = 4.0, 4.0
    for _ in range(30):
        fg = torch.arange(64) < 32
        trainer.train_step(torch.randn(64, d) * 0.3 + torch.where(fg[:, None], mu_f, mu_r), fg)
    gb = trainer.sae.group_bias.detach()
    assert (gb[0] - gb[1]).norm() > 0.05
    assert not torch.allclose(gb[0], gb[1])


def test_training_decode_skips_clamp_only_for_encoder_output():
    a = adaptive()
    x = torch.randn(16, D)
    with torch.no_grad():
        a.group_bias.copy_(torch.randn(2, D))
    f = a.encode(x)
    assert (f >= 0).all()
    torch.testing.assert_close(a.decode(f, nonneg=True), a.decode(f))
    torch.testing.assert_close(bias_mix(f, a.groups, 2, nonneg=True), bias_mix(f, a.groups, 2))
    out = a.training_forward(x, coeffs())
    torch.testing.assert_close(out.x_hat, a.decode(f))


def test_bias_mix_ignores_negative_clamped_activations():
    """A feature clamped to −m (unlearning intervention) must not blow up the group-bias mix."""
    groups = torch.tensor([0, 0, 1, 1])
    f = torch.tensor([[2.0, -25.0, 1.0, 0.0], [0.0, -25.0, 0.0, 0.0]])
    pi = bias_mix(f, groups, 2)
    assert torch.allclose(pi, torch.tensor([[2 / 3, 1 / 3], [0.0, 0.0]]))
