"""The activation store: one zarr v3 group per corpus, written chunk by chunk, read by train and eval.

Layout (see docs/architecture.md)::

    <store>.zarr/            attrs["orthosae"]: identity of what was harvested (model, layer, ...)
      <corpus>/acts          [rows, d_model]  uint16 (bf16 bits) | float16 | float32
      <corpus>/tokens        [rows] int32     token id of each row
      <corpus>/context       [rows] int32     context index
      <corpus>/position      [rows] int16     position in the context (1..T-1; BOS is not stored)
      <corpus>/committed     [n_chunks] int64 0 = not written; else a checksum of the chunk's rows

Chunk k of a corpus holds contexts [k·C, (k+1)·C) and is the unit of work: every array is chunked
on the same row boundaries, so a chunk's rows are written by exactly one process, a rewrite is
idempotent, and `committed[k]` (its own zarr chunk) is set only after the rows are fully written.
Sharding is not used: a shard groups several chunks into one object, which would make commit
units share objects across writers; chunks are already ~10 MB objects at the default size.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch
import zarr

from orthosae.common.config import Config
from orthosae.common.errors import UserError, first_line, naming, os_error_line
from orthosae.common.events import process_alive

SCHEMA = 1
# Attributes that must match for a store to be reused (resume, train, eval).
IDENTITY_KEYS = (
    "model_id",
    "revision",
    "file_sha256",
    "layer",
    "hook",
    "d_model",
    "storage_dtype",
    "context_length",
    "tokenizer",
    "bos_policy",
)
LOCK_NAME = "orthosae-lock"


class StoreError(UserError, ValueError):
    """A store problem; the message is one line naming the store path (and key or chunk)."""


# ---- the row codec: the one place that knows how activation rows are stored ----
# zarr v3 and numpy have no bfloat16: bf16 rows are kept as their bit patterns in uint16 (the same
# bytes). torch gathers and copies no uint16, so in torch the same bits travel as int16, viewed as
# bfloat16 only to widen. Every conversion is a reinterpreting view or the one rounding in
# `encode_rows`: what a reader decodes is bit for bit what the harvest computed, rounded once.


def numpy_storage_dtype(storage_dtype: str) -> np.dtype:
    """The zarr array's dtype for `[harvest] storage_dtype`."""
    return np.dtype({"bfloat16": "uint16", "float16": "float16", "float32": "float32"}[storage_dtype])


def torch_storage_dtype(storage_dtype: str) -> torch.dtype:
    """The torch dtype holding stored rows' bits (int16 for bf16: torch's uint16 cannot be gathered)."""
    return {"bfloat16": torch.int16, "float16": torch.float16, "float32": torch.float32}[storage_dtype]


def encode_rows(x: torch.Tensor, storage_dtype: str) -> torch.Tensor:
    """Rows -> their stored bits as a torch tensor on x's device (so a GPU sends half the bytes)."""
    if storage_dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16)
    return x.to(getattr(torch, storage_dtype))


def rows_as_numpy(bits: torch.Tensor) -> np.ndarray:
    """Stored bits on the CPU (`encode_rows`) as the zarr array holds them; no copy."""
    a = bits.numpy()
    return a.view(np.uint16) if a.dtype == np.int16 else a


def rows_as_torch(a: np.ndarray) -> torch.Tensor:
    """Stored rows as the zarr array holds them -> their bits in torch (`torch_storage_dtype`)."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a.view(np.int16) if a.dtype == np.uint16 else a)


def decode_rows(bits: torch.Tensor, storage_dtype: str) -> torch.Tensor:
    """Stored bits (torch, any device) -> float32 rows."""
    if storage_dtype == "bfloat16":
        bits = bits.view(torch.bfloat16)
    return bits.float()


def to_storage(x: torch.Tensor, storage_dtype: str) -> np.ndarray:
    """Rows -> the array a chunk write takes. For stores written without a model: tests and bench/."""
    return rows_as_numpy(encode_rows(x, storage_dtype).cpu())


def chunk_digest(acts: np.ndarray, tokens: np.ndarray) -> int:
    """Checksum of a chunk's rows; bit 40 is set so a written chunk is never 0."""
    # memoryviews, not .tobytes(): the same bytes without a copy of the chunk
    crc = zlib.crc32(memoryview(np.ascontiguousarray(acts)).cast("B"))
    crc = zlib.crc32(memoryview(np.ascontiguousarray(tokens)).cast("B"), crc)
    return int(crc) | (1 << 40)


