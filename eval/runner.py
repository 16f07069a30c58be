"""`pipe eval`: every metric family for every trained run, from one store and one model load.

``evaluate`` reads top to bottom: load the runs -> reconstruction on held-out cached rows (no model
needed) -> feature frequencies and conditioning of feature groups -> load the model once ->
spliced CE/KL (one pass serves all runs) -> unlearning (the SAE-independent baseline computed once)
-> report.json / report.md / plots. Each family is one function filling one field of every
``RunResult``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from common import events
from common.config import Config, ConfigError, RunConfig
from common.corpora import load_mcq
from common.model import load_model, pick_device
from common.progress import console, progress
from common.store import StoreError, StoreReader, open_store_for
from eval.conditioning import conditioning_report
from eval.core import FeatureActivity, Reconstruction
from eval.curves import training_curves
from eval.downstream import spliced_ce
from eval.probe_families import measure_probe_families
from eval.report import write_report
from eval.unlearning import run_unlearning, unlearning_baseline
from train.export import load_sae
from train.sae import SAE, FixedOrthoSAE, assign_groups, is_grouped
from train.sae.grouping import forget_share

ROW_BATCH = 4096


@dataclass
class RunResult:
    """One trained run and what eval measured of it (``to_json`` is its entry in report.json)."""
    run: RunConfig
    dir: Path
    sae: SAE
    sae_cfg: dict  # the run's cfg.json
    summary: dict  # the run's summary.json
    forget_freq: Tensor | None = None  # feature frequency on forget / retain training rows
    retain_freq: Tensor | None = None
    forget_mass: Tensor | None = None  # mean activation per row on forget / retain training rows
    retain_mass: Tensor | None = None
    reconstruction: dict = field(default_factory=dict)
    conditioning: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    downstream: dict = field(default_factory=dict)
    unlearning: dict = field(default_factory=dict)
    probing: dict = field(default_factory=dict)  # eval/probing.py, eval/tpp.py, eval/absorption.py
    tpp: dict = field(default_factory=dict)
    absorption: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run.name

    def to_json(self) -> dict:
        out = {"summary": self.summary, "cfg": self.sae_cfg, "reconstruction": self.reconstruction,
               "conditioning": self.conditioning, "curves": self.curves, "downstream": self.downstream}
        if self.unlearning:
            out["unlearning"] = self.unlearning
        for family in ("probing", "tpp", "absorption"):
            if getattr(self, family):
                out[family] = getattr(self, family)
        return out


def _corpora(cfg: Config, split: str, role: str | None = None) -> list[str]:
    return [n for n, c in cfg.corpora.items() if c.split == split and (role is None or c.role == role)]


def _rows(reader: StoreReader, names: list[str], n_rows: int, skip_tokens: frozenset[int] = frozenset()
          ) -> Iterator[torch.Tensor]:
    """Up to n_rows raw rows, shared across `names` in proportion to their size, in batches; rows
    whose token is in ``skip_tokens`` are left out (counted in n_rows all the same)."""
    info = reader.corpora()
    total = sum(info[n].n_rows for n in names)
    for name in names:
        take = min(info[name].n_rows, -(-n_rows * info[name].n_rows // total))
        for start in range(0, take, ROW_BATCH):
            rows = reader.read_rows(name, start, min(start + ROW_BATCH, take))
            if skip_tokens:
                tokens = torch.from_numpy(reader.read_tokens(name, start, min(start + ROW_BATCH, take)).astype("int64"))
                rows = rows[~torch.isin(tokens, torch.tensor(sorted(skip_tokens)))]
            yield rows


def special_tokens(tokenizer) -> frozenset[int]:
    """BOS, EOS and padding ids: SAEBench masks them out of the feature frequencies it selects by."""
    return frozenset(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                     if t is not None)


def _contexts(reader: StoreReader, names: list[str], n: int, bos: int) -> torch.Tensor:
    info = reader.corpora()
    per = max(1, -(-n // len(names)))
    return torch.cat([reader.contexts(name, 0, min(per, info[name].n_contexts), bos) for name in names])[:n]


def load_runs(cfg: Config, run_names: list[str] | None = None, device: torch.device | str = "cpu") -> list[RunResult]:
    """The config's trained runs (failed ones left out, with a warning), their SAEs on `device`."""
    out = []
    for run in [cfg.run(n) for n in run_names] if run_names else cfg.runs:
        run_dir = Path(cfg.train.runs_dir) / run.name
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            raise StoreError(f"{run_dir}: run {run.name!r} is not trained yet (run `pipe train`)")
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "failed":
            console.print(f"[yellow]{run.name}: training failed ({summary.get('message')}); left out")
            continue
        sae, sae_cfg = load_sae(run_dir, device=device)
        out.append(RunResult(run=run, dir=run_dir, sae=sae.eval().requires_grad_(False), sae_cfg=sae_cfg,
                             summary=summary))
    if not out:
        raise StoreError(f"{cfg.train.runs_dir}: no trained run to evaluate")
    return out


