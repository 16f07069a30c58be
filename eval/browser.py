"""`pipe inspect`: a static HTML feature browser per run, from held-out rows and the model's weights.

Output, per run, in ``<reports_dir>/<eval name>/inspect/<run>/`` (opens from disk, no server, no
network: CSS and JS are inline; per-feature data is loaded by ``<script>`` tags, which browsers
allow on ``file://`` where ``fetch`` of JSON is blocked)::

    index.html  index.json          every feature: group, forget share, frequencies, activations, cosines
    feature.html#<i>                one page for all features; it loads features/<i>.js
    features/<i>.json (+ .js)       one feature: top contexts, histogram, neighbours, logit effects
    groups.html groups.json         group sizes, cross-group RMS cosines, SAEBench's unlearning selection

This module runs it (``build_browser``); the data comes from eval/browser_scan.py (the held-out
pass) and eval/browser_data.py (weights-only analyses, ``assemble``), the pages from
eval/browser_pages.py (HTML, ``write_site``). What is computed, and from what:

- **One streaming pass over the held-out rows** (corpora with ``split = "heldout"``), in batches of
  whole contexts. Per feature it keeps: activation counts and mass per role (forget / retain), the
  max, a log-binned histogram per role, and the **top-k contexts** by the feature's max activation
  in the context (``torch.topk`` over the batch's contexts merged with the running top-k; a batch
  holds whole contexts, so each context appears once), each with the feature's activations on a
  window of tokens around its max token (``WINDOW`` before / after, never crossing the context).
  Memory is k·d_sae·window floats, whatever the number of rows. Tokens, context and position come
  from the store's per-row arrays; BOS is not stored, so a window that reaches position 0 shows
  ``BOS`` unshaded (the SAE never saw it).
- **Groups**: eval/conditioning.py ``feature_groups``, as ``pipe eval`` groups: a grouped SAE's own
  ``groups``; otherwise the training rule applied post hoc (``assign_groups`` on the forget share
  of activation mass per row), here on held-out forget vs retain rows. Features silent on every
  held-out row have no forget share and are flagged ``silent``.
- **Decoder cosines** between unit decoder rows, in row blocks (never a d_sae² matrix at once): the
  nearest features in the feature's group and in the other groups, and the max cosine within the group.
- **Direct logit effect** of feature i: ``(W_dec[i] ⊙ g) @ W_Uᵀ``, with ``W_U`` the output embedding
  and ``g`` the final norm's elementwise gain (for RMSNorm, incl. Gemma's ``1 + weight``, ``g`` is the
  norm applied to a vector of ones). A residual-stream vector passes the final norm before the
  unembedding; the norm's ``1/rms(x)`` factor is a positive per-token scalar and Gemma's logit
  soft-capping is monotone, so neither changes which tokens a direction promotes or suppresses. The
  model is never run on text.
- **Roles in ``pipe eval``'s probing evals** (``eval_roles``): the latents report.json records for
  the run (sparse probing's top latents per class, TPP's ablated latents per class, absorption's
  split and absorbing latents per letter), when it was made from this training (same fingerprint);
  otherwise the page says the roles are unknown, and why.
- **Unlearning selection**: ``eval.unlearning.select_features`` (SAEBench's ranking) on the held-out
  frequencies, at each ``[eval.unlearning] retain_thresholds``; ``pipe eval`` ranks on train rows,
  so the selection there can differ where the two frequency estimates differ.

Activations are in the SAE's own units (what ``sae.encode`` returns on raw rows).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from rich.progress import Progress
from torch import Tensor

from orthosae.common.config import Config, ConfigError, RunConfig
from orthosae.common.model import load_configured, pick_device
from orthosae.common.progress import console, progress
from orthosae.common.store import StoreError, StoreReader, open_store_for
from orthosae.eval import browser_pages
from orthosae.eval.browser_data import (
    RunSite,
    TokenText,
    assemble,
    decoder_neighbours,
    eval_roles,
    final_norm_gain,
    logit_effects,
    scan_groups,
    store_arrays,
)
from orthosae.eval.browser_scan import HIST_PER_DECADE, TOP_K, scan_heldout, scan_ranges
from orthosae.train.export import load_sae
from orthosae.train.verify import read_summary, require_intact_export


def inspect_root(cfg: Config) -> Path:
    return Path(cfg.eval.reports_dir) / cfg.eval.name / "inspect"


def browser_hint(cfg: Config) -> str:
    """One line for `pipe run`: where the browser is, or how to make it."""
    index = inspect_root(cfg) / "index.html"
    if index.exists():
        return f"feature browser: {index}"
    return f"feature browser: `pipe inspect` writes {index}"


def _trained_runs(cfg: Config, run_names: list[str] | None) -> list[tuple]:
    runs = [cfg.run(n) for n in run_names] if run_names else list(cfg.runs)
    out = []
    for run in runs:
        run_dir = Path(cfg.train.runs_dir) / run.name
        summary = run_dir / "summary.json"
        if not summary.exists():
            if run_names:
                raise StoreError(f"{run_dir}: run {run.name!r} is not trained yet (run `pipe train`)")
            continue
        s = read_summary(run_dir)
        if s.get("status") == "failed":
            console.print(f"[yellow]{run.name}: training failed ({s.get('message')}); left out")
            continue
        require_intact_export(run_dir, s)
        out.append((run, run_dir, s))
    if not out:
        raise StoreError(f"{cfg.train.runs_dir}: no trained run to inspect (run `pipe train`)")
    return out


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """``timings[key]``: the seconds the block took."""
    t = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - t, 2)


@dataclass(frozen=True)
class _Model:
    """What the pages take from the model (never run on text): the unembedding, the final norm's
    gain and a line saying what it is, the tokens' text."""

    W_U: Tensor  # [vocab, d_model]
    gain: Tensor
    logit_note: str
    tok: TokenText
    bos_id: int | None

    @classmethod
    def load(cls, cfg: Config) -> _Model:
        lm = load_configured(cfg.model)
        W_U = lm.model.get_output_embeddings().weight.detach().float()
        gain, note = final_norm_gain(lm.model, lm.d_model)
        return cls(W_U, gain, note, TokenText(lm.tokenizer), lm.tokenizer.bos_token_id)


