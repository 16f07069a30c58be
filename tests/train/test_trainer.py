"""train/trainer.py: one step's schedules (lr, λ1 warm-up, λ2(t), lazy L_ortho), the regroup every n
steps, decoder renormalisation, the log record, dead-feature resampling, the target-L0 controller,
matmul precision, and no host reads between log steps."""

from __future__ import annotations

import math

import pytest
import torch

from orthosae.train.sae import contiguous_groups, make_sae
from orthosae.train.trainer import L0Controller, Schedules, Trainer, resample_dead
from tests._dispatch import HostReads, MatmulPrecisions
from tests._sae import D, S, all_variants, run


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
    s = Schedules(
        run("baseline", lr=1.0, lr_warmup_steps=10, lr_decay_frac=0.2, l1_coefficient=2.0, l1_warmup_steps=4), 100
    )
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
    r = trainer.group_stats.forget_share()
    live = ~torch.isnan(r)
    assert live.any() and torch.equal(trainer.sae.groups[live], (r[live] >= 0.5).long())


def test_decoder_rows_unit_norm_after_step():
    for sae in all_variants():
        trainer = Trainer(sae.cfg, sae, 100)
        before = sae.W_dec.detach().clone()
        trainer.train_step(torch.randn(16, D) * 3, torch.arange(16) < 8)
        assert not torch.equal(sae.W_dec, before)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(S))


def test_trained_cross_group_overlap_follows_alpha():
    """rms mode: a trained SAE's RMS cross-group cosine sits at α while α is below the data's own
    level, and rises with it; without L_ortho it would sit above all of them."""
    g = torch.Generator().manual_seed(0)
    dictionary = torch.randn(48, 16, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    batches = [
        ((torch.rand(256, 48, generator=g) < 0.08) * torch.rand(256, 48, generator=g)) @ dictionary for _ in range(150)
    ]
    fg = torch.arange(256) < 128

    def trained_rms(**keys) -> float:
        """The RMS cross-group cosine the loss measures: activity-weighted by default."""
        r = run("fixed", d_sae=32, l1_coefficient=0.05, lr=3e-3, lr_warmup_steps=10, **keys)
        trainer = Trainer(r, make_sae(r, 16), len(batches))
        for x in batches:
            trainer.train_step(x, fg)
        sae = trainer.sae
        W, groups = sae.W_dec.detach(), sae.groups
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


@pytest.mark.parametrize(
    "kind,keys",
    [
        ("adaptive", {}),
        ("adaptive", {"alpha_mode": "hinge"}),
        ("fixed", {}),
        ("baseline", {"activation": "batchtopk", "k": 3, "l1_coefficient": 0.0}),
        ("baseline", {"target_l0": 3.0}),
    ],
)
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


def test_tf32_applies_to_the_sae_but_never_to_l_ortho():
    """``[train] matmul_precision = "high"`` (TF32 on CUDA) holds for the encoder / decoder products
    of a step; every product of L_ortho, forward and backward, runs at "highest"; the process-wide
    setting is restored after the step."""
    from orthosae.train.sae.ortho import ortho_loss as loss_fn

    W = torch.randn(S, D, requires_grad=True)
    torch.set_float32_matmul_precision("high")
    try:
        with MatmulPrecisions() as mode:
            loss_fn(W, contiguous_groups(S, 2), 2, 0.0, "rms", activity=torch.rand(S)).backward()
    finally:
        torch.set_float32_matmul_precision("highest")
    assert mode.seen and set(mode.seen) == {"highest"}
    r = run("adaptive", matmul_precision="high")
    trainer = Trainer(r, make_sae(r, D), 10)
    with MatmulPrecisions() as mode:
        trainer.train_step(torch.randn(16, D), torch.arange(16) < 8)
    assert {"high", "highest"} <= set(mode.seen)  # the SAE's products in TF32, L_ortho's in fp32
    assert torch.get_float32_matmul_precision() == "highest"


def test_resample_dead_restarts_features_where_the_sae_is_worst():
    """Each dead feature's decoder row becomes one row's normalised reconstruction error, its
    encoder column that direction at 0.2 × the live columns' mean norm, its b_enc 0, and its Adam
    moments 0; live features and their moments are untouched."""
    r = run("baseline")
    sae = make_sae(r, D)
    trainer = Trainer(r, sae, 100)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(0)) * 3
    trainer.train_step(x, torch.arange(32) < 16)  # Adam's moments exist
    dead = torch.zeros(S, dtype=torch.bool)
    dead[[0, 5, 7]] = True
    with torch.no_grad():
        err = x - sae(x)
        live_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    dirs = err / err.norm(dim=-1, keepdim=True)
    live_rows = sae.W_dec[~dead].detach().clone()
    moments = {k: v.clone() for k, v in trainer.opt.state[sae.W_dec].items() if k != "step"}
    assert resample_dead(sae, trainer.opt, dead, x, generator=torch.Generator().manual_seed(1)) == 3
    with torch.no_grad():
        for i in (0, 5, 7):
            assert (dirs - sae.W_dec[i]).norm(dim=-1).min() < 1e-5  # one row's error direction
            torch.testing.assert_close(sae.W_enc[:, i], sae.W_dec[i] * 0.2 * live_norm)
            assert sae.b_enc[i] == 0
    for key, before in moments.items():
        assert not trainer.opt.state[sae.W_dec][key][dead].any()
        assert torch.equal(trainer.opt.state[sae.W_dec][key][~dead], before[~dead])
    assert torch.equal(sae.W_dec[~dead], live_rows)
    assert resample_dead(sae, trainer.opt, torch.zeros(S, dtype=torch.bool), x) == 0


