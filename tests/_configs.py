"""The tiny-model pipeline config the end-to-end tests share: harvest, corpora and [train] base."""

from __future__ import annotations

import textwrap
from pathlib import Path

from click.testing import CliRunner

from orthosae.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "tests/fixtures/docs.jsonl"
MCQ = ROOT / "tests/fixtures/mcq.jsonl"


def write_tiny_pipeline(
    tmp: Path,
    model_dir: Path,
    *,
    retain_heldout_tokens: int = 160,
    d_sae: int = 128,
    tokens: int = 6400,
    t0: int = 50,
    regroup_every: int = 20,
    rest: str = "",
) -> Path:
    """``p.toml`` in ``tmp``: the tiny model, four corpora from the fixture documents, a short
    training; ``rest`` adds the [[runs]] and [eval] tables."""
    text = textwrap.dedent(f"""
    [model]
    id = "{model_dir}"
    device = "cpu"
    [harvest]
    layer = 0
    store = "{tmp / "s.zarr"}"
    context_length = 16
    chunk_tokens = 60
    heldout_fraction = 0.3
    [corpora.retain]
    source = "file:{DOCS}"
    role = "retain"
    tokens = 640
    [corpora.forget]
    source = "file:{DOCS}"
    role = "forget"
    tokens = 320
    [corpora.retain_heldout]
    source = "file:{DOCS}"
    role = "retain"
    split = "heldout"
    tokens = {retain_heldout_tokens}
    [corpora.forget_heldout]
    source = "file:{DOCS}"
    role = "forget"
    split = "heldout"
    tokens = 160
    [train]
    device = "cpu"  # these tests mean CPU, also on a GPU box (bitwise resume holds on CPU)
    runs_dir = "{tmp / "runs"}"
    d_sae = {d_sae}
    batch_size = 64
    tokens = {tokens}
    buffer_rows = 256
    lr = 3e-3
    l1_coefficient = 0.1
    lr_warmup_steps = 5
    l1_warmup_steps = 10
    checkpoint_every = 50
    [train.ortho]
    t0 = {t0}
    regroup_every = {regroup_every}
    """) + textwrap.dedent(rest)
    path = tmp / "p.toml"
    path.write_text(text)
    return path


def tiny_eval(tmp: Path, n_features_list: tuple[int, ...] = (2, 4)) -> str:
    """The [eval] and [eval.unlearning] tables of an end-to-end test: a small report under
    ``tmp/reports/tiny``, MCQ questions from the fixture file (indented as the ``rest`` it joins)."""
    return f"""
    [eval]
    reports_dir = "{tmp / "reports"}"
    name = "tiny"
    rows = 500
    ce_contexts = 4
    batch_size = 4
    [eval.unlearning]
    forget_questions = "file:{MCQ}"
    forget_subjects = ["anatomy", "virology"]
    retain_questions = "file:{MCQ}"
    retain_subjects = ["high_school_geography"]
    all_permutations = false
    retain_thresholds = [0.5]
    n_features_list = {list(n_features_list)}
    multipliers = [5.0]
    loss_contexts = 4
    """


def write_harvest_config(tmp_path, model_dir, *, store="s.zarr", layer=0, storage="float32", name="p.toml") -> Path:
    """A harvest-only config: the tiny model, a train and a heldout corpus from the fixture documents,
    chunks of two contexts."""
    text = f"""
    [model]
    id = "{model_dir}"
    dtype = "float32"
    device = "cpu"
    [harvest]
    layer = {layer}
    store = "{tmp_path / store}"
    context_length = 16
    batch_size = 3
    chunk_tokens = 30
    storage_dtype = "{storage}"
    heldout_fraction = 0.3
    [corpora.retain]
    source = "file:{DOCS}"
    role = "retain"
    tokens = 640
    [corpora.heldout]
    source = "file:{DOCS}"
    role = "forget"
    split = "heldout"
    tokens = 160
    [train]
    device = "cpu"  # these tests mean CPU, also on a GPU box
    [eval]
    reports_dir = "{tmp_path / "reports"}"  # the CLI's event logs go here, not into the checkout
    """
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# a baseline and a grouped SAE: the smallest sweep that exercises both export paths
BASELINE_AND_ADAPTIVE = """
[[runs]]
name = "baseline"
type = "baseline"
[[runs]]
name = "adaptive"
type = "adaptive"
alpha = 0.04
"""

# a baseline and a fixed-orthogonal SAE: plain SAELens architectures only
BASELINE_AND_FIXED = """
[[runs]]
name = "baseline"
type = "baseline"
[[runs]]
name = "fixed"
type = "fixed"
alpha = 0.1
"""


def run_tiny(tmp: Path, model_dir: Path, runs: str) -> Path:
    """`pipe run` on a tiny pipeline of these ``[[runs]]`` tables (2 features clamped; the report in
    ``tmp/reports/tiny``), checked to exit 0; the config's path."""
    path = write_tiny_pipeline(tmp, model_dir, tokens=1920, rest=runs + tiny_eval(tmp, (2,)))
    res = CliRunner().invoke(main, ["--config", str(path), "run"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return path
