"""Chunk writes behind the forward pass: writer threads copy, compress, checksum and commit.

The harvest loop hands each chunk to `ChunkWriter.submit` and goes on with the next forward pass;
`workers` threads (WORKERS) call `StoreWriter.write_chunk`, each on whole chunks, so what lands in the store,
and that a chunk is committed only after all its rows, are exactly as with serial writes (a kill at
any moment leaves whole committed chunks and uncommitted ones a rerun harvests again). Several
threads because one cannot keep up with a GPU: zstd takes ~0.3 s of CPU for a 75 MB reference
chunk (16k tokens), and it releases the GIL, so the threads compress in parallel.

The queue is bounded: when the threads fall behind, `submit` waits (back-pressure), so host memory
holds at most `depth` chunks besides the ones being written. An error in a thread is raised in
the harvest loop at the next `submit` or at `close`; chunks queued behind it are dropped
uncommitted. `close` (also on leaving a `with` block, whatever the reason) commits everything
queued before it returns.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from orthosae.common.store import CorpusPlan, StoreWriter, rows_as_numpy

_STOP = object()


@dataclass
class HostRows:
    """A chunk's rows in host memory, perhaps still arriving from the GPU: `ready` is the CUDA
    event recorded after the copies, None when the rows are already there (CPU harvest)."""

    rows: torch.Tensor  # [rows, d_model]: store.encode_rows's bits
    ready: torch.cuda.Event | None = None

    @property
    def shape(self) -> torch.Size:
        return self.rows.shape

    def numpy(self) -> np.ndarray:
        if self.ready is not None:
            self.ready.synchronize()  # in the writer thread: the harvest loop never waits on the copy
        return rows_as_numpy(self.rows)


WORKERS = max(1, min(4, os.cpu_count() or 1))  # 4 keep pace with ~200k tok/s of reference chunks


class ChunkWriter:
    """`StoreWriter.write_chunk` in `workers` background threads behind a queue of `depth` chunks."""

    def __init__(self, writer: StoreWriter, depth: int = 2, workers: int = WORKERS):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._raised = False
        self._threads = [
            threading.Thread(target=self._run, name=f"chunk-writer-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:  # after a failure, later chunks are dropped uncommitted
                    plan, k, acts, tokens = item
                    self.writer.write_chunk(plan, k, acts.numpy() if isinstance(acts, HostRows) else acts, tokens)
            except BaseException as e:  # noqa: BLE001 - handed to the harvest loop, which re-raises
                with self._error_lock:
                    self._error = self._error or e
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def submit(self, plan: CorpusPlan, k: int, acts: np.ndarray | HostRows, tokens: np.ndarray) -> None:
        """Queue chunk k (waits while `depth` chunks are queued); raises the writer's first error."""
        if not self._threads[0].is_alive():
            raise RuntimeError(f"{self.writer.url}: chunk writer is closed")
        self._raise_error()
        self._queue.put((plan, k, acts, tokens))

    def close(self) -> None:
        """Commit everything queued, stop the thread; raises the writer's first error."""
        if self._threads[0].is_alive():
            for _ in self._threads:
                self._queue.put(_STOP)  # behind everything queued: each thread takes one and ends
            for thread in self._threads:
                thread.join()
        self._raise_error()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already leaving with an error: commit what is queued, keep the first error
            self.close()
        except BaseException:  # noqa: BLE001
            pass
