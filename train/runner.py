"""`pipe train`: one pass over the cached activations feeds every run of the sweep.

Reads top to bottom: open the store and check it matches the config, take this process's share of
the runs, skip runs already done, build (or resume) one ``Trainer`` per run, then for each batch of
the shared stream: each trainer takes a step, logs, checkpoints every ``checkpoint_every`` steps;
finally each run is exported. What one step does is ``train/trainer.py``; the loss is
``train/sae/base.py``.

On SIGTERM / SIGINT (under the CLI) the step in hand ends, every unfinished run is checkpointed
as a periodic checkpoint would be, and ``Preempted`` is raised (exit 75): a rerun resumes to
weights bit-identical to an uninterrupted run.

Under ``torchrun`` / ``accelerate launch`` (N processes), rank r trains runs r, r+N, … of the
selection and streams the store itself: no collective is needed, and since a run depends on the
data order and its own settings only, every run's weights equal a one-process ``pipe train``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from orthosae.common import events, preempt
from orthosae.common.config import Config, ConfigError, RunConfig
from orthosae.common.errors import RunError, naming, os_error_line
from orthosae.common.locks import FolderLock
from orthosae.common.model import pick_device
from orthosae.common.progress import console, progress
from orthosae.common.store import StoreReader, open_store_for
from orthosae.common.tracker import run_config
from orthosae.train import digests
from orthosae.train.checkpoint import LOG, Loaded, NoIntactCheckpoint, load_latest, save_checkpoint
from orthosae.train.export import sae_lens_version, save_sae
from orthosae.train.fingerprint import run_fingerprint, run_fingerprints
from orthosae.train.sae import make_sae
from orthosae.train.sae_lens_names import sae_lens_metadata
from orthosae.train.sparsity import feature_density, save_sparsity, sparsity_rows
from orthosae.train.stream import ActivationStream, estimate_scale
from orthosae.train.trainer import Trainer
from orthosae.train.verify import (
    FINISHED,
    check_run,
    export_problems,
    final_checkpoint,
    load_summary,
    restart_command,
    run_dir_of,
)


def train_corpora(cfg: Config) -> list[str]:
    """The store corpora training reads (split = "train")."""
    return [name for name, c in cfg.corpora.items() if c.split == "train"]


def _finished_run(cfg: Config, run: RunConfig, reader: StoreReader, fingerprints: tuple[str, ...]) -> dict | None:
    """The summary of a run finished with these settings whose export is intact, rewriting a damaged
    export (or summary) from the run's final checkpoint with a line saying so; None: train it.
    ``RunError`` (naming the file and the restart command) when it is damaged past that."""
    run_dir = _run_dir(cfg, run)
    summary, damage = load_summary(run_dir)
    if summary is not None:
        if summary.get("fingerprint") not in fingerprints or summary.get("status") not in FINISHED:
            return None
        damage = export_problems(run_dir, summary)
    if not damage:
        return summary
    total = cfg.train.tokens // cfg.train.batch_size
    ckpt = final_checkpoint(run_dir, fingerprints, total)
    if ckpt is None:
        if summary is None and (run_dir / "checkpoint").exists():
            return None  # an unfinished run's summary: training resumes from its checkpoint
        path, what = damage[0]
        raise RunError(
            f"{path}: {what}; no intact final checkpoint in {run_dir} to rewrite it from: "
            f"`{restart_command(cfg, run.name)}` trains the run again"
        )
    path, what = damage[0]
    more = f" (+{len(damage) - 1} more)" if len(damage) > 1 else ""
    console.print(
        f"[yellow]{run.name}: {path}: {what}{more}; rewriting the export from "
        f"{ckpt.folder.name}/ (step {ckpt.state['trainer']['step']})[/]",
        highlight=False,
    )
    return rewrite_export(cfg, run, reader, ckpt)


def rewrite_export(cfg: Config, run: RunConfig, reader: StoreReader, ckpt: Loaded) -> dict:
    """Export a finished run again from its final checkpoint (`pipe verify --repair`, `pipe train`):
    the same SAE, settings and recorded export metadata give the same files, bit for bit, and the
    log comes back from the checkpoint's copy of it."""
    state = ckpt.state
    _restore_log(ckpt.folder, _run_dir(cfg, run))
    steps = cfg.train.tokens // cfg.train.batch_size
    trainer = Trainer(run, make_sae(run, reader.d_model, device=pick_device(cfg.train.device)), steps)
    trainer.load_state_dict(state["trainer"])
    if trainer.status == "running":  # the periodic checkpoint at the last step, before the final one
        trainer.status = "complete"
    corpora = train_corpora(cfg)
    return _finish(
        cfg,
        trainer,
        reader,
        float(state["scale"]),
        state["fingerprint"],
        float(state.get("seconds", 0.0)),
        lambda: sparsity_rows(reader, corpora),
        state.get("export"),
    )


