"""`pipe harvest`: one model pass per corpus into the zarr activation store.

Several `[harvest] layers` share the pass: each chunk runs the model once, up to the deepest layer
whose store lacks it, and is committed to each such layer's store (one store per layer, each with
its own lock, resume and repair).

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

import contextlib
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
from orthosae.common.capture import residuals_after_blocks
from orthosae.common.config import Config, check_model_fits
from orthosae.common.corpora import (
    CorpusError,
    composition,
    fingerprint,
    load_documents,
    tokenize_corpus,
    tokens_fingerprint,
)
from orthosae.common.model import LoadedModel, load_configured, load_tokenizer, pick_device
from orthosae.common.progress import console, progress
from orthosae.common.store import CorpusPlan, StoreError, StoreLock, StoreReader, StoreWriter, encode_rows, store_exists
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


def store_identity(cfg: Config, lm: LoadedModel, layer: int | None = None) -> dict:
    return {
        "model_id": lm.model_id,
        "revision": lm.revision,
        "file_sha256": lm.file_sha256,
        "layer": cfg.harvest.layer if layer is None else layer,
        "hook": cfg.harvest.hook,
        "d_model": lm.d_model,
        "storage_dtype": cfg.harvest.storage_dtype,
        "context_length": cfg.harvest.context_length,
        "tokenizer": tokenizer_identity(lm.tokenizer),
        "bos_policy": BOS_POLICY,
        "compute_dtype": cfg.model.dtype,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def plan_corpora(cfg: Config, tokenizer) -> tuple[list[CorpusPlan], dict[str, np.ndarray]]:
    """Documents (in their seeded order) -> fixed contexts for every corpus; the same on every process
    and every rerun. Each plan carries its composition (documents and tokens per label)."""
    T = cfg.harvest.context_length
    per_chunk = max(1, cfg.harvest.chunk_tokens // (T - 1))
    plans, contexts = [], {}
    for name, c in cfg.corpora.items():
        docs = load_documents(
            c, heldout_fraction=cfg.harvest.heldout_fraction, order_seed=cfg.harvest.order_seed, max_chars=c.tokens * 12
        )  # bounds tokenization; ~4 chars/token
        wanted = c.tokens // T
        ctx, doc_tokens = tokenize_corpus(docs.texts, tokenizer, T, wanted)
        if len(ctx) == 0:
            raise CorpusError(
                f"{cfg.path}: [corpora.{name}]: no complete context of {T} tokens in {c.source} ({c.split} split)"
            )
        if len(ctx) < wanted:
            console.print(
                f"[yellow]{name}: corpus holds {len(ctx) * T:,} tokens, "
                f"fewer than the budget {c.tokens:,}; harvesting all of it"
            )
        plans.append(
            CorpusPlan(
                name=name,
                role=c.role,
                split=c.split,
                source=c.source,
                fingerprint=fingerprint(docs.texts),
                tokens_fingerprint=tokens_fingerprint(ctx),
                n_contexts=len(ctx),
                context_length=T,
                contexts_per_chunk=per_chunk,
                composition=composition(docs, doc_tokens),
            )
        )
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
            raise StoreError(
                f"{url}: exists and is not a zarr store; --force deletes only a store, "
                "so it is left alone: choose another [harvest] store or move it away"
            )
        fs.rm(path, recursive=True)


def harvest(cfg: Config, *, force: bool = False, repair: bool = False, show_progress: bool = True) -> HarvestResult:
    """Harvest every corpus of `cfg` into its store (resuming a partial one).

    repair: verify the store first and un-commit every chunk that fails, so only those chunks are
    harvested again (chunks are deterministic, so the result equals a clean store).
    """
    events.set_stage("harvest")
    result = _harvest(cfg, force=force, repair=repair, show_progress=show_progress)
    events.emit(
        "stage_done",
        store=result.store,
        rows=result.rows_written,
        seconds=round(result.seconds, 2),
        skipped=result.skipped,
    )
    return result


def _harvest(cfg: Config, *, force: bool, repair: bool, show_progress: bool) -> HarvestResult:
    layers = cfg.layers
    urls = {layer: cfg.harvest.store_for(layer) for layer in layers}  # one store per layer
    label = ", ".join(urls.values())
    if force and repair:
        raise StoreError(f"{label}: --force and --repair exclude each other (--force re-harvests everything)")
    state = PartialState(cpu=pick_device(cfg.model.device).type == "cpu", timeout=COLLECTIVE_TIMEOUT)
    device = state.device if state.num_processes > 1 else pick_device(cfg.model.device)
    t_start = time.perf_counter()
    # Corpora first, with the tokenizer alone: a wrong path, a bad file or a corpus short of its
    # budget shows in seconds, not after the model has loaded.
    tokenizer = load_tokenizer(cfg.model.id, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    plans, contexts = _plan_once(cfg, tokenizer, state)
    # From here a signal only asks to stop (common/preempt.py): the model load ends, the chunk in
    # hand is committed, every process meets at the barrier below, the lock is released, then
    # Preempted. (Planning, above, stops at once: no process has reached a barrier yet.)
    with preempt.deferred():
        lm = load_configured(cfg.model, str(device))
        check_model_fits(cfg, lm.n_layers, lm.d_model)
        identity = {layer: store_identity(cfg, lm, layer) for layer in layers}

        locks = [StoreLock(urls[layer]) for layer in layers]
        writers: dict[int, StoreWriter] = {}
        if state.is_main_process:
            if (
                not force
                and not repair
                and all(
                    store_exists(urls[layer]) and _already_complete(urls[layer], identity[layer], plans, cfg)
                    for layer in layers
                )
            ):
                for layer in layers:
                    console.print(f"[green]{urls[layer]}: complete, left alone[/] (use --force to harvest again)")
                state.wait_for_everyone()
                return HarvestResult(label, 0, time.perf_counter() - t_start, skipped=True)
            held = []
            try:
                for lock in locks:
                    lock.acquire()
                    held.append(lock)
                for layer in layers:
                    if force:
                        _remove_store(urls[layer])
                    writers[layer] = StoreWriter(
                        urls[layer], identity[layer], codec=cfg.harvest.codec, level=cfg.harvest.level
                    )
                    for plan in plans:
                        writers[layer].ensure_corpus(plan)
                    if repair:
                        _uncommit_damaged(writers[layer])
            except BaseException:
                for lock in held:
                    lock.release()
                raise
        state.wait_for_everyone()
        if not state.is_main_process:
            # the main process saw the same complete stores before the barrier and has returned after
            # it: no second barrier here, or a re-submitted job on a finished store hangs or dies
            if all(_already_complete(urls[layer], identity[layer], plans, cfg) for layer in layers):
                return HarvestResult(label, 0, time.perf_counter() - t_start, skipped=True)
            writers = {
                layer: StoreWriter(
                    urls[layer], identity[layer], codec=cfg.harvest.codec, level=cfg.harvest.level, create=False
                )
                for layer in layers
            }

        rows_written = 0
        try:
            # a chunk is run once for every layer whose store lacks it, up to the deepest of those
            pending = {(layer, p.name): set(writers[layer].pending_chunks(p.name)) for layer in layers for p in plans}
            mine = []
            for p in plans:
                for k in sorted(set().union(*(pending[layer, p.name] for layer in layers))):
                    if k % state.num_processes == state.process_index:
                        mine.append((p, k, [layer for layer in layers if k in pending[layer, p.name]]))
            total = sum(_chunk_contexts(p, k) for p, k, _ in mine) * (cfg.harvest.context_length - 1)
            left = len(mine)
            what = f"layer {layers[0]}" if len(layers) == 1 else f"layers {', '.join(map(str, layers))}"
            # leaving the ChunkWriter blocks commits every chunk handed to them, stopped early or not
            with (
                progress("tok", disable=not (show_progress and state.is_main_process)) as bar,
                contextlib.ExitStack() as stack,
            ):  # compression and writes overlap the next forward
                chunks = {layer: stack.enter_context(ChunkWriter(writers[layer])) for layer in layers}
                task = bar.add_task(f"harvest {what}", total=total)
                for plan, k, chunk_layers in mine:
                    if preempt.requested():
                        break
                    bar.update(task, description=f"harvest {plan.name} chunk {k + 1}/{plan.n_chunks}")
                    ctx = contexts[plan.name][k * plan.contexts_per_chunk : (k + 1) * plan.contexts_per_chunk]
                    acts = _chunk_activations(lm.model, cfg, ctx, device, chunk_layers)
                    for layer in chunk_layers:
                        chunks[layer].submit(plan, k, acts[layer], ctx)
                    rows = acts[chunk_layers[0]].shape[0]
                    rows_written += rows
                    left -= 1
                    bar.advance(task, rows)
            # every process meets here, stopped early or not: no collective is added per chunk
            state.wait_for_everyone()
            complete = True
            if state.is_main_process:
                for writer in writers.values():
                    complete = all([writer.finish_corpus(plan.name) for plan in plans]) and complete
                    writer.finish()
        finally:
            if state.is_main_process:
                for lock in locks:
                    lock.release()
        # chunks left undone by this process, or (seen by the main process) by another one
        if left or not complete:
            done = sum(int((w.root[p.name]["committed"][:] != 0).sum()) for w in writers.values() for p in plans)
            raise preempt.Preempted(
                f"{done}/{sum(p.n_chunks for p in plans) * len(layers)} chunks of {label} "
                f"committed ({rows_written:,} rows written by this process this time)"
            )
        return HarvestResult(label, rows_written, time.perf_counter() - t_start, skipped=False)


def _chunk_contexts(plan: CorpusPlan, k: int) -> int:
    return min((k + 1) * plan.contexts_per_chunk, plan.n_contexts) - k * plan.contexts_per_chunk


def _chunk_activations(model, cfg: Config, ctx: np.ndarray, device, layers: list[int]) -> dict[int, HostRows]:
    """Rows of one chunk in storage dtype at each of `layers` (one forward pass per batch, stopped
    after the deepest): positions 1..T-1 of each context, contexts in order.

    On CUDA the rows are copied into pinned host memory without waiting: the writer thread waits
    for the copy (`HostRows.ready`), the loop goes straight on to the next forward pass.
    """
    cuda = torch.device(device).type == "cuda"
    rows_per_ctx = ctx.shape[1] - 1
    host: dict[int, torch.Tensor] = {}
    for i in range(0, len(ctx), cfg.harvest.batch_size):
        ids = torch.from_numpy(ctx[i : i + cfg.harvest.batch_size].astype(np.int64)).to(device, non_blocking=cuda)
        resids = residuals_after_blocks(model, layers, ids)
        for layer in layers:
            resid = resids[layer][:, 1:]  # drop BOS rows
            rows = encode_rows(resid.reshape(-1, resid.shape[-1]), cfg.harvest.storage_dtype)
            if layer not in host:
                host[layer] = torch.empty((len(ctx) * rows_per_ctx, rows.shape[1]), dtype=rows.dtype, pin_memory=cuda)
            host[layer][i * rows_per_ctx : i * rows_per_ctx + len(rows)].copy_(rows, non_blocking=cuda)
    ready = None
    if cuda:
        ready = torch.cuda.Event()
        ready.record()
    return {layer: HostRows(rows, ready) for layer, rows in host.items()}


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
