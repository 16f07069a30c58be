"""The one shape of an eval family, and what the families share.

A family (core, conditioning, unlearning, sparse probing, TPP, SCR, absorption, or a new one)
is a ``Family``: the report.json sections it fills in each run's entry, one entry point
``measure(ctx, runs) -> {run name: {section: dict}}``, the metrics it adds to the registry
(``eval/metrics.py``), its report.md section ``markdown(view)`` and its ``plots(view)``. The table of
families is ``eval/families.py``; ``eval/runner.py`` loops over it, ``eval/report.py`` asks it for
sections and plots. ``EvalContext`` is what every family's ``measure`` may read: the config, the
store, the model, the progress bar, the timings, and what one family computes for another (the
feature activity on the training corpora; ``once``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthosae.common import variants
from orthosae.common.config import Config, RunConfig
from orthosae.common.store import StoreReader
from orthosae.eval.core import FeatureActivity
from orthosae.eval.frequencies import describe, frequency_plan, plan_batches, resample_plan
from orthosae.eval.metrics import Metric
from orthosae.train.sae import SAE

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


def corpora_of(cfg: Config, split: str, role: str | None = None) -> list[str]:
    return [n for n, c in cfg.corpora.items() if c.split == split and (role is None or c.role == role)]


def read_rows(
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


def feed(batches: Iterator[torch.Tensor], accumulators: list, device: torch.device) -> None:
    """Each batch read (and copied to the device) once, for every run's accumulator."""
    for batch in batches:
        x = batch.to(device)
        for acc in accumulators:
            acc.add(x)


def device_of(runs: list[LoadedRun]) -> torch.device:
    return runs[0].sae.W_dec.device


def special_tokens(tokenizer) -> frozenset[int]:
    """BOS, EOS and padding ids: SAEBench masks them out of the feature frequencies it selects by."""
    return frozenset(
        t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None
    )


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
        names = corpora_of(cfg, "train", role)
        if names:
            plan = frequency_plan(reader, names, cfg.eval.frequency_rows, cfg.eval.frequency_seed)
            if draw is not None:
                plan = resample_plan(plan, *draw)
            accs = [FeatureActivity(r.sae) for r in runs]
            feed(plan_batches(reader, plan, skip), accs, device_of(runs))
            counted[role] = accs[0].n
            for r, acc in zip(runs, accs):
                found[r.name][f"{role}_freq"], found[r.name][f"{role}_mass"] = acc.result()
    activity = {name: Activity(**fields) for name, fields in found.items()}
    return activity, describe(cfg.eval.frequency_rows, cfg.eval.frequency_seed, counted)


@dataclass(frozen=True)
class Reference:
    """A label-using reference a family measured beside the runs (unlearning's): the run whose SAE it
    edits with (None: no SAE), what it is, the sections it measured, and, without an SAE, the
    quality sections it reports in place of an SAE's."""

    of: str | None
    how: str
    sections: dict[str, dict]
    without_sae: dict[str, dict] = field(default_factory=dict)


def reference_entry(ref: Reference, base: dict | None, quality: tuple[str, ...]) -> dict:
    """A reference's entry beside the runs in report.json: its own sections, and the ``quality``
    sections of the SAE it edits with (``base``: that run's entry), unedited."""
    if base is not None:  # the SAE's own quality: the reference uses its features
        out = {k: base[k] for k in ("summary", "cfg", *quality) if k in base}
        out["cfg"] = {
            **out["cfg"],
            "orthosae": {**out["cfg"].get("orthosae", {}), "type": "reference", "reference": ref.how},
        }
    else:
        out = {"cfg": {"orthosae": {"type": "reference", "reference": ref.how}}, **ref.without_sae}
    out["summary"] = {"type": "reference", "reference": ref.how, "of": ref.of}
    return out | ref.sections


@dataclass
class EvalContext:
    """What every family's ``measure`` reads, and where it leaves what the report shows beside the
    runs (``references``, ``spread``: unlearning's) or another family needs (``once``)."""

    cfg: Config
    reader: StoreReader
    lm: Any  # common.model.LoadedModel: the one model load of the eval
    bar: Any  # common.progress.progress()
    timings: dict[str, float] = field(default_factory=dict)
    references: dict[str, Reference] = field(default_factory=dict)  # report.json ``references``
    spread: dict | None = None  # report.json ``spread``
    frequencies: dict | None = None  # what feature frequencies were counted on (the Corpora section)
    shared: dict[str, Any] = field(default_factory=dict)

    def task(self, label: str, total: float | None) -> Callable[[float], None]:
        """A progress bar task; returns its advance."""
        task = self.bar.add_task(label, total=total)
        return lambda k=1: self.bar.advance(task, k)

    @contextmanager
    def timed(self, key: str):
        """report.json ``timings_s[key]``: the wall time of the block."""
        t = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - t

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``'s result, computed once per eval for every family that asks for ``key``."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def activity(self, runs: list[LoadedRun]) -> dict[str, Activity]:
        """Each run's feature frequency and mass on the training corpora (once per eval)."""

        def make():
            found, self.frequencies = measure_activity(self.cfg, self.reader, runs, special_tokens(self.lm.tokenizer))
            return found

        return self.once("activity", make)


def value_of(result: dict, section: str, key: str) -> float:
    """A number of a run's report.json entry (nan when absent or not finite)."""
    value = result.get(section, {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def alpha_of(result: dict) -> float:
    """α of a run with L_ortho (nan for the baseline, whose α means nothing)."""
    run = result.get("cfg", {}).get("orthosae", {})
    return float(run["ortho"]["alpha"]) if variants.of(run.get("type")).has_ortho else math.nan


@dataclass(frozen=True)
class ReportView:
    """What every family's ``markdown`` and ``plots`` read: the runs' report.json entries, the
    label-using references beside them, the registry's metrics, and where plots go."""

    cfg: Config
    reader: StoreReader
    results: dict[str, dict]
    references: dict[str, dict]
    metrics: list[Metric]
    out_dir: Path

    @property
    def names(self) -> list[str]:
        return list(self.results)

    @property
    def every(self) -> dict[str, dict]:
        """The runs, then the references."""
        return {**self.results, **self.references}


def _no_markdown(view: ReportView) -> str:
    return ""


def _no_plots(view: ReportView) -> list[str]:
    return []


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str
    sections: tuple[str, ...]  # the report.json sections of a run's entry it fills
    measure: Callable[[EvalContext, list[LoadedRun]], dict[str, dict]]  # run -> {section: dict}
    markdown: Callable[[ReportView], str] = _no_markdown  # its report.md section ("" = none)
    plots: Callable[[ReportView], list[str]] = _no_plots  # the plot files it wrote into view.out_dir
    metrics: tuple[Metric, ...] = ()  # its figures in the registry: conditions, intervals, who wins
    quality: bool = False  # the SAE unedited: a reference editing with the SAE reports these sections as its own
    note: str = ""  # report.md text several families share, printed once after their sections
    switch: str = ""  # its [eval.<switch>] section's `enabled` turns it on and off ("" = always on)

    def enabled(self, cfg) -> bool:
        return not self.switch or getattr(cfg.eval, self.switch).enabled
