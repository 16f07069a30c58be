"""`pipe eval`: every metric family for every trained run, from one store and one model load.

``evaluate`` reads top to bottom: load the runs -> reconstruction on held-out cached rows (no model
needed) -> feature frequencies and conditioning of feature groups -> load the model once ->
spliced CE/KL (one pass serves all runs) -> unlearning (the SAE-independent baseline computed once)
-> report.json / report.md / plots. Each family is one function filling one field of every
``RunResult``.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
from eval.frequencies import describe, frequency_batches
from eval.probe_families import measure_probe_families
from eval.report import write_report
from eval.matched_damage import domain_tokens
from eval.unlearning import run_sweep, run_unlearning, unlearning_baseline
from train.export import load_sae
from train.verify import read_summary, require_intact_export
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
        summary = read_summary(run_dir)
        if summary.get("status") == "failed":
            console.print(f"[yellow]{run.name}: training failed ({summary.get('message')}); left out")
            continue
        require_intact_export(run_dir, summary)  # digests too: a swapped file loads, but is not this run
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
                         advance) -> dict:
    """Feature frequency and mass on the training corpora without special-token rows (unlearning's
    selection needs them too): every row, or the `[eval] frequency_rows` sample spread over all
    documents (eval/frequencies.py), each row encoded once per run; then the groups they imply,
    the groups' conditioning and the training curves. Returns what the frequencies were counted on."""
    forget, retain = _corpora(cfg, "train", "forget"), _corpora(cfg, "train", "retain")
    counted = {}
    for names, field in ((forget, "forget"), (retain, "retain")):
        if names:
            accs = [FeatureActivity(r.sae) for r in results]
            _feed(frequency_batches(reader, names, cfg.eval.frequency_rows, cfg.eval.frequency_seed, skip),
                  accs, _device(results))
            counted[field] = accs[0].n
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
                r.conditioning["trained_groups"] = conditioning_report(r.sae, r.sae.groups.cpu(), r.sae.n_groups,
                                                                       activity=r.forget_mass + r.retain_mass)
        else:
            r.conditioning, how = conditioning_report(r.sae), "single group"
        r.conditioning["grouping"] = how
        log = r.dir / "log.jsonl"
        r.curves = training_curves(log) if log.exists() else {}
        advance(1)
    return describe(cfg.eval.frequency_rows, cfg.eval.frequency_seed, counted)


def measure_downstream(cfg: Config, reader: StoreReader, lm, results: list[RunResult], bar) -> None:
    contexts = _contexts(reader, _corpora(cfg, "heldout"), cfg.eval.ce_contexts, lm.tokenizer.bos_token_id)
    task = bar.add_task("spliced CE / KL", total=len(contexts))
    downstream = spliced_ce(lm.model, cfg.harvest.layer, {r.name: r.sae for r in results}, contexts,
                            cfg.eval.batch_size, progress=lambda k: bar.advance(task, k))
    for r in results:
        r.downstream = downstream[r.name]


def _contexts_all(reader: StoreReader, names: list[str], per_corpus: int, bos: int) -> torch.Tensor:
    """``per_corpus`` contexts from the front of each corpus (0 = all of them), in store order."""
    info = reader.corpora()
    return torch.cat([reader.contexts(n, 0, info[n].n_contexts if per_corpus == 0 else
                                      min(per_corpus, info[n].n_contexts), bos) for n in names])


def token_counts(reader: StoreReader, names: list[str]) -> np.ndarray:
    """How often each token id occurs in the named corpora (every row)."""
    info = reader.corpora()
    counts = np.zeros(0, dtype=np.int64)
    for n in names:
        c = np.bincount(reader.read_tokens(n, 0, info[n].n_rows).astype(np.int64))
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[:len(c)] += c
    return counts


def forget_share_ranking(r: "RunResult") -> torch.Tensor:
    """The label-using reference's order: features active on forget rows, by forget share of
    activation mass (the adaptive grouping's statistic, applied post hoc), then forget frequency."""
    share = forget_share(r.forget_mass, r.retain_mass).double().cpu()
    share = torch.nan_to_num(share, nan=-1.0)
    active = (r.forget_freq.cpu() > 0)
    order = sorted(torch.nonzero(active).flatten().tolist(),
                   key=lambda i: (-share[i].item(), -r.forget_freq[i].item(), i))
    return torch.tensor(order, dtype=torch.long)


