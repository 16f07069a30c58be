"""Where the seed-to-seed spread of the unlearning figures comes from (`[eval.spread]`).

For one condition, each figure (F(b) per retain budget, cross-fitted best selectivity) varies with
three things: the SAE (its init seed), the rows feature frequencies are counted on (which features
unlearning selects) and the held-out documents it is scored on. With the SAE and its features fixed,
the document bootstrap of `run_unlearning` gives the documents' part (`intervals.se`); with the SAE
and documents fixed, bootstrap draws of the selection rows give the selection's part; the spread over
seeds holds the SAE's part and each run's own selection noise (every seed is scored on the same
documents, so their error is mostly shared and does not show in it), so the SAE's part is what the
seed spread leaves after the selection's: sae_sd = √max(0, seed_sd² − selection_sd²).
"""

from __future__ import annotations

import math

import numpy as np

from orthosae.common.config import budget_key


def figure_keys(budgets: list[float]) -> list[str]:
    return [budget_key(b) for b in budgets] + ["best_selectivity_crossfit"]


def _sd(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.std(v, ddof=1)) if len(v) >= 2 else math.nan


def decompose(main: dict[str, dict], draws: dict[str, list[dict]], keys: list[str]) -> dict[str, dict]:
    """main: run -> its unlearning section (every run of the condition); draws: run -> the sections
    of its selection-row draws (the runs that got them). Per figure: the sds of the three parts."""
    out = {}
    for key in keys:
        values = {run: float(sec.get(key, math.nan)) for run, sec in main.items()}
        per_run = {run: [float(d.get(key, math.nan)) for d in ds] for run, ds in draws.items()}
        within = [
            np.var([x for x in v if math.isfinite(x)], ddof=1)
            for v in per_run.values()
            if sum(math.isfinite(x) for x in v) >= 2
        ]
        ses = [sec.get("intervals", {}).get("se", {}).get(key, math.nan) for sec in main.values()]
        ses = [s for s in ses if s is not None and math.isfinite(s)]
        seed_sd = _sd(list(values.values()))
        selection_sd = float(math.sqrt(np.mean(within))) if within else math.nan
        out[key] = {
            "seed_sd": seed_sd,
            "selection_sd": selection_sd,
            "documents_sd": float(math.sqrt(np.mean(np.square(ses)))) if ses else math.nan,
            "sae_sd": (
                math.sqrt(max(0.0, seed_sd**2 - selection_sd**2))
                if math.isfinite(seed_sd) and math.isfinite(selection_sd)
                else math.nan
            ),
            "n_seeds": sum(math.isfinite(x) for x in values.values()),
            "values": values,
            "draws": per_run,
        }
    return out


def _f(x: float) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def spread_markdown(spread: dict | None) -> str:
    if not spread:
        return ""
    lines = [
        "",
        "## Where the spread comes from",
        "",
        f"Condition `{spread['condition']}`: {spread['runs']} run(s) × {spread['selection_draws']} bootstrap "
        "draws of the selection rows; documents: the runs' bootstrap over held-out documents; seeds: "
        "every run of the condition (docs/evaluation.md).",
        "",
        "| figure | sd over seeds | selection rows | eval documents | SAE (seeds − selection) | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, d in spread["figures"].items():
        lines.append(
            f"| {key} | {_f(d['seed_sd'])} | {_f(d['selection_sd'])} | {_f(d['documents_sd'])} | "
            f"{_f(d['sae_sd'])} | {d['n_seeds']} |"
        )
    return "\n".join(lines) + "\n"
