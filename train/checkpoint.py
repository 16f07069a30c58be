"""Checkpoints: safetensors for every tensor (SAE, Adam moments, RNG), JSON for everything else.

A run keeps two checkpoints: ``checkpoint/`` (the latest) and ``checkpoint.prev/`` (the one
before). A new one is written whole into ``checkpoint.tmp/``, its ``digests.json`` last (the
commit mark: sha256 of every file), then swapped in by renames, so a kill at any moment leaves the
latest and the previous checkpoint, and a write the disk refuses (full, read-only) leaves both as
they were. Loading checks the digests: a damaged latest checkpoint falls back to the previous one;
when none is intact, ``NoIntactCheckpoint`` names every damaged file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from orthosae.common.errors import RunError, one_line, os_error_line, write_tensors
from orthosae.train import digests

CHECKPOINT = "checkpoint"
PREVIOUS = f"{CHECKPOINT}.prev"
TMP = f"{CHECKPOINT}.tmp"
LEGACY_OLD = f"{CHECKPOINT}.old"  # left by a kill between the renames of the single-checkpoint layout
STATE_TENSORS, STATE_JSON, LOG = "state.safetensors", "state.json", "log.jsonl"


class NoIntactCheckpoint(RunError):
    """Every checkpoint of a run is damaged: ``problems`` lists (path, what is wrong)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {what}" for p, what in problems))


def _flatten(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move tensors of a nested dict/list into `tensors`; what stays is JSON."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _flatten(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(run_dir: Path, state: dict[str, Any], *, log: Path | None = None) -> Path:
    """Write ``state`` (nested dicts of tensors and JSON values) as the run's latest checkpoint; the
    latest becomes ``checkpoint.prev``. ``log``: the run's log.jsonl, copied in (covered by the
    checkpoint's digests), so a resume or a repair restores the log as it was at this step. Raises
    ``RunError`` (one line naming the path) when the disk refuses a write, the checkpoints untouched."""
    final, prev, tmp = run_dir / CHECKPOINT, run_dir / PREVIOUS, run_dir / TMP
    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten("state", state, tensors)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # save_file, then hash the file (from the page cache): serialising to bytes to hash them
        # in hand took 5x save_file's time (bench/checkpoint_bench.py)
        write_tensors(tensors, tmp / STATE_TENSORS, save_file)
        (tmp / STATE_JSON).write_text(json.dumps(meta))
        if log is not None and log.is_file():
            shutil.copyfile(log, tmp / LOG)
        digests.record(tmp)  # last: the commit mark
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"{os_error_line(e)}; checkpoint not written, {run_dir} left as it was") from None
    try:
        if final.exists():
            shutil.rmtree(prev, ignore_errors=True)
            final.rename(prev)
        tmp.rename(final)
    except OSError as e:
        raise RunError(f"{os_error_line(e, 'cannot rename in')}; the new checkpoint is complete in {tmp}") from None
    shutil.rmtree(run_dir / LEGACY_OLD, ignore_errors=True)
    return final


def check_folder(folder: Path, *, full: bool = True) -> list[tuple[str, str]]:
    """(path, what is wrong) for a checkpoint folder: its digest file, then its files against it.
    A folder written before digests were recorded is checked for its two files alone."""
    try:
        files = digests.read(folder)
    except ValueError as e:
        return [(str(folder / digests.DIGESTS), str(e).rsplit(": ", 1)[-1])]
    if files is None:
        return [(str(folder / n), "missing") for n in (STATE_TENSORS, STATE_JSON) if not (folder / n).is_file()]
    missing = [(str(folder / n), "not in its digests.json") for n in (STATE_TENSORS, STATE_JSON) if n not in files]
    return missing + digests.check(folder, files, full=full)


def _read(folder: Path) -> dict[str, Any]:
    tensors = load_file(str(folder / STATE_TENSORS))
    return _unflatten(json.loads((folder / STATE_JSON).read_text()), tensors)


@dataclass
class Loaded:
    """A checkpoint read back: ``state``, the ``folder`` it came from, and the newer ones skipped as
    damaged (``skipped``: (path, what is wrong))."""

    state: dict[str, Any]
    folder: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)


def candidates(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first. ``checkpoint.tmp`` counts (first) only when
    ``checkpoint`` is gone: a kill between the renames left it committed but not swapped in."""
    out = []
    if not (run_dir / CHECKPOINT).exists() and (run_dir / TMP / digests.DIGESTS).exists():
        out.append(run_dir / TMP)
    out += [run_dir / n for n in (CHECKPOINT, LEGACY_OLD, PREVIOUS) if (run_dir / n).exists()]
    return out


def load_latest(run_dir: Path) -> Loaded | None:
    """The newest intact checkpoint of a run; None when there is none at all. Raises
    ``NoIntactCheckpoint`` when every checkpoint is damaged."""
    skipped: list[tuple[str, str]] = []
    for folder in candidates(run_dir):
        problems = check_folder(folder)
        if not problems:
            try:
                state = _read(folder)
            except Exception as e:  # noqa: BLE001 - a damaged file fails in safetensors or json
                problems = [(str(folder), f"unreadable ({type(e).__name__}: {one_line(e)[:200]})")]
        if problems:
            skipped += problems
            continue
        if folder.name == TMP:  # finish the swap the kill interrupted
            folder.rename(run_dir / CHECKPOINT)
            folder = run_dir / CHECKPOINT
        return Loaded(state, folder, skipped)
    if skipped:
        raise NoIntactCheckpoint(skipped)
    return None


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The state of the newest intact checkpoint of a run, or None (see ``load_latest``)."""
    loaded = load_latest(run_dir)
    return None if loaded is None else loaded.state


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    opt.load_state_dict(
        {"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": saved["param_groups"]}
    )
