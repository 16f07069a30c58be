"""train/verify.py on hand-made run folders (no training): every problem line, state, repair and
advice `pipe verify` can print, pinned word for word. test_run_integrity.py checks the same code
end to end on trained runs."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from orthosae.common.errors import RunError
from orthosae.train import digests, verify
from orthosae.train.checkpoint import save_checkpoint

SHAPES = {"W_enc": (2, 3), "W_dec": (3, 2), "b_enc": (3,), "b_dec": (2,)}


def export(run_dir, shapes=SHAPES, cfg=None, status="complete", fingerprint="fp"):
    """An export of d_in 2, d_sae 3 with its digests and a summary.json carrying their copy."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cfg.json").write_text(json.dumps(cfg or {"d_in": 2, "d_sae": 3}))
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(run_dir / "sae_weights.safetensors"))
    files = digests.record(run_dir)
    summary = {"status": status, "fingerprint": fingerprint, "digests": files}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def flip(path):
    """Same size, other bytes: only the sha256 tells."""
    b = bytearray(path.read_bytes())
    b[-1] ^= 1
    path.write_bytes(bytes(b))


def test_expected_shapes_follow_the_cfg():
    assert verify._expected_shapes({"d_in": "2", "d_sae": 3}) == {
        "W_enc": (2, 3),
        "W_dec": (3, 2),
        "b_enc": (3,),
        "b_dec": (2,),
        "threshold": (3,),
        "groups": (3,),
        "tau": (),
    }
    assert verify._expected_shapes({"d_in": 2, "d_sae": 3, "n_groups": 4})["group_bias"] == (4, 2)


def test_restart_command_names_the_config_unless_it_is_the_default():
    run = SimpleNamespace(path="pipeline.toml")
    assert verify.restart_command(run, "r") == "pipe train --run r --force"
    assert verify.restart_command(SimpleNamespace(path="my p.toml"), "r") == (
        "pipe --config 'my p.toml' train --run r --force"
    )


def test_summary_reads_or_names_what_is_wrong(tmp_path):
    assert verify.load_summary(tmp_path) == (None, [])
    assert verify.read_summary(tmp_path) is None
    path = tmp_path / "summary.json"
    path.write_text('{"status": "complete"}')
    assert verify.load_summary(tmp_path) == ({"status": "complete"}, [])
    path.write_text("[1]")
    assert verify.load_summary(tmp_path) == (None, [(str(path), "unreadable (ValueError: not a JSON object)")])
    path.write_text("{")
    line = "unreadable (JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    assert verify.load_summary(tmp_path) == (None, [(str(path), line)])
    with pytest.raises(RunError) as e:
        verify.read_summary(tmp_path)
    assert str(e.value) == f"{path}: {line}; `pipe verify --repair` rewrites it from the run's final checkpoint"
    path.write_bytes(b"\xff")
    assert verify.load_summary(tmp_path)[1][0][1].startswith("unreadable (UnicodeDecodeError: ")


def test_an_intact_export_has_no_problems(tmp_path):
    summary = export(tmp_path)
    assert verify.export_problems(tmp_path) == []
    assert verify.export_problems(tmp_path, summary) == []
    verify.require_intact_export(tmp_path, summary)  # no error


def test_digest_file_damage_falls_back_to_the_copy_in_summary(tmp_path):
    summary = export(tmp_path)
    d, w = str(tmp_path / "digests.json"), str(tmp_path / "sae_weights.safetensors")
    (tmp_path / "digests.json").write_text("[1,")
    assert verify.export_problems(tmp_path, summary) == [(d, "unreadable (JSONDecodeError)")]
    (tmp_path / "digests.json").unlink()
    assert verify.export_problems(tmp_path, summary) == [(d, "missing (summary.json holds a copy)")]
    # without the summary's copy nothing is known to check against: only the two files' presence
    assert verify.export_problems(tmp_path) == []
    # the digest file and the copy disagree: the copy is trusted, so the weights' damage is found
    digests.record(tmp_path)
    flip(tmp_path / "sae_weights.safetensors")
    digests.record(tmp_path)
    assert verify.export_problems(tmp_path, summary) == [
        (d, "differs from the copy in summary.json (damaged or replaced)"),
        (w, "sha256 differs from the recorded one (damaged or replaced)"),
    ]
    # weights gone as well as the digest file: digests.check names them once, no "summary holds a copy"
    (tmp_path / "digests.json").unlink()
    (tmp_path / "sae_weights.safetensors").unlink()
    assert verify.export_problems(tmp_path, summary) == [(w, "missing")]