def feature_groups(sae: SAE, forget_mass: Tensor, retain_mass: Tensor, n_groups: int) -> tuple[Tensor, int, str]:
    """(groups, G, how): the run's own groups (grouped SAE), else training's rule applied post hoc
    to the same statistic (forget share of activation mass), so every run type is grouped alike."""
    if is_grouped(sae):
        return sae.groups, sae.n_groups, "learned"
    # features silent on both corpora (nan share) keep group 0
    current = torch.zeros(len(forget_mass), dtype=torch.long)
    return (assign_groups(forget_share(forget_mass, retain_mass), current, n_groups), n_groups,
            "post hoc (forget share of activation mass)")


def _feed(batches: Iterator[torch.Tensor], accumulators: list, device: torch.device) -> None:
    """Each batch read (and copied to the device) once, for every run's accumulator."""
    for batch in batches:
        x = batch.to(device)
        for acc in accumulators:
            acc.add(x)


def _device(results: list[RunResult]) -> torch.device:
    return results[0].sae.W_dec.device


def measure_reconstruction(cfg: Config, reader: StoreReader, results: list[RunResult], advance) -> None:
    accs = [Reconstruction(r.sae) for r in results]
    _feed(_rows(reader, _corpora(cfg, "heldout"), cfg.eval.rows), accs, _device(results))
    for r, acc in zip(results, accs):
        r.reconstruction = acc.result()
        advance(1)


def measure_conditioning(cfg: Config, reader: StoreReader, results: list[RunResult], skip: frozenset[int],
                         advance) -> None:
    """Feature frequency and mass on the training corpora without special-token rows (unlearning's
    selection needs them too), the groups they imply, the groups' conditioning, the training curves."""
    forget, retain = _corpora(cfg, "train", "forget"), _corpora(cfg, "train", "retain")
    for names, field in ((forget, "forget"), (retain, "retain")):
        if names:
            accs = [FeatureActivity(r.sae) for r in results]
            _feed(_rows(reader, names, cfg.eval.rows, skip), accs, _device(results))
            for r, acc in zip(results, accs):
                freq, mass = acc.result()
                setattr(r, f"{field}_freq", freq)
                setattr(r, f"{field}_mass", mass)
    for r in results:
        if forget and retain:
            groups, n_groups, how = feature_groups(r.sae, r.forget_mass, r.retain_mass, cfg.ortho.groups)
            r.conditioning = conditioning_report(r.sae, groups.cpu(), n_groups, activity=r.forget_mass + r.retain_mass)
            if isinstance(r.sae, FixedOrthoSAE) and not is_grouped(r.sae):
                # the fixed SAE was trained against its contiguous blocks: how orthogonal are those?
                r.conditioning["trained_groups"] = conditioning_report(r.sae, r.sae.penalty_groups().cpu(), r.sae.n_groups,
                                                                       activity=r.forget_mass + r.retain_mass)
        else:
            r.conditioning, how = conditioning_report(r.sae), "single group"
        r.conditioning["grouping"] = how
        log = r.dir / "log.jsonl"
        r.curves = training_curves(log) if log.exists() else {}
        advance(1)


def measure_downstream(cfg: Config, reader: StoreReader, lm, results: list[RunResult], bar) -> None:
    contexts = _contexts(reader, _corpora(cfg, "heldout"), cfg.eval.ce_contexts, lm.tokenizer.bos_token_id)
    task = bar.add_task("spliced CE / KL", total=len(contexts))
    downstream = spliced_ce(lm.model, cfg.harvest.layer, {r.name: r.sae for r in results}, contexts,
                            cfg.eval.batch_size, progress=lambda k: bar.advance(task, k))
    for r in results:
        r.downstream = downstream[r.name]