def _restore_log(folder: Path, run_dir: Path) -> bool:
    """The run's log.jsonl as the checkpoint in ``folder`` copied it (False: that checkpoint has no
    copy, written before checkpoints held one)."""
    saved, log = folder / LOG, run_dir / "log.jsonl"
    if not saved.is_file():
        return False
    data = saved.read_bytes()
    if not log.is_file() or log.read_bytes() != data:
        digests.write_atomic(log, lambda p: p.write_bytes(data))
    return True


def _run_dir(cfg: Config, run: RunConfig) -> Path:
    return Path(cfg.train.runs_dir) / run.name


def _checkpoint(
    cfg: Config, trainer: Trainer, fingerprint: str, scale: float, seconds: float, reader: StoreReader
) -> None:
    """``seconds``: the run's training time so far, over every invocation (`pipe status` shows it).
    The checkpoint also holds what the export would write besides the weights (``export``) and a
    copy of the log, so a repair from it restores both byte for byte."""
    run_dir = _run_dir(cfg, trainer.run)
    save_checkpoint(
        run_dir,
        {
            "fingerprint": fingerprint,
            "scale": scale,
            "seconds": round(seconds, 2),
            "stream": {"batches_served": trainer.step},
            "trainer": trainer.state_dict(),
            "export": _export_meta(cfg, trainer, reader),
        },
        log=run_dir / "log.jsonl",
    )


def _export_meta(cfg: Config, trainer: Trainer, reader: StoreReader) -> dict:
    """cfg.json's inputs other than the SAE: extra keys, the sae-lens stamp, the run's settings."""
    run = trainer.run
    return {
        "extra_cfg": {
            **sae_lens_metadata(reader.meta.get("model_id"), cfg.harvest.layer, cfg.harvest.hook),
            "context_size": cfg.harvest.context_length,
            "model_source": reader.meta.get("model_id"),  # what orthosae loaded; model_name is its Hub name
            "store": cfg.harvest.store,
            "run_name": run.name,
            "run_type": run.type,
            "steps": trainer.step,
            "prepend_bos": True,
            "exclude_special_tokens": True,
            **({"sets": list(cfg.sets)} if cfg.sets else {}),
        },  # `pipe --set` overrides it trained under
        "stamp": sae_lens_version(),
        "run": run.to_dict(),
    }


def _finish(
    cfg: Config,
    trainer: Trainer,
    reader: StoreReader,
    scale: float,
    fingerprint: str,
    seconds: float,
    density_rows,
    export: dict | None = None,
) -> dict:
    """Export the SAE (SAELens layout, with sparsity.safetensors measured on ``density_rows()``)
    and write the run's summary. ``export``: the recorded `_export_meta` (a repair), else today's."""
    run, run_dir = trainer.run, _run_dir(cfg, trainer.run)
    files = None
    export = export or _export_meta(cfg, trainer, reader)
    try:
        if trainer.status != "failed":
            save_sae(
                trainer.sae,
                run_dir,
                scale=scale,
                extra_cfg=dict(export["extra_cfg"]),
                stamp=export["stamp"],
                run_dict=export["run"],
            )
            save_sparsity(run_dir, feature_density(trainer.sae, density_rows(), scale))
            files = digests.record(run_dir)  # after every export file, whatever the export wrote
        summary = {
            "run": run.name,
            "type": run.type,
            "status": trainer.status,
            "message": trainer.message,
            "steps": trainer.step,
            "seconds": round(seconds, 2),
            "fingerprint": fingerprint,
            "activation_scale": scale,
            "store": cfg.harvest.store,
            "config": str(cfg.path),
            "final": trainer.last,
            **({"digests": files} if files is not None else {}),
        }
        text = json.dumps(summary, indent=2)
        digests.write_atomic(run_dir / "summary.json", lambda p: p.write_text(text))
    except OSError as e:
        raise RunError(
            f"{os_error_line(e)}; {run.name}'s final checkpoint is kept: rerun `pipe train` to export it"
        ) from None
    events.emit(
        "run_done",
        run=run.name,
        status=trainer.status,
        step=trainer.step,
        l0=trainer.last.get("l0"),
        ev=trainer.last.get("ev_batch"),
        seconds=round(seconds, 2),
        **({"reason": trainer.message} if trainer.status == "failed" else {}),
    )
    return summary


