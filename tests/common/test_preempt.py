"""Batch jobs: SIGTERM / SIGINT mid-train and mid-harvest save the work in hand and exit 75; the
rerun ends bit-identical to an uninterrupted run. The CLI runs in a subprocess writing to a log file
and the signal is sent once its event log shows progress, as a scheduler would."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from orthosae.cli import main
from orthosae.common import events, preempt
from orthosae.common.config import load_config
from orthosae.common.store import StoreReader
from orthosae.harvest import harvest
from orthosae.train import train
from tests._batch import RUNS, batch_config, event_log
from tests._configs import write_harvest_config
from tests._stores import assert_same_store, store_files
from tests._subprocess import start_script, wait_exit
from tests._synthetic import make_store

# The CLI as `pipe` runs it, each step or chunk slowed a little so the signal lands mid-run.
SLOW_CLI = """
import sys, time
import orthosae.harvest.runner, orthosae.train.trainer
delay = float(sys.argv[1])
real_step, real_chunk = orthosae.train.trainer.Trainer.train_step, orthosae.harvest.runner._chunk_activations
def slow_step(self, x, is_forget):
    time.sleep(delay)
    return real_step(self, x, is_forget)
def slow_chunk(*args, **kwargs):
    time.sleep(delay)
    return real_chunk(*args, **kwargs)
orthosae.train.trainer.Trainer.train_step = slow_step
orthosae.harvest.runner._chunk_activations = slow_chunk
from orthosae.cli import main
main(sys.argv[2:], prog_name="pipe")
"""


@pytest.fixture(autouse=True)
def _no_leftover_request():
    yield
    preempt.clear()


def wait_for(proc, condition, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the job ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < end, f"no {what} within {timeout} s"
        time.sleep(0.05)


def progressed(events_dir: Path, minimum: int):
    """A progress event with at least `minimum` done in any event log of the folder."""

    def check():
        for path in events_dir.glob("*.jsonl"):
            if any(e["event"] == "progress" and e["done"] >= minimum for e in events.read(path)):
                return True
        return False

    return check


def sigterm_after_progress(proc, events_dir: Path, minimum: int, what: str, log: Path) -> None:
    """Once the job's event log shows ``minimum`` progress events, SIGTERM it: it must exit 75."""
    try:
        wait_for(proc, progressed(events_dir, minimum), what)
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 120, log) == preempt.EXIT_PREEMPTED, log.read_text()[-3000:]
    finally:
        proc.kill()


def weights(runs_dir: Path) -> dict:
    return {n: load_file(str(runs_dir / n / "sae_weights.safetensors")) for n in RUNS}


def assert_same_weights(a: dict, b: dict) -> None:
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


@pytest.fixture
def reference(tmp_path):
    """An uninterrupted sweep on the synthetic store (tmp_path/s.zarr): its weights and logs."""
    make_store(str(tmp_path / "s.zarr"))
    ref = tmp_path / "ref"
    ref.mkdir()
    train(load_config(batch_config(ref, store="../s.zarr")), show_progress=False)
    return ref / "runs"


def test_sigterm_mid_train_checkpoints_exits_75_and_resumes_bitwise(tmp_path, reference):
    job = tmp_path / "job"
    job.mkdir()
    path = batch_config(job, store="../s.zarr")
    log = tmp_path / "train.log"
    sigterm_after_progress(
        start_script(tmp_path, SLOW_CLI, 0.01, "--config", path, "train", log=log),
        job / "reports/default/events",
        10,
        "training progress",
        log,
    )
    text = log.read_text()
    assert "SIGTERM: finishing the chunk or step in hand" in text
    assert f"resume with `pipe --config {path} train` (exit 75)" in text, text[-2000:]
    steps = {n: json.loads((job / "runs" / n / "checkpoint/state.json").read_text())["trainer"]["step"] for n in RUNS}
    assert len(set(steps.values())) == 1 and 10 <= steps["baseline"] < 160, steps  # all saved mid-run
    assert not any((job / "runs" / n / "summary.json").exists() for n in RUNS)
    last = event_log(job, "train")[-1]
    assert (last["event"], last["exit_code"], last["signal"]) == ("preempted", 75, "SIGTERM")
    assert f"step {steps['baseline']}" in last["saved"]

    res = CliRunner().invoke(main, ["--config", str(path), "train"])
    assert res.exit_code == 0, res.output
    assert f"resuming from step {steps['baseline']}" in res.output
    assert_same_weights(weights(reference), weights(job / "runs"))


