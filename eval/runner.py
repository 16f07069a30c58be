"""`pipe eval`: every eval family for every trained run, from one store and one model load.

``evaluate`` reads top to bottom: load the runs -> load the model once -> each family of the table
(eval/families.py: core, conditioning, unlearning, sparse probing, TPP, SCR, absorption, in that
order) measures every run and returns its report.json sections, which go into the run's entry ->
report.json / report.md / plots (eval/report.py). Only ``evaluate`` puts the families' results
together; what they share (the feature activity, the timings) is the ``EvalContext``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from orthosae.common import events
from orthosae.common.config import Config, ConfigError
from orthosae.common.model import load_configured, pick_device
from orthosae.common.progress import progress
from orthosae.common.store import StoreError, open_store_for
from orthosae.eval import families
from orthosae.eval.aggregate import IncompleteConditionError
from orthosae.eval.family import EvalContext, LoadedRun, corpora_of, reference_entry
from orthosae.eval.report import write_report
from orthosae.train.export import load_sae
from orthosae.train.verify import read_summary, require_intact_export


def load_runs(cfg: Config, run_names: list[str] | None = None, device: torch.device | str = "cpu") -> list[LoadedRun]:
    """The config's trained runs, their SAEs on `device`. A failed run stops the eval, naming it:
    leaving it out would pair its condition's other seeds around a missing one."""
    summaries = []
    for run in [cfg.run(n) for n in run_names] if run_names else cfg.runs:
        run_dir = Path(cfg.train.runs_dir) / run.name
        if not (run_dir / "summary.json").exists():
            raise StoreError(f"{run_dir}: run {run.name!r} is not trained yet (run `pipe train`)")
        summaries.append((run, run_dir, read_summary(run_dir)))
    for run, run_dir, summary in summaries:  # every status before any SAE loads
        if summary.get("status") == "failed":
            raise IncompleteConditionError(
                f"{run_dir}: run {run.name!r} failed in training ({summary.get('message') or summary.get('reason')}); "
                f"its condition cannot be paired around it: retrain it or remove it from [[runs]] (or its seed)"
            )
    out = []
    for run, run_dir, summary in summaries:
        require_intact_export(run_dir, summary)  # digests too: a swapped file loads, but is not this run
        sae, sae_cfg = load_sae(run_dir, device=device)
        out.append(
            LoadedRun(run=run, dir=run_dir, sae=sae.eval().requires_grad_(False), sae_cfg=sae_cfg, summary=summary)
        )
    if not out:
        raise StoreError(f"{cfg.train.runs_dir}: no trained run to evaluate")
    return out


def measure(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Run -> its report.json entry: its summary and cfg.json, then each family's sections."""
    entries = {r.name: {"summary": r.summary, "cfg": r.sae_cfg} for r in runs}
    for family in (f for f in families.FAMILIES.values() if f.enabled(ctx.cfg)):
        for name, sections in family.measure(ctx, runs).items():
            entries[name].update(sections)
    return entries


def evaluate(cfg: Config, *, run_names: list[str] | None = None, show_progress: bool = True) -> Path:
    events.set_stage("eval")
    reader = open_store_for(cfg)
    runs = load_runs(cfg, run_names, device=pick_device(cfg.model.device))  # on the model's device
    if not corpora_of(cfg, "heldout"):
        raise ConfigError(f'{cfg.path}: [corpora]: eval needs a corpus with split = "heldout"')
    with progress("item", disable=not show_progress) as bar:
        t = time.perf_counter()
        lm = load_configured(cfg.model)
        ctx = EvalContext(cfg=cfg, reader=reader, lm=lm, bar=bar, timings={"model_load": time.perf_counter() - t})
        entries = measure(ctx, runs)
    quality = families.quality_sections()
    references = {name: reference_entry(ref, entries.get(ref.of), quality) for name, ref in ctx.references.items()}
    out_dir = Path(cfg.eval.reports_dir) / cfg.eval.name
    write_report(
        out_dir,
        cfg,
        reader,
        entries,
        ctx.timings,
        frequencies=ctx.frequencies,
        references=references,
        spread=ctx.spread,
    )
    events.emit("stage_done", report=str(out_dir / "report.md"), runs=[r.name for r in runs])
    return out_dir
