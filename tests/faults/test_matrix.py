"""The fault matrix: every artefact the tool writes × every damage × every command that reads it.

Generated from ONE table (``ARTEFACTS``): a new artefact or command joins by one line. Each case
damages one file of a copy of a finished tiny pipeline, runs one command in-process, and accepts
only these outcomes (docs/operations.md, Guarantees):

- ``error``: exit 2 and exactly one ``error:`` line, naming the damaged path (no traceback);
- ``flagged``: `pipe verify` exits 1 and names it; `pipe status` exits 0 and marks the run damaged
  naming it, or (a same-size change it cannot see without hashing) shows what it shows undamaged;
- ``restored``: the command repairs it and the file holds its original bytes again;
- ``dropped``: `pipe verify --repair` deletes a damaged copy the run no longer needs (a finished
  run's checkpoint), after which `pipe verify` is clean;
- ``same``: the command gives what it gives on the undamaged pipeline;
- ``unevaluated``: a deleted report.json is no report: `pipe push`'s card says the runs are not
  evaluated, as before any `pipe eval`.

Test ids carry the matrix size: ``<artefacts>x<damages>x<commands>``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from orthosae.cli import main
from tests.faults.conftest import cache_file, cache_value

RUN_READERS = ("train", "verify", "verify --repair", "eval", "inspect", "push", "status")
STORE_READERS = ("train", "eval", "export-cache", "verify")

# artefact: (damaged file, "another run's" file that replaces it, commands that read it, what an
# error must name ({w}: the pipeline's folder), outcome per command where it is not `error`)
RUN_FILE = {"train": "restored", "verify": "flagged", "verify --repair": "restored", "status": "flagged"}
ARTEFACTS = {
    "store chunk": (
        "s.zarr/retain/acts/c/1/0",
        "s.zarr/retain/acts/c/2/0",
        STORE_READERS,
        "{w}/s.zarr/retain",
        {"verify": "flagged"},
    ),
    "manifest": (
        "s.zarr/retain/committed/c/1",
        "s.zarr/retain/committed/c/2",
        STORE_READERS,
        "{w}/s.zarr/retain",
        {"verify": "flagged"},
    ),
    "run weights": (
        "runs/baseline/sae_weights.safetensors",
        "runs/fixed/sae_weights.safetensors",
        RUN_READERS,
        "{path}",
        RUN_FILE,
    ),
    "cfg.json": ("runs/baseline/cfg.json", "runs/fixed/cfg.json", RUN_READERS, "{path}", RUN_FILE),
    "sparsity": (
        "runs/baseline/sparsity.safetensors",
        "runs/fixed/sparsity.safetensors",
        RUN_READERS,
        "{path}",
        RUN_FILE,
    ),
    "digests": ("runs/baseline/digests.json", "runs/fixed/digests.json", RUN_READERS, "{path}", RUN_FILE),
    "checkpoint": (
        "runs/baseline/checkpoint/state.safetensors",
        "runs/fixed/checkpoint/state.safetensors",
        ("train", "verify", "verify --repair", "status"),
        "{path}",
        {"train": "same", "verify": "flagged", "verify --repair": "dropped", "status": "flagged"},
    ),
    "log": ("runs/baseline/log.jsonl", "runs/fixed/log.jsonl", RUN_READERS, "{path}", RUN_FILE),
    "report.json": (
        "reports/tiny/report.json",
        "runs/baseline/summary.json",
        ("status", "push", "run"),
        "{path}",
        {"status": "flagged", "run": "same", "push|deleted": "unevaluated"},
    ),
    "caches": (None, None, ("eval",), "{path}", {"eval": "same"}),  # the probe cache: path from cache_file()
    "browser data": (
        "reports/tiny/inspect/baseline/index.json",
        "reports/tiny/inspect/fixed/index.json",
        ("inspect",),
        "{path}",
        {"inspect": "same"},
    ),
}
DAMAGES = ("deleted", "truncated", "one byte flipped", "replaced by another run's", "unreadable")
COMMANDS = sorted({c for v in ARTEFACTS.values() for c in v[2]})
SIZE = f"{len(ARTEFACTS)}x{len(DAMAGES)}x{len(COMMANDS)}"
CASES = [
    pytest.param(a, d, c, id=f"{SIZE}:{a}|{d}|{c}")
    for a, (_, _, readers, _, _) in ARTEFACTS.items()
    for d in DAMAGES
    for c in readers
]


def target(work: Path, artefact: str) -> tuple[Path, Path | None]:
    path, other = ARTEFACTS[artefact][:2]
    if artefact == "caches":
        return cache_file(work), cache_file(work).with_name("probing-other.safetensors")
    return work / path, work / other


def damage(path: Path, other: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "one byte flipped":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "replaced by another run's":
        shutil.copyfile(other, path)
    elif how == "unreadable":
        path.chmod(0)


def pipe(work: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(work / "p.toml"), *args])


def run_command(work: Path, command: str):
    if command == "train":
        return pipe(work, "train")
    if command == "verify":
        return pipe(work, "verify")
    if command == "verify --repair":
        return pipe(work, "verify", "--repair")
    if command == "status":
        return pipe(work, "status", "--json")
    if command == "push":
        return pipe(work, "push", "baseline", "fixed", "--repo", "me/x", "--dry-run")
    if command == "export-cache":
        return pipe(work, "export-cache", "--out", str(work / "cache-out"))
    if command == "inspect":
        return pipe(work, "inspect", "--max-rows", "60", "--top-k", "3")
    if command == "run":
        return pipe(work, "run")
    if command == "eval":
        return pipe(work, "eval")
    raise AssertionError(command)


def error_line(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, res.output
    return lines[0]


def index_json(path: Path, root: Path) -> dict:
    """A browser page's data, without what differs between two identical builds (time, timings)."""
    doc = json.loads(path.read_text().replace(str(root), "<root>"))
    doc["meta"].pop("created"), doc["meta"].pop("timings", None)
    return doc


