"""`pipe --set KEY=VALUE`: applied before validation (the file's own checks and one-line errors),
recorded in cfg.json, counted in the run fingerprints so only the runs a setting reaches retrain."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from orthosae.cli import main
from orthosae.common.config import ConfigError, load_config
from tests._synthetic import SWEEP, make_store, write_config


def test_overrides_set_keys_of_every_section(tmp_path):
    path = write_config(tmp_path, runs=SWEEP)
    cfg = load_config(
        path,
        [
            "train.lr=3e-4",
            "train.ortho.alpha=0.02",
            "corpora.retain.tokens=50",
            "harvest.layer=1",
            "train.device=cpu",
            'eval.unlearning.modes=["loss"]',
            "runs.fixed.alpha=[0.1,0.3]",
            "log.progress_seconds=5",
        ],
    )
    assert cfg.train.lr == 3e-4 and cfg.ortho.alpha == 0.02 and cfg.corpora["retain"].tokens == 50
    assert cfg.harvest.layer == 1 and cfg.eval.unlearning.modes == ["loss"] and cfg.log.progress_seconds == 5
    # a run's own table: the list expands as it would in the file; the others take the new [train.ortho]
    assert [r.name for r in cfg.runs] == ["baseline", "fixed-alpha0.1", "fixed-alpha0.3", "adaptive"]
    assert cfg.run("fixed-alpha0.3").ortho.alpha == 0.3 and cfg.run("adaptive").ortho.alpha == 0.0
    assert cfg.run("baseline").ortho.alpha == 0.02 and all(r.train.lr == 3e-4 for r in cfg.runs)
    assert cfg.sets[0] == "train.lr=3e-4" and len(cfg.sets) == 8
    assert load_config(path).sets == () and load_config(path).train.lr == 3e-3
    # run names may hold dots: the key is the last part
    dotted = write_config(tmp_path, runs='[[runs]]\nname = "fixed-a0.1"\ntype = "fixed"\n')
    cfg = load_config(dotted, ["runs.fixed-a0.1.alpha=[0.1, 0.2]"])
    assert [(r.name, r.ortho.alpha) for r in cfg.runs] == [("fixed-a0.1-alpha0.1", 0.1), ("fixed-a0.1-alpha0.2", 0.2)]
    with pytest.raises(
        ConfigError,
        match=r"\[\[runs\]\] fixed-a0.1 alpha: must be >= 0, got -1 "
        r"\(from --set runs.fixed-a0.1.alpha=-1\)",
    ):
        load_config(dotted, ["runs.fixed-a0.1.alpha=-1"])
    # later wins, as a second line of the same key would in a merged file
    assert load_config(path, ["train.lr=1e-3", "train.lr=2e-3"]).train.lr == 2e-3


@pytest.mark.parametrize(
    "key, value, in_file",
    [
        ("train.lr", "-1", "[train]\nlr = -1"),
        ("train.lrr", "1", "[train]\nlrr = 1"),
        ("train.ortho.alpha", '"x"', '[train.ortho]\nalpha = "x"'),
        ("harvest.layer", "abc", '[harvest]\nlayer = "abc"'),
        ("train.ortho.alpha_mode", "cosine", '[train.ortho]\nalpha_mode = "cosine"'),
        ("corpora.retain.tokens", "0", "[corpora.retain]\ntokens = 0"),
    ],
)
def test_a_bad_override_fails_as_the_same_line_in_the_file(tmp_path, key, value, in_file):
    """The override's error is the file's error for the same value, plus which --set it came from."""
    good = write_config(tmp_path, runs=SWEEP)
    text = good.read_text()
    section, line = in_file.split("\n")
    k = line.split(" = ")[0]
    # the same value written into the file itself
    lines, out, inside = text.splitlines(), [], False
    for ln in lines:
        if ln.strip().startswith("["):
            inside = ln.strip() == section
        if inside and ln.split(" = ")[0].strip() == k:
            continue
        out.append(ln)
        if ln.strip() == section:
            out.append(line)
    bad = tmp_path / "bad.toml"
    bad.write_text("\n".join(out) + "\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(bad)
    with pytest.raises(ConfigError) as from_set:
        load_config(good, [f"{key}={value}"])
    assert str(from_set.value) == str(from_file.value).replace(str(bad), str(good)) + f" (from --set {key}={value})"


def test_bad_override_on_the_command_line_is_one_line_exit_2(tmp_path):
    path = write_config(tmp_path, runs=SWEEP)
    for args, needle in [
        (["--set", "train.lr=-1"], "[train] lr: must be > 0, got -1 (from --set train.lr=-1)"),
        (["--set", "train.lr"], "--set train.lr: expected KEY=VALUE"),
        (["--set", "runs.nope.alpha=1"], "no [[runs]] table named 'nope' (have: baseline, fixed, adaptive)"),
        (["--set", "train.ortho=1"], "train.ortho is a table"),
        (["--set", "train.lr=[1,"], "is not a TOML value"),
    ]:
        res = CliRunner().invoke(main, ["--config", str(path), *args, "train"])
        assert res.exit_code == 2, (args, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and needle in lines[0], (args, res.output)
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_override_retrains_only_the_runs_it_reaches_and_is_recorded(tmp_path):
    make_store(str(tmp_path / "s.zarr"))
    path = write_config(tmp_path, runs=SWEEP, tokens=10_240)
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(path), "train"])
    assert res.exit_code == 0, res.output
    runs = tmp_path / "runs"
    before = {
        n: json.loads((runs / n / "summary.json").read_text())["fingerprint"] for n in ("baseline", "fixed", "adaptive")
    }
    assert "sets" not in json.loads((runs / "baseline/cfg.json").read_text())  # nothing new unless asked

    # [train.ortho] reaches fixed and adaptive only: the baseline (no L_ortho) is left alone
    res = runner.invoke(main, ["--config", str(path), "--set", "train.ortho.lambda2_max=2.0", "train"])
    assert res.exit_code == 0, res.output
    assert re.search(r"baseline\S*: complete, left alone", res.output)
    assert not re.search(r"(fixed|adaptive)\S*: complete, left alone", res.output)
    after = {n: json.loads((runs / n / "summary.json").read_text())["fingerprint"] for n in before}
    assert after["baseline"] == before["baseline"]
    assert after["fixed"] != before["fixed"] and after["adaptive"] != before["adaptive"]
    cfg_json = json.loads((runs / "adaptive/cfg.json").read_text())
    assert cfg_json["sets"] == ["train.ortho.lambda2_max=2.0"]
    assert cfg_json["orthosae"]["ortho"]["lambda2_max"] == 2.0

    # the same override again: nothing to do; a run's own key: that run only
    res = runner.invoke(main, ["--config", str(path), "--set", "train.ortho.lambda2_max=2.0", "train"])
    assert res.output.count("complete, left alone") == 3, res.output
    res = runner.invoke(
        main, ["--config", str(path), "--set", "train.ortho.lambda2_max=2.0", "--set", "runs.fixed.alpha=0.2", "train"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("complete, left alone") == 2 and not re.search(
        r"fixed\S*: complete, left alone", res.output
    )
    assert json.loads((runs / "fixed/cfg.json").read_text())["orthosae"]["ortho"]["alpha"] == 0.2

    # a [train] key reaches every run
    res = runner.invoke(
        main,
        [
            "--config",
            str(path),
            "--set",
            "train.ortho.lambda2_max=2.0",
            "--set",
            "runs.fixed.alpha=0.2",
            "--set",
            "train.lr=1e-3",
            "train",
        ],
    )
    assert res.exit_code == 0 and "left alone" not in res.output, res.output
    assert json.loads((runs / "baseline/cfg.json").read_text())["orthosae"]["train"]["lr"] == 1e-3


def test_a_baseline_made_before_keeps_its_fingerprint():
    """A baseline's fingerprint no longer counts [train.ortho]; one made by the code before (whose
    fingerprint did: faed940d7d695e98 for this run, computed with commit 332add8) is still complete."""
    from types import SimpleNamespace

    from orthosae.common.config import OrthoConfig, RunConfig, TrainConfig
    from orthosae.train.runner import run_fingerprint, run_fingerprints

    class Reader:
        meta = {"model_id": "tiny", "layer": 0}

        def corpora(self):
            return {"retain": SimpleNamespace(tokens_fingerprint="t")}

    def run(kind, **ortho):
        return RunConfig.of(kind, "r", train=TrainConfig(d_sae=64), ortho=OrthoConfig(**ortho))

    base = run("baseline", alpha=0.04, t0=300)
    known = run_fingerprints(base, Reader(), 0)
    assert known[0] == run_fingerprint(run("baseline"), Reader(), 0) and known[-1] == "faed940d7d695e98"
    assert run_fingerprint(run("baseline", alpha=0.3), Reader(), 0) == run_fingerprint(base, Reader(), 0)
    assert run_fingerprint(run("fixed", alpha=0.3), Reader(), 0) != run_fingerprint(run("fixed"), Reader(), 0)
    # a run with [train.ortho]: its own fingerprint and the one before issue 36 (every [train] key)
    assert len(run_fingerprints(run("fixed"), Reader(), 0)) == 2


def test_a_run_finished_under_an_earlier_fingerprint_is_left_alone(tmp_path, monkeypatch):
    """`pipe train` leaves a finished run alone when its summary carries any fingerprint its settings
    are known by (run_fingerprints), and trains it again when it carries none of them."""
    import orthosae.train.runner

    make_store(str(tmp_path / "s.zarr"))
    path = write_config(tmp_path, SWEEP)
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(path), "train", "--run", "baseline"]).exit_code == 0
    summary = tmp_path / "runs/baseline/summary.json"
    doc = json.loads(summary.read_text())
    summary.write_text(json.dumps({**doc, "fingerprint": "older"}))
    real = orthosae.train.runner.run_fingerprints
    monkeypatch.setattr(orthosae.train.runner, "run_fingerprints", lambda *a: (*real(*a), "older"))
    res = runner.invoke(main, ["--config", str(path), "train", "--run", "baseline"])
    assert res.exit_code == 0 and re.search(r"baseline\S*: complete, left alone", res.output), res.output
    monkeypatch.setattr(orthosae.train.runner, "run_fingerprints", real)
    res = runner.invoke(main, ["--config", str(path), "train", "--run", "baseline"])
    assert res.exit_code == 0 and "left alone" not in res.output, res.output
    assert json.loads(summary.read_text())["fingerprint"] == doc["fingerprint"]


# ---- parse / apply / blames one by one (every message and branch pinned: issue 35, mutation testing)


def test_parse_splits_at_the_first_equals_sign_and_reads_toml_or_a_bare_word():
    from orthosae.common.overrides import parse

    f = Path("p.toml")
    assert parse("train.ortho.alpha=[0,0.04]", f) == (["train", "ortho", "alpha"], [0, 0.04])
    # the first "=" splits: the value may hold more of them
    assert parse('train.device="a=b"', f) == (["train", "device"], "a=b")
    # a bare word is a string, whatever letters it holds (X, upper case)
    assert parse("train.device=CPUX", f) == (["train", "device"], "CPUX")
    assert parse(" log.tracker = none ", f) == (["log", "tracker"], "none")
    with pytest.raises(ConfigError, match=r"^p\.toml: --set train\.\.lr=1: empty part in key 'train\.\.lr'$"):
        parse("train..lr=1", f)
    with pytest.raises(ConfigError, match=r"^p\.toml: --set =1: expected KEY=VALUE"):
        parse("=1", f)
    with pytest.raises(ConfigError, match=r"^p\.toml: --set train\.lr=: '' is not a TOML value"):
        parse("train.lr=", f)


def test_apply_copies_deeply_and_names_the_key_that_is_not_a_table():
    from orthosae.common.overrides import apply

    f = Path("p.toml")
    raw = {"train": {"lr": 1, "ortho": {"alpha": 0.0}}, "runs": [{"name": "a", "type": "fixed"}]}
    out = apply(raw, ["train.lr=2", "train.ortho.alpha=0.5", "runs.a.alpha=0.1", "eval.new.key=3"], f)
    assert out == {
        "train": {"lr": 2, "ortho": {"alpha": 0.5}},
        "runs": [{"name": "a", "type": "fixed", "alpha": 0.1}],
        "eval": {"new": {"key": 3}},
    }
    # the input is untouched, nested tables and the runs list included (a shallow copy would share them)
    assert raw == {"train": {"lr": 1, "ortho": {"alpha": 0.0}}, "runs": [{"name": "a", "type": "fixed"}]}
    # a.b is a value: the message names a.b (path[: i + 1] at i = 1), not a, not a.b.c
    with pytest.raises(ConfigError, match=r"^p\.toml: --set a\.b\.c\.d=1: a\.b is a value, not a table$"):
        apply({"a": {"b": 5}}, ["a.b.c.d=1"], f)
    with pytest.raises(ConfigError, match=r"^p\.toml: --set runs\.x=1: a run's key is runs\.<name>\.<key>$"):
        apply(raw, ["runs.x=1"], f)
    # no [[runs]] at all: an empty list of names, not a crash
    with pytest.raises(ConfigError, match=r"^p\.toml: --set runs\.a\.k=1: no \[\[runs\]\] table named 'a' \(have: \)$"):
        apply({}, ["runs.a.k=1"], f)


def test_blames_matches_the_key_an_error_names():
    from orthosae.common.overrides import blames

    # a run's key: both the run's name and the key must be in the message
    assert blames("[[runs]] a k: must be > 0", "runs.a.k=1")
    assert not blames("[[runs]] b k: must be > 0", "runs.a.k=1")  # another run's k
    assert not blames("[[runs]] a j: must be > 0", "runs.a.k=1")  # another key of run a
    assert blames("[[runs]] fixed-a0.1 alpha: x", "runs.fixed-a0.1.alpha=1")  # a dotted run name
    # a whole section
    assert blames("[train] unknown key", "train=1")
    assert not blames("[harvest] unknown key", "train=1")
    # a key of a table; the text's value may hold "=" (the key ends at the first one)
    assert blames("[train] device: bad", 'train.device="a=b"')
    assert blames("[train.ortho] alpha: must be >= 0", "train.ortho.alpha=-1")
    assert not blames("[train.ortho] beta: must be >= 0", "train.ortho.alpha=-1")
    # a [train] key checked again in a run: "[[runs]] <run> <key>:"; the last part of the key counts
    assert blames("[[runs]] adaptive alpha: must be >= 0", "train.ortho.alpha=-1")
    assert blames("[[runs]] adaptive lr: must be > 0", "train.lr=-1")
    assert not blames("[[runs]] adaptive ortho: x", "train.ortho.alpha=-1")
    assert not blames("[[runs]] adaptive lr: x", "harvest.lr=1")  # not a [train] key
    assert not blames("[corpora.retain] lr: x", "train.lr=1")  # not a run's message
