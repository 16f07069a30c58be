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
from pathlib import Path

from orthosae.common.config import Config, ConfigError
from orthosae.common.model import load_configured, pick_device
from orthosae.common.progress import console, progress
from orthosae.common.store import StoreError, open_store_for
from orthosae.eval import browser_pages
from orthosae.eval.browser_data import (
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
    lm = load_configured(cfg.model)
    W_U = lm.model.get_output_embeddings().weight.detach().float()  # [vocab, d_model]
    gain, logit_note = final_norm_gain(lm.model, lm.d_model)
    tok = TokenText(lm.tokenizer)
    device = pick_device(cfg.model.device)
    un = cfg.eval.unlearning
    report = Path(cfg.eval.reports_dir) / cfg.eval.name / "report.json"
    model_s = time.perf_counter() - t0
    total_rows = sum(c.n_rows for c in scan_ranges(reader.corpora(), heldout, max_rows))
    with progress("row", disable=not show_progress) as bar:
        for run, run_dir, summary in runs:
            timings = {"model_load_s": round(model_s, 2)}
            sae, sae_cfg = load_sae(run_dir, device=device)
            sae.eval().requires_grad_(False)
            t = time.perf_counter()
            task = bar.add_task(f"{run.name}: held-out rows", total=total_rows)
            scan = scan_heldout(
                sae,
                reader,
                heldout,
                top_k=top_k,
                max_rows=max_rows,
                device=device,
                on_rows=lambda k: bar.advance(task, k),
            )
            timings["scan_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            task = bar.add_task(f"{run.name}: logit effects", total=sae.W_dec.shape[0])
            logits = logit_effects(sae.W_dec, W_U, gain, on_features=lambda k: bar.advance(task, k))
            timings["logits_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            groups, n_groups, grouping = scan_groups(sae, scan, cfg.ortho.groups)
            neighbours = decoder_neighbours(sae.W_dec, groups.to(sae.W_dec.device))
            meta = {
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
            site = assemble(
                run.name,
                run.type,
                sae.cpu(),
                scan,
                store_arrays(reader, scan.ranges),
                tok,
                lm.tokenizer.bos_token_id,
                groups,
                n_groups,
                grouping,
                neighbours,
                logits,
                list(un.retain_thresholds),
                list(un.n_features_list),
                meta,
                eval_roles(report, run.name, summary.get("fingerprint")),
            )
            timings["assemble_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            site.meta["timings"] = timings
            browser_pages.write_site(site, root / run.name)
            timings["write_s"] = round(time.perf_counter() - t, 2)
            (root / run.name / "timings.json").write_text(json.dumps(timings, indent=2))
            console.print(
                f"  {run.name}: {root / run.name / 'index.html'} ({sum(timings.values()) - model_s:.0f} s)",
                highlight=False,
            )
    present = sorted(p.name for p in root.iterdir() if (p / "index.json").is_file())
    (root / "index.html").write_text(browser_pages.runs_page(cfg.eval.name, present))
    return root