def test_export_problems_name_each_file_once_and_the_first_in_the_error(tmp_path):
    summary = export(tmp_path)
    c, w = str(tmp_path / "cfg.json"), str(tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").unlink()
    flip(tmp_path / "sae_weights.safetensors")
    problems = [(c, "missing"), (w, "sha256 differs from the recorded one (damaged or replaced)")]
    assert verify.export_problems(tmp_path, summary) == problems
    with pytest.raises(RunError) as e:
        verify.require_intact_export(tmp_path, summary)
    assert str(e.value) == (
        f"{c}: missing (+1 more); `pipe verify --repair` rewrites the export from the run's final checkpoint"
    )
    # sizes only: the flipped byte is not seen
    assert verify.export_problems(tmp_path, summary, full=False) == [(c, "missing")]
    (tmp_path / "digests.json").unlink()
    with pytest.raises(RunError) as e:
        verify.require_intact_export(tmp_path)  # no digests to check against: cfg.json alone
    assert str(e.value).startswith(f"{c}: missing; `pipe verify --repair`")


def test_no_digests_at_all_checks_cfg_then_the_weights_header(tmp_path):
    export(tmp_path)
    (tmp_path / "digests.json").unlink()
    c, w = str(tmp_path / "cfg.json"), str(tmp_path / "sae_weights.safetensors")
    (tmp_path / "sae_weights.safetensors").unlink()
    assert verify.export_problems(tmp_path) == [(w, "missing")]
    (tmp_path / "cfg.json").write_text('{"d_in": 2}')
    assert verify.export_problems(tmp_path) == [(w, "missing"), (c, "unreadable (KeyError: 'd_sae')")]
    (tmp_path / "cfg.json").write_text('{"d_in": 2, "d_sae": 3}')
    (tmp_path / "sae_weights.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"not json")
    assert verify.export_problems(tmp_path) == [
        (
            w,
            "unreadable (SafetensorError: Error while deserializing header: invalid JSON in header: "
            "expected ident at line 1 column 2)",
        )
    ]
    assert verify.export_problems(tmp_path, full=False) == []  # sizes only: the header is not read


def test_weights_of_other_shapes_than_the_cfg_are_named(tmp_path):
    shapes = {"W_enc": (3, 2), "W_dec": (3, 2), "b_enc": (3,), "group_bias": (4, 3), "extra": (7,)}
    export(tmp_path, shapes=shapes, cfg={"d_in": 2, "d_sae": 3, "n_groups": 4})
    w = str(tmp_path / "sae_weights.safetensors")
    assert verify.export_problems(tmp_path) == [
        (w, "has no b_dec"),
        (w, "W_enc has shape [3, 2], cfg.json says [2, 3]"),
        (w, "group_bias has shape [4, 3], cfg.json says [4, 2]"),
    ]


# ---- checkpoints and check_run


def cfg_of(tmp_path, tokens=50, batch_size=10):
    train = SimpleNamespace(runs_dir=str(tmp_path / "runs"), tokens=tokens, batch_size=batch_size, seed=0)
    return SimpleNamespace(train=train, path="pipeline.toml")


RUN = SimpleNamespace(name="r")


def checkpoint(run_dir, step, status="complete", fingerprint="fp"):
    save_checkpoint(run_dir, {"fingerprint": fingerprint, "trainer": {"status": status, "step": step}})


@pytest.fixture
def fingerprints(monkeypatch):
    """The settings' fingerprints "fp" and "fp-old"; each call's arguments recorded."""
    calls = []

    def known(run, reader, seed):
        calls.append((run, reader, seed))
        return ("fp", "fp-old")

    monkeypatch.setattr(verify, "run_fingerprints", known)
    return calls


def test_final_checkpoint_only_of_a_finished_run_of_these_settings(tmp_path):
    assert verify.final_checkpoint(tmp_path, ("fp",), 5) is None  # none at all
    checkpoint(tmp_path, 5, status="running")
    assert verify.final_checkpoint(tmp_path, ("fp",), 5).state["trainer"]["step"] == 5  # step 5 of 5
    assert verify.final_checkpoint(tmp_path, ("fp",), 6) is None  # step 5 of 6
    assert verify.final_checkpoint(tmp_path, ("other", "fp"), 5) is not None  # any known fingerprint
    assert verify.final_checkpoint(tmp_path, ("other",), 5) is None
    for status, want in (("complete", True), ("early_stopped", True), ("failed", False)):
        checkpoint(tmp_path, 2, status=status)
        assert (verify.final_checkpoint(tmp_path, ("fp",), 5) is not None) is want, status
    for folder in ("checkpoint", "checkpoint.prev"):
        flip(tmp_path / folder / "state.json")
    assert verify.final_checkpoint(tmp_path, ("fp",), 5) is None  # every one damaged
    assert [p[0] for p in verify.checkpoint_problems(tmp_path)] == [
        str(tmp_path / "checkpoint/state.json"),
        str(tmp_path / "checkpoint.prev/state.json"),
    ]
    # sizes only: a flipped byte is not seen
    assert verify.checkpoint_problems(tmp_path, full=False) == []


def test_check_run_of_a_missing_and_of_an_intact_run(tmp_path, fingerprints):
    cfg = cfg_of(tmp_path)
    run_dir = tmp_path / "runs/r"
    assert verify.run_dir_of(cfg, RUN) == run_dir
    assert verify.check_run(cfg, RUN, None) == {
        "run": "r",
        "dir": str(run_dir),
        "state": "not started",
        "problems": [],
        "repair": None,
    }
    checkpoint(run_dir, 5)
    assert verify.check_run(cfg, RUN, None)["state"] == "partial"
    export(run_dir)
    for reader in (None, object()):
        assert verify.check_run(cfg, RUN, reader) == {
            "run": "r",
            "dir": str(run_dir),
            "state": "complete",
            "problems": [],
            "repair": None,
        }
    export(run_dir, fingerprint="older")
    assert verify.check_run(cfg, RUN, None)["state"] == "complete"  # no reader: fingerprints unknown
    assert verify.check_run(cfg, RUN, object())["state"] == "stale"


def test_check_run_rewrites_a_damaged_export_from_the_final_checkpoint(tmp_path, fingerprints):
    cfg, run_dir = cfg_of(tmp_path), tmp_path / "runs/r"
    checkpoint(run_dir, 5)
    export(run_dir, fingerprint="fp-old")
    flip(run_dir / "sae_weights.safetensors")
    w = str(run_dir / "sae_weights.safetensors")
    problem = {"file": w, "problem": "sha256 differs from the recorded one (damaged or replaced)", "part": "export"}
    out = verify.check_run(cfg, RUN, object())
    assert out["problems"] == [problem] and out["state"] == "complete"
    assert out["repair"] == "rewrite the export and summary.json from checkpoint/ (step 5)" and "advice" not in out
    # no reader: the settings' fingerprints are unknown, so no checkpoint is trusted to rewrite it
    out = verify.check_run(cfg, RUN, None)
    assert out["repair"] is None
    assert out["advice"] == (
        "no intact final checkpoint of these settings to rewrite it from; `pipe train --run r --force` trains it again"
    )
    # a checkpoint of step 4 of 5 is not the final one
    checkpoint(run_dir, 4, status="running")
    assert verify.check_run(cfg, RUN, object())["repair"] is None


def test_check_run_of_an_unreadable_summary_checks_the_export(tmp_path, fingerprints):
    cfg, run_dir = cfg_of(tmp_path), tmp_path / "runs/r"
    checkpoint(run_dir, 5)
    export(run_dir)
    (run_dir / "summary.json").write_text("[1]")
    s = str(run_dir / "summary.json")
    out = verify.check_run(cfg, RUN, object())
    assert out["state"] == "damaged"
    assert out["problems"] == [{"file": s, "problem": "unreadable (ValueError: not a JSON object)", "part": "summary"}]
    assert out["repair"] == "rewrite the export and summary.json from checkpoint/ (step 5)"
    (run_dir / "cfg.json").unlink()
    out = verify.check_run(cfg, RUN, object())
    assert [p["part"] for p in out["problems"]] == ["summary", "export"]
    # without the weights, an unreadable summary is all there is: the run never exported
    (run_dir / "sae_weights.safetensors").unlink()
    assert [p["part"] for p in verify.check_run(cfg, RUN, object())["problems"]] == ["summary"]


def test_check_run_drops_damaged_checkpoints_the_run_does_not_need(tmp_path, fingerprints):
    cfg, run_dir = cfg_of(tmp_path), tmp_path / "runs/r"
    checkpoint(run_dir, 3, status="running")
    checkpoint(run_dir, 4, status="running")
    flip(run_dir / "checkpoint/state.json")
    out = verify.check_run(cfg, RUN, object())
    assert out["state"] == "partial" and out["drop"] == [str(run_dir / "checkpoint")]
    assert out["problems"] == [
        {
            "file": str(run_dir / "checkpoint/state.json"),
            "problem": "sha256 differs from the recorded one (damaged or replaced)",
            "part": "checkpoint",
        }
    ]
    assert out["repair"] == (
        "delete the damaged checkpoint/ (`pipe train` resumes from the intact checkpoint.prev/ (step 3))"
    )
    # finished: the export holds the run, both checkpoints may go
    export(run_dir)
    flip(run_dir / "checkpoint.prev/state.json")
    out = verify.check_run(cfg, RUN, object())
    assert out["drop"] == [str(run_dir / "checkpoint"), str(run_dir / "checkpoint.prev")]
    assert out["repair"] == "delete the damaged checkpoint/, checkpoint.prev/ (the export is intact)"
    # stale: nothing is deleted; the advice says the export is intact
    export(run_dir, fingerprint="older")
    out = verify.check_run(cfg, RUN, object())
    assert out["state"] == "stale" and out["repair"] is None and "drop" not in out
    assert out["advice"] == "the export is intact; a damaged checkpoint only matters to a later repair"


def test_check_run_advice_where_nothing_can_be_mended(tmp_path, fingerprints):
    cfg, run_dir = cfg_of(tmp_path), tmp_path / "runs/r"
    checkpoint(run_dir, 3, status="running")
    checkpoint(run_dir, 4, status="running")
    flip(run_dir / "checkpoint/state.json")
    # a summary of a run still going, of older settings: stale, so nothing is dropped
    (run_dir / "summary.json").write_text(json.dumps({"status": "running", "fingerprint": "older"}))
    out = verify.check_run(cfg, RUN, object())
    assert out["state"] == "stale" and out["repair"] is None
    assert out["advice"] == "`pipe train` resumes from the intact checkpoint.prev/ (step 3)"
    flip(run_dir / "checkpoint.prev/state.json")
    out = verify.check_run(cfg, RUN, object())
    assert out["advice"] == "no intact checkpoint left to resume from; `pipe train --run r --force` trains it again"
    # no summary: partial, and no intact checkpoint to resume from
    (run_dir / "summary.json").unlink()
    out = verify.check_run(cfg, RUN, object())
    assert out["state"] == "partial" and out["repair"] is None and "drop" not in out
    assert out["advice"].startswith("no intact checkpoint left to resume from")


def test_a_folder_name_holding_colons_does_not_leak_into_the_problem(tmp_path):
    """digests.read names the file, "<path>: unreadable (...)": the problem is what follows the
    last ": ", whatever the path holds (it used to split at the first, keeping part of the path)."""
    run_dir = tmp_path / "a: b"
    summary = export(run_dir)
    (run_dir / "digests.json").write_text("[1,")
    assert verify.export_problems(run_dir, summary) == [(str(run_dir / "digests.json"), "unreadable (JSONDecodeError)")]


def test_the_summary_copy_stands_in_for_a_missing_digest_file(tmp_path):
    summary = export(tmp_path)
    (tmp_path / "digests.json").unlink()
    flip(tmp_path / "sae_weights.safetensors")
    d, w = str(tmp_path / "digests.json"), str(tmp_path / "sae_weights.safetensors")
    assert verify.export_problems(tmp_path, summary) == [
        (d, "missing (summary.json holds a copy)"),
        (w, "sha256 differs from the recorded one (damaged or replaced)"),
    ]
    with pytest.raises(RunError, match=r"digests\.json: missing \(summary\.json holds a copy\) \(\+1 more\)"):
        verify.require_intact_export(tmp_path, summary)


def test_check_run_uses_the_summary_copy_the_seed_and_whole_steps(tmp_path, fingerprints):
    # 55 tokens in batches of 10: 5 whole steps, so a running checkpoint at step 5 is final
    cfg, run_dir = cfg_of(tmp_path, tokens=55), tmp_path / "runs/r"
    cfg.train.seed = 7
    checkpoint(run_dir, 5, status="running")
    export(run_dir)
    (run_dir / "digests.json").unlink()
    reader = object()
    out = verify.check_run(cfg, RUN, reader)
    assert fingerprints[-1] == (RUN, reader, 7)
    assert out["problems"] == [
        {"file": str(run_dir / "digests.json"), "problem": "missing (summary.json holds a copy)", "part": "export"}
    ]
    assert out["repair"] == "rewrite the export and summary.json from checkpoint/ (step 5)"


def test_an_empty_run_folder_is_not_started(tmp_path):
    cfg = cfg_of(tmp_path)
    (tmp_path / "runs/r").mkdir(parents=True)
    assert verify.check_run(cfg, RUN, None)["state"] == "not started"


def test_a_long_error_is_cut_at_120_characters(tmp_path):
    export(tmp_path, cfg={"d_in": "x" * 200, "d_sae": 3})
    (tmp_path / "digests.json").unlink()
    (problem,) = verify.export_problems(tmp_path)
    msg = "invalid literal for int() with base 10: '" + "x" * 200 + "'"
    assert problem == (str(tmp_path / "cfg.json"), f"unreadable (ValueError: {msg[:120]})")
