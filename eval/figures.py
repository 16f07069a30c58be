"""Saving a report's figures: one layout, one dpi, the figure closed after."""

from __future__ import annotations

from pathlib import Path


def save_figure(plt, fig, out_dir: Path, name: str) -> str:
    """Lay out, write at the report's dpi, close; the file's name (for the report's links)."""
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name