def _run_meta(cfg: Config, run_dir: Path, summary: dict, logit_note: str) -> dict:
    """The site's ``meta``: where its run and data come from and what its figures mean."""
    return {
        "config": str(cfg.path),
        "store": cfg.harvest.store,
        "run_dir": str(run_dir),
        "model": cfg.model.id,
        "layer": cfg.harvest.layer,
        "hook": cfg.harvest.hook,
        "fingerprint": summary.get("fingerprint"),
        "status": summary.get("status"),
        "logit_effect": logit_note,
        "activation_units": "sae.encode on raw rows",
        "histogram": f"log10(activation), {HIST_PER_DECADE} bins per decade",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass(frozen=True)
class _Inspect:
    """One `pipe inspect`: what each run's site is made with."""

    cfg: Config
    reader: StoreReader
    heldout: list[str]  # the held-out corpora scanned
    model: _Model
    device: torch.device
    top_k: int
    max_rows: int
    bar: Progress
    total_rows: int  # rows scanned per run

    def site(self, run: RunConfig, run_dir: Path, summary: dict, timings: dict[str, float]) -> RunSite:
        """One run's site: the held-out scan, the logit effects, then the weights-only analyses."""
        cfg, bar, un = self.cfg, self.bar, self.cfg.eval.unlearning
        sae, _ = load_sae(run_dir, device=self.device)
        sae.eval().requires_grad_(False)
        with _timed(timings, "scan_s"):
            task = bar.add_task(f"{run.name}: held-out rows", total=self.total_rows)
            scan = scan_heldout(
                sae,
                self.reader,
                self.heldout,
                top_k=self.top_k,
                max_rows=self.max_rows,
                device=self.device,
                on_rows=partial(bar.advance, task),
            )
        with _timed(timings, "logits_s"):
            task = bar.add_task(f"{run.name}: logit effects", total=sae.W_dec.shape[0])
            logits = logit_effects(sae.W_dec, self.model.W_U, self.model.gain, on_features=partial(bar.advance, task))
        with _timed(timings, "assemble_s"):
            groups, n_groups, grouping = scan_groups(sae, scan, cfg.ortho.groups)
            neighbours = decoder_neighbours(sae.W_dec, groups.to(sae.W_dec.device))
            report = Path(cfg.eval.reports_dir) / cfg.eval.name / "report.json"
            return assemble(
                run.name,
                run.type,
                sae.cpu(),
                scan,
                store_arrays(self.reader, scan.ranges),
                self.model.tok,
                self.model.bos_id,
                groups,
                n_groups,
                grouping,
                neighbours,
                logits,
                list(un.retain_thresholds),
                list(un.n_features_list),
                _run_meta(cfg, run_dir, summary, self.model.logit_note),
                eval_roles(report, run.name, summary.get("fingerprint")),
            )


def build_browser(
    cfg: Config,
    *,
    run_names: list[str] | None = None,
    top_k: int = TOP_K,
    max_rows: int = 0,
    show_progress: bool = True,
) -> Path:
    """Write the feature browser of each trained run; returns the inspect root (its index.html
    lists the runs)."""
    heldout = [n for n, c in cfg.corpora.items() if c.split == "heldout"]
    if not heldout:
        raise ConfigError(f'{cfg.path}: [corpora]: inspect needs a corpus with split = "heldout"')
    reader = open_store_for(cfg)
    runs = _trained_runs(cfg, run_names)
    root = inspect_root(cfg)
    t0 = time.perf_counter()
    model = _Model.load(cfg)
    device = pick_device(cfg.model.device)
    model_s = time.perf_counter() - t0
    total_rows = sum(c.n_rows for c in scan_ranges(reader.corpora(), heldout, max_rows))
    with progress("row", disable=not show_progress) as bar:
        inspect = _Inspect(cfg, reader, heldout, model, device, top_k, max_rows, bar, total_rows)
        for run, run_dir, summary in runs:
            timings = {"model_load_s": round(model_s, 2)}
            site = inspect.site(run, run_dir, summary, timings)
            with _timed(timings, "write_s"):
                site.meta["timings"] = timings
                browser_pages.write_site(site, root / run.name)
            (root / run.name / "timings.json").write_text(json.dumps(timings, indent=2))
            console.print(
                f"  {run.name}: {root / run.name / 'index.html'} ({sum(timings.values()) - model_s:.0f} s)",
                highlight=False,
            )
    present = sorted(p.name for p in root.iterdir() if (p / "index.json").is_file())
    (root / "index.html").write_text(browser_pages.runs_page(cfg.eval.name, present))
    return root
