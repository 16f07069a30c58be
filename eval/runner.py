"""`pipe eval`: every metric family for every trained run, from one store and one model load.

``evaluate`` reads top to bottom: load the runs -> reconstruction on held-out cached rows (no model
needed) -> feature frequencies and conditioning of feature groups -> load the model once ->
spliced CE/KL (one pass serves all runs) -> unlearning (the SAE-independent baseline computed once)
-> sparse probing, TPP, absorption -> each run's ``RunResult`` assembled from the families' results
-> report.json / report.md / plots. Each ``measure_*`` function returns its own result per run (a
report.json section, or a dataclass where a family yields more); only ``evaluate`` puts them together.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from orthosae.common import events
from orthosae.common.config import Config, ConfigError, RunConfig
from orthosae.common.corpora import load_mcq
from orthosae.common.model import load_configured, pick_device
from orthosae.common.progress import progress
from orthosae.common.store import StoreError, StoreReader, open_store_for
from orthosae.eval.aggregate import IncompleteConditionError
from orthosae.eval.conditioning import conditioning_report, feature_groups
from orthosae.eval.core import FeatureActivity, Reconstruction
from orthosae.eval.curves import training_curves
from orthosae.eval.downstream import spliced_ce
from orthosae.eval.frequencies import describe, frequency_plan, plan_batches, resample_plan
from orthosae.eval.matched_damage import domain_tokens
from orthosae.eval.probe_families import ProbeResults, measure_probe_families
from orthosae.eval.report import write_report
from orthosae.eval.spread import decompose, figure_keys
from orthosae.eval.unlearning import run_sweep, run_unlearning, unlearning_baseline
from orthosae.train.export import load_sae
from orthosae.train.sae import SAE, is_grouped
from orthosae.train.sae.grouping import forget_share
from orthosae.train.verify import read_summary, require_intact_export

ROW_BATCH = 4096


@dataclass
class LoadedRun:
    """One trained run as eval finds it: its config, folder, SAE (on the eval device) and files."""

    run: RunConfig
    dir: Path
    sae: SAE
    sae_cfg: dict  # the run's cfg.json
    summary: dict  # the run's summary.json

    @property
    def name(self) -> str:
        return self.run.name


@dataclass(frozen=True)
class Activity:
    """One run's feature frequency (fraction of rows with f > 0) and activation mass (mean f per
    row) on the forget / retain training rows; None where the config has no such corpus."""

    forget_freq: Tensor | None = None
    retain_freq: Tensor | None = None
    forget_mass: Tensor | None = None
    retain_mass: Tensor | None = None

    @property
    def both_roles(self) -> bool:
        return self.forget_freq is not None and self.retain_freq is not None


@dataclass(frozen=True)
class Reference:
    """A label-using unlearning reference measured on the runs' sweep: the run whose features it
    edits (None: no SAE), what it is, and its report.json ``unlearning`` section."""

    of: str | None
    how: str
    unlearning: dict


@dataclass(frozen=True)
class Unlearning:
    """``measure_unlearning``'s result: each run's ``unlearning`` section, and the references."""

    runs: dict[str, dict]
    references: dict[str, Reference]
    spread: dict | None = None  # `[eval.spread]`'s decomposition (eval/spread.py)


@dataclass
class RunResult:
    """One run's entry in report.json (``to_json``), assembled by ``evaluate`` from every family."""

    summary: dict
    sae_cfg: dict
    reconstruction: dict
    conditioning: dict
    curves: dict
    downstream: dict
    unlearning: dict = field(default_factory=dict)
    probes: ProbeResults = field(default_factory=ProbeResults)

    def quality(self) -> dict:
        """The sections a reference reports as its own: the SAE it edits with, unedited."""
        return {
            "summary": self.summary,
            "cfg": self.sae_cfg,
            "reconstruction": self.reconstruction,
            "conditioning": self.conditioning,
            "curves": self.curves,
            "downstream": self.downstream,
        }

    def to_json(self) -> dict:
        out = self.quality()
        if self.unlearning:
            out["unlearning"] = self.unlearning
        out.update(self.probes.to_json())
        return out


def _corpora(cfg: Config, split: str, role: str | None = None) -> list[str]:
    return [n for n, c in cfg.corpora.items() if c.split == split and (role is None or c.role == role)]


