"""The report's "Corpora" section: each corpus's document order and composition (as the harvest
recorded them in the store) and what the feature frequencies were counted on."""

from __future__ import annotations

from orthosae.common.corpora import composition_text
from orthosae.common.store import StoreReader


def corpora_json(reader: StoreReader, frequencies: dict | None) -> dict:
    """report.json `corpora`: per corpus its `CorpusPlan.summary` (role, split, tokens, contexts,
    progress, composition); `feature_frequencies`: eval/frequencies.describe."""
    groups = {name: g.summary() for name, g in reader.corpora().items()}
    return {"groups": groups, "feature_frequencies": frequencies}


def corpora_markdown(section: dict) -> str:
    lines = [
        "## Corpora (document order and composition, from the store)",
        "",
        "| corpus | role | split | tokens | documents | order | per label: documents / tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in section["groups"].items():
        comp = g["composition"]
        if comp:
            labels = ", ".join(f"{k} {v['documents']:,} / {v['tokens']:,}" for k, v in comp["labels"].items()) or "-"
            lines.append(
                f"| {name} | {g['role']} | {g['split']} | {g['tokens']:,} | {comp['documents']:,} | "
                f"{comp['order']} (seed {comp['order_seed']}) | {labels} |"
            )
        else:
            lines.append(
                f"| {name} | {g['role']} | {g['split']} | {g['tokens']:,} | ? | {composition_text(None)} | - |"
            )
    freq = section.get("feature_frequencies")
    if freq:
        counted = ", ".join(f"{k} {v:,}" for k, v in freq["rows_counted"].items())
        lines += [
            "",
            f"Feature frequencies (unlearning's selection, post-hoc groups): {freq['sample']}; "
            f"rows counted: {counted} ({freq['special_tokens']}).",
        ]
    return "\n".join(lines) + "\n"
