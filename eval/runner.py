"""`pipe eval`: every metric family for every trained run, from one store and one model load.

Order: reconstruction on held-out cached rows (no model needed) -> conditioning of feature groups
-> the model is loaded once -> spliced CE/KL (one pass serves all runs) -> unlearning (the
SAE-independent baseline computed once) -> report.json / report.md / plots.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from common.config import Config, ConfigError
from common.corpora import load_mcq
from common.model import load_model
from common.progress import console, progress
from common.store import StoreError, StoreReader, open_store_for
from eval.conditioning import conditioning_report, training_curves
from eval.core import feature_frequencies, reconstruction_metrics
from eval.downstream import spliced_ce
from eval.report import write_report
from eval.unlearning import run_unlearning, unlearning_baseline
from train.export import load_sae
from train.sae.grouping import assign_groups, forget_share

ROW_BATCH = 4096


def _groups_by(cfg: Config, split: str, role: str | None = None) -> list[str]:
    return [n for n, c in cfg.corpora.items() if c.split == split and (role is None or c.role == role)]


def _rows(reader: StoreReader, names: list[str], n_rows: int) -> Iterator[torch.Tensor]:
    """Up to n_rows raw rows, shared across `names` in proportion to their size, in batches."""
    info = reader.groups()
    total = sum(info[n].n_rows for n in names)
    for name in names:
        take = min(info[name].n_rows, -(-n_rows * info[name].n_rows // total))
        for start in range(0, take, ROW_BATCH):
            yield reader.read_rows(name, start, min(start + ROW_BATCH, take))


def _contexts(reader: StoreReader, names: list[str], n: int, bos: int) -> torch.Tensor:
    info = reader.groups()
    per = max(1, -(-n // len(names)))
    return torch.cat([reader.contexts(name, 0, min(per, info[name].n_contexts), bos) for name in names])[:n]


def _load_runs(cfg: Config, run_names: list[str] | None) -> dict[str, tuple]:
    runs = [cfg.run(n) for n in run_names] if run_names else list(cfg.runs)
    out = {}
    for run in runs:
        run_dir = Path(cfg.train.runs_dir) / run.name
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            raise StoreError(f"{run_dir}: run {run.name!r} is not trained yet (run `pipe train`)")
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "failed":
            console.print(f"[yellow]{run.name}: training failed ({summary.get('message')}); left out")
            continue
        sae, sae_cfg = load_sae(run_dir)
        out[run.name] = (run, run_dir, sae.eval().requires_grad_(False), sae_cfg, summary)
    if not out:
        raise StoreError(f"{cfg.train.runs_dir}: no trained run to evaluate")
    return out


def _feature_groups(sae, forget_freq: torch.Tensor, retain_freq: torch.Tensor, n_groups: int):
    """The run's own groups (grouped SAE), else the same forget/retain rule applied post hoc, so
    condition numbers compare like with like across baseline, fixed and adaptive runs."""
    if hasattr(sae, "groups"):
        return sae.groups, "learned"
    # features silent on both corpora (nan share) keep group 0
    current = torch.zeros(len(forget_freq), dtype=torch.long)
    return assign_groups(forget_share(forget_freq, retain_freq), current, n_groups), "post hoc (eval frequencies)"


def evaluate(cfg: Config, *, run_names: list[str] | None = None, show_progress: bool = True) -> Path:
    reader = open_store_for(cfg)
    runs = _load_runs(cfg, run_names)
    heldout = _groups_by(cfg, "heldout")
    if not heldout:
        raise ConfigError(f"{cfg.path}: [corpora]: eval needs a corpus with split = \"heldout\"")
    ev, un = cfg.eval, cfg.eval.unlearning
    timings: dict[str, float] = {}
    results: dict[str, dict] = {name: {"summary": r[4], "cfg": r[3]} for name, r in runs.items()}

    with progress("item", disable=not show_progress) as bar:
        t = time.perf_counter()
        task = bar.add_task("reconstruction", total=len(runs))
        for name, (_, _, sae, _, _) in runs.items():
            results[name]["reconstruction"] = reconstruction_metrics(sae, _rows(reader, heldout, ev.rows))
            bar.advance(task)
        timings["reconstruction"] = time.perf_counter() - t

        t = time.perf_counter()
        freq_rows = ev.rows
        forget_train, retain_train = _groups_by(cfg, "train", "forget"), _groups_by(cfg, "train", "retain")
        task = bar.add_task("feature frequencies + conditioning", total=len(runs))
        freqs = {}
        for name, (run, run_dir, sae, _, _) in runs.items():
            ff = feature_frequencies(sae, _rows(reader, forget_train, freq_rows)) if forget_train else None
            rf = feature_frequencies(sae, _rows(reader, retain_train, freq_rows)) if retain_train else None
            freqs[name] = (ff, rf)
            if ff is not None and rf is not None:
                groups, how = _feature_groups(sae, ff.float(), rf.float(), cfg.ortho.groups)
                n_groups = sae.group_bias.shape[0] if how == "learned" else cfg.ortho.groups
                cond = conditioning_report(sae, groups.cpu(), n_groups)
            else:
                cond, how = conditioning_report(sae), "single group"
            cond["grouping"] = how
            log = run_dir / "log.jsonl"
            results[name]["conditioning"] = cond
            results[name]["curves"] = training_curves(log) if log.exists() else {}
            bar.advance(task)
        timings["conditioning"] = time.perf_counter() - t

        t = time.perf_counter()
        lm = load_model(cfg.model.id, revision=cfg.model.revision, dtype=cfg.model.dtype,
                        device=cfg.model.device, trust_remote_code=cfg.model.trust_remote_code)
        timings["model_load"] = time.perf_counter() - t
        device = next(lm.model.parameters()).device
        bos = lm.tokenizer.bos_token_id
        saes = {name: r[2].to(device) for name, r in runs.items()}

        t = time.perf_counter()
        contexts = _contexts(reader, heldout, ev.ce_contexts, bos)
        task = bar.add_task("spliced CE / KL", total=len(contexts))
        downstream = spliced_ce(lm.model, cfg.harvest.layer, saes, contexts, ev.batch_size,
                                progress=lambda k: bar.advance(task, k))
        for name in runs:
            results[name]["downstream"] = downstream[name]
        timings["downstream"] = time.perf_counter() - t

        t = time.perf_counter()
        mcq = "mcq" in un.modes and bool(forget_train and retain_train)
        loss = "loss" in un.modes and bool(_groups_by(cfg, "heldout", "forget") and _groups_by(cfg, "heldout", "retain"))
        cap = un.max_questions or None
        forget_q = load_mcq(un.forget_questions, un.forget_subjects, cap) if mcq else None
        retain_q = load_mcq(un.retain_questions, un.retain_subjects, cap) if mcq else None
        fc = _contexts(reader, _groups_by(cfg, "heldout", "forget"), un.loss_contexts, bos) if loss else None
        rc = _contexts(reader, _groups_by(cfg, "heldout", "retain"), un.loss_contexts, bos) if loss else None
        task = bar.add_task("unlearning baseline (unmodified model)", total=1)
        baseline = unlearning_baseline(lm.model, lm.tokenizer, forget_mcqs=forget_q, retain_mcqs=retain_q,
                                       forget_contexts=fc, retain_contexts=rc, batch_size=ev.batch_size,
                                       chat=un.chat_template, all_permutations=un.all_permutations)
        bar.advance(task)  # stops its clock; an open task would keep counting through the interventions
        timings["unlearning_baseline"] = time.perf_counter() - t
        t = time.perf_counter()
        settings = len(un.retain_thresholds) * len(un.n_features_list) * len(un.multipliers)
        task = bar.add_task("unlearning interventions", total=settings * len(runs))
        for name, sae in saes.items():
            ff, rf = freqs[name]
            if ff is None or rf is None:
                continue
            results[name]["unlearning"] = run_unlearning(
                lm.model, lm.tokenizer, cfg.harvest.layer, sae, ff, rf, forget_mcqs=forget_q,
                retain_mcqs=retain_q, forget_contexts=fc, retain_contexts=rc,
                retain_thresholds=un.retain_thresholds, n_features_list=un.n_features_list,
                multipliers=un.multipliers, batch_size=ev.batch_size, chat=un.chat_template,
                all_permutations=un.all_permutations, baseline=baseline,
                progress=lambda k: bar.advance(task, k))
        timings["unlearning_interventions"] = time.perf_counter() - t

    out_dir = Path(ev.reports_dir) / ev.name
    write_report(out_dir, cfg, reader, results, timings)
    return out_dir
