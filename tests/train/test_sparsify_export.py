"""Exports in EleutherAI sparsify's layout (issue 37): sparsify's own loader reads them, and its coder
reproduces orthosae's encode / decode on raw rows (relu runs exactly, with k = d_sae)."""

import json

import pytest
import torch
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.errors import UserError
from orthosae.train.export import load_sae
from orthosae.train.sparsify_export import save_sparsify
from tests._configs import BASELINE_AND_ADAPTIVE, write_tiny_pipeline

sparsify = pytest.importorskip("sparsify", reason="test peer: setup.sh --test installs eai-sparsify --no-deps")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("sparsify")
    path = write_tiny_pipeline(
        tmp,
        tiny_model_dir,
        tokens=1280,
        rest=BASELINE_AND_ADAPTIVE
        + """
    [[runs]]
    name = "topk"
    type = "baseline"
    activation = "topk"
    k = 8
    [[runs]]
    name = "batchtopk"
    type = "baseline"
    activation = "batchtopk"
    k = 8
    """
        + f'[eval]\nreports_dir = "{tmp / "reports"}"\n',
    )
    runner = CliRunner()
    for cmd in ("harvest", "train"):
        res = runner.invoke(main, ["--config", str(path), cmd])
        assert res.exit_code == 0, res.output
    return tmp, path


@pytest.mark.parametrize("run", ["baseline", "topk"])
def test_sparsify_loader_reads_the_export_and_codes_as_orthosae(trained, run):
    tmp, _ = trained
    folder = save_sparsify(tmp / "runs" / run, tmp / "sparsify" / run)
    assert folder.name == "layers.0"  # the hookpoint: block 0's output, what the harvest stored
    coder = sparsify.SparseCoder.load_from_disk(folder)
    ours, _ = load_sae(tmp / "runs" / run)
    x = torch.randn(50, ours.d_model) * 3
    with torch.no_grad():
        f = ours.encode(x)
        enc = coder.encode(x)
        dense = torch.zeros_like(f).scatter_(1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(dense, f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(coder.decode(enc.top_acts, enc.top_indices), ours.decode(f), rtol=1e-5, atol=1e-4)
    assert coder.cfg.k == (8 if run == "topk" else ours.d_sae) and coder.num_latents == ours.d_sae
    # load_many, the loader sparsify's own releases are read with, finds the hookpoint by its folder
    assert list(sparsify.SparseCoder.load_many(str(tmp / "sparsify" / run), local=True)) == ["layers.0"]


@pytest.mark.parametrize("run, why", [("adaptive", "per-token group biases"), ("batchtopk", "learned threshold")])
def test_what_sparsify_cannot_express_is_refused(trained, run, why):
    tmp, _ = trained
    with pytest.raises(UserError, match=why):
        save_sparsify(tmp / "runs" / run, tmp / "nope")


def test_push_format_sparsify_stages_the_layout_and_its_card(trained):
    tmp, path = trained
    res = CliRunner().invoke(
        main,
        ["--config", str(path), "push", "baseline", "topk", "--repo", "me/sp", "--format", "sparsify", "--dry-run"],
    )
    assert res.exit_code == 0, res.output
    staged = tmp / "reports/default/hub/me--sp"
    for run in ("baseline", "topk"):
        assert sparsify.SparseCoder.load_from_disk(staged / run / "layers.0").num_latents == 128
        assert json.loads((staged / run / "layers.0/cfg.json").read_text())["orthosae"]["run_name"] == run
    card = (staged / "README.md").read_text()
    assert 'SparseCoder.load_from_hub("me/sp", hookpoint="baseline/layers.0")' in card
    assert "library_name: saelens" not in card and "- sparsify" in card
    res = CliRunner().invoke(
        main, ["--config", str(path), "push", "adaptive", "--repo", "me/sp", "--format", "sparsify", "--dry-run"]
    )
    assert res.exit_code == 2 and "per-token group biases" in res.output
