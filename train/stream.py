"""Stream cached activations into training batches without loading the cache.

Shuffling is a *block shuffle*: each epoch permutes the list of store chunks, groups consecutive
chunks into windows of about `buffer_rows` rows, and permutes the rows inside each window. Every
row is served exactly once per epoch, memory is bounded by the window (not the cache), the order
is a pure function of (seed, epoch, window), and a position in the stream is just a row count, so
resuming seeks there by arithmetic instead of re-reading the data.

Corpora are mixed in one of two ways: with no `mix`, all training corpora form one pool (rows in
proportion to corpus size, each once per epoch); with `mix = {name: share}`, each corpus is its own
pool and every batch takes a fixed number of rows from each (pools cycle their epochs separately).

Read-ahead: a background thread assembles batches while the consumer trains, and each pool's next
window is read (its chunks decoded by READ_THREADS threads) while the current one is served, so a
window boundary does not stall the consumer as long as reading keeps pace. Windows are held as
stored (bf16 bits: 2 bytes a value) and batches travel as stored; the conversion to float32 and the
scale are applied on the device. Host memory: per pool, the window being served and the one read
ahead (each at most `buffer_rows` rows, as stored), plus `prefetch` batches.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from orthosae.common.store import StoreReader, decode_rows, numpy_storage_dtype, rows_as_torch, torch_storage_dtype

READ_THREADS = max(1, min(8, os.cpu_count() or 1))  # chunks of a window decoded at once (zstd releases the GIL)


@dataclass(frozen=True)
class _Piece:
    corpus: str
    start: int
    stop: int
    is_forget: bool

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class _Pool:
    index: int
    pieces: tuple[_Piece, ...]
    rows_per_batch: int

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


def _split_counts(batch_size: int, shares: list[float]) -> list[int]:
    """Largest-remainder rounding of batch_size by shares; every pool gets at least one row."""
    total = sum(shares)
    exact = [batch_size * s / total for s in shares]
    counts = [max(1, int(e)) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order[: max(0, batch_size - sum(counts))]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class _Window:
    """One window's rows as stored, in piece order; it serves rows `stored[perm]` in turn."""

    stored: np.ndarray  # [n, d_model]: uint16 (bf16 bits), float16 or float32
    is_forget: np.ndarray  # [n] bool
    perm: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.perm)

    def gather(self, pos: int, n: int, out_x: torch.Tensor, out_f: torch.Tensor) -> None:
        """Rows perm[pos:pos + n] into out_x / out_f (one copy, straight into the batch)."""
        idx = self.perm[pos : pos + n]
        torch.index_select(rows_as_torch(self.stored), 0, torch.from_numpy(idx), out=out_x)
        out_f.copy_(torch.from_numpy(self.is_forget[idx]))


class _PoolRows:
    """Rows of one pool from absolute position `start_row` up to `end_row` (None: forever), window
    after window; the next window is read in the background while this one is served."""

    def __init__(
        self,
        stream: "ActivationStream",
        pool: _Pool,
        start_row: int,
        end_row: int | None,
        windows: ThreadPoolExecutor,
        pieces: ThreadPoolExecutor,
    ):
        self.stream, self.pool, self.pieces, self.windows = stream, pool, pieces, windows
        self.plan = stream._window_plan(pool, start_row, end_row)
        self.current: _Window | None = None
        self.pos = 0
        self.ahead = self._read_next()

    def _read_next(self) -> tuple[int, Future] | None:
        item = next(self.plan, None)
        if item is None:
            return None
        epoch, w, pieces, skip = item
        return skip, self.windows.submit(self.stream._read_window, self.pool, epoch, w, pieces, self.pieces)

    def take(self, out_x: torch.Tensor, out_f: torch.Tensor) -> None:
        """The pool's next len(out_x) rows into out_x / out_f."""
        done, n = 0, len(out_x)
        while done < n:
            if self.current is None or self.pos == len(self.current):
                # drop the served window before the read after next starts: two windows at most
                self.current = None
                if self.ahead is None:
                    raise RuntimeError(f"{self.stream.reader.url}: stream read past its last batch")
                skip, future = self.ahead
                self.current, self.pos = future.result(), skip
                del future
                self.ahead = self._read_next()
            k = min(n - done, len(self.current) - self.pos)
            self.current.gather(self.pos, k, out_x[done : done + k], out_f[done : done + k])
            self.pos, done = self.pos + k, done + k


