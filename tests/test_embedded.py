"""The embedded default end to end (slow: the real Gemma 3 270M and the PyPI text wheels).

Run with `pytest -m slow`. Budgets are shrunk from pipeline.toml so it takes minutes, but every
other key is the shipped default: the same model, layer, corpora, runs and eval protocol.
"""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.store import StoreReader

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_embedded_default_pipe_run(tmp_path):
    text = (ROOT / "pipeline.toml").read_text()
    text = re.sub(r"(?m)^tokens = [\d_]+", "tokens = 4_096", text)  # each corpus and [train]
    text = text.replace('store = "stores/', f'store = "{tmp_path}/stores/')
    text = text.replace('runs_dir = "runs"', f'runs_dir = "{tmp_path}/runs"')
    text = text.replace('reports_dir = "reports"', f'reports_dir = "{tmp_path}/reports"')
    text = re.sub(r"(?m)^max_questions = \d+", "max_questions = 4", text)
    text = re.sub(r"(?m)^(rows|ce_contexts|loss_contexts) = [\d_]+", r"\1 = 8", text)
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    store = StoreReader(f"{tmp_path}/stores/gemma-3-270m-L12.zarr")
    assert store.complete and store.d_model == 640 and store.meta["layer"] == 12
    assert store.meta["file_sha256"].startswith("a5fd3b62230a")
    # 4,096 tokens (~40 lead extracts) of the wheel, which lists its articles sorted by topic: the
    # seeded, stratified order puts every retain topic in them (the front held Arts alone)
    comp = store.corpora()["retain"].composition
    assert set(comp["labels"]) == {
        "Arts",
        "Everyday life",
        "Geography",
        "History",
        "Mathematics",
        "People",
        "Philosophy and religion",
        "Physical sciences",
        "Society and social sciences",
        "Technology",
    }, comp
    assert runner.invoke(main, ["--config", str(path), "verify"]).exit_code == 0
    report = json.loads((tmp_path / "reports/default/report.json").read_text())
    assert {"baseline", "fixed-a0.04", "adaptive-a0.0"} <= set(report["runs"])
