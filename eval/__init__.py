"""`pipe eval`: reconstruction, downstream, conditioning and unlearning reports across runs."""

import json
from pathlib import Path

from orthosae.common.report_json import ReportUnreadable, read_report
from orthosae.eval.layers import evaluate  # every harvested layer; one layer: eval.runner.evaluate
from orthosae.eval.report import eval_settings


def report_is_current(cfg) -> bool:
    """A report exists and was made from the runs as they are now (same training fingerprints) under
    the same [eval] settings (several layers: each layer's report, and the side-by-side one)."""
    if len(cfg.layers) > 1:
        return _is_current(cfg) and all(_is_current(v) for v in cfg.layer_views() if v.runs)
    return _is_current(cfg)


def _is_current(cfg) -> bool:
    path = Path(cfg.eval.reports_dir) / cfg.eval.name / "report.json"
    if not path.exists():
        return False
    try:
        report = read_report(path)
        reported = report["runs"]
    except ReportUnreadable:  # a damaged report is not current
        return False
    if report.get("eval_settings") != eval_settings(cfg):
        return False
    for run in cfg.runs:
        summary = Path(cfg.train.runs_dir) / run.name / "summary.json"
        if run.name not in reported or not summary.exists():
            return False
        try:
            fingerprint = json.loads(summary.read_text()).get("fingerprint")
        except (ValueError, UnicodeDecodeError):  # a damaged summary: the report is not of these runs
            return False
        if fingerprint != reported[run.name]["summary"].get("fingerprint"):
            return False
    return True


__all__ = ["evaluate", "report_is_current"]