def test_a_feature_silent_past_the_dead_window_is_resampled_on_the_window_step():
    """``[train] resample_dead``: a feature that never fires counts as dead once silent for more
    than ``dead_window`` steps, and is resampled at the next step that is a multiple of the window."""
    r = run("baseline", resample_dead=True, dead_window=5)
    trainer = Trainer(r, make_sae(r, D), 100)
    with torch.no_grad():
        trainer.sae.b_enc[3] = -1e3  # never fires; its zero gradient leaves Adam nothing to move
    g = torch.Generator().manual_seed(0)
    for _ in range(9):
        trainer.train_step(torch.randn(32, D, generator=g), torch.arange(32) < 16)
    assert trainer.sae.b_enc[3] == -1e3 and trainer.steps_since_fired[3] == 9
    trainer.train_step(torch.randn(32, D, generator=g), torch.arange(32) < 16)  # step 10: 10 > 5, 10 % 5 == 0
    assert trainer.sae.b_enc[3] == 0 and trainer.steps_since_fired[3] == 0


def test_target_l0_controller_moves_lambda1_by_the_log_error_after_the_warmup():
    """scale *= exp(gain · clip(log(L0 / target), ±1)) per step after the λ1 warm-up; off at target 0."""
    ctl = L0Controller(run("baseline", target_l0=4.0, l0_gain=0.1, l1_warmup_steps=2))
    ctl.update(1, torch.tensor(8.0))
    assert ctl.active and ctl.scale.item() == 1.0  # still warming up
    ctl.update(2, torch.tensor(8.0))  # twice the target: λ1 up
    up = math.exp(0.1 * math.log(2.0))
    assert ctl.scale.item() == pytest.approx(up)
    ctl.update(3, torch.tensor(400.0))  # log error clipped to 1
    assert ctl.scale.item() == pytest.approx(up * math.exp(0.1))
    ctl.update(4, torch.tensor(2.0))  # half the target: λ1 down
    assert ctl.scale.item() == pytest.approx(up * math.exp(0.1) * math.exp(-0.1 * math.log(2.0)))
    off = L0Controller(run("baseline"))
    off.update(5, torch.tensor(8.0))
    assert not off.active and off.scale.item() == 1.0
