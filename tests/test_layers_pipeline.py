"""Runs at two layers (issue 37): one `pipe run` harvests both in one pass, trains both layers' runs,
evaluates each layer's runs against its own store and puts them side by side in one report."""

import json
from pathlib import Path

from click.testing import CliRunner
from safetensors.torch import load_file

from orthosae.cli import main
from orthosae.common.config import load_config
from tests._configs import tiny_eval, write_tiny_pipeline


def test_two_layers_train_in_one_pipe_run_and_sit_side_by_side(tmp_path, tiny_model_dir):
    path = write_tiny_pipeline(
        tmp_path,
        tiny_model_dir,
        tokens=1280,
        rest="""
    [[runs]]
    name = "baseline"
    type = "baseline"
    layer = [0, 1]
    [[runs]]
    name = "fixed"
    type = "fixed"
    alpha = 0.1
    layer = 1
    """
        + tiny_eval(tmp_path)
        + """
    [eval.probing]
    enabled = false
    """,
    )
    text = path.read_text().replace("layer = 0\n", "layers = [0, 1]\n", 1)
    path.write_text(text.replace(f'store = "{tmp_path / "s.zarr"}"', f'store = "{tmp_path / "s-L{layer}.zarr"}"'))
    cfg = load_config(path)
    assert [r.name for r in cfg.runs] == ["baseline-L0", "baseline-L1", "fixed"]
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    # each run trained on its own layer's store: cfg.json names its hook and store
    for name, layer in (("baseline-L0", 0), ("baseline-L1", 1), ("fixed", 1)):
        c = json.loads((tmp_path / "runs" / name / "cfg.json").read_text())
        assert c["metadata"]["hook_name"] == f"blocks.{layer}.hook_resid_post"
        assert c["store"] == str(tmp_path / f"s-L{layer}.zarr") and c["orthosae"]["layer"] == layer
        assert c["model_source"] == str(tiny_model_dir)  # the local source, beside model_name
    w0 = load_file(tmp_path / "runs/baseline-L0/sae_weights.safetensors")["W_enc"]
    w1 = load_file(tmp_path / "runs/baseline-L1/sae_weights.safetensors")["W_enc"]
    assert not w0.equal(w1)  # the same seed on other rows: other weights
    # each layer's report compares that layer's runs; the side-by-side report holds them all
    out = tmp_path / "reports/tiny"
    l0 = json.loads((out / "L0/report.json").read_text())
    l1 = json.loads((out / "L1/report.json").read_text())
    assert set(l0["runs"]) == {"baseline-L0"} and set(l1["runs"]) == {"baseline-L1", "fixed"}
    assert l0["store_meta"]["layer"] == 0 and l1["store_meta"]["layer"] == 1
    both = json.loads((out / "report.json").read_text())
    assert {n: r["layer"] for n, r in both["runs"].items()} == {"baseline-L0": 0, "baseline-L1": 1, "fixed": 1}
    ev = both["runs"]["baseline-L1"]["figures"]["explained_variance"]
    assert ev == l1["runs"]["baseline-L1"]["reconstruction"]["explained_variance"]
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| baseline |"))  # one row, a cell per layer
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 3 and cells[1] != cells[2] and "-" not in cells[1:]
    assert "[L0](L0/report.md)" in md
    # a second run finds everything complete and current
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0 and "report is current" in res.output, res.output
    status = json.loads(runner.invoke(main, ["--config", str(path), "status", "--json"]).output)
    assert [r["run"] for r in status["runs"]] == ["baseline-L0", "baseline-L1", "fixed"]
    assert status["report"]["state"] == "current"
    staged = runner.invoke(main, ["--config", str(path), "push", "baseline-L0", "fixed", "--repo", "me/x", "--dry-run"])
    assert staged.exit_code == 0, staged.output
    card = (out / "hub/me--x/README.md").read_text()
    assert "layers **0, 1**" in card and "| `baseline-L0` | `blocks.0.hook_resid_post` |" in card
    assert Path(out / "hub/me--x/fixed/cfg.json").exists()
