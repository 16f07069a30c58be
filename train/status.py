"""Where each run of a config stands, read from its folder alone (`pipe status`): nothing is loaded
but JSON, so it is instant on a sweep that is training elsewhere."""
from __future__ import annotations

import json
from pathlib import Path

from common.config import Config, RunConfig
from common.store import StoreReader
from train.checkpoint import CHECKPOINT
from train.runner import run_fingerprints


def _checkpoint_meta(run_dir: Path) -> dict | None:
    """The JSON half of the run's checkpoint (step, last log record, seconds); tensors are not read.
    ``checkpoint.old`` is what `load_checkpoint` would recover after a kill between its renames."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        path = run_dir / name / "state.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
    return None


def run_status(cfg: Config, run: RunConfig, reader: StoreReader | None) -> dict:
    """status: complete | early_stopped | failed (summary.json of the current settings and data),
    partial (a checkpoint, not finished: `pipe train` resumes it), stale (made with other settings
    or data: `pipe train` starts it again), not started. ``reader`` None: the store is missing, so
    the fingerprint cannot be checked and what is on disk is shown as it is."""
    run_dir = Path(cfg.train.runs_dir) / run.name
    fps = run_fingerprints(run, reader, cfg.train.seed) if reader is not None else None
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    ckpt = _checkpoint_meta(run_dir)
    ckpt_step = ckpt["trainer"]["step"] if ckpt else None
    out = {"run": run.name, "type": run.type, "dir": str(run_dir), "status": "not started", "step": 0,
           "total_steps": cfg.train.tokens // cfg.train.batch_size, "l0": None, "ev": None,
           "seconds": None, "checkpoint_step": ckpt_step, "message": ""}
    if summary is not None and (fps is None or summary.get("fingerprint") in fps):
        last = summary.get("final") or {}
        out.update(status=summary.get("status"), step=summary.get("steps"), seconds=summary.get("seconds"),
                   message=summary.get("message", ""))
    elif ckpt is not None and (fps is None or ckpt.get("fingerprint") in fps):
        last = ckpt["trainer"].get("last") or {}
        out.update(status="partial", step=ckpt_step, seconds=ckpt.get("seconds"))
    else:
        last = {}
        if summary is not None or ckpt is not None:
            out.update(status="stale", message="made with other settings or data; `pipe train` starts it again")
    out.update(l0=last.get("l0"), ev=last.get("ev_batch"))
    return out
