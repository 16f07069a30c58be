"""Stream cached activations into training batches without loading the cache.

Shuffling is a *block shuffle*: each epoch permutes the list of store chunks, groups consecutive
chunks into windows of about `buffer_rows` rows, and permutes the rows inside each window. Every
row is served exactly once per epoch, memory is bounded by the window (not the cache), the order
is a pure function of (seed, epoch, window), and a position in the stream is just a row count, so
resuming seeks there by arithmetic instead of re-reading the data.

Corpora are mixed in one of two ways: with no `mix`, all training corpora form one pool (rows in
proportion to corpus size, each once per epoch); with `mix = {name: share}`, each corpus is its own
pool and every batch takes a fixed number of rows from each (pools cycle their epochs separately).
A background thread reads ahead while the consumer trains.
"""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from common.store import StoreReader


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
    for i in order[:max(0, batch_size - sum(counts))]:
        counts[i] += 1
    return counts


class ActivationStream:
    """Batches (x [B, d_model] float32 on `device`, is_forget [B] bool) from the store's train corpora."""

    def __init__(self, reader: StoreReader, corpora: list[str], *, batch_size: int, buffer_rows: int,
                 seed: int, mix: dict[str, float] | None = None, heldout_rows: int = 0,
                 device: torch.device | str = "cpu", scale: float = 1.0, prefetch: int = 4,
                 total_batches: int | None = None):
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
                for s in range(0, usable, g.rows_per_chunk)]
        if mix:
            counts = _split_counts(batch_size, [mix[n] for n in corpora])
            self.pools = [_Pool(i, tuple(pieces_of[n]), c) for i, (n, c) in enumerate(zip(corpora, counts))]
        else:
            self.pools = [_Pool(0, tuple(p for n in corpora for p in pieces_of[n]), batch_size)]
        chunk_rows = max(p.rows for pool in self.pools for p in pool.pieces)
        self.chunks_per_window = max(1, buffer_rows // chunk_rows)

    @property
    def rows_per_epoch(self) -> int:
        return sum(pool.rows for pool in self.pools)

    def state_dict(self) -> dict:
        return {"batches_served": self.batches_served}

    def load_state_dict(self, state: dict) -> None:
        self.batches_served = int(state["batches_served"])

    # -- row order ---------------------------------------------------------------------------
    def _windows(self, pool: _Pool, epoch: int) -> list[list[_Piece]]:
        rng = np.random.default_rng([self.seed, pool.index, epoch])
        order = rng.permutation(len(pool.pieces))
        w = self.chunks_per_window
        return [[pool.pieces[i] for i in order[j:j + w]] for j in range(0, len(order), w)]

    def _read_window(self, pool: _Pool, epoch: int, w: int, pieces: list[_Piece]):
        acts = torch.cat([self.reader.read_rows(p.corpus, p.start, p.stop) for p in pieces])
        is_forget = torch.cat([torch.full((p.rows,), p.is_forget) for p in pieces])
        perm = torch.from_numpy(np.random.default_rng([self.seed, pool.index, epoch, w, 1])
                                .permutation(len(acts)))
        return acts[perm], is_forget[perm]

    def _pool_rows(self, pool: _Pool, start_row: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Row blocks of `pool` from absolute position `start_row` on, forever (epoch after epoch)."""
        epoch, skip = divmod(start_row, pool.rows)
        while True:
            for w, pieces in enumerate(self._windows(pool, epoch)):
                n = sum(p.rows for p in pieces)
                if skip >= n:  # seek by arithmetic: windows before the position are never read
                    skip -= n
                    continue
                acts, is_forget = self._read_window(pool, epoch, w, pieces)
                yield acts[skip:], is_forget[skip:]
                skip = 0
            epoch += 1

    def _batches(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sources = [self._pool_rows(p, start_batch * p.rows_per_batch) for p in self.pools]
        pending = [(torch.empty(0, self.reader.d_model), torch.empty(0, dtype=torch.bool))
                   for _ in self.pools]
        for _ in itertools.count(start_batch) if self.total_batches is None else range(start_batch, self.total_batches):
            xs, fs = [], []
            for i, pool in enumerate(self.pools):
                acts, forget = pending[i]
                while len(acts) < pool.rows_per_batch:
                    more_a, more_f = next(sources[i])
                    acts, forget = torch.cat([acts, more_a]), torch.cat([forget, more_f])
                xs.append(acts[:pool.rows_per_batch])
                fs.append(forget[:pool.rows_per_batch])
                pending[i] = (acts[pool.rows_per_batch:], forget[pool.rows_per_batch:])
            yield torch.cat(xs) * self.scale, torch.cat(fs)

    # -- iteration with read-ahead -------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        done = object()
        stop = threading.Event()
        pin = self.device.type == "cuda"

        def produce():
            try:
                for x, f in self._batches(self.batches_served):
                    if pin:
                        x, f = x.pin_memory(), f.pin_memory()
                    while not stop.is_set():
                        try:
                            q.put((x, f), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
                q.put(e)
                return
            q.put(done)

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
                yield x.to(self.device, non_blocking=pin), f.to(self.device, non_blocking=pin)
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