@pytest.mark.parametrize("artefact,how,command", CASES)
def test_fault(artefact, how, command, work, finished):
    if how == "unreadable" and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    work = work(store=artefact in ("store chunk", "manifest"), browser=artefact == "browser data")
    if artefact in ("store chunk", "manifest") and command == "train":  # it reads the store for a run it trains
        shutil.rmtree(work / "runs/baseline")
    path, other = target(work, artefact)
    original = path.read_bytes()
    undamaged_status = json.loads(pipe(work, "status", "--json").stdout) if command == "status" else None
    damage(path, other, how)
    named = ARTEFACTS[artefact][3].format(w=work, path=path)
    outcomes = ARTEFACTS[artefact][4]
    outcome = outcomes.get(f"{command}|{how}", outcomes.get(command, "error"))

    if artefact == "caches":  # eval's probe-data read (eval/probe_data.py `cached`), in-process
        from orthosae.eval.probe_data import cached

        value, hit = cached(path, cache_value)
        assert not hit  # never read as data: rebuilt
        assert torch.equal(value["train"]["acts"]["a"], cache_value()["train"]["acts"]["a"])
        assert cached(path, cache_value)[1]  # and now a hit again
        return
    res = run_command(work, command)
    assert "Traceback" not in res.output
    if outcome == "error":
        assert named in error_line(res)
    elif outcome == "flagged" and command == "status":
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        if artefact == "report.json":
            assert doc["report"]["state"] == ("missing" if how == "deleted" else "unreadable")
            if doc["report"]["state"] == "unreadable":
                assert named in doc["report"]["problem"]
        else:
            run = doc["runs"][0]
            if named in run["message"]:
                assert run["status"] in ("damaged", "complete"), run
            else:  # a change status cannot see from sizes: what it shows undamaged
                assert {k: v for k, v in doc.items() if k != "last_job"} == {
                    k: v for k, v in undamaged_status.items() if k != "last_job"
                }
    elif outcome == "flagged":
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        assert named in res.output.replace("\n", "") or named in res.output, res.output
    elif outcome == "restored":
        assert res.exit_code == 0, (res.output, res.exception)
        assert path.read_bytes() == original
        assert pipe(work, "verify").exit_code == 0
    elif outcome == "dropped":
        assert res.exit_code == 0 and "delete the damaged checkpoint/" in res.output, res.output
        assert not path.parent.exists()
        assert (work / "runs/baseline/sae_weights.safetensors").read_bytes() == (
            finished / "runs/baseline/sae_weights.safetensors"
        ).read_bytes()
        assert pipe(work, "verify").exit_code == 0
    elif outcome == "unevaluated":  # no report at all: the card says so, as before any `pipe eval`
        assert res.exit_code == 0, res.output
        card = (work / "reports/tiny/hub/me--x/README.md").read_text()
        assert "Not evaluated for these weights: `baseline`, `fixed`" in card and "## Evaluation" in card
    elif outcome == "same":
        assert res.exit_code == 0, (res.output, res.exception)
        if command == "inspect":
            assert index_json(path, work) == index_json(finished / ARTEFACTS[artefact][0], finished)
        elif command == "run":  # the damaged report is not current: evaluated again, a sound report
            from orthosae.common.report_json import read_report

            assert read_report(path)["runs"].keys() == {"baseline", "fixed"}
            assert (
                read_report(path)["runs"]["baseline"]["reconstruction"]
                == read_report(finished / ARTEFACTS[artefact][0])["runs"]["baseline"]["reconstruction"]
            )
        else:  # train on a finished run whose checkpoint is damaged: left alone
            for f in ("sae_weights.safetensors", "cfg.json", "log.jsonl"):
                assert (work / "runs/baseline" / f).read_bytes() == (finished / "runs/baseline" / f).read_bytes()
