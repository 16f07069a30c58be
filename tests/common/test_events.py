"""The event log of each `pipe` invocation (start, progress, outcome with its exit code and reason)
and the plain progress lines a log file gets instead of bars."""

import json

from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common import events
from tests._batch import RUNS, batch_config, event_log
from tests._configs import write_harvest_config
from tests._subprocess import start_script
from tests._synthetic import make_store


def test_train_job_logs_start_progress_runs_and_done(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    path = batch_config(tmp_path)
    res = CliRunner().invoke(main, ["--config", str(path), "train"])
    assert res.exit_code == 0, res.output
    log = event_log(tmp_path, "train")
    kinds = [e["event"] for e in log]
    assert kinds[0] == "start" and kinds[-1] == "done" and log[-1]["exit_code"] == 0
    assert log[0]["config"] == str(path) and log[0]["argv"] == ["--config", str(path), "train"]
    progress = [e for e in log if e["event"] == "progress"]
    assert [e["done"] for e in progress] == list(range(161))  # [log] progress_seconds = 0: every step
    last = progress[-1]
    assert (last["stage"], last["total"], last["unit"], last["percent"]) == ("train", 160, "step", 100.0)
    assert last["rate"] > 0 and last["eta_s"] == 0
    assert [r["run"] for r in last["runs"]] == list(RUNS)
    assert all(r["step"] == 160 and 0 < r["l0"] < 64 and 0 < r["ev"] <= 1 for r in last["runs"])
    done = {e["run"]: e for e in log if e["event"] == "run_done"}
    assert set(done) == set(RUNS) and all(e["status"] == "complete" for e in done.values())
    assert [e for e in log if e["event"] == "stage_done"][0]["runs"] == {n: "complete" for n in RUNS}
    # without a terminal every step printed a plain line with each run's step, L0 and EV
    lines = [line for line in res.output.splitlines() if "  160/160 step  100%" in line]
    assert len(lines) == 1 and all(f"{n} step 160 L0 " in lines[0] for n in RUNS), res.output[-2000:]


def test_failed_run_exits_1_with_the_reason(tmp_path, monkeypatch):
    from orthosae.train.sae.fixed import FixedOrthoSAE

    make_store(str(tmp_path / "s.zarr"))
    path = batch_config(tmp_path)
    real = FixedOrthoSAE.training_forward

    def poisoned(self, x, c):
        out = real(self, x, c)
        if type(self) is FixedOrthoSAE:
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(FixedOrthoSAE, "training_forward", poisoned)
    res = CliRunner().invoke(main, ["--config", str(path), "train"])
    assert res.exit_code == 1, res.output
    assert "error: run fixed failed: loss became nan at step 0" in res.output
    log = event_log(tmp_path, "train")
    assert (log[-1]["event"], log[-1]["exit_code"]) == ("failed", 1)
    assert "run fixed failed: loss became nan" in log[-1]["reason"]
    fixed = next(e for e in log if e["event"] == "run_done" and e["run"] == "fixed")
    assert fixed["status"] == "failed" and "nan" in fixed["reason"]


def test_bad_input_exits_2_with_the_reason(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    path = batch_config(tmp_path)
    res = CliRunner().invoke(main, ["--config", str(path), "eval"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    last = event_log(tmp_path, "eval")[-1]
    assert (last["event"], last["exit_code"]) == ("failed", 2)
    assert "run 'baseline' is not trained yet" in last["reason"]


HARVEST = """
import sys
from orthosae.cli import main
main(sys.argv[1:], prog_name="pipe")
"""


def test_log_file_gets_plain_lines_and_no_library_bars(tmp_path, tiny_model_dir):
    """`pipe harvest > log 2>&1`: our progress as lines; transformers' "Loading weights" tqdm bar,
    which writes carriage returns into a log, is silenced."""
    path = write_harvest_config(tmp_path, tiny_model_dir)
    log = tmp_path / "harvest.log"
    proc = start_script(tmp_path, HARVEST, "--config", path, "harvest", log=log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "\r" not in text and "Loading weights" not in text, text[:2000]
    lines = [line for line in text.splitlines() if " tok/s  elapsed " in line]
    # one line as each quarter is reached (a chunk is 30 of 750 rows: 0, 28, 52, 76, 100 %)
    assert [int(line.split("  ")[3][:-1]) // 25 for line in lines] == [0, 1, 2, 3, 4], text
    assert "harvest done" in text
    assert events.read(next((tmp_path / "reports/default/events").glob("harvest-*.jsonl")))[-1]["event"] == "done"


def test_event_lines_are_json_even_for_nan(tmp_path):
    from types import SimpleNamespace

    cfg = SimpleNamespace(path=tmp_path / "p.toml", eval=SimpleNamespace(reports_dir=str(tmp_path), name="r"))
    log = events.start(cfg, "train", [])
    events.emit("progress", rate=float("nan"), runs=[{"l0": float("inf")}])
    events.finish("failed", 1, reason="x")
    rows = [json.loads(line) for line in log.path.read_text().splitlines()]  # strict JSON: no NaN
    assert rows[1]["rate"] is None and rows[1]["runs"] == [{"l0": None}] and rows[-1]["exit_code"] == 1
