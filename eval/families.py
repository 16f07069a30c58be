"""The eval families, one table: what `pipe eval` measures for every run, and what the report shows.

Adding a family is one new file plus one line: the file holds its ``measure(ctx, runs)`` (run ->
its report.json sections), its report.md section, its plots and its metrics, declared as a
``Family`` (eval/family.py); one ``register(Family(...))`` line below adds it. ``eval/runner.py``
``evaluate`` measures the families in this order and puts their sections into each run's entry;
``eval/report.py`` writes each family's report.md section and plots in this order, and reads the
columns of its conditions tables and verdicts from the metric registry, which ``register`` fills
with the family's metrics (``tests/test_toy_family.py`` adds a family that way and reads it back).
"""

from __future__ import annotations

from orthosae.eval import family_conditioning, family_core, family_unlearning, metrics
from orthosae.eval import probe_families as probes
from orthosae.eval import probe_report as ps
from orthosae.eval.family import Family

FAMILIES: dict[str, Family] = {}


def register(f: Family) -> Family:
    """Add ``f`` to the table and its metrics to the registry (again: the same declaration is a
    no-op, another one of the same name an error)."""
    if FAMILIES.get(f.name, f) != f:
        raise ValueError(f"eval family {f.name!r} is already registered as {FAMILIES[f.name]}")
    FAMILIES[f.name] = f
    for m in f.metrics:
        metrics.register(m)
    return f


def quality_sections() -> tuple[str, ...]:
    """The sections that describe an SAE unedited (a reference that edits with it reports them)."""
    return tuple(s for f in FAMILIES.values() if f.quality for s in f.sections)


def _built_in(module, *sections: str) -> dict:
    """A family whose file holds ``measure``, ``markdown`` and ``plots`` and whose figures are the
    registry's built-in ones of ``sections`` (eval/metrics.py BUILT_IN: the core, conditioning and
    unlearning columns interleave; registering them again keeps their places)."""
    return dict(
        measure=module.measure, markdown=module.markdown, plots=module.plots, metrics=metrics.built_in(*sections)
    )


register(
    Family(
        name="core",
        sections=("reconstruction", "downstream", "curves"),
        quality=True,
        **_built_in(family_core, "reconstruction", "downstream"),
    )
)
register(
    Family(
        name="conditioning", sections=("conditioning",), quality=True, **_built_in(family_conditioning, "conditioning")
    )
)
# and F(b) per retain budget: metrics.registry(budgets)
register(Family(name="unlearning", sections=("unlearning",), **_built_in(family_unlearning, "unlearning")))
# the four SAEBench probe families: name (its config section and report.json section), measure,
# report.md section, plots, metrics; they share probe_report's note on sizes
for _name, _measure, _section, _plots, _metrics in (
    ("probing", probes.measure_probing, ps.probing_section, ps.probing_plots, ps.PROBING_METRICS),
    ("tpp", probes.measure_tpp, ps.tpp_section, ps.tpp_plots, ps.TPP_METRICS),
    ("scr", probes.measure_scr, ps.scr_section, ps.scr_plots, ps.SCR_METRICS),
    ("absorption", probes.measure_absorption, ps.absorption_section, ps.absorption_plots, ps.ABSORPTION_METRICS),
):
    register(
        Family(
            name=_name,
            sections=(_name,),
            measure=_measure,
            markdown=_section,
            plots=_plots,
            metrics=_metrics,
            note=ps.NOTE,
            switch=_name,
        )
    )
