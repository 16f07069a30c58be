"""eval.report: report.json before the plots."""

import json

import pytest


def result(kind, seed, ev):
    return {
        "cfg": {"orthosae": {"name": "x", "type": kind, "train": {"seed": seed}, "ortho": {"alpha": 0.0}}},
        "reconstruction": {"l0": 10.0, "explained_variance": ev},
        "unlearning": {},
        "conditioning": {},
    }


def test_report_json_is_written_before_the_plots(tmp_path, monkeypatch):
    """A plot that fails must not lose an evaluation's measurements: report.json is on disk first."""
    from types import SimpleNamespace

    import orthosae.eval.report as report

    def broken(*_):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "plot_conditions", broken)
    monkeypatch.setattr(report, "_plots", lambda out_dir, results, *_: [])
    from orthosae.common.config import EvalConfig

    cfg = SimpleNamespace(path="p.toml", train=SimpleNamespace(runs_dir="runs"), eval=EvalConfig())
    reader = SimpleNamespace(url="s.zarr", meta={"d_model": 4}, corpora=dict)
    results = {f"baseline-s{s}": result("baseline", s, ev=0.8) for s in range(3)}
    with pytest.raises(RuntimeError, match="plot failed"):
        report.write_report(tmp_path, cfg, reader, results, {"eval": 1.0})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["runs"]) == set(results) and saved["conditions"]["conditions"]["baseline"]["runs"]
