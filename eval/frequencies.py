"""The rows feature frequencies are counted on: every row of the training corpora, or a seeded
sample of whole contexts spread over all their documents, never the front rows.

Unlearning selects its features by these frequencies (and eval's post-hoc groups come from the
same pass), so they must describe the corpus: the first rows of a corpus are its first few
documents. A sampled context is chosen by a hash of the seed and its tokens, not by its place in
the store, so the same store in another order gives the same sample and the same frequencies.
Each row is read once and encoded once per SAE (`eval.runner._feed`), for every count together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from orthosae.common.store import StoreReader

BATCH_ROWS = 4096


def sample_contexts(reader: StoreReader, name: str, n_contexts: int, seed: int) -> np.ndarray:
    """The `n_contexts` contexts of corpus `name` whose hash of (seed, tokens) is smallest, in store
    order: a uniform sample over the corpus that does not depend on where a context is stored."""
    info = reader.corpora()[name]
    if n_contexts >= info.n_contexts:
        return np.arange(info.n_contexts)
    tokens = reader.read_tokens(name, 0, info.n_rows).astype("<i4").reshape(info.n_contexts, -1)
    salt = seed.to_bytes(8, "little")
    keys = np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, salt=salt).digest(), "little") for row in tokens],
        dtype=np.uint64,
    )
    return np.sort(np.argsort(keys, kind="stable")[:n_contexts])


def frequency_plan(reader: StoreReader, names: list[str], n_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Corpus -> the contexts counted: all of them (n_rows 0), else about n_rows rows shared across
    `names` in proportion to their size, whole contexts (each corpus's part rounded up)."""
    info = reader.corpora()
    total = sum(info[n].n_rows for n in names)
    plan = {}
    for name in names:
        c = info[name]
        if n_rows == 0:
            plan[name] = np.arange(c.n_contexts)
        else:
            rows = -(-n_rows * c.n_rows // total)
            plan[name] = sample_contexts(reader, name, -(-rows // c.rows_per_context), seed)
    return plan


def resample_plan(plan: dict[str, np.ndarray], *seeds: int) -> dict[str, np.ndarray]:
    """A bootstrap draw of a plan: each corpus's contexts drawn with replacement, as many as it has
    (sorted; a context drawn twice is counted twice). The spread decomposition resamples the
    selection rows with it (eval/spread.py)."""
    out = {}
    for i, (name, contexts) in enumerate(plan.items()):
        rng = np.random.default_rng([*seeds, i])
        out[name] = np.sort(contexts[rng.integers(0, len(contexts), len(contexts))])
    return out


def frequency_batches(
    reader: StoreReader,
    names: list[str],
    n_rows: int,
    seed: int,
    skip_tokens: frozenset[int] = frozenset(),
    batch_rows: int = BATCH_ROWS,
) -> Iterator[torch.Tensor]:
    """Raw rows of the planned contexts (`frequency_plan`); see `plan_batches`."""
    return plan_batches(reader, frequency_plan(reader, names, n_rows, seed), skip_tokens, batch_rows)


def plan_batches(
    reader: StoreReader,
    plan: dict[str, np.ndarray],
    skip_tokens: frozenset[int] = frozenset(),
    batch_rows: int = BATCH_ROWS,
) -> Iterator[torch.Tensor]:
    """Raw rows of a plan's contexts (sorted, repeats allowed), chunk by chunk (each chunk read once),
    in batches of at most `batch_rows`; rows whose token is in `skip_tokens` (BOS, EOS, padding) are
    left out."""
    info = reader.corpora()
    skip = torch.tensor(sorted(skip_tokens), dtype=torch.int64)
    for name, contexts in plan.items():
        c = info[name]
        per_chunk = c.rows_per_chunk // c.rows_per_context
        for k in np.unique(contexts // per_chunk):
            mine = contexts[(contexts >= k * per_chunk) & (contexts < (k + 1) * per_chunk)]
            lo, hi = int(mine[0]) * c.rows_per_context, (int(mine[-1]) + 1) * c.rows_per_context
            rows = reader.read_rows(name, lo, hi)
            tokens = torch.from_numpy(reader.read_tokens(name, lo, hi).astype("int64"))
            # the chosen contexts' rows within the span read, a context drawn twice twice
            index = torch.from_numpy(
                (
                    (mine - mine[0]).astype("int64")[:, None] * c.rows_per_context + np.arange(c.rows_per_context)
                ).reshape(-1)
                + int(mine[0]) * c.rows_per_context
                - lo
            )
            if len(skip):
                index = index[~torch.isin(tokens[index], skip)]
            rows = rows[index]
            for start in range(0, len(rows), batch_rows):
                yield rows[start : start + batch_rows]


def describe(n_rows: int, seed: int, counted: dict[str, int]) -> dict:
    """What the frequencies were counted on, for the report: the setting and the rows per corpus."""
    how = (
        "every row of the training corpora"
        if n_rows == 0
        else f"a seeded sample of about {n_rows:,} rows (frequency_seed {seed}): whole contexts chosen by a "
        "hash of their tokens, spread over all documents"
    )
    return {
        "frequency_rows": n_rows,
        "frequency_seed": seed,
        "sample": how,
        "rows_counted": counted,
        "special_tokens": "BOS, EOS and padding rows left out",
    }
