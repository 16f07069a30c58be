"""A new SAE variant is one file plus one line (common/variants.py): a toy variant, added that way,
goes through config validation, train, export, eval and report.md with no other change."""

from __future__ import annotations

import json

from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common import variants
from tests._configs import run_tiny
from tests._toy_variant import TOY


def test_a_toy_variant_runs_through_train_eval_and_report(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(variants, "VARIANTS", dict(variants.VARIANTS))  # the table as it was, after the test
    variants.register(TOY)  # the one line
    path = run_tiny(
        tmp_path,
        tiny_model_dir,
        """
    [[runs]]
    name = "baseline"
    type = "baseline"
    [[runs]]
    name = "toy"
    type = "toy"
    """,
    )

    cfg = json.loads((tmp_path / "runs/toy/cfg.json").read_text())
    assert (cfg["architecture"], cfg["orthosae"]["type"]) == ("standard", "toy")  # SAELens' own, for relu
    report = json.loads((tmp_path / "reports/tiny/report.json").read_text())
    base, toy = report["runs"]["baseline"], report["runs"]["toy"]
    # the baseline under another name, trained on the same stream from the same seed: the same numbers
    assert toy["reconstruction"] == base["reconstruction"] and toy["downstream"] == base["downstream"]
    assert json.dumps(toy["unlearning"]["rows"]) == json.dumps(base["unlearning"]["rows"])  # nan-safe
    assert report["conditions"]["conditions"]["toy"]["type"] == "toy"
    assert report["conditions"]["conditions"]["toy"]["alpha"] is None  # no L_ortho, so no α
    md = (tmp_path / "reports/tiny/report.md").read_text()
    assert "| toy | toy |" in md  # its row in the runs table, under its type
    assert "- baseline vs toy: explained_variance 0.000 [n/a, n/a]" in md  # paired with the baseline: no difference

    # and config validation reads its line: the toy reads no [train.ortho] key
    path.write_text(path.read_text().replace('type = "toy"', 'type = "toy"\nalpha = 0.1'))
    res = CliRunner().invoke(main, ["--config", str(path), "train"])
    assert res.exit_code == 2 and "[[runs]] toy alpha: type 'toy' does not read [train.ortho] alpha" in res.output