def mean_direction(reader: StoreReader, cfg: Config, skip: frozenset[int]) -> torch.Tensor:
    """Unit vector along mean(forget training rows) − mean(retain training rows), raw units."""
    means = []
    for role in ("forget", "retain"):
        total, n = None, 0
        for rows in _rows(reader, _corpora(cfg, "train", role), cfg.eval.rows, skip):
            s = rows.double().sum(dim=0)
            total, n = (s if total is None else total + s), n + len(rows)
        means.append(total / max(n, 1))
    d = means[0] - means[1]
    return (d / d.norm().clamp_min(1e-12)).float()


def project_out(direction: Tensor, scale: float, fired: list | None = None):
    """resid -> resid − scale·(resid·d̂)d̂ (the SAE-free reference edit; every position is edited)."""
    def fn(r: Tensor) -> Tensor:
        d = direction.to(device=r.device)
        x = r.float()
        if fired is not None:
            fired.append(torch.full(r.shape[:-2] or (1,), float(r.shape[-2]), dtype=torch.float64))
        return (x - scale * (x @ d)[..., None] * d).to(r.dtype)
    return fn


def _ref_name(run: str, tag: str) -> str:
    """baseline-s1 -> baseline+forget-share-s1: the seed suffix stays last, so seeds form a condition."""
    m = re.match(r"(.*)(-s\d+)$", run)
    return f"{m[1]}{tag}{m[2]}" if m else run + tag


def _reference_result(base: RunResult | None, name: str, unlearning: dict, how: str) -> dict:
    """A reference's entry beside the runs in report.json: its unlearning, the quality it edits at."""
    if base is not None:  # the SAE's own quality: the reference uses its features
        out = base.to_json()
        out["cfg"] = {**out["cfg"], "orthosae": {**out["cfg"].get("orthosae", {}), "type": "reference",
                                                 "reference": how}}
    else:  # no SAE: the model itself, reconstruction perfect by definition
        out = {"cfg": {"orthosae": {"type": "reference", "reference": how}},
               "reconstruction": {"explained_variance": 1.0}, "downstream": {"ce_loss_score": 1.0},
               "conditioning": {}, "curves": {}}
    out["summary"] = {"type": "reference", "reference": how, "of": base.name if base else None}
    out["unlearning"] = unlearning
    return out


