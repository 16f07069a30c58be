"""`[log] tracker = "wandb" | "trackio"`: the pipeline's events, mirrored to a run tracker.

One tracked run per SAE run (named as the run, grouped by the config file's name, as
dictionary_learning groups a sweep), fed from what the pipeline already emits (common/events.py):

- ``run_start`` (observed when a run's Trainer is built): the run's whole config as the tracked
  run's config (every [train] / [train.ortho] setting under its pipeline.toml name, plus the
  store, model, layer, config file and `--set` overrides);
- ``train_log``: each training log record as it is written to log.jsonl (``train/<key>`` at its step);
- ``run_done``: status, steps, seconds into the summary, and the tracked run ends;
- harvest ``progress`` / ``stage_done``: a tracked run ``harvest`` (percent, rows, rate);
- eval ``stage_done``: each run's figures from report.json (``eval/<family>/<metric>``) into the
  summary of the same tracked run that trained those weights (its id is the run's fingerprint).

The backends import lazily: the default (``"none"``) needs neither package. wandb: set
``WANDB_MODE=offline`` without network (``wandb sync`` later), files under ``WANDB_DIR``. trackio:
local SQLite under ``TRACKIO_DIR`` (``trackio show`` opens the dashboard).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from pathlib import Path

EXTRAS = {"wandb": "wandb", "trackio": "trackio"}


def _scalars(d: dict, prefix: str) -> dict:
    """Numbers of a nested dict, flattened to ``prefix/key/sub``; lists of numbers as ``key/i``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}/{k}"
        if isinstance(v, bool):
            out[key] = int(v)
        elif isinstance(v, (int, float)):
            if not (isinstance(v, float) and not math.isfinite(v)):
                out[key] = v
        elif isinstance(v, dict):
            out.update(_scalars(v, key))
        elif (
            isinstance(v, list)
            and v
            and len(v) <= 16
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            out.update({f"{key}/{i}": x for i, x in enumerate(v) if math.isfinite(x)})
    return out


def tracked_id(group: str, name: str, fingerprint: str) -> str:
    """The tracked run's id: the same for the training and the eval of the same weights."""
    return hashlib.sha256(f"{group}/{name}/{fingerprint}".encode()).hexdigest()[:16]


class _Backend:
    """What the trackers do alike: the package imported on first use (the default needs neither),
    a logged step, a finished run; each names itself and opens runs and summaries its own way."""

    name: str

    def __init__(self, project: str):
        self.lib, self.project = importlib.import_module(self.name), project

    def log(self, run, metrics: dict, step: int | None) -> None:
        run.log(metrics, step=step)

    def close(self, run) -> None:
        run.finish()


class _Wandb(_Backend):
    name = "wandb"

    def open(self, name: str, run_id: str, group: str, config: dict | None, job_type: str):
        return self.lib.init(
            project=self.project,
            name=name,
            id=run_id,
            group=group,
            job_type=job_type,
            config=config,
            resume="allow",
            reinit="create_new",
        )

    def summary(self, run, metrics: dict) -> None:
        run.summary.update(metrics)


class _Trackio(_Backend):
    name = "trackio"

    def open(self, name: str, run_id: str, group: str, config: dict | None, job_type: str):
        # trackio names runs (no separate id); a run trained again under a new fingerprint is a new name
        return self.lib.init(project=self.project, name=name, group=group, config=config, resume="allow", embed=False)

    def summary(self, run, metrics: dict) -> None:
        run.log(metrics)  # no summary table: the figures as one last logged step


class Tracker:
    """An events listener (``events.listen(tracker)``) that keeps one tracked run per SAE run."""

    def __init__(self, cfg, backend):
        self.cfg, self.backend, self.name = cfg, backend, f"tracker {backend.name}"
        self.group = Path(cfg.path).stem
        self.open: dict[str, object] = {}

    def _start(self, name: str, fingerprint: str, config: dict | None, job_type: str):
        if name not in self.open:
            self.open[name] = self.backend.open(
                name, tracked_id(self.group, name, fingerprint), self.group, config, job_type
            )
        return self.open[name]

    def _close(self, name: str) -> None:
        run = self.open.pop(name, None)
        if run is not None:
            self.backend.close(run)

    def __call__(self, rec: dict) -> None:
        event, stage = rec["event"], rec.get("stage")
        if event == "run_start":
            self._start(rec["run"], rec["fingerprint"], rec["config"], "train")
        elif event == "train_log" and rec["run"] in self.open:
            record = rec["record"]
            self.backend.log(
                self.open[rec["run"]],
                _scalars({k: v for k, v in record.items() if k != "step"}, "train"),
                record.get("step"),
            )
        elif event == "run_done" and rec["run"] in self.open:
            self.backend.summary(
                self.open[rec["run"]],
                {"status": rec.get("status"), "steps": rec.get("step"), "seconds": rec.get("seconds")},
            )
            self._close(rec["run"])
        elif event == "progress" and stage == "harvest" and int(os.environ.get("RANK", 0)) == 0:
            run = self._start("harvest", self.cfg.harvest.store, self._harvest_config(), "harvest")
            self.backend.log(
                run,
                {
                    f"harvest/{k}": rec[k]
                    for k in ("percent", "done", "rate", "elapsed_s")
                    if isinstance(rec.get(k), (int, float))
                },
                None,
            )
        elif event == "stage_done" and stage == "harvest" and "harvest" in self.open:
            self.backend.summary(
                self.open["harvest"], {"harvest/rows": rec.get("rows"), "harvest/seconds": rec.get("seconds")}
            )
            self._close("harvest")
        elif event == "stage_done" and stage == "eval":
            self._report(Path(rec["report"]).with_suffix(".json"))
        elif event in ("done", "failed", "preempted"):
            for name in list(self.open):
                self._close(name)

    def _harvest_config(self) -> dict:
        from dataclasses import asdict

        return {
            "model": asdict(self.cfg.model),
            "harvest": asdict(self.cfg.harvest),
            "config": str(self.cfg.path),
            "sets": list(self.cfg.sets),
        }

    def _report(self, path: Path) -> None:
        """Each run's report figures into the tracked run that trained those weights."""
        report = json.loads(path.read_text())
        for name, r in report.get("runs", {}).items():
            fingerprint = r.get("summary", {}).get("fingerprint") or ""
            figures = {}
            for family in ("reconstruction", "downstream", "unlearning", "conditioning"):
                figures.update(_scalars(r.get(family) or {}, f"eval/{family}"))
            cfg_json = r.get("cfg") or {}
            # the config again (the training's, from its cfg.json): a resumed trackio run keeps only what init gets
            config = {
                **cfg_json.get("orthosae", {}),
                "fingerprint": fingerprint,
                "store": cfg_json.get("store"),
                "model": cfg_json.get("model_name"),
                "layer": cfg_json.get("hook_layer"),
                "hook": self.cfg.harvest.hook,
                "config": str(self.cfg.path),
                "sets": cfg_json.get("sets", []),
            }
            run = self._start(name, fingerprint, config, "train")
            self.backend.summary(run, figures)
            self._close(name)


def run_config(cfg, run, fingerprint: str) -> dict:
    """What a tracked run's config holds: the run's settings and where its data came from."""
    return {
        **run.to_dict(),
        "fingerprint": fingerprint,
        "store": cfg.harvest.store,
        "model": cfg.model.id,
        "layer": cfg.harvest.layer,
        "hook": cfg.harvest.hook,
        "config": str(cfg.path),
        "sets": list(cfg.sets),
    }


def attach(cfg) -> Tracker | None:
    """The config's tracker, listening to this invocation's events (None for ``tracker = "none"``)."""
    if cfg.log.tracker == "none":
        return None
    from orthosae.common import events

    backend = {"wandb": _Wandb, "trackio": _Trackio}[cfg.log.tracker](cfg.log.tracker_project)
    tracker = Tracker(cfg, backend)
    events.listen(tracker)
    return tracker
