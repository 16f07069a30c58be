"""A toy eval family, added the documented way (eval/families.py): this file holds its measure, its
report.md section, its plot and its metric, declared as ``TOY``; one ``register(TOY)`` line adds it
(the test that uses it does)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orthosae.common.markdown import table  # noqa: E402
from orthosae.eval.family import EvalContext, Family, LoadedRun, ReportView  # noqa: E402
from orthosae.eval.figures import save_figure  # noqa: E402
from orthosae.eval.metrics import Metric  # noqa: E402


def measure(ctx: EvalContext, runs: list[LoadedRun]) -> dict[str, dict]:
    """Run -> its ``toy`` section: the dictionary's width over the residual's, d_sae / d_model."""
    with ctx.timed("toy"):
        return {r.name: {"toy": {"toy_width_ratio": r.sae.d_sae / r.sae.d_model}} for r in runs}


def markdown(view: ReportView) -> str:
    rows = [[n, r["toy"]["toy_width_ratio"]] for n, r in view.results.items() if "toy" in r]
    return f"\n## Toy family (d_sae / d_model)\n{table(['run', 'd_sae / d_model'], rows)}\n"


def plots(view: ReportView) -> list[str]:
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(view.names, [r["toy"]["toy_width_ratio"] for r in view.results.values()])
    return [save_figure(plt, fig, view.out_dir, "toy.png")]


TOY = Family(
    name="toy",
    sections=("toy",),
    measure=measure,
    markdown=markdown,
    plots=plots,
    metrics=(Metric("toy_width_ratio", "toy", True, "toy: d_sae / d_model"),),
)