def _compressors(codec: str, level: int):
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=level, checksum=True)]  # checksum: corruption is caught
    if codec == "blosc":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")]
    return None


@dataclass(frozen=True)
class CorpusPlan:
    """One corpus group: planned by the harvest before its first chunk is written (fixed from then
    on), kept in the group's attrs, and read back by `StoreReader.corpora` with its progress."""

    name: str
    role: str
    split: str
    source: str
    fingerprint: str  # of the documents
    tokens_fingerprint: str  # of the tokenised contexts
    n_contexts: int
    context_length: int
    contexts_per_chunk: int
    # the document order (its seed) and what the contexts hold: documents and tokens per label
    # (common.corpora.composition); never compared on resume. {} in a store older than it.
    composition: dict = field(default_factory=dict, compare=False, hash=False)
    # progress, as read back from the store (a fresh plan has none)
    chunks_done: int = field(default=0, compare=False)
    complete: bool = field(default=False, compare=False)

    @property
    def rows_per_context(self) -> int:
        return self.context_length - 1

    @property
    def rows_per_chunk(self) -> int:
        return self.contexts_per_chunk * self.rows_per_context

    @property
    def n_rows(self) -> int:
        return self.n_contexts * self.rows_per_context

    @property
    def n_chunks(self) -> int:
        return -(-self.n_contexts // self.contexts_per_chunk)

    def summary(self) -> dict:
        """The group as `pipe status --json` and report.json's "corpora" show it (composition None in
        a store harvested before it was recorded)."""
        return {
            "role": self.role,
            "split": self.split,
            "source": self.source,
            "tokens": self.n_rows,
            "contexts": self.n_contexts,
            "chunks_done": self.chunks_done,
            "chunks": self.n_chunks,
            "complete": self.complete,
            "composition": self.composition or None,
        }


def _zarr_location(url: str) -> str:
    """What to hand zarr for `url`. zarr opens file:// URLs through fsspec's LocalFileSystem, which
    does not create directories (the first chunk write fails): a plain path gets zarr's LocalStore."""
    return url.removeprefix("file://")


def _open_root(url: str, mode: str):
    try:
        return zarr.open_group(store=_zarr_location(url), mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StoreError(f"{url}: no zarr store here") from None
    except Exception as e:  # noqa: BLE001 - zarr raises many kinds for a broken store
        raise StoreError(f"{url}: cannot open as a zarr v3 store: {e}") from None


def store_exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path}/zarr.json")


class StoreLock:
    """Refuses a second writer: an exclusively created lock file holding host, pid and time.

    A lock left by a killed process on this host (its pid is gone) is taken over, so a harvest killed
    with -9 resumes without manual cleanup. On object stores without exclusive create the check is
    best effort; use one writer job per store there.
    """

    def __init__(self, url: str):
        self.fs, root = fsspec.core.url_to_fs(url)
        self.url = url
        # Beside the store, not in it: creating or --force-removing the store must not drop the lock.
        self.path = f"{root.rstrip('/')}.{LOCK_NAME}"
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"host": "?", "pid": -1, "since": 0}

    def _alive(self, holder: dict) -> bool:
        return process_alive(holder.get("host"), holder.get("pid"))  # another host's: assumed alive

    def acquire(self) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        for _ in range(2):
            try:
                with naming(self.path), self.fs.open(self.path, "xb") as f:
                    f.write(json.dumps(self.owner).encode())
                return
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue
                if self._alive(holder):
                    raise StoreError(
                        f"{self.url}: another writer holds the store (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, lock {self.path}); wait for it or stop it"
                    ) from None
                self.fs.rm(self.path)  # stale lock of a killed run
        raise StoreError(f"{self.url}: could not take the write lock {self.path}")

    def release(self) -> None:
        holder = self._holder()
        if holder and holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            self.fs.rm(self.path)