class ActivationStream:
    """Batches (x [B, d_model] float32 on `device`, is_forget [B] bool) from the store's train corpora."""

    def __init__(
        self,
        reader: StoreReader,
        corpora: list[str],
        *,
        batch_size: int,
        buffer_rows: int,
        seed: int,
        mix: dict[str, float] | None = None,
        heldout_rows: int = 0,
        device: torch.device | str = "cpu",
        scale: float = 1.0,
        prefetch: int = 4,
        total_batches: int | None = None,
    ):
        self.reader, self.batch_size, self.seed = reader, batch_size, seed
        self.total_batches = total_batches  # the reader never reads ahead past the last batch
        self.device, self.scale, self.prefetch = torch.device(device), scale, prefetch
        self.batches_served = 0
        info = reader.corpora()
        pieces_of = {}
        for name in corpora:
            g = info[name]
            usable = g.n_rows - heldout_rows  # the tail of each corpus is never trained on
            if usable <= 0:
                raise ValueError(f"{reader.url}/{name}: heldout_rows={heldout_rows} leaves no rows to train on")
            pieces_of[name] = [
                _Piece(name, s, min(s + g.rows_per_chunk, usable), g.role == "forget")
                for s in range(0, usable, g.rows_per_chunk)
            ]
        if mix:
            counts = _split_counts(batch_size, [mix[n] for n in corpora])
            self.pools = [_Pool(i, tuple(pieces_of[n]), c) for i, (n, c) in enumerate(zip(corpora, counts))]
        else:
            self.pools = [_Pool(0, tuple(p for n in corpora for p in pieces_of[n]), batch_size)]
        chunk_rows = max(p.rows for pool in self.pools for p in pool.pieces)
        self.chunks_per_window = max(1, buffer_rows // chunk_rows)

    def load_state_dict(self, state: dict) -> None:
        self.batches_served = int(state["batches_served"])

    # -- row order: a pure function of (seed, pool, epoch, window) --------------------------------
    def _windows(self, pool: _Pool, epoch: int) -> list[list[_Piece]]:
        rng = np.random.default_rng([self.seed, pool.index, epoch])
        order = rng.permutation(len(pool.pieces))
        w = self.chunks_per_window
        return [[pool.pieces[i] for i in order[j : j + w]] for j in range(0, len(order), w)]

    def _window_plan(self, pool: _Pool, start_row: int, end_row: int | None) -> Iterator[tuple]:
        """(epoch, w, pieces, skip) of each window serving rows [start_row, end_row): seek by
        arithmetic, so windows before the position are never read, nor any after the end."""
        epoch, skip = divmod(start_row, pool.rows)
        at = epoch * pool.rows  # absolute position of the next window's first row
        while True:
            for w, pieces in enumerate(self._windows(pool, epoch)):
                if end_row is not None and at >= end_row:
                    return
                n = sum(p.rows for p in pieces)
                at += n
                if skip >= n:
                    skip -= n
                    continue
                yield epoch, w, pieces, skip
                skip = 0
            epoch += 1

    def _read_window(
        self, pool: _Pool, epoch: int, w: int, pieces: list[_Piece], threads: ThreadPoolExecutor | None = None
    ) -> _Window:
        sizes = [p.rows for p in pieces]
        bounds = np.cumsum([0, *sizes])
        stored = np.empty((bounds[-1], self.reader.d_model), dtype=numpy_storage_dtype(self.reader.storage_dtype))

        def read(i: int) -> None:
            p = pieces[i]
            stored[bounds[i] : bounds[i + 1]] = self.reader.read_stored(p.corpus, p.start, p.stop)

        for _ in threads.map(read, range(len(pieces))) if threads else map(read, range(len(pieces))):
            pass  # map raises a reader's error here
        perm = np.random.default_rng([self.seed, pool.index, epoch, w, 1]).permutation(len(stored))
        return _Window(stored, np.repeat([p.is_forget for p in pieces], sizes), perm)

    def _batches(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches as stored (store.torch_storage_dtype), in pinned memory for a CUDA device."""
        pin = self.device.type == "cuda"
        dtype = torch_storage_dtype(self.reader.storage_dtype)
        end = self.total_batches
        rows = sum(pool.rows_per_batch for pool in self.pools)
        # window reads use the chunk readers: they stop first (a read not yet begun is cancelled)
        with ThreadPoolExecutor(READ_THREADS, "stream-read") as threads:
            windows = ThreadPoolExecutor(len(self.pools), "stream-window")
            try:
                sources = [
                    _PoolRows(
                        self,
                        pool,
                        start_batch * pool.rows_per_batch,
                        None if end is None else end * pool.rows_per_batch,
                        windows,
                        threads,
                    )
                    for pool in self.pools
                ]
                for _ in itertools.count(start_batch) if end is None else range(start_batch, end):
                    x = torch.empty((rows, self.reader.d_model), dtype=dtype, pin_memory=pin)
                    f = torch.empty(rows, dtype=torch.bool, pin_memory=pin)
                    at = 0
                    for source, pool in zip(sources, self.pools):
                        source.take(x[at : at + pool.rows_per_batch], f[at : at + pool.rows_per_batch])
                        at += pool.rows_per_batch
                    yield x, f
            finally:
                windows.shutdown(wait=True, cancel_futures=True)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Stored rows -> float32 times the scale (the same values wherever it runs)."""
        return decode_rows(x, self.reader.storage_dtype) * self.scale

    # -- iteration with read-ahead -------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        done = object()
        stop = threading.Event()
        on_device = self.device.type == "cuda"  # bf16 crosses the bus at half the bytes, widens there

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            batches = self._batches(self.batches_served)
            try:
                for x, f in batches:
                    if not put((x if on_device else self._to_float(x), f)):
                        return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
                put(e)
                return
            finally:
                batches.close()  # stops the window readers
            put(done)

        thread = threading.Thread(target=produce, daemon=True, name="activation-reader")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, f = item
                self.batches_served += 1
                if on_device:
                    x = self._to_float(x.to(self.device, non_blocking=True))
                    f = f.to(self.device, non_blocking=True)
                yield x, f
        finally:
            stop.set()
            thread.join(timeout=5)


def estimate_scale(reader: StoreReader, corpora: list[str], n_rows: int = 32768, seed: int = 0) -> float:
    """Factor making E‖x‖² = d_model on training rows (SAELens' 'expected_average_only_in').

    Rows are drawn from evenly spaced chunks of every corpus so the estimate covers the cache.
    """
    info = reader.corpora()
    total = sum(info[n].n_rows for n in corpora)
    sq, count = 0.0, 0
    for name in corpora:
        g = info[name]
        budget = min(g.n_rows, -(-n_rows * g.n_rows // total))  # proportional to corpus size
        n_pick = min(g.n_chunks, max(8, -(-budget // g.rows_per_chunk)))
        take = -(-budget // n_pick)
        for k in np.unique(np.linspace(0, g.n_chunks - 1, n_pick).round().astype(int)):
            start = int(k) * g.rows_per_chunk
            x = reader.read_rows(name, start, min(start + take, g.n_rows, start + g.rows_per_chunk))
            sq += float((x.double() ** 2).sum())
            count += len(x)
    return float((reader.d_model / (sq / count)) ** 0.5)
