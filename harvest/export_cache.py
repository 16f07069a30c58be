"""`pipe export-cache --format saelens`: a store's training rows as the Hugging Face ``datasets``
folder that SAELens' cached-activation path reads (``use_cached_activations = True``,
``cached_activations_path = <folder>``), so SAELens' own SAEs can train on a harvest made here.

Layout, as SAELens' ``CacheActivationsRunner`` writes it (``Dataset.save_to_disk``): one row per
context, column ``<hook_name>`` = ``Array2D(shape=(context_size, d_in))`` and ``token_ids`` =
``Sequence(int32, length=context_size)``, plus our provenance columns ``corpus`` and ``context``
(SAELens reads only the first two). ``context_size`` is T, the context length the SAEs saw (the
``context_size`` of their cfg.json): BOS rows are not stored (docs/store.md), so position 0 of each
context is a zero row whose ``token_ids`` entry is the BOS id; SAELens' ``exclude_special_tokens``
drops it, as orthosae's training never saw it. The printed snippet (``saelens_snippet``) trains a
SAELens SAE on the cache with no model and no network (tests/harvest/test_export_cache.py runs it).

SAELens serves cached rows in file order (its mixing buffer shuffles only within a window), so
the corpora's chunks are interleaved in proportion to their size rather than written one corpus
after the other: each window of the cache holds the corpora in the mix the store has. bfloat16
has no Arrow type: rows are written as float32 (exact for bf16 and float16) or float16.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orthosae.common import owned
from orthosae.common.errors import one_line, os_error_line
from orthosae.common.store import StoreError, StoreReader


@dataclass(frozen=True)
class CacheExport:
    path: Path
    hook_name: str
    context_size: int
    d_in: int
    contexts: int
    rows: int
    corpora: list[str]
    bos_token_id: int = 2


def bos_token_id(reader: StoreReader) -> int:
    """The BOS id every context of the store starts with (its tokenizer record: ``...:bos=<id>:...``)."""
    found = re.search(r":bos=(\d+)", str(reader.meta.get("tokenizer")))
    if not found:
        raise StoreError(f"{reader.url}: its tokenizer record names no BOS id; export-cache needs it")
    return int(found.group(1))


def hook_name(meta: dict) -> str:
    """The TransformerLens hook name of the store's layer (what SAELens' ``hook_name`` expects)."""
    return f"blocks.{meta['layer']}.hook_{meta['hook']}"


def chunk_order(n_chunks: dict[str, int]) -> list[tuple[str, int]]:
    """Every (corpus, chunk), interleaved by position: chunk k of a corpus with n chunks sits at
    (k + 0.5) / n, so any stretch of the cache holds the corpora in proportion to their size."""
    items = [((k + 0.5) / n, name, k) for name, n in n_chunks.items() for k in range(n)]
    return [(name, k) for _, name, k in sorted(items)]


def export_saelens(
    reader: StoreReader, corpora: list[str], out: Path, *, dtype: str = "float32", progress=None
) -> CacheExport:
    """Write ``corpora`` of ``reader`` to ``out`` (replaced when it exists); returns what was written."""
    from datasets import Array2D, Features, Sequence, Value

    if dtype not in ("float32", "float16"):
        raise StoreError(f"export-cache: dtype must be float32 or float16, got {dtype!r}")
    info = reader.corpora()
    for name in corpora:
        if name not in info:
            raise StoreError(f"{reader.url}: has no corpus {name!r} (has: {', '.join(info)})")
    reader.require_complete(corpora)
    ctx = {info[n].rows_per_context for n in corpora}
    if len(ctx) != 1:
        raise StoreError(f"{reader.url}: corpora {corpora} differ in rows per context {sorted(ctx)}")
    stored, d_in, hook = ctx.pop(), reader.d_model, hook_name(reader.meta)
    context_size, bos = stored + 1, bos_token_id(reader)
    features = Features(
        {
            hook: Array2D(shape=(context_size, d_in), dtype=dtype),
            "token_ids": Sequence(Value("int32"), length=context_size),
            "corpus": Value("string"),
            "context": Value("int32"),
        }
    )
    out = Path(out)
    if out.exists() and not (out / "orthosae_cache.json").is_file():
        raise StoreError(f"{out}: exists and is not a cache this command wrote; choose another --out")
    shards_dir = out.with_name(out.name + ".shards")  # beside it: `out` itself is replaced at the end
    tmp = out.with_name(out.name + ".tmp")
    for folder in (shards_dir, tmp):  # left by a killed export (marked), or the user's own: refused
        owned.remove(folder, "pipe export-cache")
    try:
        owned.make(shards_dir)
        contexts = _write(
            reader, corpora, info, out, shards_dir, tmp, features, hook, context_size, d_in, dtype, progress, bos
        )
    except OSError as e:  # disk full, quota, read-only: one line naming the path (arrow often names none)
        if e.filename is None:
            e = OSError(e.errno, e.strerror or one_line(e), str(tmp if tmp.exists() else shards_dir))
        for folder in (tmp, shards_dir):
            shutil.rmtree(folder, ignore_errors=True)  # ours: made and marked above
        raise StoreError(f"{os_error_line(e)}; export-cache stopped, {out} left as it was") from None
    finally:
        shutil.rmtree(shards_dir, ignore_errors=True)
    return CacheExport(
        path=out,
        hook_name=hook,
        context_size=context_size,
        d_in=d_in,
        contexts=contexts,
        rows=contexts * context_size,
        corpora=list(corpora),
        bos_token_id=bos,
    )


def _write(
    reader: StoreReader,
    corpora: list[str],
    info: dict,
    out: Path,
    shards_dir: Path,
    tmp: Path,
    features,
    hook: str,
    context_size: int,
    d_in: int,
    dtype: str,
    progress,
    bos: int,
) -> int:
    """The shards, then the whole cache in ``tmp``, renamed over ``out``; returns the contexts written."""
    from datasets import Dataset, concatenate_datasets

    shards, contexts = [], 0
    for name, k in chunk_order({n: info[n].n_chunks for n in corpora}):
        c = info[name]
        start, stop = k * c.rows_per_chunk, min((k + 1) * c.rows_per_chunk, c.n_rows)
        stored = context_size - 1
        n_ctx = (stop - start) // stored
        acts = np.zeros((n_ctx, context_size, d_in), dtype=dtype)  # position 0: the BOS placeholder
        acts[:, 1:] = reader.read_rows(name, start, stop).numpy().astype(dtype).reshape(n_ctx, stored, d_in)
        tokens = np.full((n_ctx, context_size), bos, dtype=np.int32)
        tokens[:, 1:] = reader.read_tokens(name, start, stop).astype(np.int32).reshape(n_ctx, stored)
        shard = Dataset.from_dict(
            {
                hook: acts,
                "token_ids": tokens,
                "corpus": [name] * n_ctx,
                "context": np.arange(start // stored, start // stored + n_ctx, dtype=np.int32),
            },
            features=features,
        )
        path = shards_dir / f"{len(shards):06d}"
        shard.save_to_disk(str(path))
        shards.append(path)
        contexts += n_ctx
        if progress is not None:
            progress(1)
    whole = concatenate_datasets([Dataset.load_from_disk(str(p)) for p in shards])
    owned.make(tmp)
    whole.save_to_disk(str(tmp))
    (tmp / "orthosae_cache.json").write_text(
        json.dumps(
            {
                "store": reader.url,
                "store_meta": reader.meta,
                "corpora": corpora,
                "hook_name": hook,
                "context_size": context_size,
                "d_in": d_in,
                "dtype": dtype,
                "bos_token_id": bos,
                "bos_row": "position 0 of each context is zeros with token_ids = bos_token_id (BOS rows are not "
                "stored): exclude_special_tokens drops it",
                "order": "chunks interleaved by position (harvest/export_cache.py chunk_order)",
            },
            indent=1,
            default=str,
        )
    )
    del whole
    (tmp / owned.MARK).unlink()  # the cache is the user's once it is in place
    if out.exists():
        shutil.rmtree(out)  # a cache this command wrote (checked above)
    tmp.rename(out)
    return contexts


def saelens_snippet(e: CacheExport, model_name: str) -> str:
    """Python that trains a SAELens SAE on this cache offline (printed by the CLI, run by a test).

    SAELens' own runner (``LanguageModelSAETrainingRunner``) cannot take the cache alone: its
    ``ActivationsStore.from_config`` asks for a ``dataset_path`` even with ``use_cached_activations``,
    and it loads ``model_name`` from the Hub unless handed ``override_model``. Its ``SAETrainer``
    needs neither: it trains from any iterator of activation batches, here the ``ActivationsStore``
    over the cache (no model, no dataset)."""
    from orthosae.common.model import hub_model_id

    batch = 1 << min(12, max(4, (e.rows // 16).bit_length() - 1))  # 4096 rows, fewer on a small cache
    return f"""# {hub_model_id(model_name)} {e.hook_name}: {e.contexts:,} contexts of {e.context_size} tokens
import torch
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.sae_trainer import SAETrainer
store = ActivationsStore(
    model=None, dataset=None, streaming=False, cached_activations_path={str(e.path)!r},
    hook_name={e.hook_name!r}, hook_head_index=None, context_size={e.context_size}, d_in={e.d_in},
    n_batches_in_buffer=4, store_batch_size_prompts=8, train_batch_size_tokens={batch},
    total_training_tokens={e.rows}, prepend_bos=True, normalize_activations="none",
    exclude_special_tokens=torch.tensor([{e.bos_token_id}]),  # position 0: the unstored BOS row
    device=torch.device("cpu"), dtype="float32")
sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in={e.d_in}, d_sae={4 * e.d_in}, l1_coefficient=5.0))
trainer = SAETrainer(SAETrainerConfig(total_training_samples={e.rows}, train_batch_size_samples={batch},
                                      lr=3e-4, lr_end=3e-4, n_batches_for_norm_estimate=4), sae, store)
sae = trainer.fit()
"""
