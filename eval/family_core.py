"""The core family: reconstruction on held-out rows, the SAE spliced into the model (downstream CE /
KL), and the training curves: report.json ``reconstruction``, ``downstream``, ``curves``; report.md
"Reconstruction" and "Downstream"; recon_vs_l0.png, training_curves.png."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or batch nodes
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from orthosae.common.config import Config  # noqa: E402
from orthosae.common.markdown import cell, table  # noqa: E402
from orthosae.common.store import StoreReader  # noqa: E402
from orthosae.eval.core import Reconstruction  # noqa: E402
from orthosae.eval.curves import plot_training_curves, training_curves  # noqa: E402
from orthosae.eval.downstream import spliced_ce  # noqa: E402
from orthosae.eval.family import (  # noqa: E402
    EvalContext,
    LoadedRun,
    ReportView,
    alpha_of,
    corpora_of,
    device_of,
    feed,
    read_rows,
    value_of,
)
from orthosae.eval.figures import save_figure  # noqa: E402
from orthosae.eval.metrics import HEADLINE_EV  # noqa: E402

RECONSTRUCTION_COLUMNS = (
    ("L0", "l0"),
    ("EV", HEADLINE_EV),
    ("EV legacy (SAEBench)", "explained_variance_legacy"),
    ("EV dictionary_learning", "explained_variance_dictionary_learning"),
    ("MSE", "mse"),
    ("cos sim", "cossim"),
    ("L2 ratio", "l2_ratio"),
    ("rel. bias", "relative_reconstruction_bias"),
    ("dead", "frac_dead"),
    ("dense (> 10 %)", "freq_over_10_percent"),
)
DOWNSTREAM_COLUMNS = (
    ("CE clean", "ce_loss_without_sae"),
    ("CE with SAE", "ce_loss_with_sae"),
    ("CE zero-abl.", "ce_loss_with_ablation"),
    ("CE-loss score", "ce_loss_score"),
    ("KL with SAE", "kl_div_with_sae"),
    ("KL score", "kl_div_score"),
)


def measure_reconstruction(cfg: Config, reader: StoreReader, runs: list[LoadedRun], advance) -> dict[str, dict]:
    """Run -> its report.json ``reconstruction`` (held-out rows, read once for every run)."""
    accs = [Reconstruction(r.sae) for r in runs]
    feed(read_rows(reader, corpora_of(cfg, "heldout"), cfg.eval.rows), accs, device_of(runs))
    out = {}
    for r, acc in zip(runs, accs):
        out[r.name] = acc.result()
        advance(1)
    return out


def read_curves(run: LoadedRun) -> dict:
    """The run's report.json ``curves``: its training log (empty without one)."""
    log = run.dir / "log.jsonl"
    return training_curves(log) if log.exists() else {}


def front_contexts(reader: StoreReader, names: list[str], n: int, bos: int) -> torch.Tensor:
    """``n`` contexts shared over the named corpora, each from its front."""
    info = reader.corpora()
    per = max(1, -(-n // len(names)))
    return torch.cat([reader.contexts(name, 0, min(per, info[name].n_contexts), bos) for name in names])[:n]


def measure_downstream(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Run -> its report.json ``downstream`` (spliced CE / KL; one pass of the model serves all runs)."""
    cfg, lm = ctx.cfg, ctx.lm
    contexts = front_contexts(ctx.reader, corpora_of(cfg, "heldout"), cfg.eval.ce_contexts, lm.tokenizer.bos_token_id)
    advance = ctx.task("spliced CE / KL", len(contexts))
    return spliced_ce(
        lm.model, cfg.harvest.layer, {r.name: r.sae for r in runs}, contexts, cfg.eval.batch_size, progress=advance
    )


def measure(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    with ctx.timed("reconstruction"):
        reconstruction = measure_reconstruction(ctx.cfg, ctx.reader, runs, ctx.task("reconstruction", len(runs)))
    with ctx.timed("downstream"):
        downstream = measure_downstream(ctx, runs)
    return {
        r.name: {"reconstruction": reconstruction[r.name], "curves": read_curves(r), "downstream": downstream[r.name]}
        for r in runs
    }


def markdown(view: ReportView) -> str:
    res = view.results
    rec = [
        [n, res[n]["summary"].get("type"), cell(alpha_of(res[n]), 2)]
        + [value_of(res[n], "reconstruction", k) for _, k in RECONSTRUCTION_COLUMNS]
        for n in view.names
    ]
    down = [[n, *[value_of(res[n], "downstream", k) for _, k in DOWNSTREAM_COLUMNS]] for n in view.names]
    return f"""
## Reconstruction (held-out rows; headline EV = `{HEADLINE_EV}`, the corrected SAELens definition)
{table(["run", "type", "α", *[c for c, _ in RECONSTRUCTION_COLUMNS]], rec)}

## Downstream (SAE spliced in at layer {view.cfg.harvest.layer}; BOS position left clean)
{table(["run", *[c for c, _ in DOWNSTREAM_COLUMNS]], down)}
"""


def plots(view: ReportView) -> list[str]:
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, r in view.results.items():
        xy = (value_of(r, "reconstruction", "l0"), value_of(r, "reconstruction", HEADLINE_EV))
        ax.scatter(*xy)
        ax.annotate(n, xy, fontsize=7)
    ax.set(xlabel="L0 (active features per token)", ylabel="explained variance", title="Reconstruction vs L0")
    return [
        save_figure(plt, fig, view.out_dir, "recon_vs_l0.png"),
        save_figure(plt, plot_training_curves(view.results), view.out_dir, "training_curves.png"),
    ]
