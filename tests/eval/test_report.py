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
    monkeypatch.setattr(report, "family_plots", lambda view: [])
    from orthosae.common.config import EvalConfig

    cfg = SimpleNamespace(path="p.toml", train=SimpleNamespace(runs_dir="runs"), eval=EvalConfig())
    reader = SimpleNamespace(url="s.zarr", meta={"d_model": 4}, corpora=dict)
    results = {f"baseline-s{s}": result("baseline", s, ev=0.8) for s in range(3)}
    with pytest.raises(RuntimeError, match="plot failed"):
        report.write_report(tmp_path, cfg, reader, results, {"eval": 1.0})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["runs"]) == set(results) and saved["conditions"]["conditions"]["baseline"]["runs"]


def test_summary_table_opens_the_report_with_the_primary_question():
    from orthosae.eval.report import summary_markdown

    def s(mean, lo, hi, reached="6 of 6"):
        return {"mean": mean, "ci95": [lo, hi], "reached": reached}

    agg = {
        "primary": {
            "figure": "F_0.1",
            "quality": "ce_loss_score_docs",
            "comparisons": {"adaptive vs the baseline curve": {"holm": "above"}},
        },
        "conditions": {
            "baseline": {
                "type": "baseline",
                "seeds": [0, 1, 2, 3, 4, 5],
                "metrics": {"ce_loss_score_docs": s(0.9, 0.89, 0.91), "F_0.1": s(0.5, 0.4, 0.6)},
            },
            "adaptive": {
                "type": "adaptive",
                "seeds": [0, 1, 2, 3, 4, 5],
                "metrics": {
                    "ce_loss_score_docs": s(0.9, 0.88, 0.92),
                    "F_0.1": s(float("nan"), float("nan"), float("nan"), "5 of 6"),
                },
            },
            "diff-of-means": {"type": "reference", "seeds": [None], "metrics": {}},
        },
    }
    md = summary_markdown(agg)
    assert (
        "| condition | type | seeds | ce_loss_score_docs | F_0.1 [95 %] | vs the baseline (Holm) | seeds reaching b |"
        in md
    )
    assert "| baseline | baseline | 6 | 0.900 [0.890, 0.910] | 0.500 [0.400, 0.600] | baseline curve | 6 of 6 |" in md
    assert "| adaptive | adaptive | 6 | 0.900 [0.880, 0.920] | n/a (5 of 6 seeds) | above | 5 of 6 |" in md
    assert "diff-of-means" not in md  # references are not SAEs on the frontier
    assert summary_markdown({"primary": None, "conditions": {}}) == ""
