"""A new eval family is one file plus one line (eval/families.py): a toy family, added that way, is
measured for every run, lands in report.json (its section and its metric's condition) and gets its
own report.md section and plot, with no other change."""

from __future__ import annotations

import json

from click.testing import CliRunner

from orthosae.cli import main
from orthosae.eval import families, metrics
from tests._configs import tiny_eval, write_tiny_pipeline
from tests._toy_family import TOY


def test_a_toy_family_is_measured_and_reported(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))  # the tables as they were, after the test
    monkeypatch.setattr(metrics, "_REGISTRY", list(metrics._REGISTRY))
    families.register(TOY)  # the one line
    path = write_tiny_pipeline(
        tmp_path,
        tiny_model_dir,
        tokens=1920,
        rest="""
    [[runs]]
    name = "baseline"
    type = "baseline"
    """
        + tiny_eval(tmp_path, (2,)),
    )
    res = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)

    out = tmp_path / "reports/tiny"
    report = json.loads((out / "report.json").read_text())
    # by hand: d_sae 128 (write_tiny_pipeline) over the tiny model's d_model 64
    assert report["runs"]["baseline"]["toy"] == {"toy_width_ratio": 2.0}
    assert report["conditions"]["conditions"]["baseline"]["metrics"]["toy_width_ratio"]["mean"] == 2.0
    assert any(m["key"] == "toy_width_ratio" and m["section"] == "toy" for m in report["metrics"])
    assert "toy" in report["timings_s"] and "toy.png" in report["plots"] and (out / "toy.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "## Toy family (d_sae / d_model)\n| run | d_sae / d_model |" in md
    assert "| baseline | 2.000 |" in md.split("## Toy family")[1]
    assert "toy: d_sae / d_model" in md.split("## Conditions")[1]  # the registry's column
