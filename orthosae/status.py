"""Where each run of a config stands, read from its folder alone (`pipe status`): nothing is loaded
but JSON, so it is instant on a sweep that is training elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

from orthosae.common.config import Config, RunConfig
from orthosae.common.store import StoreReader
from orthosae.train.checkpoint import STATE_JSON, candidates, check_folder
from orthosae.train.fingerprint import run_fingerprints
from orthosae.train.verify import FINISHED, export_problems, load_summary


def _checkpoint_meta(run_dir: Path) -> tuple[dict | None, list[tuple[str, str]]]:
    """The JSON half of the newest checkpoint that looks intact (sizes as recorded; sha256 is
    `pipe verify`'s): step, last log record, seconds; tensors are not read. This is the checkpoint
    `pipe train` resumes from, as far as sizes tell. Also (path, what is wrong) of newer ones skipped."""
    skipped: list[tuple[str, str]] = []
    for folder in candidates(run_dir):
        problems = check_folder(folder, full=False)
        if not problems:
            try:
                return json.loads((folder / STATE_JSON).read_text()), skipped
            except (ValueError, UnicodeDecodeError) as e:
                problems = [(str(folder / STATE_JSON), f"unreadable ({type(e).__name__})")]
        skipped += problems
    return None, skipped


def _damage(run_dir: Path, summary: dict | None, summary_damage: list) -> list[tuple[str, str]]:
    """What `pipe status` can see is wrong without hashing: an unreadable summary, and for a finished
    run export files missing, of another size than recorded, or a cfg.json that does not read."""
    if summary_damage:
        return summary_damage
    if summary is not None and summary.get("status") in FINISHED:
        return export_problems(run_dir, summary, full=False)
    return []


def run_status(cfg: Config, run: RunConfig, reader: StoreReader | None) -> dict:
    """status: complete | early_stopped | failed (summary.json of the current settings and data),
    damaged (summary.json unreadable, or an export file missing, truncated or cfg.json unreadable),
    partial (a checkpoint, not finished: `pipe train` resumes it), stale (made with other settings
    or data: `pipe train` starts it again), not started. ``reader`` None: the store is missing, so
    the fingerprint cannot be checked and what is on disk is shown as it is."""
    run_dir = Path(cfg.train.runs_dir) / run.name
    fps = run_fingerprints(run, reader, cfg.train.seed) if reader is not None else None
    summary, summary_damage = load_summary(run_dir)
    damage = _damage(run_dir, summary, summary_damage)
    ckpt, ckpt_damage = _checkpoint_meta(run_dir)
    ckpt_step = ckpt["trainer"]["step"] if ckpt else None
    out = {
        "run": run.name,
        "type": run.type,
        "dir": str(run_dir),
        "status": "not started",
        "step": 0,
        "total_steps": cfg.train.tokens // cfg.train.batch_size,
        "l0": None,
        "ev": None,
        "seconds": None,
        "checkpoint_step": ckpt_step,
        "message": "",
    }
    if summary is not None and (fps is None or summary.get("fingerprint") in fps):
        last = summary.get("final") or {}
        out.update(
            status=summary.get("status"),
            step=summary.get("steps"),
            seconds=summary.get("seconds"),
            message=summary.get("message", ""),
        )
        if ckpt_damage and summary.get("status") in FINISHED:  # the export is what counts; say it all the same
            path, what = ckpt_damage[0]
            out["message"] = (
                f"{path}: {what}; the export is intact, `pipe verify --repair` deletes the damaged checkpoint"
            )
    elif ckpt is not None and (fps is None or ckpt.get("fingerprint") in fps):
        last = ckpt["trainer"].get("last") or {}
        out.update(status="partial", step=ckpt_step, seconds=ckpt.get("seconds"))
        if ckpt_damage:
            path, what = ckpt_damage[0]
            out["message"] = f"{path}: {what}; `pipe train` resumes from step {ckpt_step}"
    else:
        last = {}
        if summary is not None or ckpt is not None:
            out.update(status="stale", message="made with other settings or data; `pipe train` starts it again")
    out.update(l0=last.get("l0"), ev=last.get("ev_batch"))
    if not damage and ckpt is None and ckpt_damage and out["status"] in ("not started", "stale"):
        damage = ckpt_damage  # checkpoints, none intact: not a run that never started
    if damage:
        path, what = damage[0]
        out.update(
            status="damaged",
            message=f"{path}: {what}; `pipe verify` names every damaged file, `pipe verify --repair` mends what it can",
        )
    return out
