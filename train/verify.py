"""Run folders checked and mended: `pipe verify` (and `--repair`), `pipe status`, `pipe train`, `pipe eval`.

What a run folder holds and how each part is checked:

- the final export (``sae_weights.safetensors``, ``cfg.json`` and any other file the export wrote):
  every file against the sha256 in ``digests.json`` (written last, also copied into
  ``summary.json``), ``cfg.json`` readable with ``d_in`` / ``d_sae``, the weights' header
  readable and its tensor shapes those of the cfg;
- ``summary.json``: readable JSON;
- each checkpoint (``checkpoint/``, ``checkpoint.prev/``): its files against its ``digests.json``.

A damaged export is rewritten from the run's final checkpoint when that checkpoint is intact and of
the run's current settings (``repair_export``): weights and cfg come out bit-identical, since the
export is a pure function of the checkpointed SAE and the settings. A damaged checkpoint cannot be
mended: training falls back to the previous one, and ``pipe train --run NAME --force`` restarts a
run with nothing intact left.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from safetensors import safe_open

from orthosae.common.config import Config, RunConfig
from orthosae.common.errors import RunError, one_line
from orthosae.train import digests
from orthosae.train.checkpoint import NoIntactCheckpoint, candidates, check_folder, load_latest
from orthosae.train.export import CFG_FILENAME, WEIGHTS_FILENAME
from orthosae.train.fingerprint import run_fingerprints

SUMMARY = "summary.json"
FINISHED = ("complete", "early_stopped")


def run_dir_of(cfg: Config, run: RunConfig) -> Path:
    return Path(cfg.train.runs_dir) / run.name


def restart_command(cfg: Config, run_name: str) -> str:
    """The command that trains one run again from step 0, whatever its folder holds."""
    config = [] if str(cfg.path) == "pipeline.toml" else ["--config", str(cfg.path)]
    return shlex.join(["pipe", *config, "train", "--run", run_name, "--force"])


def load_summary(run_dir: Path) -> tuple[dict | None, list[tuple[str, str]]]:
    """A run's ``summary.json`` (None when it has none or it does not read) and (path, what is wrong)."""
    path = run_dir / SUMMARY
    if not path.exists():
        return None, []
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary, []
    except (ValueError, UnicodeDecodeError) as e:
        return None, [(str(path), f"unreadable ({type(e).__name__}: {one_line(e)[:120]})")]


def read_summary(run_dir: Path) -> dict | None:
    """A run's ``summary.json`` (None when it has none); ``RunError`` naming it when it does not read."""
    summary, damage = load_summary(run_dir)
    if damage:
        path, what = damage[0]
        raise RunError(f"{path}: {what}; `pipe verify --repair` rewrites it from the run's final checkpoint")
    return summary


def _expected_shapes(cfg: dict) -> dict[str, tuple]:
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    shapes = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
        "groups": (d_sae,),
        "tau": (),
    }
    if "n_groups" in cfg:
        shapes["group_bias"] = (int(cfg["n_groups"]), d_in)
    return shapes


