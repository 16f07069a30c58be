"""A new eval family is one file plus one line (eval/families.py): a toy family, added that way, is
measured for every run, lands in report.json (its section and its metric's condition) and gets its
own report.md section and plot, with no other change."""

from __future__ import annotations

import json

from orthosae.eval import families, metrics
from tests._configs import run_tiny
from tests._toy_family import TOY


def test_a_toy_family_is_measured_and_reported(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))  # the tables as they were, after the test
    monkeypatch.setattr(metrics, "_REGISTRY", list(metrics._REGISTRY))
    families.register(TOY)  # the one line
    run_tiny(
        tmp_path,
        tiny_model_dir,
        """
    [[runs]]
    name = "baseline"
    type = "baseline"
    """,
    )

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
