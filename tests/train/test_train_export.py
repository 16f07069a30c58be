"""Export in the SAELens layout: round trip, scale folding, sae_lens loading, errors."""

from __future__ import annotations

import json

import pytest
import torch

from orthosae.common.config import RunConfig
from orthosae.train.export import CFG_FILENAME, WEIGHTS_FILENAME, ExportError, load_sae, save_sae
from orthosae.train.sae import make_sae
from orthosae.train.trainer import Trainer

D, S, SCALE = 6, 16, 0.25
COMMON = dict(d_sae=S, l1_coefficient=1e-3, seed=3, lr=3e-2, lr_warmup_steps=0, l1_warmup_steps=0)
RUNS = {
    "baseline": RunConfig.of("baseline", **COMMON),
    "fixed": RunConfig.of("fixed", lambda2_max=0.1, groups=2, **COMMON),
    "adaptive": RunConfig.of("adaptive", lambda2_max=0.1, t0=4, groups=3, regroup_every=3, **COMMON),
}
EXTRA = {"hook_name": "blocks.3.hook_resid_post", "model_name": "tiny", "run_name": "t"}


def trained(run_type: str):
    """A few optimiser steps on normalised activations x_n = SCALE · x_raw."""
    torch.manual_seed(0)
    sae = make_sae(RUNS[run_type], D)
    sae.init_b_dec(torch.full((D,), 0.3))
    trainer = Trainer(RUNS[run_type], sae, 100)
    for _ in range(1, 10):
        x_raw = torch.randn(32, D) * 4 + 1.0
        fg = torch.arange(32) < 12
        x_raw[fg] += 6.0
        trainer.train_step(SCALE * x_raw, fg)
    if run_type == "adaptive":
        assert sae.group_bias.detach().abs().sum() > 0
    return sae


def raw_batch():
    torch.manual_seed(1)
    x = torch.randn(20, D) * 4 + 1.0
    x[:8] += 6.0
    return x


@pytest.mark.parametrize("run_type", ["baseline", "fixed", "adaptive"])
def test_round_trip_on_raw_activations(tmp_path, run_type):
    sae = trained(run_type)
    save_sae(sae, tmp_path, scale=SCALE, extra_cfg=EXTRA)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CFG_FILENAME, WEIGHTS_FILENAME]
    loaded, cfg = load_sae(tmp_path)
    assert type(loaded) is type(sae)
    x_raw = raw_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_raw) * SCALE, sae(SCALE * x_raw), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.encode(x_raw), sae.encode(SCALE * x_raw), rtol=1e-5, atol=1e-5)
    assert cfg["activation_scale"] == SCALE and cfg["architecture"] == sae.architecture
    assert cfg["d_in"] == D and cfg["d_sae"] == S and cfg["normalize_activations"] == "none"
    assert cfg["orthosae"] == sae.cfg.to_dict() and loaded.cfg == sae.cfg and cfg["run_name"] == "t"
    assert cfg["metadata"]["hook_name"] == EXTRA["hook_name"] and cfg["metadata"]["sae_lens_version"]
    if run_type == "adaptive":
        assert torch.equal(loaded.groups, sae.groups) and cfg["n_groups"] == 3


def test_save_rejects_bad_scale_and_reserved_keys(tmp_path):
    sae = make_sae(RUNS["baseline"], D)
    with pytest.raises(ExportError, match="scale"):
        save_sae(sae, tmp_path, scale=0.0, extra_cfg={})
    with pytest.raises(ExportError, match="d_sae"):
        save_sae(sae, tmp_path, scale=1.0, extra_cfg={"d_sae": 3})
    assert not any(tmp_path.iterdir())