def test_preempted_at_any_step_resumes_to_the_same_weights_and_log(tmp_path, reference, monkeypatch):
    """A stop at step 123 (no checkpoint_every multiple, mid lazy-L_ortho period) is bitwise too, and
    the run's log.jsonl reads as the uninterrupted one's: nothing logged twice."""
    from orthosae.train.trainer import Trainer

    job = tmp_path / "job"
    job.mkdir()
    cfg = load_config(batch_config(job, store="../s.zarr"))
    real = Trainer.train_step

    def stop_at_123(self, x, is_forget):
        out = real(self, x, is_forget)
        if self.step == 123:
            preempt.request()
        return out

    monkeypatch.setattr(Trainer, "train_step", stop_at_123)
    with pytest.raises(preempt.Preempted, match=r"baseline step 123, fixed step 123, adaptive step 123 of 160"):
        train(cfg, show_progress=False)
    monkeypatch.setattr(Trainer, "train_step", real)
    preempt.clear()
    train(cfg, show_progress=False)
    assert_same_weights(weights(reference), weights(job / "runs"))
    for name in RUNS:
        assert (job / "runs" / name / "log.jsonl").read_text() == (reference / name / "log.jsonl").read_text()


def test_sigterm_mid_harvest_commits_the_chunk_and_resumes_to_the_same_store(tmp_path, tiny_model_dir):
    ref = load_config(write_harvest_config(tmp_path, tiny_model_dir, store="ref.zarr", name="ref.toml"))
    harvest(ref, show_progress=False)
    path = write_harvest_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text() + "[log]\nprogress_seconds = 0\n")
    log = tmp_path / "harvest.log"
    sigterm_after_progress(
        start_script(tmp_path, SLOW_CLI, 0.2, "--config", path, "harvest", log=log),
        tmp_path / "reports/default/events",
        1,
        "harvest progress",
        log,
    )
    text = log.read_text()
    assert f"resume with `pipe --config {path} harvest` (exit 75)" in text, text[-2000:]
    reader = StoreReader(str(tmp_path / "s.zarr"))
    done = sum(g.chunks_done for g in reader.corpora().values())
    assert not reader.complete and 1 <= done < sum(g.n_chunks for g in reader.corpora().values())
    assert f"{done}/" in event_log(tmp_path, "harvest")[-1]["saved"]
    assert not Path(f"{tmp_path / 's.zarr'}.orthosae-lock").exists()  # released on the way out

    res = CliRunner().invoke(main, ["--config", str(path), "harvest"])
    assert res.exit_code == 0, res.output
    assert_same_store(ref.harvest.store, str(tmp_path / "s.zarr"))
    assert store_files(ref.harvest.store) == store_files(tmp_path / "s.zarr")  # byte for byte


def test_second_signal_stops_at_once(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    path = batch_config(tmp_path)
    log = tmp_path / "train.log"
    proc = start_script(tmp_path, SLOW_CLI, 30, "--config", path, "train", log=log)  # a 30 s step
    try:
        wait_for(proc, progressed(tmp_path / "reports/default/events", 0), "the first progress event")
        proc.send_signal(signal.SIGTERM)
        wait_for(proc, lambda: "send it again to stop at once" in log.read_text(), "the first signal's notice")
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 20, log) == -signal.SIGTERM
    finally:
        proc.kill()
    assert not (tmp_path / "runs/baseline/checkpoint").exists()


def test_signal_before_the_loop_stops_at_once_with_75(tmp_path):
    """Before the step loop nothing is in hand: the job does not wait, it exits 75 and says so."""
    make_store(str(tmp_path / "s.zarr"))
    path = batch_config(tmp_path)
    code = SLOW_CLI.replace(
        "from orthosae.cli import main",
        "import orthosae.train.runner\n"
        "orthosae.train.runner.estimate_scale = lambda *a, **k: time.sleep(60)\n"
        "from orthosae.cli import main",
    )
    log = tmp_path / "train.log"
    proc = start_script(tmp_path, code, 0, "--config", path, "train", log=log)
    try:
        # the event log opens once the handler is in place
        wait_for(proc, lambda: any((tmp_path / "reports/default/events").glob("*.jsonl")), "the job's start")
        proc.send_signal(signal.SIGINT)
        assert wait_exit(proc, 30, log) == preempt.EXIT_PREEMPTED, log.read_text()[-3000:]
    finally:
        proc.kill()
    last = event_log(tmp_path, "train")[-1]
    assert (last["event"], last["signal"], last["saved"]) == ("preempted", "SIGINT", preempt.NOTHING_SAVED)