def process_share() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment ((0, 1, 0) alone)."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def train(
    cfg: Config, *, run_names: list[str] | None = None, force: bool = False, show_progress: bool = True
) -> list[dict]:
    """Train the config's runs (or `run_names`) in one pass; returns their summaries (this
    process's share of them under a multi-process launcher)."""
    events.set_stage("train")
    for name in run_names or []:
        cfg.run(name)  # an unknown name fails before any layer trains
    summaries = []
    for view in cfg.layer_views():  # several harvested layers: one pass over each layer's store
        names = [n for n in run_names if n in {r.name for r in view.runs}] if run_names else None
        if (run_names and not names) or not view.runs:
            continue
        summaries += _train(view, run_names=names, force=force, show_progress=show_progress)
    events.emit("stage_done", runs={s["run"]: s["status"] for s in summaries})
    return summaries


def _train(cfg: Config, *, run_names: list[str] | None, force: bool, show_progress: bool) -> list[dict]:
    selected = [cfg.run(n) for n in run_names] if run_names else list(cfg.runs)
    rank, world, local_rank = process_share()
    selected = selected[rank::world]
    reader = open_store_for(cfg)
    corpora = train_corpora(cfg)
    device = pick_device(cfg.train.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # one GPU per process
    steps = cfg.train.tokens // cfg.train.batch_size
    if steps < 1:
        raise ConfigError(
            f"{cfg.path}: [train] tokens: {cfg.train.tokens} is less than one batch ({cfg.train.batch_size})"
        )
    with contextlib.ExitStack() as held:
        for run in selected:  # one writer per run folder: a second `pipe train` stops here, one line
            held.enter_context(FolderLock(_run_dir(cfg, run), f"{_run_dir(cfg, run)}"))
        return _train_locked(cfg, selected, reader, corpora, device, steps, force, show_progress, rank, world)


def _train_locked(
    cfg: Config,
    selected: list[RunConfig],
    reader: StoreReader,
    corpora: list[str],
    device,
    steps: int,
    force: bool,
    show_progress: bool,
    rank: int,
    world: int,
) -> list[dict]:
    todo, summaries = [], []
    for run in selected:
        fp = run_fingerprint(run, reader, cfg.train.seed)
        done = None if force else _finished_run(cfg, run, reader, run_fingerprints(run, reader, cfg.train.seed))
        if done is not None:
            console.print(f"[green]{run.name}[/]: complete, left alone ({_run_dir(cfg, run)})")
            summaries.append(done)
            continue
        todo.append((run, fp))
    if not todo:
        return summaries

    # Scale and b_dec init come from the data, once per sweep; a resumed run restores its own scale.
    scale = estimate_scale(reader, corpora, seed=cfg.train.seed) if cfg.train.normalize else 1.0
    mean = torch.cat([reader.read_rows(c, 0, min(4096, reader.corpora()[c].n_rows)) for c in corpora]).mean(0) * scale
    # From here a signal only asks to stop: the step in hand ends, every run is checkpointed
    # (common/preempt.py); before, nothing is in hand and it stops at once.
    with preempt.deferred():
        return summaries + _train_loop(
            cfg,
            todo,
            reader,
            corpora,
            device,
            steps,
            scale,
            mean,
            force,
            show_progress,
            f" (process {rank} of {world})" if world > 1 else "",
        )


def _trim_log(path: Path, step: int) -> None:
    """Drop the log records past the checkpoint a run resumes from (written before a kill or a failed
    write): the rerun logs those steps again, so the log ends as an uninterrupted run's."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by the kill
    if keep != lines:
        text = "".join(keep)
        digests.write_atomic(path, lambda p: p.write_text(text))


def _resume_state(cfg: Config, run: RunConfig, run_dir: Path) -> Loaded | None:
    """The state of the run's newest intact checkpoint (a line says when a damaged newer one was
    passed over); ``RunError`` naming the damaged files and the restart command when none is intact."""
    try:
        loaded = load_latest(run_dir)
    except NoIntactCheckpoint as e:
        raise RunError(
            f"{e}; no intact checkpoint of {run.name} left to resume from: "
            f"`{restart_command(cfg, run.name)}` trains it again"
        ) from None
    if loaded is None:
        return None
    if loaded.skipped:
        path, what = loaded.skipped[0]
        console.print(
            f"[yellow]{run.name}: {path}: {what}; falling back to {loaded.folder.name}/, "
            f"resuming from step {loaded.state['trainer']['step']}[/]",
            highlight=False,
        )
    return loaded


def _run_stats(trainers: list[Trainer]) -> tuple[str, list[dict]]:
    """Each run's step, L0 and batch EV (the latest log record): live text and event fields."""
    runs = [{"run": t.run.name, "step": t.step, "l0": t.last.get("l0"), "ev": t.last.get("ev_batch")} for t in trainers]
    text = " | ".join(
        f"{r['run']} step {r['step']}"
        + (f" L0 {r['l0']:.1f} EV {r['ev']:.3f}" if r["l0"] is not None and r["ev"] is not None else "")
        for r in runs
    )
    return text, runs


