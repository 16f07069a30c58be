"""`pipe status`: the store, every run (status, step, L0 / EV, elapsed, checkpoint), whether the
report is current and how the last job ended; `--json` for scripts."""

import json

from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common import preempt
from tests._batch import RUNS, batch_config
from tests._synthetic import make_store


def status(path) -> dict:
    res = CliRunner().invoke(main, ["--config", str(path), "status", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # one JSON document on stdout, nothing else


def test_status_follows_a_pipeline_through_preemption_training_and_report(tmp_path, monkeypatch):
    from orthosae.train.trainer import Trainer

    make_store(str(tmp_path / "s.zarr"))
    path = batch_config(tmp_path)
    doc = status(path)
    assert doc["config"] == str(path) and doc["stores"][0]["state"] == "complete"
    assert {c["name"]: c["chunks_done"] for c in doc["stores"][0]["corpora"]} == {
        "retain": 8,
        "forget": 8,
        "retain_heldout": 8,
    }
    assert [(r["run"], r["status"], r["step"], r["total_steps"]) for r in doc["runs"]] == [
        (n, "not started", 0, 160) for n in RUNS
    ]
    assert doc["report"]["state"] == "missing" and doc["last_job"] is None

    real = Trainer.train_step

    def stop_at_45(self, x, is_forget):  # as a SIGTERM would: stop after step 45
        out = real(self, x, is_forget)
        if self.step == 45:
            preempt.request()
        return out

    monkeypatch.setattr(Trainer, "train_step", stop_at_45)
    assert CliRunner().invoke(main, ["--config", str(path), "train"]).exit_code == 75
    monkeypatch.setattr(Trainer, "train_step", real)
    doc = status(path)
    for r in doc["runs"]:
        assert (r["status"], r["step"], r["checkpoint_step"]) == ("partial", 45, 45), r
        assert r["l0"] > 0 and 0 < r["ev"] <= 1 and r["seconds"] > 0  # from the step-40 log record
    job = doc["last_job"]
    assert (job["command"], job["state"], job["exit_code"]) == ("train", "preempted", 75)
    assert "step 45" in job["detail"]

    assert CliRunner().invoke(main, ["--config", str(path), "train"]).exit_code == 0
    doc = status(path)
    assert [(r["status"], r["step"], r["checkpoint_step"]) for r in doc["runs"]] == [("complete", 160, 160)] * 3
    assert doc["last_job"]["state"] == "done" and doc["report"]["state"] == "missing"

    # a report made from these runs is current; once a run's settings change, run and report are stale
    report = tmp_path / "reports/default/report.json"
    summaries = {n: json.loads((tmp_path / "runs" / n / "summary.json").read_text()) for n in RUNS}
    from orthosae.common.config import load_config
    from orthosae.eval.report import eval_settings

    report.write_text(json.dumps({"runs": {n: {"summary": s} for n, s in summaries.items()}}))
    assert status(path)["report"]["state"] == "stale"  # no eval_settings: made under unknown [eval] settings
    report.write_text(
        json.dumps(
            {
                "runs": {n: {"summary": s} for n, s in summaries.items()},
                "eval_settings": eval_settings(load_config(path)),
            }
        )
    )
    assert status(path)["report"]["state"] == "current"
    path.write_text(path.read_text().replace("alpha = 0.1", "alpha = 0.2"))
    doc = status(path)
    assert {r["run"]: r["status"] for r in doc["runs"]} == {
        "baseline": "complete",
        "fixed": "stale",
        "adaptive": "complete",
    }
    assert doc["report"]["state"] == "stale"

    res = CliRunner().invoke(main, ["--config", str(path), "status"])  # the human view, on stderr
    assert res.exit_code == 0 and res.stdout == ""
    text = res.output
    for needle in ("complete", "160/160", "stale", "report.md", "last job: train", "s.zarr", "retain"):
        assert needle in text, (needle, text)


def test_status_of_stores_alone_keeps_its_store_view(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    res = CliRunner().invoke(main, ["status", str(tmp_path / "s.zarr"), str(tmp_path / "none.zarr")])
    assert res.exit_code == 0 and "complete" in res.output and "not harvested yet" in res.output
    res = CliRunner().invoke(main, ["status", "--json", str(tmp_path / "s.zarr")])
    doc = json.loads(res.stdout)
    assert doc["config"] is None and doc["stores"][0]["meta"]["d_model"] == 16 and "runs" not in doc