def export_problems(run_dir: Path, summary: dict | None = None, *, full: bool = True) -> list[tuple[str, str]]:
    """(path, what is wrong) for the run's final export: digests (sizes only unless ``full``), cfg,
    and (``full``) the weights' header and shapes against the cfg."""
    problems: list[tuple[str, str]] = []
    try:
        files = digests.read(run_dir)
    except ValueError as e:
        problems.append((str(run_dir / digests.DIGESTS), str(e).rsplit(": ", 1)[-1]))
        files = None
    copy = summary.get("digests") if summary is not None else None  # the copy summary.json carries
    if files is None and copy is not None:
        if not (run_dir / digests.DIGESTS).exists() and (run_dir / WEIGHTS_FILENAME).exists():
            problems.append((str(run_dir / digests.DIGESTS), "missing (summary.json holds a copy)"))
        files = copy
    elif files is not None and copy is not None and files != copy:  # one of the two was changed: trust
        problems.append(
            (str(run_dir / digests.DIGESTS), "differs from the copy in summary.json (damaged or replaced)")
        )  # the copy only when it matches the files
        files = copy
    if files is not None:
        problems += digests.check(run_dir, files, full=full)
    damaged = {p for p, _ in problems}
    cfg_path, w_path = run_dir / CFG_FILENAME, run_dir / WEIGHTS_FILENAME
    for path in (cfg_path, w_path):
        if not path.is_file() and str(path) not in damaged:
            problems.append((str(path), "missing"))
            damaged.add(str(path))
    if str(cfg_path) in damaged:
        return problems
    try:
        cfg = json.loads(cfg_path.read_text())
        shapes = _expected_shapes(cfg)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return problems + [(str(cfg_path), f"unreadable ({type(e).__name__}: {one_line(e)[:120]})")]
    if not full or str(w_path) in damaged:
        return problems
    try:
        with safe_open(str(w_path), "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad header
        return problems + [(str(w_path), f"unreadable ({type(e).__name__}: {one_line(e)[:120]})")]
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if name not in found:
            problems.append((str(w_path), f"has no {name}"))
    for name, shape in found.items():
        if name in shapes and shape != shapes[name]:
            problems.append((str(w_path), f"{name} has shape {list(shape)}, cfg.json says {list(shapes[name])}"))
    return problems


def require_intact_export(run_dir: Path, summary: dict | None = None) -> None:
    """``RunError`` naming the first damaged export file (and what mends it) unless the export is intact."""
    damage = export_problems(run_dir, summary)
    if damage:
        path, what = damage[0]
        more = f" (+{len(damage) - 1} more)" if len(damage) > 1 else ""
        raise RunError(
            f"{path}: {what}{more}; `pipe verify --repair` rewrites the export from the run's final checkpoint"
        )


def checkpoint_problems(run_dir: Path, *, full: bool = True) -> list[tuple[str, str]]:
    """(path, what is wrong) for each of the run's checkpoint folders."""
    return [p for folder in candidates(run_dir) for p in check_folder(folder, full=full)]


def final_checkpoint(run_dir: Path, fingerprints: tuple[str, ...], total_steps: int):
    """The run's newest intact checkpoint if it holds the finished run of these settings (any of the
    fingerprints they are known by), else None."""
    try:
        loaded = load_latest(run_dir)
    except NoIntactCheckpoint:
        return None
    if loaded is None or loaded.state.get("fingerprint") not in fingerprints:
        return None
    trainer = loaded.state["trainer"]
    if trainer["status"] in FINISHED or (trainer["status"] == "running" and trainer["step"] >= total_steps):
        return loaded
    return None


def check_run(cfg: Config, run: RunConfig, reader) -> dict:
    """One run's folder checked: ``{"run", "dir", "state", "problems": [{"file", "problem", "part"}],
    "repair"}``. ``repair`` says what ``train.runner.repair_run`` would do (None: nothing it can do, or nothing to do)."""
    run_dir = run_dir_of(cfg, run)
    out = {"run": run.name, "dir": str(run_dir), "state": "not started", "problems": [], "repair": None}
    if not run_dir.exists():
        return out

    def add(part: str, found: list[tuple[str, str]]) -> None:
        out["problems"] += [{"file": p, "problem": what, "part": part} for p, what in found]

    summary, damage = load_summary(run_dir)
    add("summary", damage)
    add("checkpoint", checkpoint_problems(run_dir))
    finished = summary is not None and summary.get("status") in FINISHED
    if finished or (damage and (run_dir / WEIGHTS_FILENAME).exists()):  # a summary that does not read
        add("export", export_problems(run_dir, summary))
    out["state"] = (
        summary.get("status")
        if summary is not None
        else "damaged"
        if any(p["part"] == "summary" for p in out["problems"])
        else "partial"
        if candidates(run_dir)
        else "not started"
    )
    fp = run_fingerprints(run, reader, cfg.train.seed) if reader is not None else None
    if summary is not None and fp is not None and summary.get("fingerprint") not in fp:
        out["state"] = "stale"
    needs_rewrite = any(p["part"] in ("export", "summary") for p in out["problems"])
    if needs_rewrite and fp is not None:
        ckpt = final_checkpoint(run_dir, fp, cfg.train.tokens // cfg.train.batch_size)
        if ckpt is not None and (summary is None or summary.get("fingerprint") in fp):
            out["repair"] = (
                f"rewrite the export and summary.json from {ckpt.folder.name}/ (step {ckpt.state['trainer']['step']})"
            )
    damaged = [f for f in candidates(run_dir) if check_folder(f)]
    if damaged and not needs_rewrite and out["state"] != "stale":
        intact = [f for f in candidates(run_dir) if f not in damaged]
        loaded = None if finished or not intact else load_latest(run_dir)
        if finished or loaded is not None:  # the export or an older checkpoint holds the run: drop the bad ones
            out["drop"] = [str(f) for f in damaged]
            out["repair"] = (
                f"delete the damaged {', '.join(f.name + '/' for f in damaged)} ("
                + (
                    "the export is intact"
                    if finished
                    else f"`pipe train` resumes from the intact "
                    f"{loaded.folder.name}/ (step {loaded.state['trainer']['step']})"
                )
                + ")"
            )
    if out["problems"] and out["repair"] is None:
        out["advice"] = _advice(cfg, run, run_dir, needs_rewrite, finished)
    return out


def _advice(cfg: Config, run: RunConfig, run_dir: Path, needs_rewrite: bool, finished: bool) -> str:
    """What to do about damage ``train.runner.repair_run`` cannot mend."""
    restart = f"`{restart_command(cfg, run.name)}` trains it again"
    if needs_rewrite:
        return f"no intact final checkpoint of these settings to rewrite it from; {restart}"
    if finished:
        return "the export is intact; a damaged checkpoint only matters to a later repair"
    try:
        loaded = load_latest(run_dir)
    except NoIntactCheckpoint:
        loaded = None
    if loaded is None:
        return f"no intact checkpoint left to resume from; {restart}"
    return f"`pipe train` resumes from the intact {loaded.folder.name}/ (step {loaded.state['trainer']['step']})"
