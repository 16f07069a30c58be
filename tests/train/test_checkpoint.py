"""train/checkpoint.py: a Trainer's state saved and loaded resumes bit-identically; the latest
checkpoint and the previous one; damage falls back or is named; a kill between the renames."""

from __future__ import annotations

import pytest
import torch

from orthosae.common.config import RunConfig
from orthosae.train.checkpoint import (
    CHECKPOINT,
    PREVIOUS,
    TMP,
    NoIntactCheckpoint,
    load_checkpoint,
    load_latest,
    load_optimizer_state,
    optimizer_state,
    save_checkpoint,
)
from orthosae.train.sae import make_sae
from orthosae.train.trainer import Trainer
from tests._sae import COMMON, D, run

X = [torch.randn(32, D, generator=torch.Generator().manual_seed(i)) for i in range(12)]
FG = torch.arange(32) < 16


def trained(r, steps, trainer=None):
    trainer = trainer or Trainer(r, make_sae(r, D), 12)
    for i in range(trainer.step, steps):
        trainer.train_step(X[i], FG)
    return trainer


@pytest.mark.parametrize(
    "keys",
    [
        {"regroup_every": 5},
        {"activation": "batchtopk", "k": 3},
        {"target_l0": 4.0, "resample_dead": True, "dead_window": 3},
    ],
)
def test_a_trainer_resumed_from_a_checkpoint_ends_bit_identical(tmp_path, keys):
    """Weights, Adam moments, group statistics, the run's random stream, the BatchTopK threshold and
    the target-L0 scale all travel: 6 steps + save + load + 6 steps equals 12 steps, bit for bit;
    training is deterministic, and another init seed trains another SAE."""
    kind = "baseline" if "target_l0" in keys else "adaptive"
    r = run(kind, log_every=1000, **keys)
    a, b = trained(r, 12), trained(r, 12)
    assert all(torch.equal(p, q) for p, q in zip(a.sae.state_dict().values(), b.sae.state_dict().values()))
    half = trained(r, 6)
    save_checkpoint(tmp_path, {"trainer": half.state_dict()})
    resumed = Trainer(r, make_sae(r, D), 12)
    resumed.load_state_dict(load_checkpoint(tmp_path)["trainer"])
    assert resumed.step == 6
    resumed = trained(r, 12, resumed)
    assert all(torch.equal(p, q) for p, q in zip(a.sae.state_dict().values(), resumed.sae.state_dict().values()))
    assert torch.equal(a.steps_since_fired, resumed.steps_since_fired)
    other = RunConfig.of(kind, **{**COMMON, **keys, "log_every": 1000, "seed": 1})
    c = trained(other, 12)
    assert not torch.equal(a.sae.W_dec, c.sae.W_dec)


def test_optimizer_state_round_trips_through_json_keys():
    """Adam's per-parameter state is keyed by strings (JSON) in a checkpoint and by ints in torch."""
    r = run("fixed")
    t = trained(r, 2)
    saved = optimizer_state(t.opt)
    assert set(saved["state"]) == {str(i) for i in range(len(list(t.sae.parameters())))}
    fresh = Trainer(r, make_sae(r, D), 12)
    load_optimizer_state(fresh.opt, saved)
    for p, q in zip(t.sae.parameters(), fresh.sae.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(t.opt.state[p][key], fresh.opt.state[q][key])


def test_latest_and_previous_checkpoints_and_falling_back_on_damage(tmp_path):
    """Two saves leave checkpoint/ (newest) and checkpoint.prev/; a damaged latest falls back to the
    previous one and names what it skipped; both damaged raise ``NoIntactCheckpoint`` naming the files."""
    assert load_latest(tmp_path) is None
    save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(3)})
    save_checkpoint(tmp_path, {"step": 2, "w": torch.full((3,), 2.0)})
    latest = load_latest(tmp_path)
    assert latest.folder == tmp_path / CHECKPOINT and latest.state["step"] == 2 and latest.skipped == []
    assert torch.equal(latest.state["w"], torch.full((3,), 2.0))
    tensors = tmp_path / CHECKPOINT / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-5])
    fallback = load_latest(tmp_path)
    assert fallback.folder == tmp_path / PREVIOUS and fallback.state["step"] == 1
    assert [p for p, _ in fallback.skipped] == [str(tensors)]
    prev = tmp_path / PREVIOUS / "state.safetensors"
    prev.write_bytes(b"garbage")
    with pytest.raises(NoIntactCheckpoint) as e:
        load_latest(tmp_path)
    assert str(tensors) in str(e.value) and str(prev) in str(e.value) and "\n" not in str(e.value)


def test_a_kill_between_the_renames_is_finished_on_load(tmp_path):
    """checkpoint.tmp/ complete (its digests written) but checkpoint/ already renamed away: the load
    takes the committed tmp and finishes the swap."""
    save_checkpoint(tmp_path, {"step": 1})
    save_checkpoint(tmp_path, {"step": 2})
    (tmp_path / CHECKPOINT).rename(tmp_path / TMP)  # as if killed before `tmp.rename(final)`
    loaded = load_latest(tmp_path)
    assert loaded.state["step"] == 2 and loaded.folder == tmp_path / CHECKPOINT
    assert not (tmp_path / TMP).exists() and (tmp_path / PREVIOUS).exists()
