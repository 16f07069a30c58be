"""The feature browser's test site: the tiny pipeline of two runs (tests/eval/conftest.py builds
it once, `pipe harvest` + `pipe train` + `pipe inspect`), and what a direct computation gives."""

import json
from pathlib import Path

import torch

from orthosae.common.config import load_config
from orthosae.common.store import open_store_for
from orthosae.train.export import load_sae
from tests._configs import write_tiny_pipeline

TOP_K = 6


def write_config(tmp: Path, model_dir: Path) -> Path:
    return write_tiny_pipeline(
        tmp,
        model_dir,
        retain_heldout_tokens=320,
        d_sae=96,
        tokens=3200,
        t0=20,
        regroup_every=10,
        rest=f"""
    [[runs]]
    name = "baseline"
    type = "baseline"
    [[runs]]
    name = "adaptive"
    type = "adaptive"
    alpha = 0.1
    [eval]
    reports_dir = "{tmp / "reports"}"
    name = "tiny"
    [eval.unlearning]
    retain_thresholds = [0.05, 0.5]
    n_features_list = [2, 5]
    """,
    )


def direct(path: Path, run: str):
    """Every held-out row's feature activations, computed directly (no streaming, no top-k)."""
    cfg = load_config(path)
    reader = open_store_for(cfg)
    sae, _ = load_sae(Path(cfg.train.runs_dir) / run)
    out = {}
    for name, c in cfg.corpora.items():
        if c.split != "heldout":
            continue
        g = reader.corpora()[name]
        with torch.no_grad():
            f = sae.encode(reader.read_rows(name, 0, g.n_rows))
        out[name] = {
            "role": c.role,
            "f": f,
            "tokens": reader.read_tokens(name, 0, g.n_rows),
            "context": reader.root[name]["context"][:],
            "position": reader.root[name]["position"][:],
        }
    return cfg, sae, out


def feature(root: Path, run: str, i: int) -> dict:
    files = sorted((root / run / "features").glob("*.json"))
    return json.loads(files[i].read_text())