def _names_store(method):
    """A store metadata write the disk refuses (a bare ``write()``) names the store in its one line."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with naming(self.url):
            return method(self, *args, **kwargs)

    return wrapped


class StoreWriter:
    """Creates or reopens a store for harvesting; refuses one that holds something else."""

    def __init__(self, url: str, identity: dict[str, Any], *, codec: str = "zstd", level: int = 3, create: bool = True):
        with naming(url):  # a metadata write the disk refuses names the store
            self._open(url, identity, codec, level, create)

    def _open(self, url: str, identity: dict[str, Any], codec: str, level: int, create: bool) -> None:
        self.url = url
        self.identity = identity
        self.codec, self.level = codec, level
        if store_exists(url):
            self.root = _open_root(url, "r+")
            stored = self.root.attrs.get("orthosae")
            if stored is None:
                raise StoreError(f"{url}: exists but is not an orthosae store (no 'orthosae' attrs)")
            for key in IDENTITY_KEYS:
                if stored.get(key) != identity.get(key):
                    raise StoreError(
                        f"{url}: holds {key}={stored.get(key)!r}, config wants "
                        f"{identity.get(key)!r}; use another [harvest] store or --force"
                    )
        elif create:
            self.root = zarr.open_group(store=_zarr_location(url), mode="w", zarr_format=3)
            self.root.attrs["orthosae"] = {**identity, "schema": SCHEMA, "complete": False}
        else:
            raise StoreError(f"{url}: no zarr store here")

    @_names_store
    def ensure_corpus(self, plan: CorpusPlan) -> zarr.Group:
        """Create the corpus group, or check an existing one was planned identically."""
        d_model = self.identity["d_model"]
        if plan.name in self.root:
            group = self.root[plan.name]
            for key in ("fingerprint", "tokens_fingerprint", "n_contexts", "contexts_per_chunk"):
                if group.attrs.get(key) != getattr(plan, key):
                    raise StoreError(
                        f"{self.url}/{plan.name}: holds {key}={group.attrs.get(key)!r}, "
                        f"this harvest plans {getattr(plan, key)!r}; rerun with --force"
                    )
            return group
        group = self.root.create_group(plan.name)
        rows, chunk = plan.n_rows, plan.rows_per_chunk
        comp = _compressors(self.codec, self.level)
        group.create_array(
            "acts",
            shape=(rows, d_model),
            chunks=(chunk, d_model),
            dtype=numpy_storage_dtype(self.identity["storage_dtype"]),
            compressors=comp,
            fill_value=0,
        )
        group.create_array("tokens", shape=(rows,), chunks=(chunk,), dtype="int32", compressors=comp, fill_value=0)
        group.create_array("context", shape=(rows,), chunks=(chunk,), dtype="int32", compressors=comp, fill_value=0)
        group.create_array("position", shape=(rows,), chunks=(chunk,), dtype="int16", compressors=comp, fill_value=0)
        # One flag per zarr chunk: writers never read-modify-write each other's flags.
        group.create_array(
            "committed", shape=(plan.n_chunks,), chunks=(1,), dtype="int64", fill_value=0, compressors=None
        )
        group.attrs.update(
            {
                "role": plan.role,
                "split": plan.split,
                "source": plan.source,
                "fingerprint": plan.fingerprint,
                "tokens_fingerprint": plan.tokens_fingerprint,
                "n_contexts": plan.n_contexts,
                "rows_per_context": plan.rows_per_context,
                "contexts_per_chunk": plan.contexts_per_chunk,
                "n_chunks": plan.n_chunks,
                "n_rows": rows,
                "complete": False,
                "composition": plan.composition,
            }
        )
        return group

    def pending_chunks(self, name: str) -> list[int]:
        committed = self.root[name]["committed"][:]
        return [int(k) for k in np.flatnonzero(committed == 0)]

    def write_chunk(self, plan: CorpusPlan, k: int, acts: np.ndarray, tokens: np.ndarray) -> None:
        """Write chunk k's rows (contexts k·C..), then commit it. acts: [rows, d], tokens: [ctx, T]."""
        group = self.root[plan.name]
        first_ctx = k * plan.contexts_per_chunk
        n_ctx = tokens.shape[0]
        rows = tokens[:, 1:].reshape(-1).astype(np.int32)  # BOS (position 0) is not stored
        start, stop = first_ctx * plan.rows_per_context, (first_ctx + n_ctx) * plan.rows_per_context
        if acts.shape != (stop - start, self.identity["d_model"]):
            raise StoreError(
                f"{self.url}/{plan.name}: chunk {k} got acts {acts.shape}, "
                f"expected {(stop - start, self.identity['d_model'])}"
            )
        try:
            group["acts"][start:stop] = acts
            group["tokens"][start:stop] = rows
            group["context"][start:stop] = np.repeat(
                np.arange(first_ctx, first_ctx + n_ctx, dtype=np.int32), plan.rows_per_context
            )
            group["position"][start:stop] = np.tile(np.arange(1, plan.context_length, dtype=np.int16), n_ctx)
            group["committed"][k] = chunk_digest(acts, rows)
        except OSError as e:  # disk full, read-only, no permission: the chunk stays uncommitted
            if e.filename is None:  # a refused write() names no file: name the corpus group
                e = OSError(e.errno, e.strerror, f"{self.url}/{plan.name}")
            raise StoreError(
                f"{self.url}/{plan.name}: chunk {k} not written, {os_error_line(e)}; "
                "the committed chunks are as they were (rerun `pipe harvest` once it can write)"
            ) from None

    @_names_store
    def uncommit(self, name: str, chunks: list[int]) -> None:
        """Mark chunks unwritten so the next harvest writes them again (`harvest --repair`).

        The store and group are marked incomplete first: killed halfway, the store is incomplete
        with some damaged chunks still committed (verify still names them), never complete with
        unwritten chunks (which a plain harvest would leave alone).
        """
        meta = dict(self.root.attrs["orthosae"])
        meta["complete"] = False
        meta.pop("completed", None)
        self.root.attrs["orthosae"] = meta
        self.root[name].attrs["complete"] = False
        for k in chunks:
            self.root[name]["committed"][k] = 0

    @_names_store
    def finish_corpus(self, name: str) -> bool:
        group = self.root[name]
        done = bool((group["committed"][:] != 0).all())
        if done:
            group.attrs["complete"] = True
        return done

    @_names_store
    def finish(self) -> bool:
        done = all(self.root[name].attrs.get("complete") for name in self.corpus_names())
        meta = dict(self.root.attrs["orthosae"])
        meta["complete"] = done
        if done:
            meta["completed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.root.attrs["orthosae"] = meta
        return done

    def corpus_names(self) -> list[str]:
        return sorted(name for name, _ in self.root.groups())


class StoreReader:
    """Read access for train and eval: metadata, completion, and rows as float32 tensors."""

    def __init__(self, url: str):
        self.url = url
        if not store_exists(url):
            raise StoreError(f"{url}: no zarr store here (run `pipe harvest` first)")
        self.root = _open_root(url, "r")
        meta = self.root.attrs.get("orthosae")
        if meta is None:
            raise StoreError(f"{url}: not an orthosae store (no 'orthosae' attrs)")
        self.meta: dict = dict(meta)
        self.storage_dtype: str = self.meta["storage_dtype"]
        self.d_model: int = int(self.meta["d_model"])
        self._fs, root = fsspec.core.url_to_fs(url)
        self._root_path = root.rstrip("/")
        self._commits: dict[str, np.ndarray] = {}  # each corpus's commit flags, read once
        self._verified: set[tuple[str, int]] = set()  # chunks read back and matched to their commit digest

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def corpora(self) -> dict[str, CorpusPlan]:
        out = {}
        for name, group in sorted(self.root.groups()):
            a = dict(group.attrs)
            committed = _read_committed(group["committed"])
            out[name] = CorpusPlan(
                name=name,
                role=a["role"],
                split=a["split"],
                source=a["source"],
                fingerprint=a["fingerprint"],
                tokens_fingerprint=a["tokens_fingerprint"],
                n_contexts=int(a["n_contexts"]),
                context_length=int(a["rows_per_context"]) + 1,
                contexts_per_chunk=int(a["contexts_per_chunk"]),
                composition=a.get("composition") or {},
                chunks_done=int((committed != 0).sum()),
                complete=bool(a.get("complete")),
            )
        return out

    def require_complete(self, names: list[str] | None = None) -> None:
        groups = self.corpora()
        for name in names or list(groups):
            if name not in groups:
                raise StoreError(f"{self.url}: has no corpus group {name!r} (has: {', '.join(groups)})")
            info = groups[name]
            if not info.complete or info.chunks_done != info.n_chunks:  # a commit flag lost since
                raise StoreError(
                    f"{self.url}/{name}: incomplete ({info.chunks_done}/{info.n_chunks} "
                    "chunks); rerun `pipe harvest` to finish it"
                )

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a corpus as float32."""
        return decode_rows(rows_as_torch(self.read_stored(name, start, stop)), self.storage_dtype)

    def read_stored(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows as stored (uint16 bf16 bits, float16 or float32): half the bytes of float32 for bf16."""
        return self.read_array(name, "acts", start, stop)

    def read_tokens(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.read_array(name, "tokens", start, stop)

    def read_array(self, name: str, array: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array of a corpus. Every stage reads through here: a committed
        chunk whose file is gone (zarr would hand back zeros) or that does not decode is a
        ``StoreError`` naming the chunk and `pipe harvest --repair`, never silent zeros."""
        group = self.root[name]
        arr = group[array]
        per = arr.chunks[0]
        chunks = range(start // per, -(-stop // per)) if stop > start else range(0)
        if array not in ("acts", "tokens"):  # provenance: context/position chunks of zeros are not stored
            return self._read(name, arr, start, stop, chunks)
        committed = self._committed(name)
        todo = [k for k in chunks if k < len(committed) and committed[k] and (name, k) not in self._verified]
        for k in todo:
            if not self._fs.exists(self._chunk_path(name, arr, k)):
                raise StoreError(
                    f"{self.url}/{name}/{_chunk_file(arr, k)}: chunk {k} of {name} is missing on "
                    "disk, though committed; `pipe harvest --repair` re-harvests it"
                )
        whole = (
            todo
            and start == todo[0] * per
            and stop == min((todo[-1] + 1) * per, arr.shape[0])
            and len(todo) == len(chunks)
        )
        if whole and array == "acts":  # the usual read (a stream window's piece): check what is read
            out = self._read(name, arr, start, stop, chunks)
            tokens = self._read(name, group["tokens"], start, stop, chunks)
            for k in todo:
                lo, hi = k * per - start, min((k + 1) * per, arr.shape[0]) - start
                self._check_digest(name, group, k, out[lo:hi], tokens[lo:hi])
            return out
        for k in todo:  # a part of a chunk, or tokens alone: the whole chunk is checked once
            lo, hi = k * per, min((k + 1) * per, arr.shape[0])
            self._check_digest(
                name,
                group,
                k,
                self._read(name, group["acts"], lo, hi, range(k, k + 1)),
                self._read(name, group["tokens"], lo, hi, range(k, k + 1)),
            )
        return self._read(name, arr, start, stop, chunks)

    def _read(self, name: str, arr: zarr.Array, start: int, stop: int, chunks: range) -> np.ndarray:
        try:
            return arr[start:stop]
        except Exception as e:  # noqa: BLE001 - codec and I/O errors name no chunk themselves
            bad = _first_bad_chunk(arr, chunks)
            raise StoreError(
                f"{self.url}/{name}/{_chunk_file(arr, bad)}: chunk {bad} of {name} is unreadable "
                f"({type(e).__name__}: {first_line(e)}); `pipe harvest --repair` re-harvests it"
            ) from None

    def _check_digest(self, name: str, group: zarr.Group, k: int, acts: np.ndarray, tokens: np.ndarray) -> None:
        """A chunk read back must be the one committed: a file swapped for another chunk's (or one
        stored without a codec checksum, then changed) decodes fine and would train on wrong rows."""
        if chunk_digest(acts, tokens) != int(self._committed(name)[k]):
            files = ", ".join(f"{self.url}/{name}/{_chunk_file(group[a], k)}" for a in ("acts", "tokens", "committed"))
            raise StoreError(
                f"{files}: chunk {k} of {name} does not match its commit checksum (changed after "
                "it was written: damaged or replaced); `pipe harvest --repair` re-harvests it"
            )
        self._verified.add((name, k))

    def _committed(self, name: str) -> np.ndarray:
        if name not in self._commits:
            self._commits[name] = _read_committed(self.root[name]["committed"])
        return self._commits[name]

    def _chunk_path(self, name: str, arr: zarr.Array, k: int) -> str:
        return f"{self._root_path}/{name}/{_chunk_file(arr, k)}"

    def contexts(self, name: str, first: int, count: int, bos_token_id: int) -> torch.Tensor:
        """Full token contexts [count, T] rebuilt as BOS + stored tokens (for downstream evals)."""
        info = self.corpora()[name]
        r = info.rows_per_context
        toks = self.read_tokens(name, first * r, (first + count) * r).reshape(count, r)
        bos = np.full((count, 1), bos_token_id, dtype=np.int64)
        return torch.from_numpy(np.concatenate([bos, toks.astype(np.int64)], axis=1))

    def size_on_disk(self) -> int:
        fs, path = fsspec.core.url_to_fs(self.url)
        return int(fs.du(path))

    def check(self, progress=None) -> list[Problem]:
        """Re-read every chunk (`pipe verify`): each problem names the corpus, chunk and array file,
        with its kind and chunk, so `harvest --repair` knows what to redo."""
        problems = []
        for key in IDENTITY_KEYS:
            if key not in self.meta:
                problems.append(Problem(f"{self.url}: attribute orthosae.{key} is missing", "layout"))
        for name, info in self.corpora().items():
            group = self.root[name]
            expect = {
                "acts": (info.n_rows, self.d_model),
                "tokens": (info.n_rows,),
                "context": (info.n_rows,),
                "position": (info.n_rows,),
                "committed": (info.n_chunks,),
            }
            bad_layout = [arr for arr, shape in expect.items() if arr not in group or tuple(group[arr].shape) != shape]
            for arr in bad_layout:
                problems.append(Problem(f"{self.url}/{name}/{arr}: missing or shape != {expect[arr]}", "layout", name))
            if bad_layout:
                continue
            for k in range(info.n_chunks):
                if progress:
                    progress(name, k, info.n_chunks)
                problems += [
                    Problem(f"{self.url}/{name} chunk {k} ({files}): {what}", kind, name, k)
                    for kind, files, what in _check_chunk(group, info, k)
                ]
            if info.chunks_done == info.n_chunks and not info.complete:
                problems.append(
                    Problem(f"{self.url}/{name}: all chunks written but not marked complete", "unmarked", name)
                )
        return problems


def _first_bad_chunk(arr: zarr.Array, chunks: range) -> int:
    """The first of ``chunks`` that does not read (a read of several names no chunk itself)."""
    per = arr.chunks[0]
    for k in chunks:
        try:
            arr[k * per : (k + 1) * per]
        except Exception:  # noqa: BLE001
            return k
    return chunks[0] if chunks else 0


def _read_committed(arr: zarr.Array) -> np.ndarray:
    """The commit digests; a flag that does not decode counts as unwritten (verify names it)."""
    try:
        return arr[:]
    except Exception:  # noqa: BLE001 - a truncated flag file fails in numpy, not in a codec
        out = np.zeros(arr.shape, dtype=np.int64)
        for k in range(len(out)):
            try:
                out[k] = arr[k]
            except Exception:  # noqa: BLE001
                pass
        return out


@dataclass(frozen=True)
class Problem:
    """One finding of `verify`. kind: "unwritten" (harvest incomplete), "damaged" (a committed chunk
    that does not read back as written: re-harvesting it mends it), "unmarked" (the complete flag
    lags; any harvest sets it), "layout" (wrong arrays or metadata: only --force mends it)."""

    text: str
    kind: str
    corpus: str | None = None
    chunk: int | None = None


def _chunk_file(arr: zarr.Array, k: int) -> str:
    """The chunk object holding rows of chunk k, e.g. "acts/c/3/0" or "tokens/c/3"."""
    return f"{arr.basename}/{arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))}"


def _check_chunk(group: zarr.Group, info: CorpusPlan, k: int) -> list[tuple[str, str, str]]:
    """(kind, chunk file(s), what is wrong) for each problem of chunk k; every array is read."""
    try:
        digest = int(group["committed"][k])
    except Exception as e:  # noqa: BLE001 - codec and I/O errors name no chunk themselves
        return [("damaged", _chunk_file(group["committed"], k), f"unreadable ({type(e).__name__}: {first_line(e)})")]
    if digest == 0:
        return [("unwritten", _chunk_file(group["acts"], k), "not written (harvest incomplete)")]
    start, stop = k * info.rows_per_chunk, min((k + 1) * info.rows_per_chunk, info.n_rows)
    r = info.rows_per_context
    first_ctx, n_ctx = start // r, (stop - start) // r
    expected = {
        "context": np.repeat(np.arange(first_ctx, first_ctx + n_ctx, dtype=np.int32), r),
        "position": np.tile(np.arange(1, r + 1, dtype=np.int16), n_ctx),
    }
    rows, found = {}, []
    for arr in ("acts", "tokens", "context", "position"):
        try:
            rows[arr] = group[arr][start:stop]
        except Exception as e:  # noqa: BLE001
            found.append(("damaged", _chunk_file(group[arr], k), f"unreadable ({type(e).__name__}: {first_line(e)})"))
    if "acts" in rows and "tokens" in rows and chunk_digest(rows["acts"], rows["tokens"]) != digest:
        # One digest covers acts and tokens: it cannot tell which of them (or the digest) changed.
        files = ", ".join(_chunk_file(group[a], k) for a in ("acts", "tokens", "committed"))
        found.append(("damaged", files, "checksum mismatch (data changed after commit)"))
    for arr, want in expected.items():
        if arr in rows and not np.array_equal(rows[arr], want):
            found.append(("damaged", _chunk_file(group[arr], k), f"{arr} indices out of order"))
    return found


def open_store_for(cfg: Config) -> StoreReader:
    """The config's store, checked to hold what the config describes, complete."""
    reader = StoreReader(cfg.harvest.store)
    meta = reader.meta
    want = {"layer": cfg.harvest.layer, "hook": cfg.harvest.hook, "context_length": cfg.harvest.context_length}
    if cfg.model.d_model is not None:
        want["d_model"] = cfg.model.d_model
    for key, value in want.items():
        if meta.get(key) != value:
            raise StoreError(
                f"{cfg.harvest.store}: holds {key}={meta.get(key)!r}, {cfg.path} wants "
                f"{value!r} ([harvest]/[model] {key}); harvest into another store"
            )
    if meta.get("model_id") != cfg.model.id:
        raise StoreError(
            f"{cfg.harvest.store}: holds activations of {meta.get('model_id')}, {cfg.path} [model] id is {cfg.model.id}"
        )
    reader.require_complete(list(cfg.corpora))
    return reader