def test_load_bad_dir_one_line_naming_path(tmp_path):
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(ExportError) as e:
            load_sae(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    save_sae(make_sae(RUNS["baseline"], D), tmp_path, scale=1.0)
    (tmp_path / CFG_FILENAME).write_text("{not json")
    with pytest.raises(ExportError) as e:
        load_sae(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("run_type", ["baseline", "fixed"])
def test_standard_export_loads_in_sae_lens(tmp_path, run_type):
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens not installed")
    save_sae(trained(run_type), tmp_path, scale=SCALE, extra_cfg=EXTRA)
    ours, _ = load_sae(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert type(theirs).__name__ == "StandardSAE"
    assert theirs.cfg.metadata.hook_name == EXTRA["hook_name"]
    x = raw_batch()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x))
        f = ours.encode(x)
        torch.testing.assert_close(theirs.decode(f), ours.decode(f))


def test_grouped_export_loads_in_sae_lens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens not installed")
    from orthosae.train.export import register_with_sae_lens

    sae = trained("adaptive")
    save_sae(sae, tmp_path, scale=SCALE, extra_cfg=EXTRA)
    first = register_with_sae_lens()
    assert register_with_sae_lens() == first  # idempotent
    ours, _ = load_sae(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert type(theirs).__name__ == "OrthoSAEGroupedSAE" and theirs.cfg.n_groups == 3
    assert theirs.groups.dtype == torch.int64 and torch.equal(theirs.groups, sae.groups)
    x = raw_batch()
    with torch.no_grad():
        f = ours.encode(x)
        torch.testing.assert_close(theirs.encode(x), f)
        torch.testing.assert_close(theirs.decode(f), ours.decode(f))
        torch.testing.assert_close(theirs(x), ours(x))
        # folding the (uniform) decoder norms keeps reconstructions, as SAEBench does
        theirs.fold_W_dec_norm()
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / CFG_FILENAME).read_text())["architecture"] == "orthosae_grouped"


@pytest.mark.parametrize("run_type", ["baseline", "fixed", "adaptive"])
@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_topk_exports_load_with_load_sae_and_sae_lens(tmp_path, run_type, activation):
    """TopK exports as SAELens "topk" (k in cfg.json), BatchTopK as "jumprelu" with the learned
    threshold (as SAELens saves BatchTopK); the grouped SAE keeps its own architecture for both."""
    base = RUNS[run_type]
    RUNS[f"{run_type}-{activation}"] = RunConfig.of(
        run_type, train=base.train, ortho=base.ortho, activation=activation, k=3, l1_coefficient=0.0
    )
    try:
        sae = trained(f"{run_type}-{activation}")
    finally:
        del RUNS[f"{run_type}-{activation}"]
    if activation == "batchtopk":
        assert float(sae.threshold[0]) > 0
    save_sae(sae, tmp_path, scale=SCALE, extra_cfg=EXTRA)
    ours, cfg = load_sae(tmp_path)
    assert cfg["architecture"] == {"adaptive": "orthosae_grouped"}.get(
        run_type, {"topk": "topk", "batchtopk": "jumprelu"}[activation]
    )
    x_raw = raw_batch()
    with torch.no_grad():
        f = ours.encode(x_raw)
        torch.testing.assert_close(f, sae.encode(SCALE * x_raw), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x_raw) * SCALE, sae(SCALE * x_raw), rtol=1e-5, atol=1e-5)
        if activation == "topk":
            assert ((f > 0).sum(-1) <= 3).all()
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens not installed")
    from orthosae.train.export import register_with_sae_lens
    from orthosae.train.sae.baseline import fold_sae_lens_decoder_norms

    register_with_sae_lens()
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert type(theirs).__name__ == {"adaptive": "OrthoSAEGroupedSAE"}.get(
        run_type, {"topk": "TopKSAE", "batchtopk": "JumpReLUSAE"}[activation]
    )
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x_raw), f)
        torch.testing.assert_close(theirs(x_raw), ours(x_raw))
        fold_sae_lens_decoder_norms(theirs)  # SAEBench's fold keeps reconstructions (θ scales with the norms)
        torch.testing.assert_close(theirs(x_raw), ours(x_raw), rtol=1e-5, atol=1e-5)
