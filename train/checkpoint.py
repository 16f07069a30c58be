"""Checkpoints: safetensors for every tensor (SAE, Adam moments, RNG), JSON for everything else.

A checkpoint folder is written beside the old one and swapped in by rename, so a kill at any
moment leaves either the previous or the new checkpoint, never a half-written one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT = "checkpoint"


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


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Atomically replace run_dir/checkpoint with `state` (nested dicts of tensors and JSON values)."""
    final = run_dir / CHECKPOINT
    tmp, old = run_dir / f"{CHECKPOINT}.tmp", run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten("state", state, tensors)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last complete checkpoint of a run, or None. Recovers from a kill between the renames."""
    final, old = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old"
    if not final.exists() and old.exists():
        old.rename(final)
    if not (final / "state.json").exists():
        return None
    tensors = load_file(str(final / "state.safetensors"))
    return _unflatten(json.loads((final / "state.json").read_text()), tensors)


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    opt.load_state_dict({"state": {int(k): v for k, v in saved["state"].items()},
                         "param_groups": saved["param_groups"]})
