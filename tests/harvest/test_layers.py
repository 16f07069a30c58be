"""Several layers in one harvest pass (issue 37): each layer's store equals a one-layer harvest's, bit
for bit; resume and repair work per layer; the config keys fail with one line."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.capture import residual_after_block, residuals_after_blocks
from orthosae.common.config import ConfigError, load_config
from orthosae.common.store import StoreReader
from orthosae.harvest import harvest
from tests._configs import write_harvest_config
from tests._tiny import build_tiny_model

LAYERS = (0, 2, 3)


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory):
    """A tiny model with four blocks, so three layers and one after the deepest exist."""
    return build_tiny_model(tmp_path_factory.mktemp("deep") / "model", n_layers=4)


def layers_config(tmp_path, model_dir, layers=LAYERS, store="m-L{layer}.zarr", name="m.toml"):
    path = write_harvest_config(tmp_path, model_dir, store=store, name=name)
    text = path.read_text().replace("layer = 0", f"layers = {list(layers)}")
    path.write_text(text)
    return path


def store_arrays(url: str) -> dict:
    reader = StoreReader(url)
    out = {}
    for name in reader.corpora():
        for arr in ("acts", "tokens", "context", "position", "committed"):
            out[name, arr] = reader.root[name][arr][:]
    return out


def test_capture_of_several_blocks_equals_one_block_each(deep_model_dir):
    from orthosae.common.model import load_model

    lm = load_model(str(deep_model_dir), dtype="float32", device="cpu")
    ids = __import__("torch").randint(4, 200, (2, 12))
    many = residuals_after_blocks(lm.model, LAYERS, ids)
    for layer in LAYERS:
        assert many[layer].equal(residual_after_block(lm.model, layer, ids))


def test_three_layer_harvest_equals_three_single_layer_harvests(tmp_path, deep_model_dir):
    cfg = load_config(layers_config(tmp_path, deep_model_dir))
    assert cfg.layers == LAYERS and cfg.harvest.layer is None
    result = harvest(cfg, show_progress=False)
    assert not result.skipped
    for layer in LAYERS:
        single = load_config(
            write_harvest_config(
                tmp_path, deep_model_dir, store=f"one-L{layer}.zarr", layer=layer, name=f"one{layer}.toml"
            )
        )
        harvest(single, show_progress=False)
        many, one = StoreReader(cfg.harvest.store_for(layer)), StoreReader(single.harvest.store)
        assert many.complete and many.meta["layer"] == layer
        when = ("created", "completed")
        ident = {k: v for k, v in many.meta.items() if k not in when}
        assert ident == {k: v for k, v in one.meta.items() if k not in when}  # the same provenance
        a, b = store_arrays(many.url), store_arrays(one.url)
        assert a.keys() == b.keys()
        for key in a:  # rows, tokens, indices and checksums, bit for bit
            assert np.array_equal(a[key], b[key]), key
    # the layers differ from each other (the test would pass vacuously if every store held one layer)
    r0, r3 = StoreReader(cfg.harvest.store_for(0)), StoreReader(cfg.harvest.store_for(3))
    n = r0.corpora()["retain"].n_rows
    assert not r0.read_rows("retain", 0, n).equal(r3.read_rows("retain", 0, n))
    assert harvest(cfg, show_progress=False).skipped  # complete: left alone


def test_resume_and_repair_per_layer(tmp_path, deep_model_dir):
    cfg = load_config(layers_config(tmp_path, deep_model_dir))
    harvest(cfg, show_progress=False)
    clean = {layer: store_arrays(cfg.harvest.store_for(layer)) for layer in LAYERS}
    # un-commit two chunks of layer 2 only, and damage a chunk file of layer 3
    from orthosae.common.store import StoreWriter

    w = StoreWriter(cfg.harvest.store_for(2), StoreReader(cfg.harvest.store_for(2)).meta, create=False)
    w.uncommit("retain", [1, 4])
    path = Path(cfg.harvest.store_for(3)) / "retain" / "acts" / "c" / "2" / "0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = harvest(cfg, show_progress=False)  # resume: the two chunks, for layer 2 alone
    per_chunk = StoreReader(cfg.harvest.store_for(2)).corpora()["retain"].rows_per_chunk
    assert result.rows_written == 2 * per_chunk
    assert StoreReader(cfg.harvest.store_for(3)).check()  # the flipped byte is still there
    harvest(cfg, repair=True, show_progress=False)
    for layer in LAYERS:
        now = store_arrays(cfg.harvest.store_for(layer))
        for key in clean[layer]:
            assert np.array_equal(now[key], clean[layer][key]), (layer, key)
        assert not StoreReader(cfg.harvest.store_for(layer)).check()


def test_cli_verify_and_status_name_every_layer_store(tmp_path, deep_model_dir):
    path = layers_config(tmp_path, deep_model_dir, layers=(1, 2))
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(path), "harvest"]).exit_code == 0
    out = runner.invoke(main, ["--config", str(path), "verify"])
    assert out.exit_code == 0, out.output
    for layer in (1, 2):
        assert f"m-L{layer}.zarr: ok" in out.output
    status = runner.invoke(main, ["--config", str(path), "status", "--json"])
    import json

    doc = json.loads(status.output)
    assert [s["meta"]["layer"] for s in doc["stores"]] == [1, 2]


@pytest.mark.parametrize(
    "harvest_keys, runs, message",
    [
        ("layers = [0, 1]\nlayer = 0", "", "[harvest] layers: give `layer = N` or `layers = [...]`, not both"),
        ("layers = [0, 0]", "", "[harvest] layers: layer 0 listed twice"),
        ("layers = [0, -1]", "", "[harvest] layers: expected block indices (ints >= 0), got -1"),
        ("", "", "[harvest] layer: required key is missing (or `layers = [...]`)"),
        (
            "layers = [0, 1]",
            "# no layer",
            "[[runs]] b layer: [harvest] layers holds several blocks (0, 1): name the "
            "one this run trains on, or a list",
        ),
        ("layers = [0, 1]", "layer = 5", "[[runs]] b layer: 5 is not harvested ([harvest] layers: 0, 1)"),
        ("layer = 1", "layer = 0", "[[runs]] b layer: 0 is not harvested ([harvest] layer: 1)"),
        ("layers = [0, 1]", "layer = []", "[[runs]] b layer: empty list"),
    ],
)
def test_layer_keys_fail_with_one_line(tmp_path, tiny_model_dir, harvest_keys, runs, message):
    path = write_harvest_config(tmp_path, tiny_model_dir, store="s-L{layer}.zarr")
    text = path.read_text().replace("layer = 0\n", harvest_keys + "\n")
    if runs:
        text += f'[[runs]]\nname = "b"\ntype = "baseline"\n{runs}\n'
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: {message}")
    assert "\n" not in str(e.value)
    out = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert out.exit_code == 2


def test_several_layers_need_a_layer_placeholder(tmp_path, tiny_model_dir):
    path = write_harvest_config(tmp_path, tiny_model_dir, store="s.zarr")
    path.write_text(path.read_text().replace("layer = 0\n", "layers = [0, 1]\n"))
    with pytest.raises(ConfigError, match=r"\[harvest\] store: several layers are written to one store each"):
        load_config(path)


def test_runs_pick_and_expand_layers(tmp_path, tiny_model_dir):
    path = write_harvest_config(tmp_path, tiny_model_dir, store="s-L{layer}.zarr")
    text = path.read_text().replace("layer = 0\n", "layers = [0, 1]\n")
    text += (
        '[[runs]]\nname = "b"\ntype = "baseline"\nlayer = [0, 1]\nseeds = [3, 4]\n'
        '[[runs]]\nname = "one"\ntype = "baseline"\nlayer = 1\n'
    )
    path.write_text(text)
    cfg = load_config(path)
    assert [(r.name, r.layer, r.train.seed, r.condition) for r in cfg.runs] == [
        ("b-L0-s3", 0, 3, "b-L0"),
        ("b-L0-s4", 0, 4, "b-L0"),
        ("b-L1-s3", 1, 3, "b-L1"),
        ("b-L1-s4", 1, 4, "b-L1"),
        ("one", 1, 0, "one"),
    ]
    assert "layer" not in cfg.runs[0].overrides and cfg.runs[0].to_dict()["layer"] == 0
    view = cfg.at_layer(1)
    assert (view.harvest.layer, view.harvest.store) == (1, str(tmp_path / "s-L1.zarr"))
    assert [r.name for r in view.runs] == ["b-L1-s3", "b-L1-s4", "one"]
    assert view.eval.reports_dir.endswith("reports/default") and view.eval.name == "L1"
    assert cfg.view_of("b-L0-s4").harvest.layer == 0
    # one layer: the config is its own view, the store path filled in, every run on that layer
    single = load_config(
        write_harvest_config(tmp_path, tiny_model_dir, store="x-L{layer}.zarr", layer=1, name="single.toml")
    )
    assert single.at_layer(1) is single and single.harvest.store == str(tmp_path / "x-L1.zarr")
    assert [r.layer for r in single.runs] == [1]
    # no [[runs]] table and several layers: a baseline at each
    bare = write_harvest_config(tmp_path, tiny_model_dir, store="y-L{layer}.zarr", name="bare.toml")
    bare.write_text(bare.read_text().replace("layer = 0\n", "layers = [0, 1]\n"))
    assert [(r.name, r.layer) for r in load_config(bare).runs] == [("baseline-L0", 0), ("baseline-L1", 1)]
