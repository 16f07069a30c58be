"""`pipe harvest`: one model pass per corpus into the zarr activation store.

Reads top to bottom: plan every corpus with the tokenizer alone (documents -> fixed contexts ->
chunks; a bad corpus fails before the model loads; under N processes the main one plans and hands
the plan to the others), load the model, take the store's write lock
(with --repair, un-commit the chunks verify finds damaged), then for each chunk this process owns
(k % world_size == rank), run the model up to block L and commit the chunk. A rerun skips
committed chunks, so a killed harvest resumes to the same store an uninterrupted one makes;
N processes (accelerate / torchrun) write disjoint chunks of one store. On SIGTERM / SIGINT (under
the CLI) each process commits the chunk in hand and stops; all meet at the existing barrier, the
lock is released and ``Preempted`` is raised (exit 75), so a rerun resumes.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta

import fsspec
import numpy as np
import torch
from accelerate import PartialState
from rich.text import Text

from orthosae import __version__
from orthosae.common import events, preempt
from orthosae.common.config import Config, check_model_fits
from orthosae.common.corpora import (CorpusError, composition, fingerprint, load_documents, tokenize_corpus,
                            tokens_fingerprint)
from orthosae.common.model import LoadedModel, load_model, load_tokenizer, pick_device
from orthosae.common.progress import console, progress
from orthosae.common.store import (CorpusPlan, StoreError, StoreLock, StoreReader, StoreWriter, encode_rows,
                          store_exists)
from orthosae.harvest.capture import residual_after_block
from orthosae.harvest.writer import ChunkWriter, HostRows

BOS_POLICY = "bos-first-not-stored"  # every context starts with BOS; its outlier row is not stored
# Processes wait at a collective while the main one plans the corpora and (--force) deletes the
# store, and at the end for the slowest one's chunks (after a resume one may hold most of the work):
# hours, not torch's default 10 minutes (NCCL). A process that dies stops the launcher's others.
COLLECTIVE_TIMEOUT = timedelta(hours=24)


@dataclass
class HarvestResult:
    store: str
    rows_written: int
    seconds: float
    skipped: bool  # the store was already complete


def tokenizer_identity(tokenizer) -> str:
    """Class, size, BOS and a hash of the vocabulary: stable across machines and cache paths."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]
    return f"{type(tokenizer).__name__}:vocab={len(tokenizer)}:bos={tokenizer.bos_token_id}:sha={digest}"