def test_a_swallowed_raise_is_raised_again_until_caught(monkeypatch):
    """Outside a deferred region the handler raises wherever the main thread is; a finaliser or a
    broad ``except`` there swallows it. The raise comes again until the catcher acknowledges it."""
    monkeypatch.setattr(preempt, "RETRY_S", 0.2)
    with preempt.handle_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except BaseException:  # noqa: BLE001 - what a library might do
            pass
        assert preempt.requested() == "SIGTERM"
        start = time.monotonic()
        with pytest.raises(preempt.Preempted) as caught:
            time.sleep(10)
        assert time.monotonic() - start < 5 and caught.value.saved == preempt.NOTHING_SAVED
        preempt.acknowledge()
        time.sleep(1)  # five periods: no further raise once acknowledged
    assert signal.getsignal(signal.SIGTERM) is not preempt._handler


def test_a_deferred_region_does_not_start_once_a_signal_is_in():
    preempt.request("SIGINT")
    ran = []
    with pytest.raises(preempt.Preempted, match="nothing new to save"):
        with preempt.deferred():
            ran.append(1)
    assert not ran and preempt._state["deferred"] == 0


TWO_RANKS = """
import sys, time
import orthosae.harvest.runner
real = orthosae.harvest.runner._chunk_activations
def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)
orthosae.harvest.runner._chunk_activations = slow
from orthosae.cli import main
main(sys.argv[1:], prog_name="pipe")
"""


def test_sigterm_to_one_of_two_harvest_processes_stops_both_without_a_hang(tmp_path, tiny_model_dir):
    """Only rank 1 is signalled: it commits its chunk and waits at the barrier while rank 0 finishes
    its share; the main process sees the store incomplete and exits 75 too; the rerun completes it."""
    one = load_config(write_harvest_config(tmp_path, tiny_model_dir, store="one.zarr", name="one.toml"))
    harvest(one, show_progress=False)
    path = write_harvest_config(tmp_path, tiny_model_dir)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    log = tmp_path / "torchrun.log"
    proc = start_script(
        tmp_path,
        TWO_RANKS,
        "--config",
        path,
        "harvest",
        log=log,
        env={"OMP_NUM_THREADS": "1"},
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29531"],
    )
    evdir = tmp_path / "reports/default/events"
    try:
        # rank 1 writes odd chunks: its first commit shows it is in the chunk loop
        wait_for(proc, lambda: (tmp_path / "s.zarr/retain/committed/c/1").exists(), "rank 1's first chunk")
        rank1 = next(e for p in evdir.glob("*.jsonl") for e in events.read(p)[:1] if e["rank"] == 1)
        os.kill(rank1["pid"], signal.SIGTERM)
        assert proc.wait(timeout=120) != 0  # no hang; the launcher reports the stop
    finally:
        proc.kill()
    logs = {events.read(p)[0]["rank"]: events.read(p) for p in evdir.glob("*.jsonl")}
    assert logs[1][-1]["event"] == "preempted" and logs[1][-1]["exit_code"] == 75, logs[1][-3:]
    reader = StoreReader(str(tmp_path / "s.zarr"))
    assert not reader.complete
    assert not Path(f"{tmp_path / 's.zarr'}.orthosae-lock").exists()
    assert CliRunner().invoke(main, ["--config", str(path), "harvest"]).exit_code == 0
    assert_same_store(one.harvest.store, str(tmp_path / "s.zarr"))


def test_pipe_run_stops_between_stages_after_a_late_signal(tmp_path, tiny_model_dir, monkeypatch):
    """A signal during harvest's last chunk lets harvest finish; `pipe run` then stops before train."""
    import orthosae.harvest as harvest_pkg

    real = harvest_pkg.harvest

    def signalled_at_the_end(cfg, **kwargs):
        result = real(cfg, **kwargs)
        preempt.request()  # as if SIGTERM came while the last chunk was being written
        return result

    monkeypatch.setattr(harvest_pkg, "harvest", signalled_at_the_end)
    path = write_harvest_config(tmp_path, tiny_model_dir)
    # the harvest tests' config has a [train] table (device = "cpu"): add the runs folder to it
    path.write_text(path.read_text().replace("[train]\n", f'[train]\nruns_dir = "{tmp_path / "runs"}"\n', 1))
    res = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 75, res.output
    assert "the store is complete; train not started" in res.output
    assert StoreReader(str(tmp_path / "s.zarr")).complete and not (tmp_path / "runs").exists()
    log = event_log(tmp_path, "run")
    assert log[-1]["event"] == "preempted" and {e["stage"] for e in log} == {None, "harvest"}
