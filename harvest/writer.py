"""Chunk writes behind the forward pass: one thread copies, compresses, checksums and commits.

The harvest loop hands each chunk to `ChunkWriter.submit` and goes on with the next forward pass;
the thread calls `StoreWriter.write_chunk` in submission order, so what lands in the store, and
that a chunk is committed only after all its rows, are exactly as with serial writes (a kill at
any moment leaves whole committed chunks and uncommitted ones a rerun harvests again).

The queue is bounded: when the thread falls behind, `submit` waits (back-pressure), so host memory
holds at most `depth` chunks besides the one being written. An error in the thread is raised in
the harvest loop at the next `submit` or at `close`; chunks queued behind it are dropped
uncommitted. `close` (also on leaving a `with` block, whatever the reason) commits everything
queued before it returns.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from common.store import CorpusPlan, StoreWriter

_STOP = object()


@dataclass
class HostRows:
    """A chunk's rows in host memory, perhaps still arriving from the GPU: `ready` is the CUDA
    event recorded after the copies, None when the rows are already there (CPU harvest)."""
    rows: torch.Tensor  # [rows, d_model] in the storage's torch dtype (int16 holds bf16 bits)
    ready: torch.cuda.Event | None = None

    def numpy(self) -> np.ndarray:
        if self.ready is not None:
            self.ready.synchronize()  # in the writer thread: the harvest loop never waits on the copy
        a = self.rows.numpy()
        return a.view(np.uint16) if a.dtype == np.int16 else a


class ChunkWriter:
    """`StoreWriter.write_chunk` in one background thread behind a queue of `depth` chunks."""

    def __init__(self, writer: StoreWriter, depth: int = 2):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._raised = False
        self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:  # after a failure, later chunks are dropped uncommitted
                    plan, k, acts, tokens = item
                    self.writer.write_chunk(plan, k, acts.numpy() if isinstance(acts, HostRows) else acts,
                                            tokens)
            except BaseException as e:  # noqa: BLE001 - handed to the harvest loop, which re-raises
                self._error = e
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def submit(self, plan: CorpusPlan, k: int, acts: np.ndarray | HostRows, tokens: np.ndarray) -> None:
        """Queue chunk k (waits while `depth` chunks are queued); raises the writer's first error."""
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.writer.url}: chunk writer is closed")
        self._raise_error()
        self._queue.put((plan, k, acts, tokens))

    def flush(self) -> None:
        """Wait until every queued chunk is committed; raises the writer's first error."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Commit everything queued, stop the thread; raises the writer's first error."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
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