def store_identity(cfg: Config, lm: LoadedModel) -> dict:
    return {
        "model_id": lm.model_id, "revision": lm.revision, "file_sha256": lm.file_sha256,
        "layer": cfg.harvest.layer, "hook": cfg.harvest.hook, "d_model": lm.d_model,
        "storage_dtype": cfg.harvest.storage_dtype, "context_length": cfg.harvest.context_length,
        "tokenizer": tokenizer_identity(lm.tokenizer), "bos_policy": BOS_POLICY,
        "compute_dtype": cfg.model.dtype, "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def plan_corpora(cfg: Config, tokenizer) -> tuple[list[CorpusPlan], dict[str, np.ndarray]]:
    """Documents (in their seeded order) -> fixed contexts for every corpus; the same on every process
    and every rerun. Each plan carries its composition (documents and tokens per label)."""
    T = cfg.harvest.context_length
    per_chunk = max(1, cfg.harvest.chunk_tokens // (T - 1))
    plans, contexts = [], {}
    for name, c in cfg.corpora.items():
        docs = load_documents(c, heldout_fraction=cfg.harvest.heldout_fraction, order_seed=cfg.harvest.order_seed,
                              max_chars=c.tokens * 12)  # bounds tokenization; ~4 chars/token
        wanted = c.tokens // T
        ctx, doc_tokens = tokenize_corpus(docs.texts, tokenizer, T, wanted)
        if len(ctx) == 0:
            raise CorpusError(f"{cfg.path}: [corpora.{name}]: no complete context of {T} tokens in "
                              f"{c.source} ({c.split} split)")
        if len(ctx) < wanted:
            console.print(f"[yellow]{name}: corpus holds {len(ctx) * T:,} tokens, "
                          f"fewer than the budget {c.tokens:,}; harvesting all of it")
        plans.append(CorpusPlan(name=name, role=c.role, split=c.split, source=c.source,
                               fingerprint=fingerprint(docs.texts), tokens_fingerprint=tokens_fingerprint(ctx),
                               n_contexts=len(ctx), context_length=T, contexts_per_chunk=per_chunk,
                               composition=composition(docs, doc_tokens)))
        contexts[name] = ctx
    return plans, contexts


def _plan_once(cfg: Config, tokenizer, state: PartialState) -> tuple[list[CorpusPlan], dict[str, np.ndarray]]:
    """`plan_corpora` on the main process only; the others receive its plan (or its error).

    N processes tokenizing the same corpora at once would each take the whole CPU for the same
    result; here they wait for one (COLLECTIVE_TIMEOUT covers a long tokenization).
    """
    if state.num_processes == 1:
        return plan_corpora(cfg, tokenizer)
    box: list = [None]
    if state.is_main_process:
        try:
            box[0] = plan_corpora(cfg, tokenizer)
        except Exception as e:  # noqa: BLE001 - every process fails with the main one's error
            box[0] = e
    torch.distributed.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _remove_store(url: str) -> None:
    """--force: delete the store, only if it is one (a zarr.json at its root): whatever else sits at
    that path is not the tool's to delete."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        if not store_exists(url):
            raise StoreError(f"{url}: exists and is not a zarr store; --force deletes only a store, "
                             "so it is left alone: choose another [harvest] store or move it away")
        fs.rm(path, recursive=True)


def harvest(cfg: Config, *, force: bool = False, repair: bool = False,
            show_progress: bool = True) -> HarvestResult:
    """Harvest every corpus of `cfg` into its store (resuming a partial one).

    repair: verify the store first and un-commit every chunk that fails, so only those chunks are
    harvested again (chunks are deterministic, so the result equals a clean store).
    """
    events.set_stage("harvest")
    result = _harvest(cfg, force=force, repair=repair, show_progress=show_progress)
    events.emit("stage_done", store=result.store, rows=result.rows_written,
                seconds=round(result.seconds, 2), skipped=result.skipped)
    return result


def _harvest(cfg: Config, *, force: bool, repair: bool, show_progress: bool) -> HarvestResult:
    if force and repair:
        raise StoreError(f"{cfg.harvest.store}: --force and --repair exclude each other "
                         "(--force re-harvests everything)")
    state = PartialState(cpu=pick_device(cfg.model.device).type == "cpu", timeout=COLLECTIVE_TIMEOUT)
    device = state.device if state.num_processes > 1 else pick_device(cfg.model.device)
    url = cfg.harvest.store
    t_start = time.perf_counter()
    # Corpora first, with the tokenizer alone: a wrong path, a bad file or a corpus short of its
    # budget shows in seconds, not after the model has loaded.
    tokenizer = load_tokenizer(cfg.model.id, revision=cfg.model.revision,
                               trust_remote_code=cfg.model.trust_remote_code)
    plans, contexts = _plan_once(cfg, tokenizer, state)
    # From here a signal only asks to stop (common/preempt.py): the model load ends, the chunk in
    # hand is committed, every process meets at the barrier below, the lock is released, then
    # Preempted. (Planning, above, stops at once: no process has reached a barrier yet.)
    with preempt.deferred():
        lm = load_model(cfg.model.id, revision=cfg.model.revision, dtype=cfg.model.dtype, device=str(device),
                        trust_remote_code=cfg.model.trust_remote_code)
        check_model_fits(cfg, lm.n_layers, lm.d_model)
        identity = store_identity(cfg, lm)

        lock = StoreLock(url)
        if state.is_main_process:
            if force:
                lock.acquire()
                try:
                    _remove_store(url)
                except BaseException:
                    lock.release()
                    raise
            elif not repair and store_exists(url) and _already_complete(url, identity, plans, cfg):
                console.print(f"[green]{url}: complete, left alone[/] (use --force to harvest again)")
                state.wait_for_everyone()
                return HarvestResult(url, 0, time.perf_counter() - t_start, skipped=True)
            else:
                lock.acquire()
            try:
                writer = StoreWriter(url, identity, codec=cfg.harvest.codec, level=cfg.harvest.level)
                for plan in plans:
                    writer.ensure_corpus(plan)
                if repair:
                    _uncommit_damaged(writer)
            except BaseException:
                lock.release()
                raise
        state.wait_for_everyone()
        if not state.is_main_process:
            # the main process saw the same complete store before the barrier and has returned after
            # it: no second barrier here, or a re-submitted job on a finished store hangs or dies
            if _already_complete(url, identity, plans, cfg):
                return HarvestResult(url, 0, time.perf_counter() - t_start, skipped=True)
            writer = StoreWriter(url, identity, codec=cfg.harvest.codec, level=cfg.harvest.level, create=False)

        rows_written = 0
        try:
            mine = [(p, k) for p in plans for k in writer.pending_chunks(p.name)
                    if k % state.num_processes == state.process_index]
            total = sum(_chunk_contexts(p, k) for p, k in mine) * (cfg.harvest.context_length - 1)
            left = len(mine)
            # leaving the ChunkWriter block commits every chunk handed to it, stopped early or not
            with (progress("tok", disable=not (show_progress and state.is_main_process)) as bar,
                  ChunkWriter(writer) as chunks):  # compression and writes overlap the next forward
                task = bar.add_task(f"harvest layer {cfg.harvest.layer}", total=total)
                for plan, k in mine:
                    if preempt.requested():
                        break
                    bar.update(task, description=f"harvest {plan.name} chunk {k + 1}/{plan.n_chunks}")
                    ctx = contexts[plan.name][k * plan.contexts_per_chunk:(k + 1) * plan.contexts_per_chunk]
                    acts = _chunk_activations(lm.model, cfg, ctx, device)
                    chunks.submit(plan, k, acts, ctx)
                    rows_written += acts.shape[0]
                    left -= 1
                    bar.advance(task, acts.shape[0])
            # every process meets here, stopped early or not: no collective is added per chunk
            state.wait_for_everyone()
            complete = True
            if state.is_main_process:
                complete = all([writer.finish_corpus(plan.name) for plan in plans])
                writer.finish()
        finally:
            if state.is_main_process:
                lock.release()
        # chunks left undone by this process, or (seen by the main process) by another one
        if left or not complete:
            done = sum(int((writer.root[p.name]["committed"][:] != 0).sum()) for p in plans)
            raise preempt.Preempted(f"{done}/{sum(p.n_chunks for p in plans)} chunks of {url} committed "
                                    f"({rows_written:,} rows written by this process this time)")
        return HarvestResult(url, rows_written, time.perf_counter() - t_start, skipped=False)


def _chunk_contexts(plan: CorpusPlan, k: int) -> int:
    return min((k + 1) * plan.contexts_per_chunk, plan.n_contexts) - k * plan.contexts_per_chunk



def _chunk_activations(model, cfg: Config, ctx: np.ndarray, device) -> HostRows:
    """Rows of one chunk in storage dtype: positions 1..T-1 of each context, contexts in order.

    On CUDA the rows are copied into pinned host memory without waiting: the writer thread waits
    for the copy (`HostRows.ready`), the loop goes straight on to the next forward pass.
    """
    cuda = torch.device(device).type == "cuda"
    rows_per_ctx = ctx.shape[1] - 1
    host = None
    for i in range(0, len(ctx), cfg.harvest.batch_size):
        ids = torch.from_numpy(ctx[i:i + cfg.harvest.batch_size].astype(np.int64)).to(device, non_blocking=cuda)
        resid = residual_after_block(model, cfg.harvest.layer, ids)[:, 1:]  # drop BOS rows
        rows = encode_rows(resid.reshape(-1, resid.shape[-1]), cfg.harvest.storage_dtype)
        if host is None:
            host = torch.empty((len(ctx) * rows_per_ctx, rows.shape[1]), dtype=rows.dtype, pin_memory=cuda)
        host[i * rows_per_ctx:i * rows_per_ctx + len(rows)].copy_(rows, non_blocking=cuda)
    ready = None
    if cuda:
        ready = torch.cuda.Event()
        ready.record()
    return HostRows(host, ready)


def _already_complete(url: str, identity: dict, plans: list[CorpusPlan], cfg: Config) -> bool:
    """Complete = same identity and every planned corpus present, planned the same, complete."""
    writer = StoreWriter(url, identity, codec=cfg.harvest.codec, level=cfg.harvest.level, create=False)
    names = set(writer.corpus_names())
    for plan in plans:
        if plan.name not in names:
            return False
        attrs = writer.root[plan.name].attrs
        if attrs.get("tokens_fingerprint") != plan.tokens_fingerprint or not attrs.get("complete"):
            return False
    return True


def _uncommit_damaged(writer: StoreWriter) -> None:
    """Un-commit the chunks `verify` finds damaged; refuse what re-harvesting chunks cannot mend."""
    problems = StoreReader(writer.url).check()
    layout = [p for p in problems if p.kind == "layout"]
    if layout:
        raise StoreError(f"{layout[0].text}; --repair mends chunks only, use --force")
    damaged = [p for p in problems if p.kind == "damaged"]
    if not damaged:
        console.print(f"[green]{writer.url}: every committed chunk verified, nothing to repair[/]")
        return
    for p in damaged:
        console.print(Text.assemble(("repair: ", "yellow"), p.text))  # Text: no markup in paths
    chunks: dict[str, set[int]] = {}
    for p in damaged:
        chunks.setdefault(p.corpus, set()).add(p.chunk)
    for name, ks in chunks.items():
        writer.uncommit(name, sorted(ks))
    console.print(f"[yellow]repair[/]: re-harvesting {sum(map(len, chunks.values()))} chunk(s)")