def measure_unlearning(cfg: Config, reader: StoreReader, lm, results: list[RunResult], bar,
                       timings: dict) -> None:
    un, bos = cfg.eval.unlearning, lm.tokenizer.bos_token_id
    t = time.perf_counter()
    has_freqs = bool(_corpora(cfg, "train", "forget") and _corpora(cfg, "train", "retain"))
    mcq = "mcq" in un.modes and has_freqs
    loss = "loss" in un.modes and bool(_corpora(cfg, "heldout", "forget") and _corpora(cfg, "heldout", "retain"))
    cap = un.max_questions or None
    forget_q = load_mcq(un.forget_questions, un.forget_subjects, cap) if mcq else None
    retain_q = load_mcq(un.retain_questions, un.retain_subjects, cap) if mcq else None
    fc = _contexts(reader, _corpora(cfg, "heldout", "forget"), un.loss_contexts, bos) if loss else None
    rc = _contexts(reader, _corpora(cfg, "heldout", "retain"), un.loss_contexts, bos) if loss else None
    task = bar.add_task("unlearning baseline (unmodified model)", total=1)
    baseline = unlearning_baseline(lm.model, lm.tokenizer, forget_mcqs=forget_q, retain_mcqs=retain_q,
                                   forget_contexts=fc, retain_contexts=rc, batch_size=cfg.eval.batch_size,
                                   chat=un.chat_template, all_permutations=un.all_permutations)
    bar.advance(task)  # stops its clock; an open task would keep counting through the interventions
    timings["unlearning_baseline"] = time.perf_counter() - t
    t = time.perf_counter()
    settings = len(un.retain_thresholds) * len(un.n_features_list) * len(un.multipliers)
    ablated = {r.name for r in results if is_grouped(r.sae)} if loss else set()
    task = bar.add_task("unlearning interventions", total=settings * (len(results) + len(ablated)))
    for r in results:
        if r.forget_freq is None or r.retain_freq is None:
            continue
        args = dict(forget_mcqs=forget_q, retain_mcqs=retain_q, forget_contexts=fc, retain_contexts=rc,
                    retain_thresholds=un.retain_thresholds, n_features_list=un.n_features_list,
                    multipliers=un.multipliers, batch_size=cfg.eval.batch_size, chat=un.chat_template,
                    all_permutations=un.all_permutations, baseline=baseline, progress=lambda k: bar.advance(task, k))
        r.unlearning = run_unlearning(lm.model, lm.tokenizer, cfg.harvest.layer, r.sae, r.forget_freq,
                                      r.retain_freq, **args)
        if r.name in ablated:  # ablation: π follows the clamp, so the clamp also removes group bias
            args.update(forget_mcqs=None, retain_mcqs=None)
            ablation = run_unlearning(lm.model, lm.tokenizer, cfg.harvest.layer, r.sae, r.forget_freq,
                                      r.retain_freq, shares_from_clamped=True, **args)
            r.unlearning["ablation_shares_from_clamped"] = {
                k: ablation[k] for k in ("best_selectivity", "loss_unlearning_score", "rows")}
    timings["unlearning_interventions"] = time.perf_counter() - t


def evaluate(cfg: Config, *, run_names: list[str] | None = None, show_progress: bool = True) -> Path:
    events.set_stage("eval")
    reader = open_store_for(cfg)
    results = load_runs(cfg, run_names, device=pick_device(cfg.model.device))  # on the model's device
    if not _corpora(cfg, "heldout"):
        raise ConfigError(f"{cfg.path}: [corpora]: eval needs a corpus with split = \"heldout\"")
    timings: dict[str, float] = {}
    with progress("item", disable=not show_progress) as bar:
        t = time.perf_counter()
        lm = load_model(cfg.model.id, revision=cfg.model.revision, dtype=cfg.model.dtype,
                        device=cfg.model.device, trust_remote_code=cfg.model.trust_remote_code)
        timings["model_load"] = time.perf_counter() - t

        t = time.perf_counter()
        task = bar.add_task("reconstruction", total=len(results))
        measure_reconstruction(cfg, reader, results, lambda k: bar.advance(task, k))
        timings["reconstruction"] = time.perf_counter() - t

        t = time.perf_counter()
        task = bar.add_task("feature frequencies + conditioning", total=len(results))
        measure_conditioning(cfg, reader, results, special_tokens(lm.tokenizer), lambda k: bar.advance(task, k))
        timings["conditioning"] = time.perf_counter() - t

        t = time.perf_counter()
        measure_downstream(cfg, reader, lm, results, bar)
        timings["downstream"] = time.perf_counter() - t
        measure_unlearning(cfg, reader, lm, results, bar, timings)
        measure_probe_families(cfg, reader, lm, results, bar, timings)

    out_dir = Path(cfg.eval.reports_dir) / cfg.eval.name
    write_report(out_dir, cfg, reader, {r.name: r.to_json() for r in results}, timings)
    events.emit("stage_done", report=str(out_dir / "report.md"), runs=[r.name for r in results])
    return out_dir
