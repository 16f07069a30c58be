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
from orthosae.eval import probe_report as probe_sections
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


# the core, conditioning and unlearning figures are the registry's built-in ones (eval/metrics.py
# BUILT_IN: their columns interleave); registering them again keeps their places
register(
    Family(
        name="core",
        sections=("reconstruction", "downstream", "curves"),
        measure=family_core.measure,
        markdown=family_core.markdown,
        plots=family_core.plots,
        metrics=metrics.built_in("reconstruction", "downstream"),
        quality=True,
    )
)
register(
    Family(
        name="conditioning",
        sections=("conditioning",),
        measure=family_conditioning.measure,
        markdown=family_conditioning.markdown,
        plots=family_conditioning.plots,
        metrics=metrics.built_in("conditioning"),
        quality=True,
    )
)
register(
    Family(
        name="unlearning",
        sections=("unlearning",),
        measure=family_unlearning.measure,
        markdown=family_unlearning.markdown,
        plots=family_unlearning.plots,
        metrics=metrics.built_in("unlearning"),  # and F(b) per retain budget: metrics.registry(budgets)
    )
)
register(
    Family(
        name="probing",
        sections=("probing",),
        measure=probes.measure_probing,
        markdown=probe_sections.probing_section,
        plots=probe_sections.probing_plots,
        metrics=probe_sections.PROBING_METRICS,
        note=probe_sections.NOTE,
    )
)
register(
    Family(
        name="tpp",
        sections=("tpp",),
        measure=probes.measure_tpp,
        markdown=probe_sections.tpp_section,
        plots=probe_sections.tpp_plots,
        metrics=probe_sections.TPP_METRICS,
        note=probe_sections.NOTE,
    )
)
register(
    Family(
        name="scr",
        sections=("scr",),
        measure=probes.measure_scr,
        markdown=probe_sections.scr_section,
        plots=probe_sections.scr_plots,
        metrics=probe_sections.SCR_METRICS,
        note=probe_sections.NOTE,
    )
)
register(
    Family(
        name="absorption",
        sections=("absorption",),
        measure=probes.measure_absorption,
        markdown=probe_sections.absorption_section,
        plots=probe_sections.absorption_plots,
        metrics=probe_sections.ABSORPTION_METRICS,
        note=probe_sections.NOTE,
    )
)