def measure_unlearning(cfg: Config, reader: StoreReader, lm, results: list[RunResult], bar,
                       timings: dict) -> dict[str, dict]:
    """Every run's sweep; returns the references' entries (name -> report.json entry)."""
    un, bos = cfg.eval.unlearning, lm.tokenizer.bos_token_id
    t = time.perf_counter()
    has_freqs = bool(_corpora(cfg, "train", "forget") and _corpora(cfg, "train", "retain"))
    mcq = "mcq" in un.modes and has_freqs
    loss = "loss" in un.modes and bool(_corpora(cfg, "heldout", "forget") and _corpora(cfg, "heldout", "retain"))
    cap = un.max_questions or None
    forget_q = load_mcq(un.forget_questions, un.forget_subjects, cap) if mcq else None
    retain_q = load_mcq(un.retain_questions, un.retain_subjects, cap) if mcq else None
    fc = _contexts_all(reader, _corpora(cfg, "heldout", "forget"), un.loss_contexts, bos) if loss else None
    rc = _contexts_all(reader, _corpora(cfg, "heldout", "retain"), un.loss_contexts, bos) if loss else None
    domain = (domain_tokens(token_counts(reader, _corpora(cfg, "train", "forget")),
                            token_counts(reader, _corpora(cfg, "train", "retain")), un.domain_ratio,
                            un.domain_min_count) if loss and has_freqs else None)
    task = bar.add_task("unlearning baseline (unmodified model)", total=1)
    baseline = unlearning_baseline(lm.model, lm.tokenizer, forget_mcqs=forget_q, retain_mcqs=retain_q,
                                   forget_contexts=fc, retain_contexts=rc, batch_size=cfg.eval.batch_size,
                                   chat=un.chat_template, all_permutations=un.all_permutations,
                                   layer=cfg.harvest.layer, domain=domain)
    bar.advance(task)  # stops its clock; an open task would keep counting through the interventions
    timings["unlearning_baseline"] = time.perf_counter() - t
    t = time.perf_counter()
    settings = len(un.retain_thresholds) * len(un.n_features_list) * len(un.multipliers)
    ablated = {r.name for r in results if is_grouped(r.sae)} if loss else set()
    share_refs = [r for r in results if r.run.type == "baseline"] if loss and "forget_share" in un.references else []
    dom_ref = loss and has_freqs and "diff_of_means" in un.references
    total = (settings * len(results) + len(ablated) + len(un.n_features_list) * len(un.multipliers) * len(share_refs)
             + (len(un.projection_scales) if dom_ref else 0))
    task = bar.add_task("unlearning interventions", total=total)
    args = dict(forget_mcqs=forget_q, retain_mcqs=retain_q, forget_contexts=fc, retain_contexts=rc,
                retain_thresholds=un.retain_thresholds, n_features_list=un.n_features_list,
                multipliers=un.multipliers, batch_size=cfg.eval.batch_size, chat=un.chat_template,
                all_permutations=un.all_permutations, baseline=baseline, retain_budgets=un.retain_budgets,
                progress=lambda k: bar.advance(task, k))
    for r in results:
        if r.forget_freq is None or r.retain_freq is None:
            continue
        r.unlearning = run_unlearning(lm.model, lm.tokenizer, cfg.harvest.layer, r.sae, r.forget_freq,
                                      r.retain_freq, **args)
        if r.name in ablated:
            # ablation: π follows the clamp, so the clamp also removes group bias; at the largest
            # setting only (the one where it can matter most), against the main clamp's same setting
            big = dict(args, forget_mcqs=None, retain_mcqs=None, n_features_list=[max(un.n_features_list)],
                       multipliers=[max(un.multipliers)], retain_thresholds=un.retain_thresholds[:1])
            ablation = run_unlearning(lm.model, lm.tokenizer, cfg.harvest.layer, r.sae, r.forget_freq,
                                      r.retain_freq, shares_from_clamped=True, **big)
            main = [x for x in r.unlearning["rows"] if x["n_features"] == max(un.n_features_list)
                    and x["multiplier"] == max(un.multipliers) and x["retain_threshold"] == un.retain_thresholds[0]]
            r.unlearning["ablation_shares_from_clamped"] = {
                "n_features": max(un.n_features_list), "multiplier": max(un.multipliers),
                "selectivity": ablation["rows"][0]["selectivity"],
                "selectivity_pi_from_unclamped": main[0]["selectivity"] if main else math.nan}
    timings["unlearning_interventions"] = time.perf_counter() - t
    t = time.perf_counter()
    references: dict[str, dict] = {}
    ref_args = dict(args, forget_mcqs=None, retain_mcqs=None)
    for r in share_refs:
        res = run_unlearning(lm.model, lm.tokenizer, cfg.harvest.layer, r.sae, r.forget_freq, r.retain_freq,
                             ranking=forget_share_ranking(r), **ref_args)
        references[_ref_name(r.name, "+forget-share")] = _reference_result(
            r, _ref_name(r.name, "+forget-share"), res, "forget_share: the SAE's features ranked by forget share of activation mass")
    if dom_ref:
        d = mean_direction(reader, cfg, special_tokens(lm.tokenizer))
        sweep = [({"scale": float(s)}, ("project", float(s)), lambda fired, s=float(s): project_out(d, s, fired))
                 for s in un.projection_scales]
        res = run_sweep(lm.model, lm.tokenizer, cfg.harvest.layer, sweep, baseline=baseline, do_mcq=False,
                        do_loss=True, forget_contexts=fc, retain_contexts=rc, batch_size=cfg.eval.batch_size,
                        progress=lambda k: bar.advance(task, k), retain_budgets=un.retain_budgets)
        references["diff-of-means"] = _reference_result(
            None, "diff-of-means", res, "diff_of_means: forget − retain mean direction projected out (no SAE)")
    if references:
        timings["unlearning_references"] = time.perf_counter() - t
    return references


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
        frequencies = measure_conditioning(cfg, reader, results, special_tokens(lm.tokenizer),
                                           lambda k: bar.advance(task, k))
        timings["conditioning"] = time.perf_counter() - t

        t = time.perf_counter()
        measure_downstream(cfg, reader, lm, results, bar)
        timings["downstream"] = time.perf_counter() - t
        references = measure_unlearning(cfg, reader, lm, results, bar, timings)
        measure_probe_families(cfg, reader, lm, results, bar, timings)

    out_dir = Path(cfg.eval.reports_dir) / cfg.eval.name
    write_report(out_dir, cfg, reader, {r.name: r.to_json() for r in results}, timings,
                 frequencies=frequencies, references=references)
    events.emit("stage_done", report=str(out_dir / "report.md"), runs=[r.name for r in results])
    return out_dir