def _rows(
    reader: StoreReader, names: list[str], n_rows: int, skip_tokens: frozenset[int] = frozenset()
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
    return frozenset(
        t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None
    )


def _contexts(reader: StoreReader, names: list[str], n: int, bos: int) -> torch.Tensor:
    info = reader.corpora()
    per = max(1, -(-n // len(names)))
    return torch.cat([reader.contexts(name, 0, min(per, info[name].n_contexts), bos) for name in names])[:n]


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


def _feed(batches: Iterator[torch.Tensor], accumulators: list, device: torch.device) -> None:
    """Each batch read (and copied to the device) once, for every run's accumulator."""
    for batch in batches:
        x = batch.to(device)
        for acc in accumulators:
            acc.add(x)


def _device(runs: list[LoadedRun]) -> torch.device:
    return runs[0].sae.W_dec.device


def measure_reconstruction(cfg: Config, reader: StoreReader, runs: list[LoadedRun], advance) -> dict[str, dict]:
    """Run -> its report.json ``reconstruction`` (held-out rows, read once for every run)."""
    accs = [Reconstruction(r.sae) for r in runs]
    _feed(_rows(reader, _corpora(cfg, "heldout"), cfg.eval.rows), accs, _device(runs))
    out = {}
    for r, acc in zip(runs, accs):
        out[r.name] = acc.result()
        advance(1)
    return out


def measure_activity(
    cfg: Config, reader: StoreReader, runs: list[LoadedRun], skip: frozenset[int], draw: tuple[int, ...] | None = None
) -> tuple[dict[str, Activity], dict]:
    """Feature frequency and mass on the training corpora without special-token rows (the groups
    of conditioning and unlearning's selection need them): every row, or the `[eval]
    frequency_rows` sample spread over all documents (eval/frequencies.py), each row encoded once
    per run; with `draw` (the seeds of `resample_plan`), a bootstrap draw of those rows (the spread
    decomposition). Returns run -> ``Activity``, and what the frequencies were counted on."""
    counted, found = {}, {r.name: {} for r in runs}
    for role in ("forget", "retain"):
        names = _corpora(cfg, "train", role)
        if names:
            plan = frequency_plan(reader, names, cfg.eval.frequency_rows, cfg.eval.frequency_seed)
            if draw is not None:
                plan = resample_plan(plan, *draw)
            accs = [FeatureActivity(r.sae) for r in runs]
            _feed(plan_batches(reader, plan, skip), accs, _device(runs))
            counted[role] = accs[0].n
            for r, acc in zip(runs, accs):
                found[r.name][f"{role}_freq"], found[r.name][f"{role}_mass"] = acc.result()
    activity = {name: Activity(**fields) for name, fields in found.items()}
    return activity, describe(cfg.eval.frequency_rows, cfg.eval.frequency_seed, counted)


def measure_conditioning(cfg: Config, runs: list[LoadedRun], activity: dict[str, Activity], advance) -> dict[str, dict]:
    """Run -> its report.json ``conditioning``: of the groups the activity implies (eval/conditioning.py
    ``feature_groups``), or one group without both a forget and a retain training corpus."""
    out = {}
    for r in runs:
        a = activity[r.name]
        if a.forget_mass is not None and a.retain_mass is not None:
            groups, n_groups, how = feature_groups(r.sae, a.forget_mass, a.retain_mass, cfg.ortho.groups)
            report = conditioning_report(r.sae, groups.cpu(), n_groups, activity=a.forget_mass + a.retain_mass)
            if r.run.has_ortho and not r.run.grouped:
                # the fixed SAE was trained against its contiguous blocks: how orthogonal are those?
                report["trained_groups"] = conditioning_report(
                    r.sae, r.sae.groups.cpu(), r.sae.n_groups, activity=a.forget_mass + a.retain_mass
                )
        else:
            report, how = conditioning_report(r.sae), "single group"
        report["grouping"] = how
        out[r.name] = report
        advance(1)
    return out


def read_curves(run: LoadedRun) -> dict:
    """The run's report.json ``curves``: its training log (empty without one)."""
    log = run.dir / "log.jsonl"
    return training_curves(log) if log.exists() else {}


def measure_downstream(cfg: Config, reader: StoreReader, lm, runs: list[LoadedRun], bar) -> dict[str, dict]:
    """Run -> its report.json ``downstream`` (spliced CE / KL; one pass of the model serves all runs)."""
    contexts = _contexts(reader, _corpora(cfg, "heldout"), cfg.eval.ce_contexts, lm.tokenizer.bos_token_id)
    task = bar.add_task("spliced CE / KL", total=len(contexts))
    return spliced_ce(
        lm.model,
        cfg.harvest.layer,
        {r.name: r.sae for r in runs},
        contexts,
        cfg.eval.batch_size,
        progress=lambda k: bar.advance(task, k),
    )


def _contexts_all(reader: StoreReader, names: list[str], per_corpus: int, bos: int) -> torch.Tensor:
    """``per_corpus`` contexts from the front of each corpus (0 = all of them), in store order."""
    info = reader.corpora()
    return torch.cat(
        [
            reader.contexts(n, 0, info[n].n_contexts if per_corpus == 0 else min(per_corpus, info[n].n_contexts), bos)
            for n in names
        ]
    )


def token_counts(reader: StoreReader, names: list[str]) -> np.ndarray:
    """How often each token id occurs in the named corpora (every row)."""
    info = reader.corpora()
    counts = np.zeros(0, dtype=np.int64)
    for n in names:
        c = np.bincount(reader.read_tokens(n, 0, info[n].n_rows).astype(np.int64))
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[: len(c)] += c
    return counts


def forget_share_ranking(a: Activity) -> torch.Tensor:
    """The label-using reference's order: features active on forget rows, by forget share of
    activation mass (the adaptive grouping's statistic, applied post hoc), then forget frequency."""
    share = forget_share(a.forget_mass, a.retain_mass).double().cpu()
    share = torch.nan_to_num(share, nan=-1.0)
    active = a.forget_freq.cpu() > 0
    order = sorted(
        torch.nonzero(active).flatten().tolist(), key=lambda i: (-share[i].item(), -a.forget_freq[i].item(), i)
    )
    return torch.tensor(order, dtype=torch.long)


def mean_direction(reader: StoreReader, cfg: Config, skip: frozenset[int]) -> torch.Tensor:
    """Unit vector along mean(forget training rows) − mean(retain training rows), raw units, from
    every training row of each role (special-token rows left out)."""
    means = []
    info = reader.corpora()
    for role in ("forget", "retain"):
        total, n = None, 0
        names = _corpora(cfg, "train", role)
        for rows in _rows(reader, names, sum(info[c].n_rows for c in names), skip):
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


def _first_seeds(runs: list[LoadedRun], n: int) -> list[LoadedRun]:
    """The ``n`` lowest-seed runs of each condition (all when ``n`` is 0), in the order given."""
    if not n:
        return runs
    keep = set()
    for cond in {r.run.condition for r in runs}:
        mine = sorted((r for r in runs if r.run.condition == cond), key=lambda r: r.run.train.seed)
        keep |= {r.name for r in mine[:n]}
    return [r for r in runs if r.name in keep]


def reference_entry(ref: Reference, base: RunResult | None) -> dict:
    """A reference's entry beside the runs in report.json: its unlearning, the quality it edits at."""
    if base is not None:  # the SAE's own quality: the reference uses its features
        out = base.quality()
        out["cfg"] = {
            **out["cfg"],
            "orthosae": {**out["cfg"].get("orthosae", {}), "type": "reference", "reference": ref.how},
        }
    else:  # no SAE: the model itself, reconstruction perfect by definition
        out = {
            "cfg": {"orthosae": {"type": "reference", "reference": ref.how}},
            "reconstruction": {"explained_variance": 1.0},
            "downstream": {"ce_loss_score": 1.0},
            "conditioning": {},
            "curves": {},
        }
    out["summary"] = {"type": "reference", "reference": ref.how, "of": ref.of}
    out["unlearning"] = ref.unlearning
    return out


def measure_unlearning(
    cfg: Config, reader: StoreReader, lm, runs: list[LoadedRun], activity: dict[str, Activity], bar, timings: dict
) -> Unlearning:
    """Every run's sweep, and the label-using references' sweeps."""
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
    domain = (
        domain_tokens(
            token_counts(reader, _corpora(cfg, "train", "forget")),
            token_counts(reader, _corpora(cfg, "train", "retain")),
            un.domain_ratio,
            un.domain_min_count,
        )
        if loss and has_freqs
        else None
    )
    task = bar.add_task("unlearning baseline (unmodified model)", total=1)
    baseline = unlearning_baseline(
        lm.model,
        lm.tokenizer,
        forget_mcqs=forget_q,
        retain_mcqs=retain_q,
        forget_contexts=fc,
        retain_contexts=rc,
        batch_size=cfg.eval.batch_size,
        chat=un.chat_template,
        all_permutations=un.all_permutations,
        layer=cfg.harvest.layer,
        domain=domain,
    )
    bar.advance(task)  # stops its clock; an open task would keep counting through the interventions
    timings["unlearning_baseline"] = time.perf_counter() - t
    t = time.perf_counter()
    settings = len(un.retain_thresholds) * len(un.n_features_list) * len(un.multipliers)
    ablated = {r.name for r in runs if is_grouped(r.sae)} if loss and un.pi_ablation else set()
    ranked_refs = (
        _first_seeds(
            [r for r in runs if r.run.variant.baseline and un.forget_share_condition in ("", r.run.condition)],
            un.forget_share_runs,
        )
        if loss and "forget_share" in un.references
        else []
    )
    dom_ref = loss and has_freqs and "diff_of_means" in un.references
    spread = cfg.eval.spread
    spread_runs = (
        _first_seeds(
            [r for r in runs if r.run.condition == spread.condition and activity[r.name].both_roles], spread.runs
        )
        if loss and spread.condition
        else []
    )
    total = (
        settings * len(runs)
        + len(ablated)
        + len(un.n_features_list) * len(un.multipliers) * len(ranked_refs)
        + (len(un.projection_scales) if dom_ref else 0)
        + settings * spread.selection_draws * len(spread_runs)
    )
    task = bar.add_task("unlearning interventions", total=total)
    args = dict(
        forget_mcqs=forget_q,
        retain_mcqs=retain_q,
        forget_contexts=fc,
        retain_contexts=rc,
        retain_thresholds=un.retain_thresholds,
        n_features_list=un.n_features_list,
        multipliers=un.multipliers,
        batch_size=cfg.eval.batch_size,
        chat=un.chat_template,
        all_permutations=un.all_permutations,
        baseline=baseline,
        retain_budgets=un.retain_budgets,
        progress=lambda k: bar.advance(task, k),
    )
    sections: dict[str, dict] = {}
    for r in runs:
        a = activity[r.name]
        if not a.both_roles:
            continue
        section = run_unlearning(lm.model, lm.tokenizer, cfg.harvest.layer, r.sae, a.forget_freq, a.retain_freq, **args)
        if r.name in ablated:
            # ablation: π follows the clamp, so the clamp also removes group bias; at the largest
            # setting only (the one where it can matter most), against the main clamp's same setting
            big = dict(
                args,
                forget_mcqs=None,
                retain_mcqs=None,
                n_features_list=[max(un.n_features_list)],
                multipliers=[max(un.multipliers)],
                retain_thresholds=un.retain_thresholds[:1],
            )
            ablation = run_unlearning(
                lm.model,
                lm.tokenizer,
                cfg.harvest.layer,
                r.sae,
                a.forget_freq,
                a.retain_freq,
                pi_from_clamped=True,
                **big,
            )
            main = [
                x
                for x in section["rows"]
                if x["n_features"] == max(un.n_features_list)
                and x["multiplier"] == max(un.multipliers)
                and x["retain_threshold"] == un.retain_thresholds[0]
            ]
            section["ablation_pi_from_clamped"] = {
                "n_features": max(un.n_features_list),
                "multiplier": max(un.multipliers),
                "selectivity": ablation["rows"][0]["selectivity"],
                "selectivity_pi_from_unclamped": main[0]["selectivity"] if main else math.nan,
            }
        sections[r.name] = section
    timings["unlearning_interventions"] = time.perf_counter() - t
    t = time.perf_counter()
    references: dict[str, Reference] = {}
    ref_args = dict(args, forget_mcqs=None, retain_mcqs=None)
    for r in ranked_refs:
        a = activity[r.name]
        res = run_unlearning(
            lm.model,
            lm.tokenizer,
            cfg.harvest.layer,
            r.sae,
            a.forget_freq,
            a.retain_freq,
            ranking=forget_share_ranking(a),
            **ref_args,
        )
        references[_ref_name(r.name, "+forget-share")] = Reference(
            r.name, "forget_share: the SAE's features ranked by forget share of activation mass", res
        )
    if dom_ref:
        d = mean_direction(reader, cfg, special_tokens(lm.tokenizer))
        sweep = [
            ({"scale": float(s)}, ("project", float(s)), lambda fired, s=float(s): project_out(d, s, fired))
            for s in un.projection_scales
        ]
        res = run_sweep(
            lm.model,
            lm.tokenizer,
            cfg.harvest.layer,
            sweep,
            baseline=baseline,
            do_mcq=False,
            do_loss=True,
            forget_contexts=fc,
            retain_contexts=rc,
            batch_size=cfg.eval.batch_size,
            progress=lambda k: bar.advance(task, k),
            retain_budgets=un.retain_budgets,
        )
        references["diff-of-means"] = Reference(
            None, "diff_of_means: forget − retain mean direction projected out (no SAE)", res
        )
    if references:
        timings["unlearning_references"] = time.perf_counter() - t
    decomposition = None
    if spread_runs:
        t = time.perf_counter()
        skip = special_tokens(lm.tokenizer)
        draws: dict[str, list[dict]] = {r.name: [] for r in spread_runs}
        for d in range(spread.selection_draws):
            drawn, _ = measure_activity(cfg, reader, spread_runs, skip, draw=(spread.seed, d))
            for r in spread_runs:
                a = drawn[r.name]
                draws[r.name].append(
                    run_unlearning(
                        lm.model, lm.tokenizer, cfg.harvest.layer, r.sae, a.forget_freq, a.retain_freq, **ref_args
                    )
                )
        main = {r.name: sections[r.name] for r in runs if r.run.condition == spread.condition and r.name in sections}
        decomposition = {
            "condition": spread.condition,
            "runs": len(spread_runs),
            "selection_draws": spread.selection_draws,
            "seed": spread.seed,
            "figures": decompose(main, draws, figure_keys(un.retain_budgets)),
        }
        timings["unlearning_spread"] = time.perf_counter() - t
    return Unlearning(runs=sections, references=references, spread=decomposition)


def evaluate(cfg: Config, *, run_names: list[str] | None = None, show_progress: bool = True) -> Path:
    events.set_stage("eval")
    reader = open_store_for(cfg)
    runs = load_runs(cfg, run_names, device=pick_device(cfg.model.device))  # on the model's device
    if not _corpora(cfg, "heldout"):
        raise ConfigError(f'{cfg.path}: [corpora]: eval needs a corpus with split = "heldout"')
    timings: dict[str, float] = {}
    with progress("item", disable=not show_progress) as bar:
        t = time.perf_counter()
        lm = load_configured(cfg.model)
        timings["model_load"] = time.perf_counter() - t

        t = time.perf_counter()
        task = bar.add_task("reconstruction", total=len(runs))
        reconstruction = measure_reconstruction(cfg, reader, runs, lambda k: bar.advance(task, k))
        timings["reconstruction"] = time.perf_counter() - t

        t = time.perf_counter()
        task = bar.add_task("feature frequencies + conditioning", total=len(runs))
        activity, frequencies = measure_activity(cfg, reader, runs, special_tokens(lm.tokenizer))
        conditioning = measure_conditioning(cfg, runs, activity, lambda k: bar.advance(task, k))
        curves = {r.name: read_curves(r) for r in runs}
        timings["conditioning"] = time.perf_counter() - t

        t = time.perf_counter()
        downstream = measure_downstream(cfg, reader, lm, runs, bar)
        timings["downstream"] = time.perf_counter() - t
        unlearning = measure_unlearning(cfg, reader, lm, runs, activity, bar, timings)
        probes = measure_probe_families(cfg, reader, lm, runs, bar, timings)

    # the one place the families' results become report.json entries
    results = {
        r.name: RunResult(
            summary=r.summary,
            sae_cfg=r.sae_cfg,
            reconstruction=reconstruction[r.name],
            conditioning=conditioning[r.name],
            curves=curves[r.name],
            downstream=downstream[r.name],
            unlearning=unlearning.runs.get(r.name, {}),
            probes=probes.get(r.name, ProbeResults()),
        )
        for r in runs
    }
    references = {
        name: reference_entry(ref, results[ref.of] if ref.of else None) for name, ref in unlearning.references.items()
    }
    out_dir = Path(cfg.eval.reports_dir) / cfg.eval.name
    write_report(
        out_dir,
        cfg,
        reader,
        {name: r.to_json() for name, r in results.items()},
        timings,
        frequencies=frequencies,
        references=references,
        spread=unlearning.spread,
    )
    events.emit("stage_done", report=str(out_dir / "report.md"), runs=[r.name for r in runs])
    return out_dir