def _train_loop(
    cfg: Config,
    todo: list,
    reader: StoreReader,
    corpora: list[str],
    device,
    steps: int,
    scale: float,
    mean,
    force: bool,
    show_progress: bool,
    share: str,
) -> list[dict]:
    """Build (or resume) one Trainer per run, stream the store through all of them, export them."""
    summaries, trainers, fingerprints, logs = [], [], {}, {}
    base_seconds, saved_step = {}, {}  # per run: training time and checkpoint step before this call
    for run, fp in todo:
        sae = make_sae(run, reader.d_model, device=device)
        sae.init_b_dec(mean.to(device))
        trainer = Trainer(run, sae, steps)
        run_dir = _run_dir(cfg, run)
        run_dir.mkdir(parents=True, exist_ok=True)
        loaded = None if force else _resume_state(cfg, run, run_dir)
        ckpt = None if loaded is None else loaded.state
        base_seconds[run.name] = 0.0
        if ckpt is not None and ckpt["fingerprint"] in run_fingerprints(run, reader, cfg.train.seed):
            trainer.load_state_dict(ckpt["trainer"])
            base_seconds[run.name] = float(ckpt.get("seconds", 0.0))
            saved_step[run.name] = trainer.step
            if not _restore_log(loaded.folder, run_dir):  # an older checkpoint without a log copy
                _trim_log(run_dir / "log.jsonl", trainer.step)
            console.print(f"{run.name}: resuming from step {trainer.step}")
        elif (run_dir / "log.jsonl").exists():
            (run_dir / "log.jsonl").unlink()  # a fresh start: the old log belongs to other weights
        trainers.append(trainer)
        fingerprints[run.name] = fp
        events.observe(
            "run_start", run=run.name, fingerprint=fp, step=trainer.step, config=run_config(cfg, run, fp)
        )  # for a run tracker (common/tracker.py)
        logs[run.name] = open(run_dir / "log.jsonl", "a")

    running = [t.step for t in trainers if t.running]
    start = min(running) if running else steps
    stream = ActivationStream(
        reader,
        corpora,
        batch_size=cfg.train.batch_size,
        buffer_rows=cfg.train.buffer_rows,
        seed=cfg.train.seed,
        mix=cfg.train.mix or None,
        heldout_rows=cfg.train.heldout_rows,
        device=device,
        scale=scale,
        total_batches=steps,
    )
    stream.load_state_dict({"batches_served": start})
    t0 = time.perf_counter()

    def checkpoint(t: Trainer) -> None:
        _checkpoint(
            cfg, t, fingerprints[t.run.name], scale, base_seconds[t.run.name] + time.perf_counter() - t0, reader
        )
        saved_step[t.run.name] = t.step

    console.print(
        f"training {len(trainers)} run(s) ({', '.join(t.run.name for t in trainers)}) on {device}{share}, "
        f"{steps} steps of {cfg.train.batch_size} rows from {cfg.harvest.store}"
    )
    stopped = False
    try:
        with progress("step", disable=not show_progress, extra="{task.fields[stats]}") as bar:
            text, runs = _run_stats(trainers)
            task = bar.add_task("train", total=steps, completed=start, stats=text, runs=runs)
            for step, (x, is_forget) in zip(range(start, steps), stream):
                for t in trainers:
                    if not t.running or t.step > step:  # done, or resumed ahead of the others
                        continue
                    record = t.train_step(x, is_forget)
                    if record is not None:
                        with naming(_run_dir(cfg, t.run) / "log.jsonl"):  # a full disk names the log
                            logs[t.run.name].write(json.dumps(record) + "\n")
                            logs[t.run.name].flush()
                        events.observe("train_log", run=t.run.name, record=record)
                    if t.status == "failed":
                        console.print(
                            f"[red]{t.run.name}: {t.message}; last good checkpoint kept in "
                            f"{_run_dir(cfg, t.run) / 'checkpoint'}[/]"
                        )
                    elif t.running and t.step % cfg.train.checkpoint_every == 0:
                        checkpoint(t)
                text, runs = _run_stats(trainers)
                bar.update(task, advance=1, stats=text, runs=runs)
                if not any(t.running for t in trainers):
                    break
                if preempt.requested():  # the step in hand is done: save below and stop
                    stopped = True
                    break
    finally:
        for log in logs.values():
            log.close()
    if stopped:
        saved = []
        for t in trainers:
            if t.running and saved_step.get(t.run.name) != t.step and t.check_finite():
                checkpoint(t)  # the same checkpoint a periodic save writes: resume is bitwise
            saved.append(f"{t.run.name} step {t.step}" + ("" if t.running else f" ({t.status})"))
    cached: list = []

    def density_rows():  # read once, shared by every run this sweep exports
        if not cached:
            cached.append(sparsity_rows(reader, corpora))
        return cached[0]

    for t in trainers:
        if t.running and not stopped:
            t.status = "complete"
        if t.running:
            continue  # preempted: checkpointed above, finished by the rerun
        if t.status != "failed":
            checkpoint(t)
        seconds = base_seconds[t.run.name] + time.perf_counter() - t0
        summaries.append(_finish(cfg, t, reader, scale, fingerprints[t.run.name], seconds, density_rows))
        colour = {"complete": "green", "early_stopped": "yellow", "failed": "red"}[t.status]
        console.print(
            f"[{colour}]{t.run.name}[/]: {t.status} at step {t.step}  "
            f"L0 {t.last.get('l0', float('nan')):.1f}  "
            f"EV (batch) {t.last.get('ev_batch', float('nan')):.3f}  -> {_run_dir(cfg, t.run)}"
            + (f"  ({t.message})" if t.message else ""),
            highlight=False,
        )
    if stopped:
        raise preempt.Preempted(f"checkpoints in {cfg.train.runs_dir}/: {', '.join(saved)} of {steps}")
    return summaries


def repair_run(cfg: Config, run: RunConfig, reader) -> str | None:
    """Rewrite a damaged export (and summary.json) from the run's final checkpoint; returns what was
    done, None when nothing could be."""
    result = check_run(cfg, run, reader)
    if result["repair"] is None:
        return None
    if result.get("drop"):  # checkpoint folders the tool wrote, damaged, and needed by nothing
        for folder in result["drop"]:
            shutil.rmtree(folder)
        return result["repair"]
    fp = run_fingerprints(run, reader, cfg.train.seed)
    ckpt = final_checkpoint(run_dir_of(cfg, run), fp, cfg.train.tokens // cfg.train.batch_size)
    rewrite_export(cfg, run, reader, ckpt)
    return result["repair"]
