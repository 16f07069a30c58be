"""eval.metrics: one registry drives report.md and report.json; old reports read under renamed keys."""

import json
import math
from types import SimpleNamespace

import pytest

from orthosae.eval.metrics import registry


def test_rms_cross_cos_is_read_under_its_name_and_under_the_name_old_reports_used():
    """report.json says decoder_rms_cross_cos since issue 25; reports before say decoder_overlap_fro_normalized."""
    by_key = {m.key: m for m in registry()}
    new = {"conditioning": {"pairs": [{"decoder_rms_cross_cos": 0.25, "decoder_rms_cross_cos_activity": 0.5}]}}
    old = {"conditioning": {"pairs": [{"decoder_overlap_fro_normalized": 0.25, "decoder_rms_cos_activity": 0.5}]}}
    for result in (new, old):
        assert by_key["rms_cross_cos"].value(result) == 0.25
        assert by_key["rms_cross_cos_activity"].value(result) == 0.5
    assert math.isnan(by_key["rms_cross_cos"].value({"conditioning": {"pairs": [{}]}}))


def test_one_registry_drives_report_md_and_report_json(tmp_path, monkeypatch):
    import orthosae.eval.metrics as metrics
    import orthosae.eval.report as report

    monkeypatch.setattr(metrics, "_REGISTRY", list(metrics._REGISTRY))  # undone after the test
    metrics.register(metrics.Metric("toy_score", "unlearning", True, "toy score (registered once)"))

    def run(kind, seed, v):
        return {
            "cfg": {"orthosae": {"type": kind, "train": {"seed": seed}, "ortho": {"alpha": 0.0}}},
            "summary": {"type": kind},
            "reconstruction": {"l0": 10.0, "explained_variance": 0.8},
            "downstream": {},
            "conditioning": {},
            "curves": {},
            "unlearning": {"toy_score": v, "rows": []},
        }

    results = {f"baseline-s{s}": run("baseline", s, 0.1 * s) for s in range(5)}
    results |= {f"adaptive-s{s}": run("adaptive", s, 1.0 + 0.1 * s) for s in range(5)}
    monkeypatch.setattr(report, "family_plots", lambda view: [])
    from orthosae.common.config import load_config
    from tests._configs import ROOT

    cfg = load_config(ROOT / "pipeline.toml")
    reader = SimpleNamespace(url="s.zarr", meta={"d_model": 4}, corpora=dict)
    report.write_report(tmp_path, cfg, reader, results, {})
    saved = json.loads((tmp_path / "report.json").read_text())
    md = (tmp_path / "report.md").read_text()
    assert any(m["key"] == "toy_score" for m in saved["metrics"])
    assert saved["conditions"]["conditions"]["adaptive"]["metrics"]["toy_score"]["mean"] == pytest.approx(1.2)
    assert saved["who_wins"]["toy_score"] == "adaptive"  # 5 seeds, paired differences all +1.0
    assert "toy score (registered once)" in md  # a column of the tables
    assert md.count("toy score (registered once)") >= 3  # runs table, conditions table, who wins
    assert "**toy score (registered once)** (`toy_score`): adaptive" in md
