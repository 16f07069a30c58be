"""A run's fingerprint: changes when anything that shapes its weights changes (settings or cached
data). `pipe train` skips a finished run whose summary holds one of ``run_fingerprints``; `pipe
verify` and `pipe status` call a run stale when it holds none."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from orthosae.common.config import OrthoConfig, RunConfig
from orthosae.common.store import StoreReader

# keys added after runs were trained, at their defaults: they count only when set, so older runs stay complete
_LATER_DEFAULTS = {"activation": "relu", "k": 0, "target_l0": 0.0, "l0_gain": 0.03, "matmul_precision": "highest"}
_LATER_ORTHO_DEFAULTS = {"gram_dtype": "float32"}


def _set_keys(section, later: dict) -> dict:
    return {k: v for k, v in asdict(section).items() if k not in later or v != later[k]}


def run_fingerprint(run: RunConfig, reader: StoreReader, stream_seed: int | None = None) -> str:
    """Changes when anything that shapes this run's weights changes (settings or cached data).
    ``stream_seed``: the sweep's ``[train] seed`` (data order), counted when it differs from the
    run's own init seed ``run.train.seed`` (a ``seeds = [...]`` run). A baseline trains no L_ortho:
    its [train.ortho] counts at the defaults, so `--set train.ortho.alpha=…` (or the same edit in the
    file) retrains the runs it reaches and leaves the baseline alone."""
    return _fingerprint(run, reader, stream_seed, run.ortho if run.has_ortho else OrthoConfig())


def run_fingerprints(run: RunConfig, reader: StoreReader, stream_seed: int | None = None) -> tuple[str, ...]:
    """The run's fingerprint, then those earlier releases gave the same run: a finished run whose
    summary holds one of them is still complete. (Until `pipe --set`, a baseline's fingerprint
    counted its [train.ortho] section; until issue 36, every [train] key counted, `NOT_WEIGHTS` too.)"""
    current = run_fingerprint(run, reader, stream_seed)
    legacy = [_fingerprint(run, reader, stream_seed, run.ortho if run.has_ortho else OrthoConfig(), legacy=True)]
    if not run.has_ortho:
        legacy.append(_fingerprint(run, reader, stream_seed, run.ortho, legacy=True))
    return (current, *legacy)


# [train] keys that decide where and how often a run is saved, not what it learns: moving the runs
# folder or checkpointing more often leaves a finished run complete and a partial one resumable.
NOT_WEIGHTS = ("runs_dir", "device", "checkpoint_every")


def _fingerprint(run: RunConfig, reader: StoreReader, stream_seed: int | None, ortho, legacy: bool = False) -> str:
    data = {n: g.tokens_fingerprint for n, g in reader.corpora().items()}
    train = _set_keys(run.train, _LATER_DEFAULTS)
    if not legacy:
        train = {k: v for k, v in train.items() if k not in NOT_WEIGHTS}
    items = [
        run.type,
        train,
        _set_keys(ortho, _LATER_ORTHO_DEFAULTS),
        data,
        reader.meta.get("model_id"),
        reader.meta.get("layer"),
    ]
    if stream_seed is not None and stream_seed != run.train.seed:
        items.append({"stream_seed": stream_seed})
    blob = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
